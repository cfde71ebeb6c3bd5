"""Chapter 8's runs over training seeds: costs and loss curves with intervals, gaps between ranks
paired by seed, and study S5's reported cost beside ours.

Every run of a rank is repeated with several training seeds; the same seed draws the same images
in the same order and the same noise at every rank, so two ranks are compared seed by seed
(:func:`paired_gap`): a difference's or a ratio's mean over seeds with a 95% t-interval (a ratio
on the log scale, so its interval stays positive).

>>> model_label(64), s5_setting(16), s5_setting(64, "abstract")
('rank 64', 'rank16_alpha32', 'rank64_abstract')
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from scipy import stats as scipy_stats

from lora_core.metrics.stats import MetricResult, aggregate_over_seeds

NOT_MEASURED = "not measured in this build"
S5_ALPHA_PER_RANK = 2.0             # alpha = 2 x rank, so the scale alpha / rank is 2 at every rank
TRAINING_STATE_BYTES = 16           # per trainable parameter: fp32 weight, gradient and AdamW's two moments
LOSS_WINDOW = 20                    # steps in the rolling mean of the training-loss curves
DIVERGED_FACTOR = 2.0               # final training loss this many times the starting loss: the run diverged
COST_MEASURES = {"final_loss": "final training loss (last 10% of steps)",
                 "final_val_loss": "validation loss (held-out images, fixed noise)",
                 "train_time_s": "training time (s, the steps alone)", "s_per_step": "seconds per step",
                 "wall_time_s": "wall time (s, steps and validation)",
                 "state_memory_mb": "training state (MB, 16 bytes a parameter)",
                 "peak_memory_mb": "peak memory as recorded (MB)", "file_mb": "exported file (MB)",
                 "trainable_params": "trainable parameters"}


def model_label(rank: int) -> str:
    return f"rank {rank}"


def run_costs(records: dict[tuple[str, int], Any]) -> pd.DataFrame:
    """One row per run: trainable parameters, the training loss at the start (mean of the first 10%
    of steps) and at the end, the validation loss, wall time, s/step, peak memory as recorded
    (process RSS on a CPU: the process's peak so far), the training state the parameters need
    (:data:`TRAINING_STATE_BYTES` each) and the exported file's size."""
    from lora_core.experiments.methods import export_bytes, primary_export

    rows = []
    for (model, seed), record in records.items():
        s = record.summary
        metrics = record.metrics()
        train_time = sum(row["s_per_it"] for row in metrics)   # the steps alone, without validation
        first = metrics[:max(1, len(metrics) // 10)]
        rows.append({"model": model, "seed": seed, "trainable_params": s["trainable_params"],
                     "start_loss": sum(row["loss"] for row in first) / len(first),
                     "final_loss": s["final_loss"], "final_val_loss": s["final_val_loss"],
                     "wall_time_s": s["wall_time_s"], "train_time_s": train_time,
                     "s_per_step": train_time / max(1, s["steps"]),
                     "peak_memory_mb": s["peak_memory_bytes"] / 2**20, "peak_memory_kind": s["peak_memory_kind"],
                     "state_memory_mb": s["trainable_params"] * TRAINING_STATE_BYTES / 2**20,
                     "file_mb": export_bytes(primary_export(record)) / 2**20})
    return pd.DataFrame(rows)


def diverged_text(costs: pd.DataFrame, factor: float = DIVERGED_FACTOR) -> str:
    """Per model, how many runs ended with a training loss at least ``factor`` times their starting
    loss, naming each such seed: a run that lost the base drags its rank's mean loss and every gap
    paired with it.

    >>> diverged_text(pd.DataFrame({"model": ["rank 16", "rank 16", "rank 64", "rank 64"], "seed": [0, 1, 0, 1],
    ...                             "start_loss": [0.2, 0.21, 0.2, 0.21], "final_loss": [0.13, 0.18, 0.23, 1.01]}))
    'rank 16: 0 of 2 runs; rank 64: 1 of 2 runs (seed 1: 0.21 -> 1.01)'
    """
    parts = []
    for model, runs in costs.groupby("model", sort=False):
        diverged = runs[runs["final_loss"] >= factor * runs["start_loss"]]
        named = ", ".join(f"seed {r.seed}: {r.start_loss:.2f} -> {r.final_loss:.2f}" for r in diverged.itertuples())
        parts.append(f"{model}: {len(diverged)} of {len(runs)} runs" + (f" ({named})" if named else ""))
    return "; ".join(parts)


def over_seeds(rows: pd.DataFrame, by: Sequence[str], measures: dict[str, str]) -> pd.DataFrame:
    """Mean of each measure column per ``by`` group with a 95% t-interval over the rows (seeds);
    a single row keeps its value as interval (``n_seeds`` says so)."""
    out = []
    for key, group in rows.groupby(list(by), sort=False):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for column, name in measures.items():
            values = group[column].dropna().astype(float)
            if values.empty:
                continue
            merged = aggregate_over_seeds([MetricResult(name, "-", 1, v, v, v) for v in values])
            out.append({**labels, "measure": column, "metric": name, "value": merged.value,
                        "ci_low": merged.ci_low, "ci_high": merged.ci_high, "n_seeds": len(values)})
    return pd.DataFrame(out)


def paired_gap(rows: pd.DataFrame, column: str, first: str, second: str, ratio: bool = False) -> MetricResult:
    """``first`` minus ``second`` of ``column``, paired by training seed (the same seed draws the
    same data order and noise), mean over seeds with a 95% t-interval; with ``ratio``, ``first``
    over ``second``: the geometric mean of the per-seed ratios, its t-interval taken on the log
    scale (so it stays positive).

    >>> rows = pd.DataFrame({"model": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "loss": [1.0, 2.0, 4.0, 2.0]})
    >>> gap, ratio = paired_gap(rows, "loss", "a", "b"), paired_gap(rows, "loss", "a", "b", ratio=True)
    >>> gap.value, gap.n, round(ratio.value, 3)
    (-1.5, 2, 0.5)
    """
    wide = rows.pivot_table(index="seed", columns="model", values=column, aggfunc="first")
    if first not in wide or second not in wide:
        raise ValueError(f"paired_gap: {column} is missing for {first!r} or {second!r}")
    pairs = wide[[first, second]].dropna()
    values = np.log(pairs[first] / pairs[second]) if ratio else pairs[first] - pairs[second]
    name = f"{column}: {first} {'/' if ratio else '-'} {second}"
    merged = aggregate_over_seeds([MetricResult(name, "-", 1, float(v), float(v), float(v)) for v in values])
    bounds = (merged.value, merged.ci_low, merged.ci_high)
    value, low, high = (math.exp(b) for b in bounds) if ratio else bounds
    return MetricResult(name, "-", len(values), value, low, high, merged.note)


def result_text(result: MetricResult | None, digits: int = 3) -> str:
    """``value [low, high]`` (the form chapter 9 reads), or :data:`NOT_MEASURED`."""
    from lora_core.experiments.evaluate import ci_text

    return NOT_MEASURED if result is None else ci_text(result.value, result.ci_low, result.ci_high, digits)


def loss_curves(records: dict[tuple[str, int], Any], window: int = LOSS_WINDOW) -> pd.DataFrame:
    """Per model and step: the training loss (rolling mean over ``window`` steps of each run), mean
    over seeds with a 95% t-interval (``value``, ``ci_low``, ``ci_high``; the value alone for one seed)."""
    runs = [pd.DataFrame({"model": model, "seed": seed, "step": metrics["step"],
                          "loss": metrics["loss"].rolling(window, min_periods=1).mean()})
            for (model, seed), record in records.items() if not (metrics := pd.DataFrame(record.metrics())).empty]
    if not runs:
        return pd.DataFrame(columns=["model", "step", "value", "ci_low", "ci_high", "n_seeds"])
    stats = pd.concat(runs).groupby(["model", "step"], sort=False)["loss"].agg(["mean", "std", "count"]).reset_index()
    half = (scipy_stats.t.ppf(0.975, (stats["count"] - 1).clip(lower=1)) * stats["std"].fillna(0.0)
            / np.sqrt(stats["count"])).where(stats["count"] > 1, 0.0)
    return pd.DataFrame({"model": stats["model"], "step": stats["step"], "value": stats["mean"],
                         "ci_low": stats["mean"] - half, "ci_high": stats["mean"] + half, "n_seeds": stats["count"]})


def s5_setting(rank: int, suffix: str | None = None) -> str:
    """S5's row name in ``reported_tables.csv``.

    >>> s5_setting(16), s5_setting(64, "abstract")
    ('rank16_alpha32', 'rank64_abstract')
    """
    return f"rank{rank}_{suffix}" if suffix else f"rank{rank}_alpha{int(S5_ALPHA_PER_RANK * rank)}"


S5_COST_COLUMNS = (("final_loss", "final_loss", "final loss"), ("runtime_s", "train_time_s", "runtime (s)"),
                   ("peak_mem_GB", "state_memory_mb", "memory (S5: peak GB; ours: training state MB)"),
                   ("file_MB", "file_mb", "file (MB)"))


def s5_cost_table(cost_summary: pd.DataFrame, ranks: Sequence[int], reported: pd.DataFrame) -> pd.DataFrame:
    """Per rank: S5's reported cost (their data, their GPU, one seed) beside ours (mean [95% interval])."""
    from lora_core.experiments.evaluate import ci_text

    rows = []
    for rank in ranks:
        theirs = reported[reported["setting"] == s5_setting(rank)].set_index("metric")["value"]
        ours = cost_summary[cost_summary["model"] == model_label(rank)].set_index("measure")
        row: dict[str, Any] = {"rank": rank}
        for s5_metric, measure, name in S5_COST_COLUMNS:
            row[f"S5 {name}"] = theirs.get(s5_metric, "-")
            measured = measure in ours.index
            row[f"ours: {name}"] = ci_text(*ours.loc[measure, ["value", "ci_low", "ci_high"]]) if measured else "-"
        rows.append(row)
    return pd.DataFrame(rows)
