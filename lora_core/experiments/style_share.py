"""How far toward its style a LoRA gets, and whether the style judge can name it blind.

Both readings start from one tidy table of the style judge's verdict on every image of a
held-out evaluation set (:func:`judge_images`), one row per image: ``style`` (the style set
whose prompts made it), ``source`` (:data:`LORA` generations per training ``seed``, :data:`BASE`
generations of the same prompts and seeds, or :data:`TRUE`: the true target-style images of the
same subjects after the base's VAE, encode mean then decode, which is what a generation can at
best look like), ``subject``, ``p_style`` (the judge's P(target style)), ``named`` (the judge's
choice among the book's styles), ``target`` (the target style's class) and ``subject_hit``
(whether the subject classifier names the subject's category). Chapters add labels of their
own (a grid cell's rank and learning rate).

* :func:`gain_table`: per cell, the **share of the way** from the base to the truth,
  ``(P_LoRA - P_base) / (P_true - P_base)``, the plain gain ``P_LoRA - P_base`` and the subject
  accuracy lost (base minus LoRA), each with a 95% interval: a bootstrap over subjects within a
  training seed, the same resampled subjects in every term (the pairing), then a t-interval
  over seeds (:func:`~lora_core.metrics.stats.aggregate_over_seeds`, as the chapters aggregate
  every measure). :func:`target_verdicts` reads the issue's targets from it.
* :func:`blind_check_table`: the judge's accuracy at naming the style of LoRA generations,
  against the truth after the VAE (the ceiling) and the base's generations (the floor), with
  Wilson intervals.

>>> import numpy as np
>>> columns = np.array([[0.6, 0.2, 0.9], [0.4, 0.0, 0.7]])   # per subject: P_LoRA, P_base, P_true
>>> round(share_statistic(columns), 6)                       # (0.5 - 0.1) / (0.8 - 0.1)
0.571429
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.metrics.stats import MetricResult, aggregate_over_seeds, bootstrap_replicates, percentile_interval

LORA, BASE, TRUE = "lora", "base", "true"
SOURCE_NAMES = {TRUE: "true, after the VAE (ceiling)", LORA: "LoRA", BASE: "base (floor)"}
TARGET_SHARE = 0.75        # issue #15: a far style gets at least this share of the way ...
MAX_SUBJECT_LOSS = 0.10    # ... with subject accuracy at most 10 points below the base's ...
FLOAT_SLACK = 1e-9         # accuracies are counts over images: 0.34 - 0.24 is 10 points, not 10.000000000000002
TARGET_SEEDS = 3           # ... over 3 training seeds
NOT_MEASURED = float("nan")


# ---- pure arithmetic on per-subject columns ------------------------------------------------------

def share_statistic(columns: np.ndarray) -> float:
    """``(mean P_LoRA - mean P_base) / (mean P_true - mean P_base)`` of an (n subjects, 3) array
    whose columns are P_LoRA, P_base, P_true: a ratio of means, so one subject near the base's
    value cannot blow it up. Infinite (signed as P_LoRA - P_base) where the truth is judged no
    more in style than the base: there is no way to share."""
    lora, base, true = columns.mean(axis=0)
    if true <= base:
        return math.copysign(math.inf, lora - base)
    return float((lora - base) / (true - base))


def gain_statistic(columns: np.ndarray) -> float:
    """``mean(column 0) - mean(column 1)``: P_LoRA - P_base, or with hits base first, accuracy lost."""
    return float(columns[:, 0].mean() - columns[:, 1].mean())


def mean_statistic(columns: np.ndarray) -> float:
    """The mean of the first column."""
    return float(columns[:, 0].mean())


def seed_interval(columns_by_seed: Mapping[Any, np.ndarray], statistic: Callable[[np.ndarray], float], metric: str,
                  n_resamples: int = 1000, seed: int = 0) -> MetricResult:
    """``statistic`` of per-subject columns for every training seed with a 95% bootstrap interval
    over subjects (whole rows resampled, so every column sees the same subjects; every seed's
    bootstrap starts from generator seed ``seed``), then the mean over seeds with a t-interval;
    one seed keeps its bootstrap interval. A value that is not finite (no way to share) is NaN.

    >>> columns = {0: np.array([[1.0, 0.0], [3.0, 1.0]]), 1: np.array([[2.0, 0.0], [4.0, 1.0]])}
    >>> result = seed_interval(columns, gain_statistic, "gain")
    >>> result.value, round(result.ci_low, 3), round(result.ci_high, 3)   # seeds 1.5 and 2.5, t(1)
    (2.0, -4.353, 8.353)
    """
    per_seed = []
    for columns in columns_by_seed.values():
        value = statistic(columns)
        if not math.isfinite(value):
            return MetricResult(metric, "per subject", len(columns), NOT_MEASURED, NOT_MEASURED, NOT_MEASURED,
                                "not finite on the full sample")
        replicates = bootstrap_replicates(columns, statistic, n_resamples, torch.Generator().manual_seed(seed))
        per_seed.append(MetricResult(metric, "per subject", len(columns), value, *unbounded_percentiles(replicates),
                                     "bootstrap over subjects"))
    return per_seed[0] if len(per_seed) == 1 else aggregate_over_seeds(per_seed)


def unbounded_percentiles(replicates: np.ndarray) -> tuple[float, float]:
    """``stats.percentile_interval`` of replicates that may be infinite (a share whose resampled
    way has no length): an end among the infinite ones is infinite, not NaN (numpy interpolates
    inf - inf).

    >>> unbounded_percentiles(np.array([1.0] * 50 + [np.inf] * 950))
    (1.0, inf)
    """
    largest = np.finfo(np.float64).max
    with np.errstate(over="ignore", invalid="ignore"):
        ends = percentile_interval(np.clip(replicates, -largest, largest))
    return tuple(math.copysign(math.inf, end) if abs(end) >= largest else float(end) for end in ends)


def share_of_the_way(p_lora: Mapping[Any, np.ndarray], p_base: np.ndarray, p_true: np.ndarray,
                     n_resamples: int = 1000, seed: int = 0) -> MetricResult:
    """The share of the way from the base to the truth, ``(P_LoRA - P_base) / (P_true - P_base)``,
    with :func:`seed_interval`'s interval; ``p_lora`` maps a training seed to its per-subject
    P(style), aligned with ``p_base`` and ``p_true`` (the same subjects, in one order).

    >>> share = share_of_the_way({0: np.array([0.5, 0.3])}, np.array([0.1, 0.1]), np.array([0.9, 0.5]))
    >>> round(share.value, 6), share.n                 # (0.4 - 0.1) / (0.7 - 0.1)
    (0.5, 2)
    """
    for name, values in (("p_base", p_base), ("p_true", p_true), *((f"p_lora[{s}]", v) for s, v in p_lora.items())):
        if len(values) != len(p_base):
            raise ValueError(f"{name}: {len(values)} subjects, but p_base has {len(p_base)}: the three terms "
                             "must pair up subject by subject")
    columns = {s: np.column_stack([values, p_base, p_true]).astype(np.float64) for s, values in p_lora.items()}
    return seed_interval(columns, share_statistic, "share of the way", n_resamples, seed)


# ---- per cell: the share, the gain and the subject accuracy lost --------------------------------

def _column(rows: pd.DataFrame, subjects: Sequence[str], column: str, what: str) -> np.ndarray:
    """``rows[column]`` in the order of ``subjects`` (one row per subject, every subject present)."""
    values = rows.set_index("subject")[column]
    if values.index.duplicated().any():
        raise ValueError(f"judged: {what} has several rows for subject(s) "
                         f"{sorted(set(values.index[values.index.duplicated()]))[:5]}")
    missing = [s for s in subjects if s not in values.index]
    if missing:
        raise ValueError(f"judged: {what} has no row for subject(s) {missing[:5]}: the terms must pair up")
    return values.reindex(subjects).to_numpy(dtype=np.float64)


def _flat(name: str, result: MetricResult | None) -> dict[str, float]:
    values = (result.value, result.ci_low, result.ci_high) if result is not None else (NOT_MEASURED,) * 3
    return dict(zip((name, f"{name}_low", f"{name}_high"), values))


def cell_gains(lora: pd.DataFrame, base: pd.DataFrame, true: pd.DataFrame, n_resamples: int = 1000,
               seed: int = 0) -> dict[str, float]:
    """One cell's numbers from its judged rows (LoRA rows of one or more seeds, the base's and the
    truth's rows of the same subjects): ``p_base``, ``p_lora``, ``p_true``, ``share`` (of the
    way), ``gain`` (P_LoRA - P_base), ``subject_base``, ``subject_lora`` and ``subject_lost``
    (base minus LoRA accuracy), each with ``_low``/``_high``; NaN where not measured (no truth,
    no subject classifier); plus ``n_subjects`` and ``n_seeds``."""
    subjects = base["subject"].tolist()
    seeds = {s: rows for s, rows in lora.groupby("seed", sort=True)}
    p_base = _column(base, subjects, "p_style", "the base")
    p_lora = {s: _column(rows, subjects, "p_style", f"LoRA seed {s:g}") for s, rows in seeds.items()}
    interval = {"n_resamples": n_resamples, "seed": seed}
    results = {"p_base": seed_interval({0: p_base[:, None]}, mean_statistic, "P_base", **interval),
               "p_lora": seed_interval({s: v[:, None] for s, v in p_lora.items()}, mean_statistic, "P_LoRA",
                                       **interval),
               "gain": seed_interval({s: np.column_stack([v, p_base]) for s, v in p_lora.items()}, gain_statistic,
                                     "P_LoRA - P_base", **interval)}
    if len(true):
        p_true = _column(true, subjects, "p_style", "the truth")
        results["p_true"] = seed_interval({0: p_true[:, None]}, mean_statistic, "P_true", **interval)
        results["share"] = share_of_the_way(p_lora, p_base, p_true, **interval)
    hits_base = _column(base, subjects, "subject_hit", "the base")
    if not np.isnan(hits_base).any():
        hits = {s: _column(rows, subjects, "subject_hit", f"LoRA seed {s:g}") for s, rows in seeds.items()}
        results["subject_base"] = seed_interval({0: hits_base[:, None]}, mean_statistic, "accuracy", **interval)
        results["subject_lora"] = seed_interval({s: v[:, None] for s, v in hits.items()}, mean_statistic, "accuracy",
                                                **interval)
        results["subject_lost"] = seed_interval({s: np.column_stack([hits_base, v]) for s, v in hits.items()},
                                                gain_statistic, "accuracy lost", **interval)
    names = ("p_base", "p_lora", "p_true", "share", "gain", "subject_base", "subject_lora", "subject_lost")
    flat = {key: value for name in names for key, value in _flat(name, results.get(name)).items()}
    return {"n_subjects": len(subjects), "n_seeds": len(seeds), **flat}


def gain_table(judged: pd.DataFrame, cells: Sequence[str] = ("style",), n_resamples: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """:func:`cell_gains` per cell of ``judged``'s LoRA rows (a cell: one value of the ``cells``
    columns, which include ``style``), against the base's and the truth's rows of its style.
    Empty when nothing was judged (no style judge)."""
    if judged.empty:
        return pd.DataFrame()
    lora = judged[judged["source"] == LORA]
    rows = []
    for key, cell in lora.groupby(list(cells), sort=False):
        style = cell["style"].iloc[0]
        of_style = judged[judged["style"] == style]
        base, true = (of_style[of_style["source"] == source] for source in (BASE, TRUE))
        rows.append({**dict(zip(cells, key if isinstance(key, tuple) else (key,))),
                     **cell_gains(cell, base, true, n_resamples, seed)})
    return pd.DataFrame(rows)


# ---- the targets -------------------------------------------------------------------------

def target_text(distance: str) -> str:
    """The target a style is held to, by its distance from the base style (``world.STYLE_SETS``).

    >>> target_text("far")
    '>= 0.75 of the way, subject accuracy within 10 points of the base, 3 seeds'
    """
    if distance.startswith("far"):
        return (f">= {TARGET_SHARE:g} of the way, subject accuracy within {MAX_SUBJECT_LOSS * 100:.0f} points of "
                f"the base, {TARGET_SEEDS} seeds")
    return f"P(style) above the base's 95% interval, {TARGET_SEEDS} seeds"


def target_verdict(distance: str, share: float, subject_lost: float, p_lora: float, p_base_high: float,
                   n_seeds: int) -> tuple[bool, str]:
    """Whether a style meets issue #15's target, and why not. A far style: at least
    :data:`TARGET_SHARE` of the way (mean over seeds) with the subject accuracy at most
    :data:`MAX_SUBJECT_LOSS` below the base's; a near style: P_LoRA above the upper end of the
    base's 95% interval. Both over :data:`TARGET_SEEDS` seeds. A number not measured (NaN) fails.

    >>> target_verdict("far", 0.8, 0.05, 0.6, 0.2, 3)
    (True, 'met: 0.80 of the way, subject accuracy 5 points below the base')
    >>> target_verdict("far", 0.8, 0.34 - 0.24, 0.6, 0.2, 3)[0], target_verdict("far", 0.8, 0.34 - 0.2367, 0.6, 0.2, 3)
    (True, (False, 'not met: subject accuracy 10.3 points below the base (at most 10)'))
    >>> target_verdict("near", 0.1, 0.0, 0.25, 0.3, 2)
    (False, "not met: P(style) 0.25 not above the base's interval (up to 0.30); 2 seed(s), the target asks for 3")
    """
    shortfalls, lost_points = [], f"{subject_lost * 100:.1f}".removesuffix(".0")
    if distance.startswith("far"):
        reading = f"{share:.2f} of the way, subject accuracy {lost_points} points below the base"
        if not share >= TARGET_SHARE:
            shortfalls.append(f"{share:.2f} of the way (target {TARGET_SHARE:g})" if np.isfinite(share)
                              else "no share of the way measured")
        if not subject_lost <= MAX_SUBJECT_LOSS + FLOAT_SLACK:
            shortfalls.append(f"subject accuracy {lost_points} points below the base (at most "
                              f"{MAX_SUBJECT_LOSS * 100:.0f})" if np.isfinite(subject_lost)
                              else "subject accuracy not measured")
    else:
        reading = f"P(style) {p_lora:.2f} above the base's interval (up to {p_base_high:.2f})"
        if not p_lora > p_base_high:
            shortfalls.append(f"P(style) {p_lora:.2f} not above the base's interval (up to {p_base_high:.2f})")
    if n_seeds < TARGET_SEEDS:
        shortfalls.append(f"{n_seeds} seed(s), the target asks for {TARGET_SEEDS}")
    return (False, "not met: " + "; ".join(shortfalls)) if shortfalls else (True, f"met: {reading}")


def target_verdicts(gains: pd.DataFrame, distances: Mapping[str, str]) -> pd.DataFrame:
    """``gains`` (one row per style, :func:`gain_table`) with ``target``, ``meets_target`` and
    ``verdict`` (:func:`target_verdict`); ``distances`` maps a style to "near" or "far"."""
    if gains.empty:
        return gains
    verdicts = [target_verdict(distances[r.style], r.share, r.subject_lost, r.p_lora, r.p_base_high, r.n_seeds)
                for r in gains.itertuples()]
    return gains.assign(target=[target_text(distances[s]) for s in gains["style"]],
                        meets_target=[met for met, _ in verdicts], verdict=[text for _, text in verdicts])


# ---- the blind check -----------------------------------------------------------------------------

def judged_styles(probabilities: Any, classes: Sequence[str], among: Sequence[str]) -> list[str]:
    """The judge's choice per image, restricted to the classes ``among`` (the book's styles, the
    base style included): the argmax of its probabilities over those columns only.

    >>> judged_styles([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]], ["noto", "other", "twemoji"], ["twemoji", "noto"])
    ['noto', 'twemoji']
    """
    missing = [c for c in among if c not in classes]
    if missing:
        raise ValueError(f"among: {missing} are not classes of the style judge ({', '.join(classes)})")
    columns = [list(classes).index(c) for c in among]
    picks = torch.as_tensor(probabilities)[:, columns].argmax(-1)
    return [among[i] for i in picks.tolist()]


def blind_check_table(judged: pd.DataFrame, n_classes: int) -> pd.DataFrame:
    """Per style and source (truth after the VAE, LoRA, base): how often the judge names the
    target style (``value``), with a 95% Wilson interval (``ci_low``, ``ci_high``) over the images
    (for the LoRA, its seeds' images pooled: ``per_seed`` lists each seed's share), and
    ``chance``, 1 / ``n_classes``. Empty when nothing was judged."""
    from lora_core.metrics.proportions import wilson_interval

    if judged.empty:
        return pd.DataFrame()
    order = {source: i for i, source in enumerate(SOURCE_NAMES)}
    rows = []
    for (style, source), group in judged.groupby(["style", "source"], sort=False):
        hits = (group["named"] == group["target"]).astype(float)
        low, high = wilson_interval(int(hits.sum()), len(hits))
        per_seed = hits.groupby(group["seed"]).mean() if source == LORA else pd.Series(dtype=float)
        rows.append({"style": style, "source": SOURCE_NAMES[source], "_order": order[source], "n": len(hits),
                     "correct": int(hits.sum()), "value": float(hits.mean()), "ci_low": low, "ci_high": high,
                     "per_seed": ", ".join(f"{v:.2f}" for v in per_seed), "chance": 1.0 / n_classes})
    table = pd.DataFrame(rows)
    styles = {style: i for i, style in enumerate(dict.fromkeys(table["style"]))}
    return (table.assign(_style=table["style"].map(styles)).sort_values(["_style", "_order"], kind="stable")
            .drop(columns=["_style", "_order"]).reset_index(drop=True))


# ---- judging images (models) ----------------------------------------------------------------------

def round_trips(base, images: torch.Tensor, cache: Any = None) -> torch.Tensor:
    """uint8 ``images`` through ``base``'s VAE (encode to the latent mean, decode:
    ``metrics.train_heads.vae_reconstruct``), cached by content and the base's weights in
    ``cache`` (a ``FeatureCache``), so a chapter rebuilt on the same base decodes nothing."""
    from types import SimpleNamespace

    from lora_core.metrics.train_heads import vae_reconstruct
    from lora_core.models import base_fingerprint

    device = next(base.vae.parameters()).device

    def decode(batch: torch.Tensor) -> torch.Tensor:
        return vae_reconstruct(base.vae)(batch.to(device)).cpu()

    if cache is None:
        return decode(images)
    return cache.get_or_compute(SimpleNamespace(name=f"vae-round-trip-{base_fingerprint(base)[:16]}"), images,
                                "round-trip", decode)


def judge_images(evaluator, images: torch.Tensor, subject_keys: Sequence[str], target_style: str,
                 among: Sequence[str], labels: Mapping[str, Any], subjects: bool = True) -> pd.DataFrame:
    """The judged rows (see the module's doc) of ``images`` of ``subject_keys`` for
    ``target_style``: ``evaluator``'s style judge's P(target) and its choice ``among`` the given
    styles (style-set or vendor names), and with ``subjects`` whether the subject classifier
    names each subject's category (else NaN). Empty without a style judge."""
    from lora_core.world import style_vendor

    judge = evaluator.style_classifier
    if judge is None:
        return pd.DataFrame()
    probabilities = evaluator.style_probabilities(images)
    vendor = style_vendor(target_style, "target_style")
    hits = evaluator.subject_hits(images, subject_keys) if subjects else None
    return pd.DataFrame({**labels, "subject": list(subject_keys),
                         "p_style": probabilities[:, list(judge.classes).index(vendor)].double().numpy(),
                         "named": judged_styles(probabilities, judge.classes, [style_vendor(s) for s in among]),
                         "target": vendor,
                         "subject_hit": hits if hits is not None else np.full(len(subject_keys), np.nan)})


# ---- for the page ----------------------------------------------------------------------------------

GAIN_COLUMNS = {"p_base": "P base", "p_lora": "P LoRA", "p_true": "P true (after the VAE)", "share": "share of the way",
                "gain": "P LoRA - P base", "subject_base": "subject acc. base", "subject_lora": "subject acc. LoRA",
                "subject_lost": "subject acc. lost"}


def interval_text(value: float, low: float, high: float) -> str:
    """``evaluate.ci_text``, or "not measured" for NaN.

    >>> interval_text(0.5, 0.25, 0.75), interval_text(float("nan"), 0.0, 0.0)
    ('0.5 [0.25, 0.75]', 'not measured')
    """
    from lora_core.experiments.evaluate import ci_text

    return "not measured" if math.isnan(value) else ci_text(value, low, high)


def gain_display(gains: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """:func:`gain_table` rows as the page shows them: the ``labels`` columns, ``value [low, high]``
    per measure (:data:`GAIN_COLUMNS`), then ``n_seeds`` and, where present, target and verdict."""
    if gains.empty:
        return gains
    table = gains[list(labels)].copy()
    for name, title in GAIN_COLUMNS.items():
        table[title] = [interval_text(*values) for values in
                        zip(gains[name], gains[f"{name}_low"], gains[f"{name}_high"])]
    return pd.concat([table, gains[[c for c in ("n_seeds", "target", "verdict") if c in gains]]], axis=1)
