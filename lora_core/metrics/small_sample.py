r"""Fréchet distance and KID at small sample sizes: how far a 28-image FID can be trusted.

Pure functions over feature arrays (rows are images; a chapter passes Inception 2015 pool
features from :mod:`lora_core.metrics.backbones`), with explicit ``torch.Generator`` s for every
draw. They reuse the exact Gram-matrix FD and the unbiased MMD² of
:mod:`lora_core.metrics.distributions`.

- :func:`covariance_rank`: n images give a sample covariance of rank at most n - 1, so 28
  images leave 2,021 of Inception's 2,048 eigen-directions exactly zero.
- :func:`fd_kid_by_size`, :func:`same_distribution_fd_kid`, :func:`size_bands`: FD and KID
  over repeated draws of n real and m generated images (or of two disjoint samples of one
  style), and the band of values a study drawing that many images would see.
- :func:`fit_inverse_size`, :func:`fd_infinity`: Chong & Forsyth (2020, "Effectively Unbiased
  FID and Inception Score and where to find them", CVPR): FD(m) = FD_inf + k/m is linear in
  1/m, so a least-squares line over several m read at 1/m = 0 removes the bias from the
  *generated* side. The real statistics stay fixed (theirs were precomputed on the whole
  dataset); :func:`same_distribution_fd_infinity` shows that with 28 real images the
  extrapolated value between two samples of one distribution stays far from 0.
- The number to report at small n is KID, whose MMD² estimate is unbiased at every n:
  :func:`lora_core.metrics.distributions.kid_result` gives it with a bootstrap interval.

>>> rng = np.random.default_rng(0)
>>> same_style = rng.normal(size=(400, 8))
>>> bands = size_bands(same_distribution_fd_kid(same_style, [(28, 100), (200, 100)], n_draws=20))
>>> bands[["n_real", "fd_mean", "kid_mean"]].round(3).to_string(index=False)
' n_real  fd_mean  kid_mean\n     28    1.136    -0.026\n    200    0.358    -0.007'
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from lora_core.metrics.distributions import _as_features, _check_min_n, _mmd2_from_kernels, frechet_distance_from_gram
from lora_core.metrics.stats import CONFIDENCE, default_generator, single_threaded

TABLE_COLUMNS = ("n_real", "n_generated", "draw", "fd", "kid")


# ---------------------------------------------------------------- the rank limit

@dataclasses.dataclass(frozen=True)
class CovarianceRank:
    """Rank of a sample covariance of ``n`` feature vectors in ``dim`` dimensions."""

    n: int
    dim: int
    rank: int

    @property
    def max_rank(self) -> int:
        """min(n - 1, dim): centring removes one direction from n points."""
        return min(self.n - 1, self.dim)

    @property
    def zero_share(self) -> float:
        """Share of the ``dim`` eigenvalues that are zero: (dim - rank) / dim."""
        return (self.dim - self.rank) / self.dim


def covariance_rank(features: Any, tol: float | None = None) -> CovarianceRank:
    """Rank of the sample covariance of features (n, d), from the singular values of the
    centred features (the covariance is X_c^T X_c / (n - 1), so its rank is X_c's rank).

    ``tol`` compares those singular values; by default numpy.linalg.matrix_rank's rule
    ``max(n, d) * eps`` times a scale, here the norm of the uncentred features: centring
    rounds relative to the features' size, so n copies of one image get rank 0, not 1.

    >>> r = covariance_rank(np.random.default_rng(0).normal(size=(28, 2048)))
    >>> r.rank, r.max_rank, round(r.zero_share, 4)
    (27, 27, 0.9868)
    """
    x = _as_features(features, "features")
    _check_min_n(len(x), "covariance_rank")
    centred = x - x.mean(axis=0)
    singular_values = torch.linalg.svdvals(torch.from_numpy(centred)).numpy()
    if tol is None:
        tol = np.linalg.norm(x) * max(centred.shape) * np.finfo(np.float64).eps
    return CovarianceRank(len(x), x.shape[1], int((singular_values > tol).sum()))


# ---------------------------------------------------------------- FD and KID over draws

def _kid_kernel_from_gram(gram: np.ndarray, dim: int) -> np.ndarray:
    """KID's kernel (x.y / d + 1)^3 (distributions.polynomial_kernel) from a Gram matrix."""
    return (gram / dim + 1.0) ** 3


def fd_and_kid(x: Any, y: Any) -> tuple[float, float]:
    """Exact FD and unbiased MMD² (KID's kernel, over all images) of two feature sets, from
    one set of Gram matrices.

    >>> rng = np.random.default_rng(0)
    >>> fd, kid = fd_and_kid(rng.normal(size=(50, 4)), rng.normal(0.5, 1.0, size=(60, 4)))
    >>> round(fd, 4), round(kid, 4)
    (0.9026, 0.7491)
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    _check_min_n(len(x), "x")
    _check_min_n(len(y), "y")
    grams = (x @ x.T, y @ y.T, x @ y.T)
    fd = frechet_distance_from_gram(*grams)
    kid = _mmd2_from_kernels(*(_kid_kernel_from_gram(g, x.shape[1]) for g in grams))
    return fd, kid


def _check_sizes(sizes: Sequence[tuple[int, int]], limit: Callable[[int, int], str | None]) -> list[tuple[int, int]]:
    pairs = [(int(n), int(m)) for n, m in sizes]
    if not pairs:
        raise ValueError("sizes: give at least one (n_real, n_generated) pair")
    for n, m in pairs:
        if n < 2 or m < 2:
            raise ValueError(f"sizes: FD and KID need at least 2 images per set, got ({n}, {m})")
        problem = limit(n, m)
        if problem:
            raise ValueError(f"sizes: ({n}, {m}) {problem}")
    return pairs


def _draw_table(draw_pair: Callable[[int, int], tuple[np.ndarray, np.ndarray]], sizes: list[tuple[int, int]],
                n_draws: int) -> pd.DataFrame:
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    rows = []
    with single_threaded():
        for n, m in sizes:
            for draw in range(n_draws):
                rows.append((n, m, draw, *fd_and_kid(*draw_pair(n, m))))
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def fd_kid_by_size(real: Any, generated: Any, sizes: Sequence[tuple[int, int]], n_draws: int = 10,
                   generator: torch.Generator | None = None) -> pd.DataFrame:
    """FD and KID of ``n_draws`` draws (without replacement) of n real and m generated
    images, for each ``(n, m)`` in ``sizes``: one row per draw, columns :data:`TABLE_COLUMNS`.

    The spread over draws is what a study drawing n images from this pool would see. Draws of
    n close to the pool size overlap, so their spread shrinks to 0 there (n = pool size gives
    one value); keep n at most about half the pool for a band. Pass m = len(generated) to
    keep every generated image in every draw.

    >>> rng = np.random.default_rng(0)
    >>> table = fd_kid_by_size(rng.normal(size=(300, 4)), rng.normal(0.3, 1.0, size=(100, 4)),
    ...                        [(10, 100), (150, 100)], n_draws=3)
    >>> table.round(3).values.tolist()[:2]
    [[10.0, 100.0, 0.0, 1.748, 0.175], [10.0, 100.0, 1.0, 0.912, 0.153]]
    """
    x, y = _as_features(real, "real"), _as_features(generated, "generated")
    pairs = _check_sizes(sizes, lambda n, m: (f"exceeds the pools ({len(x)} real, {len(y)} generated)"
                                              if n > len(x) or m > len(y) else None))
    generator = default_generator(generator)

    def draw_pair(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        return (x[torch.randperm(len(x), generator=generator)[:n].numpy()],
                y[torch.randperm(len(y), generator=generator)[:m].numpy()])

    return _draw_table(draw_pair, pairs, n_draws)


def same_distribution_fd_kid(pool: Any, sizes: Sequence[tuple[int, int]], n_draws: int = 50,
                             generator: torch.Generator | None = None) -> pd.DataFrame:
    """FD and KID between two *disjoint* samples of one pool (one style's real images): the
    first of size n plays the real set, the second of size m the generated set.

    Both come from the same distribution, so the true FD and KID are 0: the FD values are
    its small-sample bias and spread (what a 28-image FID reads when nothing differs), while
    KID scatters around 0. Same columns as :func:`fd_kid_by_size`.

    >>> pool = np.random.default_rng(0).normal(size=(500, 8))
    >>> table = same_distribution_fd_kid(pool, [(28, 100)], n_draws=30)
    >>> np.quantile(table.fd, [0.05, 0.5, 0.95]).round(2).tolist()
    [0.95, 1.22, 1.53]
    """
    x = _as_features(pool, "pool")
    pairs = _check_sizes(sizes, lambda n, m: (f"needs n + m <= {len(x)} images in the pool for disjoint samples"
                                              if n + m > len(x) else None))
    generator = default_generator(generator)

    def draw_pair(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        order = torch.randperm(len(x), generator=generator).numpy()
        return x[order[:n]], x[order[n:n + m]]

    return _draw_table(draw_pair, pairs, n_draws)


def size_bands(table: pd.DataFrame, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per (n_real, n_generated): mean and central ``confidence`` band (percentiles over draws)
    of FD and KID, and the number of draws.

    >>> table = pd.DataFrame({"n_real": [28] * 4, "n_generated": [100] * 4, "draw": range(4),
    ...                       "fd": [1.0, 2.0, 3.0, 4.0], "kid": [0.0, 0.1, -0.1, 0.0]})
    >>> bands = size_bands(table, confidence=0.5).round(3)
    >>> bands[["draws", "fd_mean", "fd_low", "fd_high", "kid_low", "kid_high"]].values.tolist()
    [[4.0, 2.5, 1.75, 3.25, -0.025, 0.025]]
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    missing = set(TABLE_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"size_bands: table lacks columns {sorted(missing)} (expected {list(TABLE_COLUMNS)})")
    alpha = (1.0 - confidence) / 2
    groups = table.groupby(["n_real", "n_generated"], sort=True)
    bands = groups.size().rename("draws").to_frame()
    for metric in ("fd", "kid"):
        bands[f"{metric}_mean"] = groups[metric].mean()
        bands[f"{metric}_low"] = groups[metric].quantile(alpha)
        bands[f"{metric}_high"] = groups[metric].quantile(1.0 - alpha)
    return bands.reset_index()


# ---------------------------------------------------------------- FD extrapolated to infinite m

@dataclasses.dataclass(frozen=True)
class InverseSizeFit:
    """Least-squares line value(m) = intercept + slope / m over the points (sizes, values).

    ``intercept`` is the value extrapolated to m -> infinity (FD_inf), ``intercept_se`` its
    standard error from the residuals, ``ci_low``/``ci_high`` its t-interval (k - 2 degrees of
    freedom for k points). Points drawn from one pool are not independent, so the interval
    is the fit's uncertainty, not a full sampling interval.
    """

    intercept: float
    slope: float
    intercept_se: float
    ci_low: float
    ci_high: float
    sizes: tuple[int, ...]
    values: tuple[float, ...]

    def predict(self, m: Any) -> np.ndarray:
        """The fitted line at size(s) m."""
        return self.intercept + self.slope / np.asarray(m, dtype=np.float64)


def fit_inverse_size(sizes: Sequence[int], values: Sequence[float], confidence: float = CONFIDENCE) -> InverseSizeFit:
    r"""Fit value(m) = a + b/m by ordinary least squares in t = 1/m:

    :math:`b = \sum (t_i-\bar t)(v_i-\bar v) / \sum (t_i-\bar t)^2`, :math:`a = \bar v - b\bar t`,
    :math:`\mathrm{se}(a) = s\sqrt{1/k + \bar t^2/\sum (t_i-\bar t)^2}` with
    :math:`s^2 = \sum r_i^2/(k-2)`; interval :math:`a \pm t_{k-2}\,\mathrm{se}(a)`.

    >>> fit = fit_inverse_size([100, 200, 400, 800], [12.0, 11.0, 10.5, 10.25])
    >>> round(fit.intercept, 6), round(fit.slope, 6), round(fit.intercept_se, 6)
    (10.0, 200.0, 0.0)
    """
    m = np.asarray(sizes, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if m.ndim != 1 or m.shape != v.shape:
        raise ValueError(f"fit_inverse_size: sizes and values must be 1-d of one length, got {m.shape} and {v.shape}")
    if len(m) < 3 or len(np.unique(m)) < 2 or np.any(m <= 0):
        raise ValueError("fit_inverse_size: needs >= 3 points over >= 2 distinct positive sizes, "
                         f"got sizes {m.tolist()}")
    t = 1.0 / m
    t_dev = t - t.mean()
    slope = float(t_dev @ (v - v.mean()) / (t_dev @ t_dev))
    intercept = float(v.mean() - slope * t.mean())
    residuals = v - intercept - slope * t
    s2 = float(residuals @ residuals) / (len(m) - 2)
    se = float(np.sqrt(s2 * (1.0 / len(m) + t.mean() ** 2 / (t_dev @ t_dev))))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df=len(m) - 2)) * se
    return InverseSizeFit(intercept, slope, se, intercept - half, intercept + half,
                          tuple(int(s) for s in m), tuple(float(x) for x in v))


def fd_infinity(real: Any, generated: Any, generated_sizes: Sequence[int], n_draws: int = 3,
                generator: torch.Generator | None = None, confidence: float = CONFIDENCE) -> InverseSizeFit:
    """Chong & Forsyth's FD_inf: FD of all ``real`` images against ``n_draws`` draws of m
    generated images for each m in ``generated_sizes``, fitted by :func:`fit_inverse_size`.

    The authors' code (mchong6/FID_IS_infinity, ``calculate_FID_infinity``) evaluates FID at 15
    sizes evenly spaced from 5,000 to 50,000 and reads the regression at 1/N = 0; here the
    sizes are the caller's. Only the generated side is extrapolated: the real mean and
    covariance are those of the n real images given, bias included.

    >>> rng = np.random.default_rng(0)
    >>> fit = fd_infinity(rng.normal(size=(2000, 4)), rng.normal(1.0, 1.0, size=(2000, 4)), [50, 100, 200, 400])
    >>> round(fit.intercept, 2), round(fit.ci_low, 2), round(fit.ci_high, 2)  # true FD: 4
    (3.88, 3.57, 4.2)
    """
    table = fd_kid_by_size(real, generated, [(len(_as_features(real, "real")), m) for m in generated_sizes],
                           n_draws, generator)
    return fit_inverse_size(table.n_generated.tolist(), table.fd.tolist(), confidence)


def same_distribution_fd_infinity(pool: Any, n_real: int, generated_sizes: Sequence[int], n_real_draws: int = 5,
                                  n_draws: int = 3, generator: torch.Generator | None = None,
                                  confidence: float = CONFIDENCE) -> list[InverseSizeFit]:
    """Why FD_inf cannot rescue a small *real* set: for each of ``n_real_draws`` draws, n_real
    images of ``pool`` play the real set and the rest of the pool the generator;
    :func:`fd_infinity` then extrapolates m -> infinity. The true distance is 0, yet at
    n_real = 28 every fit stays far above it: the real side's bias (a mean from 28 images, a
    covariance of rank 27) does not depend on m.

    >>> pool = np.random.default_rng(0).normal(size=(3000, 8))
    >>> fits = same_distribution_fd_infinity(pool, 28, [100, 200, 400, 800], n_real_draws=3)
    >>> [round(f.intercept, 2) for f in fits], all(f.ci_low > 0 for f in fits)
    ([0.88, 1.1, 1.09], True)
    """
    x = _as_features(pool, "pool")
    largest = max(generated_sizes, default=0)
    if not 2 <= n_real < len(x) or largest > len(x) - n_real:
        raise ValueError(f"same_distribution_fd_infinity: n_real={n_real} and sizes up to {largest} "
                         f"must fit disjointly in the pool of {len(x)}")
    generator = default_generator(generator)
    fits = []
    for _ in range(n_real_draws):
        order = torch.randperm(len(x), generator=generator).numpy()
        fits.append(fd_infinity(x[order[:n_real]], x[order[n_real:]], generated_sizes, n_draws, generator, confidence))
    return fits
