r"""Distribution metrics: Fréchet distance (FID), kernel distance (KID), Inception Score.

Pure float64 math on feature arrays comes first (clean-fid style), then a thin stateful layer
with ``update(images, real)`` / ``compute()`` (torchmetrics style) that returns a
:class:`~lora_core.metrics.stats.MetricResult` with a bootstrap interval over images.

Formulas, for features :math:`X \in \mathbb{R}^{m \times d}`, :math:`Y \in \mathbb{R}^{n \times d}`:

- FD :math:`= \lVert\mu_X-\mu_Y\rVert^2 + \operatorname{tr}\Sigma_X + \operatorname{tr}\Sigma_Y
  - 2\operatorname{tr}(\Sigma_X\Sigma_Y)^{1/2}`. With centred features :math:`X_c, Y_c`,
  :math:`\operatorname{tr}(\Sigma_X\Sigma_Y)^{1/2} = \lVert X_c Y_c^\top\rVert_* / \sqrt{(m-1)(n-1)}`
  (nuclear norm: the eigenvalues of :math:`\Sigma_X\Sigma_Y` are the squared singular values of
  that m x n matrix), so FD needs only Gram matrices: exact, no d x d square root, and a bootstrap
  resample costs one small SVD.
- KID: unbiased MMD² with the kernel :math:`k(x, y) = (x^\top y / d + 1)^3`, averaged over random
  subsets (mean ± std), the subset size capped at the smaller set.
- IS :math:`= \exp \mathbb{E}_x \mathrm{KL}(p(y|x) \,\|\, p(y))`, mean over splits.

torchmetrics' FrechetInceptionDistance accepts these backbones (``feature=backbone``) and is
used as a cross-check in the tests; its KID and IS draw subsets from the global RNG and refuse a
subset larger than the set, hence the code here.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> x, y = rng.normal(size=(50, 4)), rng.normal(0.5, 1.0, size=(60, 4))
>>> mu_x, sigma_x = feature_statistics(x); mu_y, sigma_y = feature_statistics(y)
>>> round(frechet_distance(mu_x, sigma_x, mu_y, sigma_y), 6) == round(frechet_distance_from_features(x, y), 6)
True
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lora_core.metrics.backbones import FeatureBackbone, get_backbone
from lora_core.metrics.cache import FeatureCache
from lora_core.metrics.preprocess import as_uint8_images
from lora_core.metrics.stats import NON_NEGATIVE, MetricResult, bootstrap_ci, default_generator, in_support


def _as_features(features: Any, name: str) -> np.ndarray:
    array = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected features (n, d), got shape {array.shape}")
    return array


def _check_finite(values: np.ndarray, name: str) -> None:
    """Refuse inf and nan: a -inf logit gives 0 * log 0 = nan, which would pass silently as the score.

    >>> _check_finite(np.array([[0.0, -np.inf], [1.0, 2.0]]), "logits")
    Traceback (most recent call last):
    ...
    ValueError: logits: must be finite, got 1 non-finite value (-inf at row 0, column 1)
    """
    bad = np.argwhere(~np.isfinite(values))
    if len(bad):
        row, column = bad[0]
        raise ValueError(f"{name}: must be finite, got {len(bad)} non-finite value{'s' if len(bad) > 1 else ''} "
                         f"({values[row, column]} at row {row}, column {column})")


def _check_min_n(n: int, name: str, minimum: int = 2) -> None:
    if n < minimum:
        raise ValueError(f"{name}: needs at least {minimum} images, got n={n}")


# ---------------------------------------------------------------- pure math (numpy, float64)

def feature_statistics(features: Any, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof=1) of features (n, d)."""
    x = _as_features(features, name)
    _check_min_n(len(x), name)
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (clean-fid's signature)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    # eigenvalues of sigma1 @ sigma2 are real and >= 0 in exact arithmetic; rounding makes tiny
    # negative or complex ones, whose complex square roots contribute ~0 to the real part
    trace_sqrt = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).real.sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def _double_centre(gram: np.ndarray) -> np.ndarray:
    return gram - gram.mean(axis=0, keepdims=True) - gram.mean(axis=1, keepdims=True) + gram.mean()


