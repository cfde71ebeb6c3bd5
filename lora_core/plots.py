"""Figures for the book: labelled contact sheets, panels of measures with their intervals, line and
bar panels. Chapter modules prepare tidy tables (and :class:`Sheet` s) with the labels to show;
the functions here only draw, so every chapter's figures look alike.

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
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

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


def as_picture(image: Any) -> np.ndarray:
    """An image as an (H, W, C) array for ``imshow``: a (C, H, W) tensor is transposed, anything
    else (PIL image, array) converted as it is.

    >>> import torch
    >>> as_picture(torch.zeros(3, 4, 5, dtype=torch.uint8)).shape
    (4, 5, 3)
    """
    if hasattr(image, "permute"):
        return np.asarray(image.permute(1, 2, 0))
    return np.asarray(image)


@dataclass(frozen=True)
class Sheet:
    """Pictures with one row of labels each and the label columns that lay them out: what a
    chapter hands to :func:`sheet_figure`.

    >>> import torch
    >>> cells = [(torch.zeros(3, 4, 4, dtype=torch.uint8), {"subject": s, "column": c})
    ...          for s in ("cat", "dog") for c in ("true", "lora")]
    >>> sheet = Sheet.of(cells, rows="subject", cols="column", title="demo")
    >>> len(sheet.images), sheet.table.to_dict("list")["column"], len(sheet_figure(sheet).axes)
    (4, ['true', 'lora', 'true', 'lora'], 4)
    """

    images: tuple
    table: pd.DataFrame
    rows: str
    cols: str
    title: str = ""
    cell_inches: float = 1.0

    @classmethod
    def of(cls, cells: Iterable[tuple[Any, Mapping[str, Any]]], rows: str, cols: str, title: str = "",
           cell_inches: float = 1.0) -> "Sheet":
        """A sheet from ``(image, labels)`` pairs (images as tensors, arrays or PIL images)."""
        cells = list(cells)
        return cls(tuple(as_picture(image) for image, _ in cells), pd.DataFrame([dict(l) for _, l in cells]),
                   rows, cols, title, cell_inches)


def sheet_figure(sheet: Sheet):
    """:func:`contact_sheet` of a :class:`Sheet`."""
    return contact_sheet(list(sheet.images), sheet.table, rows=sheet.rows, cols=sheet.cols,
                         cell_inches=sheet.cell_inches, title=sheet.title or None)


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


def _panels(n: int, width: float = 3.2, height: float = 2.8, sharey: bool = False):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, max(1, n), figsize=(width * max(1, n), height), squeeze=False, sharey=sharey)
    return figure, axes[0]


def _groups(frame: pd.DataFrame, column: str | None):
    """``(value, rows)`` per value of ``column`` in order of appearance, or one unnamed group."""
    return list(frame.groupby(column, sort=False)) if column else [(None, frame)]


def _finish(figure, axes, title: str | None, xlabel: str | None, log2_x: bool, frame: pd.DataFrame, x: str):
    for ax in axes:
        if xlabel:
            ax.set_xlabel(xlabel)
        if log2_x:
            ticks = sorted(set(frame[x]))
            ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, labels=[_fmt(t) for t in ticks])
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def interval_panels(table: pd.DataFrame, x: str, panel: str = "panel", line: str | None = None,
                    dashed: str | None = None, title: str | None = None, xlabel: str | None = None,
                    ylabel: str | None = None, log2_x: bool = False):
    """One panel per value of ``panel`` (its text is the panel's title): ``value`` against ``x``
    with its 95% interval (``ci_low``, ``ci_high``) as error bars, one line per value of ``line``
    (its text is the legend), dashed where the boolean column ``dashed`` is true. A categorical
    ``x`` (method names) gets points without connecting lines.

    >>> rows = pd.DataFrame({"panel": ["FD", "FD"], "rank": [4, 8], "value": [2.0, 1.0],
    ...                      "ci_low": [1.5, 0.5], "ci_high": [2.5, 1.5]})
    >>> interval_panels(rows, "rank", log2_x=True).axes[0].get_title()
    'FD'
    """
    panels = _groups(table, panel)
    figure, axes = _panels(len(panels), width=3.2 if len(panels) > 1 else 4.5)
    categorical = not pd.api.types.is_numeric_dtype(table[x])
    for ax, (name, rows) in zip(axes, panels):
        for label, points in _groups(rows, line):
            points = points.sort_values(x) if not categorical else points
            error = [(points["value"] - points["ci_low"]).clip(lower=0),
                     (points["ci_high"] - points["value"]).clip(lower=0)]
            style = "none" if categorical else "--" if dashed and points[dashed].iloc[0] else "-"
            ax.errorbar(points[x], points["value"], yerr=error, marker="o", capsize=2, linestyle=style, label=label)
        ax.set_title(name or "", fontsize=8)
        if ylabel:
            ax.set_ylabel(ylabel)
        if categorical:
            ax.tick_params(axis="x", rotation=45, labelsize=7)
    return _finish(figure, axes, title, xlabel, log2_x, table, x)


def line_panels(frame: pd.DataFrame, x: str, y: str, panel: str | None = None, line: str | None = None,
                units: str | None = None, dashed: str | None = None, title: str | None = None,
                xlabel: str | None = None, ylabel: str | None = None, log2_x: bool = False, sharey: bool = False):
    """``y`` against ``x``: one panel per value of ``panel``, one colour per value of ``line``
    (legend), several lines of that colour where ``units`` splits it (training seeds, as seaborn's
    ``units``), dashed where the boolean column ``dashed`` is true.

    >>> curves = pd.DataFrame({"step": [1, 2, 1, 2], "loss": [1.0, 0.5, 0.9, 0.6], "style": ["a"] * 4,
    ...                        "seed": [0, 0, 1, 1]})
    >>> axes = line_panels(curves, "step", "loss", line="style", units="seed").axes
    >>> len(axes[0].lines), len({l.get_color() for l in axes[0].lines}), axes[0].get_legend_handles_labels()[1]
    (2, 1, ['a'])
    """
    import matplotlib.pyplot as plt

    panels = _groups(frame, panel)
    figure, axes = _panels(len(panels), sharey=sharey)
    colours = {value: f"C{i}" for i, (value, _) in enumerate(_groups(frame, line))}
    for ax, (name, rows) in zip(axes, panels):
        for label, group in _groups(rows, line):
            for i, (_, points) in enumerate(_groups(group, units)):
                points = points.sort_values(x)
                ax.plot(points[x], points[y], color=colours[label], lw=0.9, marker="o" if len(points) < 12 else None,
                        linestyle="--" if dashed and points[dashed].iloc[0] else "-",
                        label=label if i == 0 and label is not None else None)
        ax.set_title(name or "", fontsize=8)
    axes[0].set_ylabel(y if ylabel is None else ylabel)
    plt.setp(axes, xlabel=xlabel or x)
    return _finish(figure, axes, title, None, log2_x, frame, x)


def bar_panels(frame: pd.DataFrame, x: str, columns: Mapping[str, str], log_columns: Sequence[str] = (),
               title: str | None = None):
    """One panel per ``columns`` entry (column -> axis label): the mean of that column per ``x``
    with a 95% interval over the rows (seeds), bootstrapped with a fixed seed so figures repeat."""
    import seaborn as sns

    figure, axes = _panels(len(columns), width=3.0)
    for ax, (column, label) in zip(axes, columns.items()):
        sns.barplot(frame, x=x, y=column, ax=ax, errorbar=("ci", 95), seed=0)
        ax.set_ylabel(label)
        ax.set_yscale("log" if column in log_columns else "linear")
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    return _finish(figure, axes, title, None, False, frame, x)


def heatmap(matrix: pd.DataFrame, title: str | None = None, fmt: str = ".2f", reverse: bool = False):
    """``matrix`` as annotated cells (rows and columns keep their labels); ``reverse`` makes low
    values bright (distances)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    figure, ax = plt.subplots(figsize=(1.0 * len(matrix.columns) + 1.6, 0.8 * len(matrix) + 1.0))
    sns.heatmap(matrix, annot=True, fmt=fmt, cmap="viridis_r" if reverse else "viridis", ax=ax, cbar=False)
    if title:
        ax.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def timings_figure(timings: pd.DataFrame, profile: str):
    """Horizontal bars of each notebook's last wall time over its longest recorded one (pale), bars
    of other profiles grey, or a figure that says no timings are recorded yet."""
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(5.5, 0.4 * max(len(timings), 3) + 0.8))
    if timings.empty:
        ax.text(0.5, 0.5, "no notebook timings recorded yet\n(run python -m lora_core.book)",
                ha="center", va="center", fontsize=9)
        ax.axis("off")
        return figure
    this_profile = timings["profile"] == profile
    ax.barh(timings["notebook"], timings["longest_wall_seconds"], color=["lightsteelblue" if p else "whitesmoke"
                                                                        for p in this_profile], label="longest")
    ax.barh(timings["notebook"], timings["wall_seconds"], color=["tab:blue" if p else "lightgrey" for p in this_profile],
            label="last")
    ax.invert_yaxis()
    ax.set_xlabel("wall time (s)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"notebook wall time: last execution over the longest recorded ({profile} profile in blue)",
                 fontsize=9)
    figure.tight_layout()
    return figure


