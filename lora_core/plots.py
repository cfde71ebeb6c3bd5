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


def reference_line(figure, value: float, label: str, axis: int = 0):
    """A dotted horizontal line at ``value`` on panel ``axis`` of ``figure``, in its legend: a
    reported number beside measured ones.

    >>> figure = interval_panels(pd.DataFrame({"panel": ["FD"], "n": [28], "value": [2.0], "ci_low": [1.0],
    ...                                        "ci_high": [3.0]}), "n")
    >>> reference_line(figure, 2.5, "reported").axes[0].get_legend_handles_labels()[1]
    ['reported']
    """
    ax = figure.axes[axis]
    ax.axhline(value, color="black", linestyle=":", lw=1, label=label)
    ax.legend(fontsize=6)
    return figure


STEP_SIZE_PANELS = {"d": "Prodigy's estimate d", "step_size": "step: d x lr (Prodigy), lr (AdamW)"}


def step_size_figure(curves: pd.DataFrame, title: str | None = None):
    """Step sizes over training, on a log scale: Prodigy's estimate ``d`` and the per-coordinate
    step ``step_size`` both Adam-type optimizers take; one colour per ``arm``, one line per
    ``seed`` (``line_panels``). Runs without a ``d`` (AdamW) appear in the second panel only.

    >>> curves = pd.DataFrame({"arm": ["p", "p", "a", "a"], "seed": 0, "step": [1, 2, 1, 2],
    ...                        "d": [1e-6, 1e-4, None, None], "step_size": [1e-6, 1e-4, 1e-3, 1e-3]})
    >>> [ax.get_yscale() for ax in step_size_figure(curves).axes]
    ['log', 'log']
    """
    frame = curves.melt(id_vars=["arm", "seed", "step"], value_vars=list(STEP_SIZE_PANELS), var_name="quantity")
    frame = frame.dropna(subset=["value"]).assign(quantity=lambda f: f["quantity"].map(STEP_SIZE_PANELS))
    figure = line_panels(frame, "step", "value", panel="quantity", line="arm", units="seed", title=title,
                         ylabel="step size")
    for ax in figure.axes:
        ax.set_yscale("log")
    return figure