def frechet_distance_from_gram(gram_xx: np.ndarray, gram_yy: np.ndarray, gram_xy: np.ndarray) -> float:
    """FD from the Gram matrices X X^T (m x m), Y Y^T (n x n), X Y^T (m x n); see the module doc."""
    m, n = gram_xy.shape
    _check_min_n(m, "first set")
    _check_min_n(n, "second set")
    mean_sq = gram_xx.mean() + gram_yy.mean() - 2.0 * gram_xy.mean()
    trace_x = np.trace(_double_centre(gram_xx)) / (m - 1)
    trace_y = np.trace(_double_centre(gram_yy)) / (n - 1)
    # torch's SVD: numpy's multi-threaded OpenBLAS stalls on busy cores (see stats.single_threaded)
    nuclear = float(torch.linalg.svdvals(torch.from_numpy(_double_centre(gram_xy))).sum())
    return float(mean_sq + trace_x + trace_y - 2.0 * nuclear / np.sqrt((m - 1) * (n - 1)))


def frechet_distance_from_features(x: Any, y: Any) -> float:
    """FD between feature sets (m, d) and (n, d), exact, via :func:`frechet_distance_from_gram`."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    return frechet_distance_from_gram(x @ x.T, y @ y.T, x @ y.T)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m, n = len(k_xx), len(k_yy)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * k_xy.mean())


def mmd2_unbiased(x: Any, y: Any) -> float:
    """Unbiased MMD² between feature sets with :func:`polynomial_kernel` (one KID subset)."""
    x, y = _as_features(x, "x"), _as_features(y, "y")
    _check_min_n(len(x), "x")
    _check_min_n(len(y), "y")
    return _mmd2_from_kernels(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))


def kernel_distance(x: Any, y: Any, subset_size: int = 1000, n_subsets: int = 100,
                    generator: torch.Generator | None = None) -> tuple[float, float, int]:
    """KID: (mean, std) of unbiased MMD² over random subsets, and the subset size actually used.

    The subset size is ``min(subset_size, len(x), len(y))``; subsets are drawn without
    replacement with ``generator``.
    """
    x, y = _as_features(x, "x"), _as_features(y, "y")
    size = min(subset_size, len(x), len(y))
    _check_min_n(size, "kernel_distance subset")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    generator = default_generator(generator)
    values = []
    for _ in range(n_subsets):
        a = torch.randperm(len(x), generator=generator)[:size].numpy()
        b = torch.randperm(len(y), generator=generator)[:size].numpy()
        values.append(_mmd2_from_kernels(k_xx[np.ix_(a, a)], k_yy[np.ix_(b, b)], k_xy[np.ix_(a, b)]))
    return float(np.mean(values)), float(np.std(values)), size


def inception_score(logits: Any, splits: int = 10) -> tuple[float, float]:
    """IS from class logits (n, classes): (mean, std) over ``splits`` consecutive splits."""
    logits = _as_features(logits, "logits")
    if not 1 <= splits <= len(logits):
        raise ValueError(f"inception_score: splits must be in [1, n={len(logits)}], got {splits}")
    _check_finite(logits, "inception_score: logits")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = np.log(np.exp(part).mean(axis=0))
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def subsample(features: Any, n: int, generator: torch.Generator | None = None) -> np.ndarray:
    """``n`` rows drawn without replacement (seeded): FD at equal n when comparing runs."""
    x = _as_features(features, "features")
    if not 1 <= n <= len(x):
        raise ValueError(f"subsample: n must be in [1, {len(x)}], got {n}")
    return x[torch.randperm(len(x), generator=default_generator(generator))[:n].numpy()]


# ---------------------------------------------------------------- results with intervals

def small_n_note(n: int, num_features: int) -> str:
    return f"n={n} < {num_features}: biased upward, compare KID" if n < num_features else ""


def fd_result(real: Any, generated: Any, backbone: FeatureBackbone, source_size: str,
              n_resamples: int = 200, generator: torch.Generator | None = None) -> MetricResult:
    """FD of feature sets with a bootstrap interval over images of both sets (re-centred: a
    resample repeats images, which raises FD; FD >= 0, so the value and interval are cut at 0)."""
    x, y = _as_features(real, "real"), _as_features(generated, "generated")
    _check_min_n(len(x), "real")
    _check_min_n(len(y), "generated")
    g_xx, g_yy, g_xy = x @ x.T, y @ y.T, x @ y.T
    indices = (np.arange(len(x))[:, None], np.arange(len(y))[:, None])

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a[:, 0].astype(int), b[:, 0].astype(int)
        return frechet_distance_from_gram(g_xx[np.ix_(a, a)], g_yy[np.ix_(b, b)], g_xy[np.ix_(a, b)])

    value = in_support(frechet_distance_from_gram(g_xx, g_yy, g_xy), NON_NEGATIVE)
    low, high = bootstrap_ci(indices, statistic, n_resamples, generator, recentre_on=value, support=NON_NEGATIVE)
    n = min(len(x), len(y))
    return MetricResult(backbone.describe("FD", source_size), backbone.name, n, value, low, high,
                        small_n_note(n, backbone.num_features))


def kid_result(real: Any, generated: Any, backbone: FeatureBackbone, source_size: str,
               subset_size: int = 1000, n_subsets: int = 100, n_resamples: int = 200,
               generator: torch.Generator | None = None) -> MetricResult:
    """KID (mean over subsets) with a bootstrap interval over images.

    A bootstrap resample repeats images; pairs of one image with its own copy are left out of
    the within-set sums, so the resampled statistic stays unbiased. The estimator is unbiased, so
    it can be below 0 for close sets: its interval has no support to respect.
    """
    x, y = _as_features(real, "real"), _as_features(generated, "generated")
    generator = default_generator(generator)
    mean, std, size = kernel_distance(x, y, subset_size, n_subsets, generator)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)

    def within(kernel: np.ndarray, idx: np.ndarray) -> float:
        distinct = idx[:, None] != idx[None, :]
        return float(kernel[np.ix_(idx, idx)][distinct].mean())

    def statistic(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a[:, 0].astype(int), b[:, 0].astype(int)
        return within(k_xx, a) + within(k_yy, b) - 2.0 * float(k_xy[np.ix_(a, b)].mean())

    indices = (np.arange(len(x))[:, None], np.arange(len(y))[:, None])
    low, high = bootstrap_ci(indices, statistic, n_resamples, generator)
    note = f"mean ± std over {n_subsets} subsets of {size}: {mean:.4g} ± {std:.4g}"
    return MetricResult(backbone.describe("KID", source_size), backbone.name, min(len(x), len(y)),
                        mean, low, high, note)


def is_result(logits: Any, backbone: FeatureBackbone, source_size: str, splits: int = 10,
              n_resamples: int = 200, generator: torch.Generator | None = None) -> MetricResult:
    """IS (mean over splits) from a backbone's logits with a bootstrap interval over images, cut to
    IS's range: 1 (every image the same class distribution) to the number of classes."""
    logits = _as_features(logits, "logits")
    mean, std = inception_score(logits, splits)
    low, high = bootstrap_ci(logits, lambda p: inception_score(p, splits)[0], n_resamples, generator,
                             recentre_on=mean, support=(1.0, float(logits.shape[1])))
    return MetricResult(backbone.describe("IS", source_size), backbone.name, len(logits), mean, low, high,
                        f"mean ± std over {splits} splits: {mean:.4g} ± {std:.4g}")


