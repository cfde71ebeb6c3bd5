"""Diversity of one image set: Vendi score and intra-set perceptual distance.

- Vendi score (Friedman & Dieng, 2023): with a similarity kernel K (n x n, K_ii = 1), the
  exponential of the Shannon entropy of the eigenvalues of K / n, i.e. the effective number of
  distinct images (1 for n copies of one image, n for n orthogonal ones). Here K is the cosine
  similarity of backbone features; its eigenvalues are the squared singular values of the
  row-normalised features / sqrt(n), so no n x n eigendecomposition is needed.
- Intra-set LPIPS (the "LPIPS diversity" of study S1): the mean perceptual distance over random
  pairs of distinct images, drawn with a seeded generator.

>>> import numpy as np
>>> round(vendi_score(np.eye(5)), 6), round(vendi_score(np.ones((4, 3))), 6)
(5.0, 1.0)
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lora_core.metrics.backbones import get_backbone
from lora_core.metrics.lpips import get_perceptual
from lora_core.metrics.preprocess import as_uint8_images
from lora_core.metrics.stats import MetricResult, bootstrap_result, default_generator


def vendi_score(features: Any) -> float:
    """Vendi score of features (n, d) under the cosine-similarity kernel."""
    x = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"vendi_score: expected features (n, d) with n >= 1, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("vendi_score: a feature vector is all zeros; cosine similarity is undefined")
    eigenvalues = torch.linalg.svdvals(torch.from_numpy(x / norms / np.sqrt(len(x)))).numpy() ** 2
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def vendi_result(images: Any, backbone: str = "inception", cache: Any = None, n_resamples: int = 200,
                 generator: torch.Generator | None = None) -> MetricResult:
    """Vendi score of an image set on a backbone's features, with a (re-centred) bootstrap interval
    cut to the score's range, 1 to the number of images."""
    model = get_backbone(backbone)
    images_uint8 = as_uint8_images(images, "images")
    features = model.features(images_uint8, cache=cache).numpy()
    label = f"Vendi ({model.label} cosine, {images_uint8.shape[-1]}->{model.input_size} px)"
    return bootstrap_result(label, model.name, features, vendi_score, n_resamples, generator,
                            note=f"effective number of distinct images out of {len(features)}", recentre=True,
                            support=(1.0, float(len(features))))


def random_pairs(n: int, n_pairs: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n_pairs, 2) indices of distinct images; all n(n-1)/2 pairs when that is not more than asked."""
    if n < 2:
        raise ValueError(f"intra-set diversity needs at least 2 images, got n={n}")
    all_pairs = torch.combinations(torch.arange(n), r=2)
    if len(all_pairs) <= n_pairs:
        return all_pairs
    return all_pairs[torch.randperm(len(all_pairs), generator=default_generator(generator))[:n_pairs]]


def lpips_diversity(images: Any, name: str = "st-lpips-alex", n_pairs: int = 200, n_resamples: int = 1000,
                    generator: torch.Generator | None = None) -> MetricResult:
    """Mean perceptual distance over random pairs of distinct images (interval: bootstrap over pairs)."""
    metric = get_perceptual(name)
    images_uint8 = as_uint8_images(images, "images")
    generator = default_generator(generator)
    pairs = random_pairs(len(images_uint8), n_pairs, generator)
    distances = metric.distances(images_uint8[pairs[:, 0]], images_uint8[pairs[:, 1]]).numpy()
    label = f"{metric.describe(images_uint8.shape[-1])} diversity"
    return bootstrap_result(label, name, distances, np.mean, n_resamples, generator,
                            note=f"mean over {len(pairs)} pairs of {len(images_uint8)} images")
