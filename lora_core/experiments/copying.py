"""Chapter 8's memorisation readings, built on :mod:`lora_core.metrics.memorisation`.

For one model (its generations pooled over training seeds) against one subject set:

* **copy share, training captions**: generations for training captions whose nearest training
  image (cosine of backbone features) is more similar than 99% of held-out real images are to
  theirs (``metrics.memorisation.feature_copy_share``), with a Wilson interval;
* the same for **held-out captions** (new subjects): copying there is a training image returned
  for a prompt it does not match;
* **pixel check**: the training-caption generations against their own training image, pixel by
  pixel (``pixel_copy_share``), which the feature measure should agree with where a generation
  is a real copy;
* **data-copying test** (Meehan et al. 2020, ``data_copying_test``) on the held-out-caption
  generations against the held-out real images. Generations for *training* captions are not
  used there: in this world one caption names one image, so a faithful model's image for a
  training caption lies near that caption's training image without copying anything, and the
  test's premise (generated and held-out images drawn alike) would not hold.

Features are L2-normalised first, so the test's Euclidean nearest neighbours are the copy
share's cosine ones.

>>> copying_cells(75, 3), copying_cells(25, 3), copying_cells(8, 3)
((3, 20), (1, 20), (1, 8))
>>> memorisation_verdict(copy_share([0.0] * 100, 0.5, "cos"), copy_share([1.0] * 30 + [0.0] * 70, 0.5, "cos"), 16, 64)
'rank 64 copies more than rank 16: 30% vs 0% of generations, difference 0.3 [0.21, 0.4]'
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.experiments.common import EvalSet, _selection
from lora_core.experiments.prompt_groups import CONCRETE, TRAINING, absolute_folder, set_folder, set_keys
from lora_core.metrics.memorisation import (FEATURE_QUANTILE, MIN_GENERATED_PER_CELL, CopyShare,
                                            DataCopyingTest, calibrate_similarity_threshold,
                                            copy_share, data_copying_test, feature_copy_share,  # noqa: F401
                                            nearest_training, paired_pixel_mse, pixel_copy_share)
from lora_core.metrics.proportions import difference_interval

SHARE_MEASURES = {"features, training captions": "copy share of training-caption generations (features)",
                  "features, held-out captions": "copy share of held-out-caption generations (features)",
                  "pixels, training captions": "pixel copies of the own training image (training captions)"}


def unit_rows(features: Any) -> np.ndarray:
    """Rows scaled to length 1 (float64), so Euclidean distances rank as cosine similarities."""
    rows = np.asarray(features, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True).clip(min=1e-12)


def copying_cells(n_generated: int, n_cells: int) -> tuple[int, int]:
    """Cells of the data-copying test and the generations a cell needs to count: Meehan et al.'s
    20 per cell and at most ``n_cells`` cells, fewer cells when the generations cannot fill them;
    below 20 generations one cell that counts with all of them (C_T is then the global Z_U)."""
    per_cell = min(MIN_GENERATED_PER_CELL, n_generated)
    return max(1, min(n_cells, n_generated // per_cell)), per_cell


@dataclass(frozen=True)
class References:
    """The real images a model's generations are held against: the training images (and their
    keys) and held-out images, as uint8 pixels and unit-length backbone features."""

    training_keys: tuple[str, ...]
    training_images: torch.Tensor
    training_features: np.ndarray
    held_out_images: torch.Tensor
    held_out_features: np.ndarray

    def own_training_images(self, keys: Sequence[str]) -> torch.Tensor:
        position = {key: i for i, key in enumerate(self.training_keys)}
        missing = [k for k in keys if k not in position]
        if missing:
            raise ValueError(f"keys: {missing[:5]} are not among the reference training images")
        return self.training_images[[position[k] for k in keys]]


@dataclass(frozen=True)
class Generations:
    """One model's generations, pooled over its training seeds: for training captions (pixels,
    unit features, the caption's own subject key) and for held-out captions (unit features)."""

    training_images: torch.Tensor
    training_features: np.ndarray
    training_keys: tuple[str, ...]
    held_out_features: np.ndarray