# ---------------------------------------------------------------- stateful layer

class _FeatureMetric:
    """Accumulates features of real and generated images; subclasses compute one result."""

    kind = "features"

    def __init__(self, backbone: str | FeatureBackbone = "inception", cache: Any = None,
                 n_resamples: int = 200, seed: int = 0) -> None:
        self.backbone = get_backbone(backbone) if isinstance(backbone, str) else backbone
        self.cache, self.n_resamples, self.seed = cache, n_resamples, seed
        self.reset()

    def reset(self) -> None:
        self._features: dict[bool, list[torch.Tensor]] = {True: [], False: []}
        self._sizes: dict[bool, set[int]] = {True: set(), False: set()}

    def update(self, images: Any, real: bool) -> None:
        name = "real" if real else "generated"
        images_uint8 = as_uint8_images(images, name)
        extract = self.backbone.logits if self.kind == "logits" else self.backbone.features
        self._features[real].append(extract(images_uint8, name=name, cache=self.cache))
        self._sizes[real].add(int(images_uint8.shape[-1]))

    def _collected(self, real: bool) -> np.ndarray:
        name = "real" if real else "generated"
        if not self._features[real]:
            raise ValueError(f"{type(self).__name__}: no {name} images; call update(images, real={real}) first")
        return torch.cat(self._features[real]).numpy()

    def _source_size(self) -> str:
        sizes = sorted(self._sizes[True] | self._sizes[False])
        return "/".join(str(s) for s in sizes)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