def profile_figure(phases: pd.DataFrame, order: Sequence[str]):
    """Stacked horizontal bars: each notebook's wall time split into its phases (``order``, from
    :func:`lora_core.experiments.appendix.phase_order`), or a figure that says none is recorded."""
    import matplotlib.pyplot as plt

    notebooks = list(dict.fromkeys(phases["notebook"])) if not phases.empty else []
    figure, ax = plt.subplots(figsize=(6.5, 0.45 * max(len(notebooks), 3) + 1.2))
    if not notebooks:
        ax.text(0.5, 0.5, "no phase profile recorded yet\n(run python -m lora_core.book)", ha="center",
                va="center", fontsize=9)
        ax.axis("off")
        return figure
    seconds = phases.pivot_table(index="notebook", columns="phase", values="seconds", aggfunc="sum",
                                 fill_value=0.0).reindex(index=notebooks, columns=list(order), fill_value=0.0)
    left = np.zeros(len(notebooks))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(order), 2)))
    for phase, colour in zip(order, colours):
        ax.barh(notebooks, seconds[phase].to_numpy(), left=left, color="lightgrey" if phase == "other" else colour,
                label=phase)
        left += seconds[phase].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("where each notebook's time went (phases of lora_core.profiling)", fontsize=9)
    figure.tight_layout()
    return figure
