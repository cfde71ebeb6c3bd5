"""Result objects and uncertainty: bootstrap intervals over images, aggregation over seeds.

Every metric in this package returns a :class:`MetricResult` that carries the metric's name, the
feature backbone, the number of images, the value and a 95% interval, so no number leaves the
package without its sample size and its uncertainty.

>>> import numpy as np, torch
>>> per_image = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
>>> low, high = bootstrap_ci(per_image, np.mean, n_resamples=200, generator=torch.Generator().manual_seed(0))
>>> bool(low <= per_image.mean() <= high)
True
>>> r = bootstrap_result("mean-distance", "none", per_image, np.mean, n_resamples=200)
>>> r.n, round(r.value, 3)
(5, 0.3)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from scipy import stats as scipy_stats

from lora_core.profiling import phase

CONFIDENCE = 0.95
DEFAULT_SEED = 0  # used when no generator is passed: results stay deterministic
UNBOUNDED = (-math.inf, math.inf)
NON_NEGATIVE = (0.0, math.inf)   # the support of a distance


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One reported number with its provenance and a confidence interval.

    ``metric`` is the reported name (``"FID (Inception 2015, 32->299 px)"``, ``"FD-EffNet"``,
    ``"ST-LPIPS"`` ...), ``backbone`` the feature network's name, ``n`` the number of images (per
    set for two-set metrics; the smaller one if they differ), ``note`` any caveat a reader needs.
    """

    metric: str
    backbone: str
    n: int
    value: float
    ci_low: float
    ci_high: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        text = f"{self.metric} = {self.value:.4g} [{self.ci_low:.4g}, {self.ci_high:.4g}] (n={self.n}, {self.backbone})"
        return f"{text}; {self.note}" if self.note else text


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` itself, or a fresh CPU generator seeded with :data:`DEFAULT_SEED`."""
    return generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch ops on one thread, then restore the previous count.

    A bootstrap repeats small decompositions (a few hundred rows) many times; on a shared
    machine a multi-threaded pool spends far longer waiting for cores than computing (30x
    slower measured on 2 busy cores), and one thread is as fast as two when the cores are free.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _as_samples(values: Any) -> tuple[np.ndarray, ...]:
    """One array or a tuple of arrays (independent samples), each with images along axis 0."""
    samples = values if isinstance(values, tuple) else (values,)
    arrays = tuple(np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
                   for v in samples)
    for a in arrays:
        if a.ndim == 0 or a.shape[0] == 0:
            raise ValueError(f"bootstrap_ci: values must have at least one item along axis 0, got shape {a.shape}")
    return arrays


def bootstrap_replicates(values: Any, statistic: Callable[..., float] = np.mean, n_resamples: int = 1000,
                         generator: torch.Generator | None = None) -> np.ndarray:
    """``statistic`` on ``n_resamples`` resamples (with replacement) of the images in ``values``.

    ``values`` is one array (rows are images) or a tuple of arrays that are resampled
    independently (two-set metrics such as FD resample real and generated images separately);
    ``statistic`` receives as many arrays as were passed. Deterministic for a given generator.
    """
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    samples = _as_samples(values)
    generator = default_generator(generator)
    replicates = np.empty(n_resamples, dtype=np.float64)
    with single_threaded(), phase("bootstrap"):
        for i in range(n_resamples):
            resampled = [s[torch.randint(0, len(s), (len(s),), generator=generator).numpy()] for s in samples]
            replicates[i] = float(statistic(*resampled))
    return replicates


def in_support(value: float, support: tuple[float, float] = UNBOUNDED) -> float:
    """``value`` clipped into ``support`` = (lowest, highest) value the statistic can take.

    >>> in_support(-7e-15, NON_NEGATIVE), in_support(3.0, (1.0, 2.0))
    (0.0, 2.0)
    """
    return float(min(max(value, support[0]), support[1]))


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE,
                        support: tuple[float, float] = UNBOUNDED) -> tuple[float, float]:
    """The central ``confidence`` share of ``replicates``, intersected with ``support``.

    >>> replicates = np.arange(-10.0, 91.0)   # 101 values: 2.5% and 97.5% fall half way between two
    >>> [round(v, 9) for v in percentile_interval(replicates)], percentile_interval(replicates, support=NON_NEGATIVE)
    ([-7.5, 87.5], (0.0, 87.5))
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return in_support(low, support), in_support(high, support)


def bootstrap_ci(values: Any, statistic: Callable[..., float] = np.mean, n_resamples: int = 1000,
                 generator: torch.Generator | None = None, confidence: float = CONFIDENCE,
                 recentre_on: float | None = None, support: tuple[float, float] = UNBOUNDED) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over images (see :func:`bootstrap_replicates`).

    ``recentre_on=estimate`` shifts the replicates so their mean is the estimate before taking
    percentiles. Use it for statistics that a resample biases: a resample repeats images, which
    raises a Fréchet distance and lowers a Vendi score, so the raw replicates can miss the
    estimate altogether; the bootstrap then only measures the spread.

    The shift can carry the interval past what the statistic can be: the FD of a set with itself
    is 0, its resamples' FDs average ~35 (repeats look like a different set), so the shifted
    replicates straddle 0 and the interval read ``0 [-32.98, 37.58]``. A statistic that cannot
    leave a range declares it as ``support`` (a distance: :data:`NON_NEGATIVE`) and the interval is
    cut to it. Cutting loses no coverage: the true value lies in the support, so the cut interval
    holds it whenever the uncut one did.
    """
    replicates = bootstrap_replicates(values, statistic, n_resamples, generator)
    if recentre_on is not None:
        replicates = replicates - replicates.mean() + recentre_on
    return percentile_interval(replicates, confidence, support)


def bootstrap_result(metric: str, backbone: str, values: Any, statistic: Callable[..., float] = np.mean,
                     n_resamples: int = 1000, generator: torch.Generator | None = None, note: str = "",
                     confidence: float = CONFIDENCE, recentre: bool = False,
                     support: tuple[float, float] = UNBOUNDED) -> MetricResult:
    """:class:`MetricResult` with ``value = statistic(*values)`` and its bootstrap interval, both in
    ``support`` (a value outside it is float rounding, such as an FD of -7e-15)."""
    samples = _as_samples(values)
    value = in_support(float(statistic(*samples)), support)
    low, high = bootstrap_ci(samples, statistic, n_resamples, generator, confidence,
                             recentre_on=value if recentre else None, support=support)
    return MetricResult(metric, backbone, min(len(s) for s in samples), value, low, high, note)


def aggregate_over_seeds(results: Sequence[MetricResult], method: str = "t",
                         n_resamples: int = 1000, generator: torch.Generator | None = None,
                         confidence: float = CONFIDENCE) -> MetricResult:
    """Mean over repeated runs (seeds) of one metric, with a t-interval or a bootstrap over seeds.

    >>> runs = [MetricResult("KID", "inception", 50, v, v, v) for v in (1.0, 2.0, 3.0)]
    >>> r = aggregate_over_seeds(runs)
    >>> r.value, round(r.ci_low, 3), round(r.ci_high, 3), r.note
    (2.0, -0.484, 4.484, 'mean over 3 seeds, t-interval (per-seed n=50)')
    """
    if not results:
        raise ValueError("aggregate_over_seeds: results is empty")
    kinds = {(r.metric, r.backbone) for r in results}
    if len(kinds) != 1:
        raise ValueError(f"aggregate_over_seeds: results mix metrics/backbones {sorted(kinds)}")
    values = np.array([r.value for r in results], dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        low = high = mean
    elif method == "t":
        half = scipy_stats.t.ppf(0.5 + confidence / 2, df=len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        low, high = mean - half, mean + half
    elif method == "bootstrap":
        low, high = bootstrap_ci(values, np.mean, n_resamples, generator, confidence)
    else:
        raise ValueError(f"aggregate_over_seeds: method must be 't' or 'bootstrap', got {method!r}")
    interval = "t-interval" if method == "t" else "bootstrap over seeds"
    per_seed_n = sorted({r.n for r in results})
    n_text = per_seed_n[0] if len(per_seed_n) == 1 else per_seed_n
    note = f"mean over {len(values)} seeds, {interval} (per-seed n={n_text})"
    return MetricResult(results[0].metric, results[0].backbone, min(r.n for r in results),
                        mean, float(low), float(high), note)
