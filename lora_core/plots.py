"""Figures for the book: labelled contact sheets of generated grids, and small line plots.

No backend is forced (``matplotlib.use`` inside a notebook stops figures from being captured);
every function returns the ``Figure`` so a notebook shows it and a script can ``savefig`` it.

>>> import pandas as pd
>>> from PIL import Image
>>> images = [Image.new("RGB", (8, 8), (40 * i, 0, 0)) for i in range(4)]
>>> table = pd.DataFrame({"prompt": ["cat", "cat", "dog", "dog"], "weight": [0.0, 1.0, 0.0, 1.0]})
>>> figure = contact_sheet(images, table, rows="prompt", cols="weight")
>>> figure.axes[0].get_title(), figure.axes[0].get_ylabel(), len(figure.axes)
('weight = 0', 'cat', 4)
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import pandas as pd


def _label(columns: Sequence[str], values, with_names: bool) -> str:
    values = values if isinstance(values, tuple) else (values,)
    parts = [f"{_fmt(v)}" if not with_names else f"{c} = {_fmt(v)}" for c, v in zip(columns, values)]
    return ", ".join(parts)


def _needs_names(columns: Sequence[str], keys: Sequence[tuple]) -> bool:
    """Labels carry the setting's name for several settings or numeric values ("weight = 0.5")."""
    return len(columns) > 1 or any(isinstance(v, (int, float, np.number)) for key in keys for v in key)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def contact_sheet(images: Sequence, table: pd.DataFrame, rows: str | Sequence[str], cols: str | Sequence[str],
                  cell_inches: float = 1.3, title: str | None = None, wrap: int | None = None):
    """One image per (row, column) of the swept settings, labelled by their values (with the
    setting's name where a value alone would not say what it is: a number, or several settings).
    Labels wrap at ``wrap`` characters, by default what fits a cell of ``cell_inches``.

    ``table`` has one row per image (``Grid.table``); ``rows``/``cols`` name one column or several.
    Every other setting must be constant within a cell: filter the table first (e.g.
    ``table.query("seed == 1")``) or add that setting to ``rows``/``cols``.
    """
    import matplotlib.pyplot as plt

    rows, cols = ([rows] if isinstance(rows, str) else list(rows)), ([cols] if isinstance(cols, str) else list(cols))
    if len(images) != len(table):
        raise ValueError(f"{len(images)} images but {len(table)} table rows")
    unknown = [c for c in rows + cols if c not in table.columns]
    if unknown:
        raise ValueError(f"unknown column(s) {unknown}; the table has {list(table.columns)}")
    table = table.reset_index(drop=True)
    row_keys = list(dict.fromkeys(table[rows].itertuples(index=False, name=None)))
    col_keys = list(dict.fromkeys(table[cols].itertuples(index=False, name=None)))
    positions: dict[tuple, int] = {}
    for index, record in table.iterrows():
        key = (tuple(record[rows]), tuple(record[cols]))
        if key in positions:
            varying = [c for c in table.columns if c not in rows + cols and
                       table.loc[positions[key], c] != record[c]]
            raise ValueError(f"several images for {rows}={key[0]}, {cols}={key[1]} (they differ in {varying}); "
                             "filter the table or add those columns to rows/cols")
        positions[key] = index
    wrap = wrap or max(8, int(cell_inches * 14))
    figure, axes = plt.subplots(len(row_keys), len(col_keys), squeeze=False,
                                figsize=(cell_inches * len(col_keys) + 1.2, cell_inches * len(row_keys) + 0.4))
    for r, row_key in enumerate(row_keys):
        for c, col_key in enumerate(col_keys):
            ax = axes[r][c]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if (row_key, col_key) in positions:
                ax.imshow(np.asarray(images[positions[(row_key, col_key)]]))
            if r == 0:
                ax.set_title(textwrap.fill(_label(cols, col_key, _needs_names(cols, col_keys)), wrap), fontsize=8)
            if c == 0:
                ax.set_ylabel(textwrap.fill(_label(rows, row_key, _needs_names(rows, row_keys)), wrap), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def line_plot(frame: pd.DataFrame, x: str, y: str, hue: str | None = None, title: str | None = None,
              ylabel: str | None = None):
    """Mean of ``y`` against ``x`` (one line per ``hue``) with a min-max band, e.g. the
    interpolation gap per module against the mixing weight ``a``."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(4.5, 3))
    groups = frame.groupby(hue, sort=False) if hue else [(None, frame)]
    for name, group in groups:
        stats = group.groupby(x)[y].agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], marker="o", label=None if name is None else str(name))
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    if hue:
        ax.legend(title=hue, fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    figure.tight_layout()
    return figure
