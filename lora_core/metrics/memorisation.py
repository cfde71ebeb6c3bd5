r"""Memorisation: do generations copy training images?

Pure functions over features (rows are images, e.g. Inception 2015 pool features from
:mod:`lora_core.metrics.backbones`) and over uint8 images.

- **Copy share** (feature level): each generation's nearest training image by cosine
  similarity; a threshold calibrated on held-out real images (by default the 99th percentile
  of held-out-to-training nearest-neighbour similarity); the share of generations above it,
  with a Wilson 95% interval. Generations from the true distribution that copy nothing land
  above the threshold at about the calibration rate (1%).
- **Data-copying test** of Meehan, Chaudhuri & Dasgupta (2020), "A Non-Parametric Test to
  Detect Data-Copying in Generative Models", AISTATS (PMLR 108; arXiv:2004.05675). With
  training set T, held-out sample P_n and generated sample Q_m, and d(x) the distance from x
  to its nearest neighbour in T: Z_U is the Mann-Whitney U statistic of {d(x): x in Q_m}
  against {d(x): x in P_n}, z-scored under the null that both come from one distribution;
  Z_U << 0 means generations sit closer to the training set than fresh real images do
  (data-copying), Z_U >> 0 underfitting. Copying can hide in one region and be offset by
  underfitting elsewhere, so the instance space is partitioned into cells (k-means on T),
  Z_U is computed in each cell (P_n, Q_m and T restricted to it), and
  C_T = sum_pi P_n(pi) Z_U(pi) / sum_pi P_n(pi) over the cells pi in Pi_tau, those holding
  at least a share tau of the generations.
- **Pixel check**: a generation for a training caption against its own training image
  (per-pixel MSE on the [0, 1] scale), the threshold calibrated as the 1st percentile of the
  held-out images' MSE to their nearest training image.

>>> rng = np.random.default_rng(0)
>>> training, held_out = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
>>> copies = training[:100] + rng.normal(scale=0.01, size=(100, 16))
>>> share = feature_copy_share(copies, training, held_out)
>>> share.count, share.n, round(share.ci_low, 3)
(100, 100, 0.963)
>>> round(data_copying_test(copies, held_out, training, n_cells=3, generator=torch.Generator().manual_seed(0)).c_t, 1)
-8.8
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats
from scipy.cluster import vq

from lora_core.metrics.distributions import _as_features
from lora_core.metrics.preprocess import as_uint8_images
from lora_core.metrics.proportions import wilson_interval
from lora_core.metrics.stats import CONFIDENCE, MetricResult, default_generator

FEATURE_QUANTILE = 0.99   # generations more similar to training than 99% of held-out images are
PIXEL_QUANTILE = 0.01     # generations closer in pixels than 99% of held-out images are
MIN_GENERATED_PER_CELL = 20   # Meehan et al.'s code keeps cells with more than 20 generations (tau = 20/m)


# ---------------------------------------------------------------- shares and their intervals

@dataclasses.dataclass(frozen=True)
class CopyShare:
    """``count`` of ``n`` generations beyond ``threshold`` by ``measure``; share and Wilson interval."""

    measure: str
    threshold: float
    count: int
    n: int
    share: float
    ci_low: float
    ci_high: float

    def metric_result(self, backbone: str) -> MetricResult:
        """As a :class:`MetricResult` for the book's tables."""
        return MetricResult(f"copy share ({self.measure})", backbone, self.n, self.share, self.ci_low, self.ci_high,
                            f"{self.count} of {self.n} beyond {self.threshold:.4g}, Wilson interval")