def inverse_size_figure(points: pd.DataFrame, fits: pd.DataFrame, ylabel: str = "FD", title: str | None = None):
    """Chong & Forsyth's extrapolation drawn: per ``case`` and ``draw``, the measured values
    against 1/m (mean over draws at each m), the fitted line ``fd_inf + slope / m`` down to
    1/m = 0 and there the intercept with its 95% interval (``ci_low``, ``ci_high``).

    >>> fits = pd.DataFrame({"case": ["a"], "draw": [0], "fd_inf": [1.0], "slope": [10.0], "ci_low": [0.5],
    ...                      "ci_high": [1.5]})
    >>> points = pd.DataFrame({"case": ["a"] * 2, "draw": [0, 0], "m": [10, 20], "fd": [2.0, 1.5]})
    >>> inverse_size_figure(points, fits).axes[0].get_xlabel()
    '1 / m (generated images)'
    """
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.0, 3.6))
    colours = {case: f"C{i}" for i, case in enumerate(dict.fromkeys(fits["case"]))}
    for (case, draw), fit in fits.groupby(["case", "draw"], sort=False):
        row = fit.iloc[0]
        measured = points[(points["case"] == case) & (points["draw"] == draw)].groupby("m")["fd"].mean()
        inverse = 1.0 / measured.index.to_numpy(dtype=float)
        ax.plot(inverse, measured.to_numpy(), "o", ms=3, color=colours[case], label=case if draw == 0 else None)
        line = np.linspace(0.0, inverse.max(), 20)
        ax.plot(line, row["fd_inf"] + row["slope"] * line, "-", lw=0.8, color=colours[case])
        ax.errorbar([0.0], [row["fd_inf"]], yerr=[[max(0.0, row["fd_inf"] - row["ci_low"])],
                                                  [max(0.0, row["ci_high"] - row["fd_inf"])]],
                    color=colours[case], capsize=3, marker="_")
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("1 / m (generated images)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def band_panels(frame: pd.DataFrame, x: str, panel: str | None = None, line: str | None = None,
                title: str | None = None, xlabel: str | None = None, ylabel: str | None = None):
    """``value`` against ``x`` as a line with its 95% interval (``ci_low``, ``ci_high``) as a band:
    one panel per value of ``panel``, one colour per value of ``line`` (legend). For curves with
    many points (loss over steps), where :func:`interval_panels`' error bars would crowd.

    >>> curves = pd.DataFrame({"step": [1, 2, 1, 2], "value": [1.0, 0.5, 0.9, 0.6], "ci_low": [0.8, 0.4, 0.8, 0.5],
    ...                        "ci_high": [1.2, 0.6, 1.0, 0.7], "rank": ["r16", "r16", "r64", "r64"]})
    >>> axes = band_panels(curves, "step", line="rank").axes
    >>> len(axes[0].lines), len(axes[0].collections), axes[0].get_legend_handles_labels()[1]
    (2, 2, ['r16', 'r64'])
    """
    panels = _groups(frame, panel)
    figure, axes = _panels(len(panels), width=3.6 if len(panels) > 1 else 5.0)
    for ax, (name, rows) in zip(axes, panels):
        for label, points in _groups(rows, line):
            points = points.sort_values(x)
            drawn = ax.plot(points[x], points["value"], lw=1.0, label=label)[0]
            ax.fill_between(points[x], points["ci_low"], points["ci_high"], color=drawn.get_color(), alpha=0.2, lw=0)
        ax.set_title(name or "", fontsize=8)
        if ylabel:
            ax.set_ylabel(ylabel)
    return _finish(figure, axes, title, xlabel or x, False, frame, x)


def histogram_panels(frame: pd.DataFrame, value: str, panel: str, reference: str, threshold: float | None = None,
                     title: str | None = None, xlabel: str | None = None, bins: int = 30):
    """One panel per value of ``panel`` except ``reference``: the distribution of ``value`` (density),
    over the reference rows' distribution in grey, with a dashed vertical line at ``threshold``.

    >>> rows = pd.DataFrame({"who": ["real"] * 3 + ["model"] * 3, "cos": [0.1, 0.2, 0.3, 0.2, 0.4, 0.9]})
    >>> figure = histogram_panels(rows, "cos", "who", reference="real", threshold=0.5)
    >>> [ax.get_title() for ax in figure.axes], figure.axes[0].get_legend_handles_labels()[1]
    (['model'], ['real', 'model', 'threshold 0.5'])
    """
    groups = [(name, rows) for name, rows in _groups(frame, panel) if name != reference]
    figure, axes = _panels(len(groups), width=3.0 if len(groups) > 1 else 4.5, sharey=True)
    edges = np.histogram_bin_edges(frame[value].dropna(), bins=bins)
    background = frame.loc[frame[panel] == reference, value]
    for ax, (name, rows) in zip(axes, groups):
        ax.hist(background, bins=edges, density=True, color="lightgrey", label=str(reference))
        ax.hist(rows[value], bins=edges, density=True, histtype="step", lw=1.4, label=str(name))
        if threshold is not None:
            ax.axvline(threshold, color="black", ls="--", lw=0.8, label=f"threshold {_fmt(threshold)}")
        ax.set_title(str(name), fontsize=8)
    axes[0].set_ylabel("density")
    return _finish(figure, axes, title, xlabel or value, False, frame, value)