class FrechetDistance(_FeatureMetric):
    """FID with ``backbone="inception"``, FD-EffNet with ``"effnet-lite0"``.

    ``equal_n=True`` subsamples the larger set (seeded) so runs with different n compare fairly.

    >>> import torch
    >>> metric = FrechetDistance("pixels-8")
    >>> g = torch.Generator().manual_seed(0)
    >>> metric.update(torch.randint(0, 256, (20, 3, 16, 16), generator=g, dtype=torch.uint8), real=True)
    >>> metric.update(torch.randint(0, 128, (30, 3, 16, 16), generator=g, dtype=torch.uint8), real=False)
    >>> result = metric.compute()
    >>> result.metric, result.n, result.note
    ('FD-pixels (raw pixels, 16->8 px)', 20, 'n=20 < 192: biased upward, compare KID')
    """

    def __init__(self, backbone: str | FeatureBackbone = "inception", cache: Any = None,
                 n_resamples: int = 200, seed: int = 0, equal_n: bool = False) -> None:
        super().__init__(backbone, cache, n_resamples, seed)
        self.equal_n = equal_n

    def compute(self) -> MetricResult:
        real, generated = self._collected(True), self._collected(False)
        generator = self._generator()
        if self.equal_n:
            n = min(len(real), len(generated))
            real, generated = subsample(real, n, generator), subsample(generated, n, generator)
        return fd_result(real, generated, self.backbone, self._source_size(), self.n_resamples, generator)


class KernelDistance(_FeatureMetric):
    """KID (``"inception"``) or KID-EffNet; subsets of ``min(subset_size, n_real, n_generated)``."""

    def __init__(self, backbone: str | FeatureBackbone = "inception", cache: Any = None,
                 n_resamples: int = 200, seed: int = 0, subset_size: int = 1000, n_subsets: int = 100) -> None:
        super().__init__(backbone, cache, n_resamples, seed)
        self.subset_size, self.n_subsets = subset_size, n_subsets

    def compute(self) -> MetricResult:
        return kid_result(self._collected(True), self._collected(False), self.backbone, self._source_size(),
                          self.subset_size, self.n_subsets, self.n_resamples, self._generator())


class InceptionScore(_FeatureMetric):
    """IS from a classifier's logits; offline that is EfficientNet-Lite0, reported as IS-EffNet.

    Only generated images count: ``update(images, real=False)`` (or ``update(images)``).
    """

    kind = "logits"

    def __init__(self, backbone: str | FeatureBackbone = "effnet-lite0", cache: Any = None,
                 n_resamples: int = 200, seed: int = 0, splits: int = 10) -> None:
        super().__init__(backbone, cache, n_resamples, seed)
        if not self.backbone.has_logits:
            raise ValueError(f"InceptionScore: backbone {self.backbone.name!r} exposes no logits; use 'effnet-lite0'")
        self.splits = splits

    def update(self, images: Any, real: bool = False) -> None:
        if real:
            raise ValueError("InceptionScore: scores generated images only; got real=True")
        super().update(images, real=False)

    def compute(self) -> MetricResult:
        return is_result(self._collected(False), self.backbone, self._source_size(), self.splits,
                         self.n_resamples, self._generator())


def distribution_report(real: Any, generated: Any, backbones: tuple[str, ...] = ("inception", "effnet-lite0"),
                        cache: Any = None, seed: int = 0, kid_subset_size: int = 1000,
                        is_splits: int = 10) -> list[MetricResult]:
    """FD and KID on each backbone, plus IS for every backbone with logits (IS-EffNet offline).

    Features are extracted once per backbone (a private in-memory cache when ``cache`` is
    None); every interval uses a generator seeded with ``seed``.

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> real = torch.randint(0, 256, (12, 3, 16, 16), generator=g, dtype=torch.uint8)
    >>> [r.metric for r in distribution_report(real, real.flip(0), backbones=("pixels-8",))]
    ['FD-pixels (raw pixels, 16->8 px)', 'KID-pixels (raw pixels, 16->8 px)']
    """
    real_uint8, generated_uint8 = as_uint8_images(real, "real"), as_uint8_images(generated, "generated")
    cache = cache if cache is not None else FeatureCache()
    results = []
    for name in backbones:
        backbone = get_backbone(name)
        metrics: list[_FeatureMetric] = [FrechetDistance(backbone, cache, seed=seed),
                                         KernelDistance(backbone, cache, seed=seed, subset_size=kid_subset_size)]
        for metric in metrics:
            metric.update(real_uint8, real=True)
            metric.update(generated_uint8, real=False)
        if backbone.has_logits:
            metrics.append(InceptionScore(backbone, cache, seed=seed, splits=min(is_splits, len(generated_uint8))))
            metrics[-1].update(generated_uint8)
        results += [metric.compute() for metric in metrics]
    return results