def copy_shares(generations: Generations, refs: References) -> dict[str, CopyShare]:
    """The three shares of :data:`SHARE_MEASURES` (thresholds calibrated on the held-out images)."""
    own = refs.own_training_images(generations.training_keys)
    return {"features, training captions": feature_copy_share(generations.training_features, refs.training_features,
                                                             refs.held_out_features),
            "features, held-out captions": feature_copy_share(generations.held_out_features, refs.training_features,
                                                             refs.held_out_features),
            "pixels, training captions": pixel_copy_share(generations.training_images, own, refs.held_out_images,
                                                          refs.training_images)}


def copying_test(generations: Generations, refs: References, n_cells: int, seed: int = 0) -> DataCopyingTest:
    """Meehan et al.'s test on the held-out-caption generations (:func:`copying_cells` cells)."""
    cells, per_cell = copying_cells(len(generations.held_out_features), n_cells)
    return data_copying_test(generations.held_out_features, refs.held_out_features, refs.training_features,
                             n_cells=cells, min_generated_per_cell=per_cell,
                             generator=torch.Generator().manual_seed(seed))


def generation_table(generations: Generations, refs: References, pixel_threshold: float) -> pd.DataFrame:
    """One row per training-caption generation: its own key, nearest training key and cosine, whether
    that is its own image, the pixel MSE to its own image, and both copy flags."""
    nearest, similarity = nearest_training(generations.training_features, refs.training_features)
    threshold = calibrate_similarity_threshold(refs.held_out_features, refs.training_features, FEATURE_QUANTILE)
    mse = paired_pixel_mse(generations.training_images, refs.own_training_images(generations.training_keys))
    nearest_keys = [refs.training_keys[i] for i in nearest]
    return pd.DataFrame({"key": generations.training_keys, "nearest key": nearest_keys, "nearest cosine": similarity,
                         "nearest is own": [a == b for a, b in zip(generations.training_keys, nearest_keys)],
                         "pixel mse to own": mse, "feature copy": similarity > threshold,
                         "pixel copy": mse < pixel_threshold})


def share_rows(model: str, shares: dict[str, CopyShare]) -> list[dict[str, Any]]:
    """Tidy rows of a model's shares: count, n, share and Wilson interval, threshold."""
    return [{"model": model, "measure": key, "count": s.count, "n": s.n, "value": s.share, "ci_low": s.ci_low,
             "ci_high": s.ci_high, "threshold": s.threshold} for key, s in shares.items()]


def copying_test_row(model: str, test: DataCopyingTest) -> dict[str, Any]:
    """C_T, the global Z_U and how many cells and generations C_T covers."""
    counted = test.cells[test.cells.counted]
    return {"model": model, "C_T": test.c_t, "Z_U (all generations)": test.z_u_global,
            "cells counted": f"{len(counted)} of {len(test.cells)}",
            "generations covered": test.counted_generated_share}


def share_difference(first: CopyShare, second: CopyShare) -> tuple[float, float, float]:
    """``first.share - second.share`` with Newcombe's interval (independent generations)."""
    return difference_interval(first.count, first.n, second.count, second.n)


def memorisation_verdict(low_rank_share: CopyShare, high_rank_share: CopyShare, low_rank: int, high_rank: int) -> str:
    """Whether the higher rank copies more, less, or no detectably different share of generations
    than the lower: the 95% interval of the difference lies above 0, below 0, or covers 0."""
    difference, low, high = share_difference(high_rank_share, low_rank_share)
    shares = f"{high_rank_share.share:.0%} vs {low_rank_share.share:.0%} of generations"
    detail = f"{shares}, difference {difference:.2g} [{low:.2g}, {high:.2g}]"
    if low > 0:
        return f"rank {high_rank} copies more than rank {low_rank}: {detail}"
    if high < 0:
        return f"rank {high_rank} copies less than rank {low_rank}: {detail}"
    return f"no detectable difference between rank {low_rank} and rank {high_rank}: {detail}"


# ---- chapter 8's models against the set ---------------------------------------------------------

def reference_keys(set_name: str, split: str, n_reference: int = 0) -> list[str]:
    """The set's ``split`` keys behind the copy thresholds: all, or ``n_reference`` of them (seeded)."""
    keys = set_keys(set_name, split)
    return [keys[i] for i in _selection(len(keys), n_reference)] if n_reference else keys