def stacked_bars(counts: pd.DataFrame, label: str, title: str | None = None, xlabel: str = "count",
                 colours: Mapping[str, str] | None = None):
    """One horizontal bar per row of ``counts`` (named by its ``label`` column), stacked from the
    other columns in their order (the legend, below the bars; ``colours`` by column name):
    verdict counts per study, for instance.

    >>> counts = pd.DataFrame({"study": ["S1", "S2"], "confirmed": [2, 0], "not confirmed": [1, 3]})
    >>> figure = stacked_bars(counts, "study", colours={"confirmed": "tab:green"})
    >>> len(figure.axes[0].patches), figure.axes[0].get_legend_handles_labels()[1]
    (4, ['confirmed', 'not confirmed'])
    """
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.0, 0.45 * max(len(counts), 2) + 1.6))
    left = np.zeros(len(counts))
    for column in [c for c in counts.columns if c != label]:
        values = counts[column].to_numpy(dtype=float)
        ax.barh(counts[label].astype(str), values, left=left, label=str(column), color=(colours or {}).get(column))
        left += values
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=4, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def shade_span(figure, low: float, high: float, label: str):
    """Shade ``low..high`` along the x axis of every panel of ``figure`` (a range a study reported,
    e.g. S3's best LoRA weights), named once in the first panel's legend; returns the figure.

    >>> rows = pd.DataFrame({"weight": [0.0, 1.0], "value": [1.0, 2.0], "ci_low": [0.5, 1.5], "ci_high": [1.5, 2.5]})
    >>> figure = shade_span(interval_panels(rows, "weight", panel=None), 0.5, 0.75, "S3's best")
    >>> figure.axes[0].get_legend_handles_labels()[1]
    ["S3's best"]
    """
    for index, ax in enumerate(figure.axes):
        ax.axvspan(low, high, color="gold", alpha=0.25, zorder=0, label=label if index == 0 else None)
    figure.axes[0].legend(fontsize=6)
    return figure


def marked_line_panels(frame: pd.DataFrame, x: str, y: str, panel: str, line: str, units: str | None,
                       marks: pd.DataFrame, title: str | None = None, xlabel: str | None = None,
                       ylabel: str | None = None):
    """:func:`line_panels` with a star at every row of ``marks`` (columns ``panel``, ``line``, ``x``
    and ``y`` named as for ``frame``) in its line's colour: each run's best epoch on its curve.

    >>> curves = pd.DataFrame({"epoch": [1, 2, 3] * 2, "loss": [3.0, 2.0, 2.5, 3.0, 2.5, 2.0],
    ...                        "method": ["TI"] * 3 + ["LoRA"] * 3, "kind": ["val"] * 6})
    >>> best = pd.DataFrame({"epoch": [2, 3], "loss": [2.0, 2.0], "method": ["TI", "LoRA"], "kind": ["val"] * 2})
    >>> axis = marked_line_panels(curves, "epoch", "loss", "kind", "method", None, best).axes[0]
    >>> [(l.get_marker(), l.get_color()) for l in axis.lines[2:]]
    [('*', 'C0'), ('*', 'C1')]
    """
    figure = line_panels(frame, x, y, panel=panel, line=line, units=units, title=title, xlabel=xlabel, ylabel=ylabel)
    axes = {ax.get_title(): ax for ax in figure.axes}
    colours = {value: f"C{i}" for i, (value, _) in enumerate(_groups(frame, line))}
    for _, mark in marks.iterrows():
        axes[str(mark[panel])].plot([mark[x]], [mark[y]], marker="*", markersize=11, markeredgecolor="black",
                                    color=colours[mark[line]], linestyle="none")
    return figure