def copy_share(values: Any, threshold: float, measure: str, above: bool = True,
               confidence: float = CONFIDENCE) -> CopyShare:
    """Share of ``values`` strictly above (or below, ``above=False``) ``threshold``.

    >>> copy_share([0.2, 0.95, 0.99, 0.5], 0.9, "cosine").count
    2
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0:
        raise ValueError("copy_share: no values")
    count = int((values > threshold).sum() if above else (values < threshold).sum())
    low, high = wilson_interval(count, len(values), confidence)
    return CopyShare(measure, float(threshold), count, len(values), count / len(values), low, high)


# ---------------------------------------------------------------- feature level: cosine similarity

def _unit_rows(features: Any, name: str) -> np.ndarray:
    x = _as_features(features, name)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) == 0 or np.any(norms == 0):
        raise ValueError(f"{name}: needs at least one image and no all-zero feature vector (cosine is undefined)")
    return x / norms


def nearest_training(queries: Any, training: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each query: index of its most cosine-similar training image, and that similarity.

    >>> index, similarity = nearest_training([[1.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [3.0, 0.1]])
    >>> index.tolist(), similarity.round(4).tolist()
    ([1, 0], [0.9994, 1.0])
    """
    similarity = _unit_rows(queries, "queries") @ _unit_rows(training, "training").T
    index = similarity.argmax(axis=1)
    return index, similarity[np.arange(len(index)), index]