def reference_images(set_name: str, n_reference: int, resolution: int, backbone, cache) -> References:
    """:class:`References` of the set: training and held-out real images with unit features."""
    from lora_core.metrics.style import load_true_images

    loaded = {}
    for split in ("train", "heldout"):
        keys = reference_keys(set_name, split, n_reference)
        images = load_true_images(keys, absolute_folder(set_folder(set_name, split)), resolution)
        loaded[split] = (keys, images, unit_rows(backbone.features(images, f"{split} images", cache=cache)))
    (train_keys, train_images, train_features), (_, held_images, held_features) = loaded["train"], loaded["heldout"]
    return References(tuple(train_keys), train_images, train_features, held_images, held_features)


def reference_features_job(set_name: str, n_reference: int, resolution: int, backbone_name: str):
    """:func:`reference_images`' features into the shared features cache, as a ``train_pool`` job
    (they need no run)."""
    from lora_core.train_pool import independent

    return independent(cache_reference_features, (set_name, n_reference, resolution, backbone_name))


def cache_reference_features(set_name: str, n_reference: int, resolution: int, backbone_name: str) -> None:
    """Compute (or find) :func:`reference_images`' features in the shared features cache."""
    from lora_core.experiments.common import features_cache
    from lora_core.metrics.backbones import get_backbone

    reference_images(set_name, n_reference, resolution, get_backbone(backbone_name), features_cache())


def pooled(images: dict[tuple[str, int | None, str], torch.Tensor], model: str,
           group: str) -> tuple[torch.Tensor, list[int | None]]:
    """``model``'s images of one prompt set, its runs concatenated in seed order, and those seeds."""
    seeds = [seed for (name, seed, kind) in images if name == model and kind == group]
    return torch.cat([images[(model, seed, group)] for seed in seeds]), seeds


def pooled_generations(images: dict[tuple[str, int | None, str], torch.Tensor], model: str,
                       sets: dict[str, EvalSet], backbone, cache) -> Generations:
    """:class:`Generations` of ``model``, its runs' training- and held-out-caption images pooled."""
    (training, seeds), (held_out, _) = pooled(images, model, TRAINING), pooled(images, model, CONCRETE)
    features = {name: unit_rows(backbone.features(x, name, cache=cache))
                for name, x in (("training-caption generations", training), ("held-out-caption generations", held_out))}
    return Generations(training, features["training-caption generations"], sets[TRAINING].subject_keys * len(seeds),
                       features["held-out-caption generations"])


@dataclass
class Memorisation:
    """What chapter 8 measured about copying, per model: the shares (:data:`SHARE_MEASURES`,
    Wilson intervals), the data-copying test, and one row per training-caption generation."""

    shares: dict[str, dict[str, Any]] = field(default_factory=dict)   # model -> measure -> CopyShare
    share_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    generations: pd.DataFrame = field(default_factory=pd.DataFrame)
    held_out_similarity: np.ndarray = field(default_factory=lambda: np.zeros(0))
    threshold: float = float("nan")


def measure_memorisation(images, sets: dict[str, EvalSet], models: Sequence[str], refs, backbone, cache,
                         n_cells: int) -> Memorisation:
    """Every copy measure of this module for each model (generations pooled over its seeds)."""
    found = Memorisation(held_out_similarity=nearest_training(refs.held_out_features, refs.training_features)[1],
                         threshold=calibrate_similarity_threshold(refs.held_out_features, refs.training_features))
    shares, tests, generations = [], [], []
    for model in models:
        generated = pooled_generations(images, model, sets, backbone, cache)
        found.shares[model] = copy_shares(generated, refs)
        shares += share_rows(model, found.shares[model])
        tests.append(copying_test_row(model, copying_test(generated, refs, n_cells)))
        pixel_threshold = found.shares[model]["pixels, training captions"].threshold
        seeds = pooled(images, model, TRAINING)[1]
        generations.append(generation_table(generated, refs, pixel_threshold)
                           .assign(model=model, seed=[seed for seed in seeds for _ in sets[TRAINING].prompts]))
    found.share_table, found.tests = pd.DataFrame(shares), pd.DataFrame(tests)
    found.generations = pd.concat(generations, ignore_index=True)
    return found
