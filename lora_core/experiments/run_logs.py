"""Reading training runs' logs: per-epoch tables, the epoch of best validation loss, speed ratios.

A run's ``metrics.jsonl`` (``RunRecord.metrics()``) has one row per optimizer step with ``step``,
``loss`` and ``s_per_it`` (the step's wall seconds, validation excluded), and ``val_loss`` on the
steps where validation ran (every epoch end when a validation set is given). Speed is only ever
compared as a ratio of runs that ran one after the other on the same machine (ENVIRONMENT.md:
absolute seconds on shared cores vary 2-5x).

>>> rows = [{"step": s, "loss": 1.0 / s, "s_per_it": 0.5, **({"val_loss": 0.5 - s / 10} if s % 2 == 0 else {})}
...         for s in range(1, 7)]
>>> table = epoch_table(rows, steps_per_epoch=2).assign(method="lora", seed=0)
>>> best_epochs(table)[["best_epoch", "epochs", "rises_after_best"]].values.tolist()
[[3, 3, False]]
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd


def epoch_table(rows: Sequence[Mapping[str, Any]], steps_per_epoch: int) -> pd.DataFrame:
    """One row per epoch of a run's log: mean training loss, the validation loss logged at its
    end, median s/it and the seconds its steps took (validation excluded).

    >>> rows = [{"step": s, "loss": 1.0 / s, "s_per_it": 0.5} for s in range(1, 5)]
    >>> rows[1]["val_loss"], rows[3]["val_loss"] = 0.4, 0.3
    >>> epoch_table(rows, 2).round(4).values.tolist()
    [[1.0, 0.75, 0.4, 0.5, 1.0], [2.0, 0.2917, 0.3, 0.5, 1.0]]
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        raise ValueError("epoch_table: the run's log has no steps")
    if "val_loss" not in frame:
        frame["val_loss"] = float("nan")
    frame["epoch"] = (frame["step"] - 1) // steps_per_epoch + 1
    grouped = frame.groupby("epoch", sort=True)
    table = pd.DataFrame({"train_loss": grouped["loss"].mean(), "val_loss": grouped["val_loss"].last(),
                          "s_per_it": grouped["s_per_it"].median(), "train_s": grouped["s_per_it"].sum()})
    return table.reset_index()


def best_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, seed) run of ``epochs`` (:func:`epoch_table` rows with ``method`` and
    ``seed``): the epoch of lowest validation loss (the first, on ties), the loss there and at the
    last epoch, the rise after the best relative to it, and whether the loss rose after it.

    >>> runs = pd.DataFrame({"method": ["ti"] * 3, "seed": [0] * 3, "epoch": [1, 2, 3], "val_loss": [0.3, 0.2, 0.25]})
    >>> best_epochs(runs)[["best_epoch", "epochs", "rise_after_best", "rises_after_best"]].values.tolist()
    [[2, 3, 0.25, True]]
    """
    rows = []
    for (method, seed), run in epochs.dropna(subset=["val_loss"]).groupby(["method", "seed"], sort=False):
        run = run.sort_values("epoch")
        best, last = run.loc[run["val_loss"].idxmin()], run.iloc[-1]
        rows.append({"method": method, "seed": seed, "epochs": int(last["epoch"]), "best_epoch": int(best["epoch"]),
                     "best_val_loss": float(best["val_loss"]), "final_val_loss": float(last["val_loss"]),
                     "rise_after_best": float(last["val_loss"] / best["val_loss"] - 1.0),
                     "rises_after_best": bool(last["val_loss"] > best["val_loss"])})
    return pd.DataFrame(rows, columns=["method", "seed", "epochs", "best_epoch", "best_val_loss", "final_val_loss",
                                       "rise_after_best", "rises_after_best"])


def median_seconds_per_step(rows: Sequence[Mapping[str, Any]], warmup: int = 1) -> float:
    """Median ``s_per_it`` of a run's steps after the first ``warmup`` (which pay one-time
    allocation and kernel selection).

    >>> median_seconds_per_step([{"s_per_it": v} for v in (3.0, 1.0, 2.0, 1.5)])
    1.5
    """
    seconds = [row["s_per_it"] for row in rows][warmup:]
    if not seconds:
        raise ValueError(f"median_seconds_per_step: the run has {len(rows)} steps, none after {warmup} warm-up")
    return float(np.median(seconds))


def speed_ratios(timing: pd.DataFrame, ratios: Mapping[str, tuple[str, str]]) -> pd.DataFrame:
    """``{name: (numerator, denominator)}`` ratios of the ``s_per_it`` of ``timing``'s variants
    within each ``round`` (runs that ran one after the other), then their mean over rounds with a
    95% t-interval (none with one round).

    >>> timing = pd.DataFrame({"variant": ["a", "b"] * 3, "round": [0, 0, 1, 1, 2, 2],
    ...                        "s_per_it": [2.0, 1.0, 3.0, 1.0, 2.5, 1.0]})
    >>> row = speed_ratios(timing, {"a_over_b": ("a", "b")}).iloc[0]
    >>> float(row.value), round(float(row.ci_low), 3), round(float(row.ci_high), 3), int(row.rounds)
    (2.5, 1.258, 3.742, 3)
    """
    from lora_core.metrics.stats import MetricResult, aggregate_over_seeds

    by_round = timing.pivot_table(index="round", columns="variant", values="s_per_it")
    rows = []
    for name, (numerator, denominator) in ratios.items():
        missing = [v for v in (numerator, denominator) if v not in by_round]
        if missing:
            raise ValueError(f"speed_ratios: no timing runs of {missing} (variants: {list(by_round.columns)})")
        values = (by_round[numerator] / by_round[denominator]).dropna()
        merged = aggregate_over_seeds([MetricResult(name, "wall clock", 1, float(v), float(v), float(v))
                                       for v in values])
        rows.append({"ratio": name, "value": merged.value, "ci_low": merged.ci_low, "ci_high": merged.ci_high,
                     "rounds": len(values)})
    return pd.DataFrame(rows)