def calibrate_similarity_threshold(held_out: Any, training: Any, quantile: float = FEATURE_QUANTILE) -> float:
    """``quantile`` of the held-out images' nearest-training cosine similarity (numpy's linear
    interpolation). Held-out images must not be in the training set.

    >>> round(calibrate_similarity_threshold([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [[1.0, 1.0]], quantile=0.5), 4)
    0.7071
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return float(np.quantile(nearest_training(held_out, training)[1], quantile))


def feature_copy_share(generated: Any, training: Any, held_out: Any, quantile: float = FEATURE_QUANTILE,
                       confidence: float = CONFIDENCE) -> CopyShare:
    """Share of generations whose nearest training image is more cosine-similar than
    :func:`calibrate_similarity_threshold` allows: about ``1 - quantile`` for fresh images of
    the training distribution, 1 for copies (module doctest).

    >>> rng = np.random.default_rng(1)
    >>> training, held_out, fresh = (rng.normal(size=(400, 8)) for _ in range(3))
    >>> share = feature_copy_share(fresh, training, held_out, quantile=0.9)
    >>> share.count, share.n, round(share.ci_low, 3), round(share.ci_high, 3)
    (47, 400, 0.09, 0.153)
    """
    threshold = calibrate_similarity_threshold(held_out, training, quantile)
    similarity = nearest_training(generated, training)[1]
    return copy_share(similarity, threshold, f"nearest-training cosine > held-out q{quantile:g}",
                      confidence=confidence)


# ---------------------------------------------------------------- Meehan et al. (2020): Z_U and C_T

def nearest_distances(queries: Any, training: Any) -> np.ndarray:
    """Euclidean distance from each query to its nearest training row: d(x) = min_t ||x - t||.

    >>> nearest_distances([[0.0, 0.0], [3.0, 4.0]], [[0.0, 1.0], [3.0, 0.0]]).tolist()
    [1.0, 4.0]
    """
    q, t = _as_features(queries, "queries"), _as_features(training, "training")
    if len(t) == 0:
        raise ValueError("training: no images")
    squared = (q * q).sum(axis=1)[:, None] + (t * t).sum(axis=1)[None, :] - 2.0 * q @ t.T
    return np.sqrt(np.clip(squared.min(axis=1, initial=np.inf), 0.0, None))


def mann_whitney_u(x: Any, y: Any) -> float:
    r"""U = :math:`\sum_{i,j} [x_i > y_j] + \tfrac12 [x_i = y_j]`: pairs where x exceeds y.

    >>> mann_whitney_u([1.0, 5.0, 3.0], [2.0, 3.0])
    3.5
    """
    x, y_sorted = np.asarray(x, dtype=np.float64).ravel(), np.sort(np.asarray(y, dtype=np.float64).ravel())
    below = np.searchsorted(y_sorted, x, side="left")
    equal = np.searchsorted(y_sorted, x, side="right") - below
    return float(below.sum() + 0.5 * equal.sum())


def z_u(generated_distances: Any, held_out_distances: Any) -> float:
    r"""Meehan et al.'s :math:`Z_U = (U - mn/2) / \sqrt{mn(m+n+1)/12}`, U =
    :func:`mann_whitney_u` (generated, held-out) over the m generated and n held-out
    nearest-training distances. Negative: generations closer to training than held-out
    images (data-copying). No tie correction (distances are continuous); the authors' code
    adds a 0.5 continuity correction for its one-sided p-value, which is left out here.

    >>> round(z_u([0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]), 4)   # all closer: -sqrt(3mn/(m+n+1))
    -2.1213
    """
    m, n = np.size(generated_distances), np.size(held_out_distances)
    if m == 0 or n == 0:
        raise ValueError(f"z_u: needs at least one generated and one held-out distance, got m={m}, n={n}")
    u = mann_whitney_u(generated_distances, held_out_distances)
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


@dataclasses.dataclass(frozen=True)
class DataCopyingTest:
    """C_T, the unpartitioned Z_U, per cell (one row each): image counts, Z_U, held-out share
    P_n(pi) and whether the cell counts toward C_T (in Pi_tau); and the cells' k-means
    centroids (``scipy.cluster.vq.vq(features, centroids)`` assigns images to cells)."""

    c_t: float
    z_u_global: float
    cells: pd.DataFrame = dataclasses.field(compare=False)
    centroids: np.ndarray = dataclasses.field(compare=False, repr=False)

    @property
    def counted_generated_share(self) -> float:
        """Share of the generations that lie in cells counted toward C_T."""
        return float(self.cells.n_generated[self.cells.counted].sum() / self.cells.n_generated.sum())


def _cell_table(generated: np.ndarray, held_out: np.ndarray, training: np.ndarray, centroids: np.ndarray,
                min_generated_per_cell: int) -> pd.DataFrame:
    cell_of = {name: vq.vq(x, centroids)[0] for name, x in
               (("generated", generated), ("held_out", held_out), ("training", training))}
    rows = []
    for cell in range(len(centroids)):
        g, p, t = (x[cell_of[name] == cell] for name, x in
                   (("generated", generated), ("held_out", held_out), ("training", training)))
        defined = min(len(g), len(p), len(t)) > 0
        z = z_u(nearest_distances(g, t), nearest_distances(p, t)) if defined else float("nan")
        rows.append({"cell": cell, "n_training": len(t), "n_held_out": len(p), "n_generated": len(g), "z_u": z,
                     "held_out_share": len(p) / len(held_out),
                     "counted": defined and len(g) >= min_generated_per_cell})
    return pd.DataFrame(rows)


def data_copying_test(generated: Any, held_out: Any, training: Any, n_cells: int = 5,
                      min_generated_per_cell: int = MIN_GENERATED_PER_CELL,
                      generator: torch.Generator | None = None) -> DataCopyingTest:
    """Meehan et al.'s C_T over a k-means partition of the training features into ``n_cells``
    cells (k-means++ seeded from ``generator``; every set assigned to its nearest centroid).

    A cell counts (Pi_tau) when it holds at least ``min_generated_per_cell`` generations; the
    authors' code keeps cells with more than 20 (tau = 20/m). Within a cell, distances go to
    that cell's training images, as in the authors' code. A cell without held-out images has
    weight P_n(pi) = 0 and an undefined Z_U: it is reported and left out (the authors' code
    refuses such a partition); ``counted_generated_share`` says how many generations C_T
    covers. In thousands of feature dimensions k-means can isolate small groups of training
    images: fewer cells, or features reduced beforehand, keep held-out images in every cell.
    Euclidean distances: pass L2-normalised features to rank by cosine similarity instead.

    >>> rng = np.random.default_rng(1)
    >>> training, held_out, fresh = (rng.normal(size=(400, 8)) for _ in range(3))
    >>> result = data_copying_test(fresh, held_out, training, n_cells=4, generator=torch.Generator().manual_seed(0))
    >>> round(result.c_t, 2), result.cells.n_generated.tolist()
    (0.27, [98, 90, 104, 108])
    """
    g, p, t = (_as_features(x, name) for x, name in ((generated, "generated"), (held_out, "held_out"),
                                                     (training, "training")))
    if not 1 <= n_cells <= len(t):
        raise ValueError(f"data_copying_test: n_cells must be in [1, {len(t)} training images], got {n_cells}")
    seed = int(torch.randint(0, 2**62, (1,), generator=default_generator(generator)))
    centroids, _ = vq.kmeans2(t, n_cells, minit="++", seed=np.random.default_rng(seed), missing="raise")
    cells = _cell_table(g, p, t, centroids, min_generated_per_cell)
    counted = cells[cells.counted]
    if counted.empty:
        raise ValueError(f"data_copying_test: no cell holds {min_generated_per_cell} generations and a held-out "
                         f"image (generations {cells.n_generated.tolist()}, held-out {cells.n_held_out.tolist()}); "
                         f"use fewer cells or lower min_generated_per_cell")
    c_t = float((counted.held_out_share * counted.z_u).sum() / counted.held_out_share.sum())
    return DataCopyingTest(c_t, z_u(nearest_distances(g, t), nearest_distances(p, t)), cells, centroids)


# ---------------------------------------------------------------- pixel level

def _pixel_rows(images: Any, name: str) -> np.ndarray:
    images_uint8 = as_uint8_images(images, name)
    return images_uint8.reshape(len(images_uint8), -1).numpy().astype(np.float64) / 255.0


def paired_pixel_mse(generated_images: Any, training_images: Any) -> np.ndarray:
    """Per-pixel mean squared error on [0, 1] between each generation and its own training
    image (same order, same size).

    >>> white, black = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8), torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    >>> paired_pixel_mse(torch.cat([white, black]), torch.cat([white, white])).tolist()
    [0.0, 1.0]
    """
    generated = _pixel_rows(generated_images, "generated_images")
    training = _pixel_rows(training_images, "training_images")
    if generated.shape != training.shape:
        raise ValueError(f"paired_pixel_mse: generated_images {generated.shape} and training_images "
                         f"{training.shape} must pair one to one at one size (images x pixels)")
    return ((generated - training) ** 2).mean(axis=1)


def nearest_pixel_mse(query_images: Any, training_images: Any) -> np.ndarray:
    """Per-pixel MSE on [0, 1] from each query image to its nearest training image.

    >>> black, grey, white = (torch.full((1, 3, 4, 4), v, dtype=torch.uint8) for v in (0, 128, 255))
    >>> nearest_pixel_mse(black, torch.cat([white, grey])).round(4).tolist()
    [0.252]
    """
    queries, training = _pixel_rows(query_images, "query_images"), _pixel_rows(training_images, "training_images")
    if queries.shape[1] != training.shape[1]:
        raise ValueError(f"nearest_pixel_mse: query and training images differ in size "
                         f"({queries.shape[1]} vs {training.shape[1]} values)")
    return nearest_distances(queries, training) ** 2 / queries.shape[1]


def pixel_copy_share(generated_images: Any, own_training_images: Any, held_out_images: Any, training_images: Any,
                     quantile: float = PIXEL_QUANTILE, confidence: float = CONFIDENCE) -> CopyShare:
    """Share of generations (for training captions) closer in pixels to their own training
    image than the ``quantile`` of held-out images' MSE to their nearest training image.

    >>> g = torch.Generator().manual_seed(0)
    >>> training = torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    >>> held_out = torch.randint(0, 256, (40, 3, 8, 8), generator=g, dtype=torch.uint8)
    >>> share = pixel_copy_share(training[:10], training[:10], held_out, training)
    >>> share.count, round(share.threshold, 3)
    (10, 0.124)
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    threshold = float(np.quantile(nearest_pixel_mse(held_out_images, training_images), quantile))
    mse = paired_pixel_mse(generated_images, own_training_images)
    return copy_share(mse, threshold, f"pixel MSE to own training image < held-out q{quantile:g}", above=False,
                      confidence=confidence)