def proportion_panels(table: pd.DataFrame, row: str, panel: str = "question", title: str | None = None):
    """One panel per ``panel`` value (a study's question): per ``row`` (which analysis), the share
    ``proportion`` as a point, its Wilson interval over answers (thin) and its participant-level
    cluster interval (thick), and the share a random answerer gives (``chance``, dashed).

    >>> rows = pd.DataFrame({"question": ["buy", "buy"], "analysis": ["reported", "SIMULATED"],
    ...                      "proportion": [0.9, 0.85], "wilson_low": [0.79, 0.8], "wilson_high": [0.96, 0.9],
    ...                      "cluster_low": [0.8, 0.7], "cluster_high": [0.97, 0.95], "chance": [0.5, 0.5]})
    >>> axis = proportion_panels(rows, "analysis").axes[0]
    >>> axis.get_title(), [t.get_text() for t in axis.get_yticklabels()]
    ('buy', ['reported', 'SIMULATED'])
    """
    panels = _groups(table, panel)
    figure, axes = _panels(len(panels), width=3.4, height=0.5 * table[row].nunique() + 1.4, sharey=True)
    for ax, (name, rows) in zip(axes, panels):
        positions = np.arange(len(rows))
        ax.hlines(positions, rows["wilson_low"], rows["wilson_high"], color="C0", linewidth=1, label="Wilson (answers)")
        ax.hlines(positions, rows["cluster_low"], rows["cluster_high"], color="C0", linewidth=4, alpha=0.45,
                  label="cluster bootstrap (participants)")
        ax.plot(rows["proportion"], positions, "o", color="C0")
        ax.axvline(rows["chance"].iloc[0], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_yticks(positions, labels=list(rows[row]))
        ax.set_xlim(0, 1)
        ax.set_title(str(name), fontsize=8)
        ax.set_xlabel("share of answers")
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=6, loc="lower left")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _error_bars(points: pd.DataFrame, column: str) -> np.ndarray:
    """(2, N) distances from ``column`` to its ``_low`` and ``_high`` ends for ``errorbar``; an end
    that is infinite or missing (an unbounded interval) draws no bar on that side."""
    value = points[column].to_numpy(dtype=float)
    ends = np.stack([value - points[f"{column}_low"].to_numpy(dtype=float),
                     points[f"{column}_high"].to_numpy(dtype=float) - value])
    return np.where(np.isfinite(ends), np.clip(ends, 0.0, None), 0.0)


def tradeoff_figure(points: pd.DataFrame, x: str = "subject_lost", y: str = "style_gained", label: str = "label",
                    hue: str | None = "arm", xlabel: str | None = None, ylabel: str | None = None,
                    title: str | None = None, x_guide: tuple[float, str] | None = None,
                    y_guide: tuple[float, str] | None = None):
    """One point per row: ``y`` against ``x`` with both 95% intervals as error bars (columns
    ``<x>_low``, ``<x>_high``, ``<y>_low``, ``<y>_high``), the row's ``label`` text beside it, one
    colour per ``hue`` value (legend); dotted guide lines at ``x_guide`` and ``y_guide``, each a
    ``(value, legend text)`` pair (a target's bounds).

    >>> points = pd.DataFrame({"label": ["r8", "r16"], "arm": ["fixed", "tied"], "subject_lost": [0.2, 0.05],
    ...                        "subject_lost_low": [0.1, 0.0], "subject_lost_high": [0.3, 0.1],
    ...                        "style_gained": [0.8, 0.4], "style_gained_low": [0.6, -np.inf],
    ...                        "style_gained_high": [1.0, 0.5]})
    >>> axis = tradeoff_figure(points, x_guide=(0.1, "at most 0.1 lost"), y_guide=(0.75, "target")).axes[0]
    >>> [t.get_text() for t in axis.texts], axis.get_legend_handles_labels()[1]
    (['r8', 'r16'], ['at most 0.1 lost', 'target', 'fixed', 'tied'])
    """
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6.0, 4.2))
    for name, group in _groups(points, hue):
        ax.errorbar(group[x], group[y], xerr=_error_bars(group, x), yerr=_error_bars(group, y), marker="o",
                    linestyle="none", capsize=2, label=None if name is None else str(name))
        for _, row in group.iterrows():
            ax.annotate(str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    for guide, draw in ((x_guide, ax.axvline), (y_guide, ax.axhline)):
        if guide is not None:
            draw(guide[0], color="black", linestyle=":", lw=1, label=guide[1])
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure
