"""Style measures in the paired emoji world, where every subject is drawn by every vendor.

- Paired distances: a generation of subject ``k`` against the true image of ``k`` in the target
  style and in the base style (pixel MSE and backbone-feature distance): exact, because the
  paired images exist.
- :class:`StyleClassifier`: P(vendor) from the style judge of ``models/metrics`` (a small CNN
  trained on VAE round trips of real images at the tiny profile's 32 px, so decoded generations
  are judged on equal terms; ``python -m lora_core.toy train-judge``).
  :class:`SubjectGroupClassifier`: the emoji category from real-image features, for "the subject
  stays recognisable".
- :func:`cross_style_control`: each adapter should score best on its own style.
- Fidelity as in the LyCORIS evaluation (Yeh et al., ICLR 2024): mean cross-pair cosine and
  squared centroid distance between generated and training features.
- Base-model preservation: Gram-matrix (Gatys) style distance between base and adapted outputs
  of the same prompt and seed, on EfficientNet-Lite0 intermediate feature maps.

Every score is a :class:`~lora_core.metrics.stats.MetricResult` with a 95% bootstrap interval.
The measures take folders of true images and class names, not the toy world's style names: the
caller maps a style to its folder (:func:`lora_core.world.true_images_dir`).

>>> import numpy as np
>>> gen = np.array([[1.0, 0.0], [0.0, 1.0]]); train = np.array([[1.0, 0.0]])
>>> float(fidelity_cosine(gen, train)), float(squared_centroid_distance(gen, train))
(0.5, 0.5)
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.images import prepare_image
from lora_core.metrics.heads import METRIC_MODELS_DIR, ImageClassifier, load_classifier
from lora_core.metrics.preprocess import as_uint8_images, check_same_shape, resize_for_backbone
from lora_core.metrics.stats import MetricResult, bootstrap_result

STYLE_CLASSIFIER_PATH = METRIC_MODELS_DIR / "style_classifier.safetensors"
SUBJECT_GROUP_PATHS = {level: METRIC_MODELS_DIR / f"subject_{level}.safetensors" for level in ("category", "subcategory")}
# EfficientNet-Lite0 blocks that end its first four stages (112, 56, 28, 14 px at 224 px input):
# early layers carry texture and colour statistics, the content of a Gram style loss.
GRAM_BLOCKS = (0, 2, 4, 7)


def load_true_images(subject_keys: Sequence[str], folder: str | Path, resolution: int) -> torch.Tensor:
    """uint8 (N, 3, R, R): ``folder/<key>.png`` of each subject, prepared like training images.

    The caller names the folder (``lora_core.world.true_images_dir("twemoji")`` for a style of
    the toy world)."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a folder of true images (<key>.png)")
    missing = [k for k in subject_keys if not (folder / f"{k}.png").is_file()]
    if missing:
        raise ValueError(f"subject_keys: no image for {missing[:5]} in {folder}")
    images = []
    for key in subject_keys:
        with Image.open(folder / f"{key}.png") as im:
            images.append(prepare_image(im, resolution))
    return as_uint8_images(images, "true images")


def pixel_mse_pairs(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """Per-pair mean squared error of uint8 images scaled to [0, 1] (float64, shape (N,))."""
    check_same_shape(first, second, "first", "second")
    diff = first.double() / 255.0 - second.double() / 255.0
    return diff.pow(2).flatten(1).mean(1).numpy()


def feature_distance_pairs(first: Any, second: Any) -> np.ndarray:
    """Per-pair Euclidean distance between feature rows (float64, shape (N,))."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"features must be two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def paired_style_distances(generated: Any, subject_keys: Sequence[str], target_folder: str | Path,
                           base_folder: str | Path, backbone: str = "effnet-lite0", cache: Any = None,
                           generator: torch.Generator | None = None) -> dict[str, MetricResult]:
    """Distances of each generation to its subject's true image in the target and in the base style,
    whose images are ``<key>.png`` in ``target_folder`` and ``base_folder`` (named by the folder).

    Returns ``{"pixel-mse-target", "pixel-mse-base", "feature-target", "feature-base"}``; a style
    adapter should move generations towards the target (lower) and away from the base (higher).
    """
    from lora_core.metrics.backbones import get_backbone

    images = as_uint8_images(generated, "generated")
    if len(images) != len(subject_keys):
        raise ValueError(f"generated and subject_keys must pair up: {len(images)} images, {len(subject_keys)} keys")
    net = get_backbone(backbone)
    generated_features = net.features(images, "generated", cache=cache)
    results = {}
    for role, folder in (("target", Path(target_folder)), ("base", Path(base_folder))):
        truth = load_true_images(subject_keys, folder, images.shape[-1])
        results[f"pixel-mse-{role}"] = bootstrap_result(
            f"pixel MSE to true {folder.name}", "pixels", pixel_mse_pairs(images, truth), generator=generator)
        results[f"feature-{role}"] = bootstrap_result(
            f"feature L2 to true {folder.name}", net.name,
            feature_distance_pairs(generated_features, net.features(truth, "true images", cache=cache)),
            generator=generator)
    return results


class _FeatureHeadMetric:
    """A trained classifier loaded from ``models/metrics``: a head on a backbone's features, or a
    CNN on the pixels (``backbone_name`` then names the CNN)."""

    def __init__(self, path: str | Path, cache: Any = None):
        self.head, self.card = load_classifier(path)
        self.classes = self.head.classes
        self.backbone_name = self.card.get("backbone", "effnet-lite0")
        self.resolution = int(self.card.get("resolution", 0)) or None
        self.cache = cache

    @cached_property
    def backbone(self):
        from lora_core.metrics.backbones import get_backbone

        return get_backbone(self.backbone_name)

    def predict_proba(self, images: Any) -> torch.Tensor:
        """Class probabilities (N, len(classes)) for images at the head's training resolution."""
        images = as_uint8_images(images, "images")
        if self.resolution is not None and images.shape[-1] != self.resolution:
            raise ValueError(f"images: this head was trained at {self.resolution} px, got "
                             f"{images.shape[-1]} px (prepare them with lora_core.images.prepare_image)")
        if isinstance(self.head, ImageClassifier):   # judges the pixels: no backbone
            return self.head.predict_proba(images)
        return self.head.predict_proba(self.backbone.features(images, "images", cache=self.cache).float())


class StyleClassifier(_FeatureHeadMetric):
    """P(vendor) for an image; ``p_style`` averages P(target) over generations."""

    def __init__(self, path: str | Path = STYLE_CLASSIFIER_PATH, cache: Any = None):
        super().__init__(path, cache)

    def p_style(self, images: Any, style: str, generator: torch.Generator | None = None) -> MetricResult:
        """Mean P(``style``) over ``images``, where ``style`` is one of :attr:`classes`."""
        if style not in self.classes:
            raise ValueError(f"style: {style!r} is not a class of this classifier ({', '.join(self.classes)})")
        probs = self.predict_proba(images)[:, self.classes.index(style)].double().numpy()
        accuracy = self.card.get("heldout_accuracy")
        note = f"classifier held-out accuracy {accuracy:.2f}" if accuracy is not None else ""
        return bootstrap_result(f"P(style={style})", self.backbone_name, probs, generator=generator, note=note)


class SubjectGroupClassifier(_FeatureHeadMetric):
    """The emoji category of an image; ``p_true_group`` asks whether the subject stays recognisable."""

    def __init__(self, path: str | Path = SUBJECT_GROUP_PATHS["category"], cache: Any = None):
        super().__init__(path, cache)
        self.group_of = dict(self.card.get("group_of", {}))

    def p_true_group(self, images: Any, subject_keys: Sequence[str],
                     generator: torch.Generator | None = None) -> MetricResult:
        unknown = [k for k in subject_keys if k not in self.group_of]
        if unknown:
            raise ValueError(f"subject_keys: unknown subjects {unknown[:5]}")
        probs = self.predict_proba(images)
        if len(probs) != len(subject_keys):
            raise ValueError(f"images and subject_keys must pair up: {len(probs)} images, {len(subject_keys)} keys")
        index = torch.tensor([self.classes.index(self.group_of[k]) for k in subject_keys])
        p_true = probs[torch.arange(len(index)), index].double().numpy()
        level = self.card.get("level", "category")
        return bootstrap_result(f"P(true {level})", self.backbone_name, p_true, generator=generator,
                                note=f"classifier held-out accuracy {self.card.get('heldout_accuracy', float('nan')):.2f}")


def cross_style_control(scores: Any, adapter_styles: Sequence[str] | None = None,
                        target_styles: Sequence[str] | None = None,
                        higher_is_better: bool = True) -> pd.DataFrame:
    """Check that each adapter scores best on its own style.

    ``scores[i, j]`` is adapter ``i``'s score against target style ``j`` (a DataFrame indexed by
    adapter style with target styles as columns, or an array with the two name lists). Returns one
    row per adapter: its own score, its best other style and score, the margin (positive = own
    style wins) and ``passes``.

    >>> table = cross_style_control([[0.9, 0.2], [0.3, 0.4]], ["a", "b"], ["a", "b"])
    >>> table[["best_style", "passes"]].values.tolist()
    [['a', True], ['b', True]]
    """
    frame = scores if isinstance(scores, pd.DataFrame) else None
    if frame is None:
        if adapter_styles is None or target_styles is None:
            raise ValueError("adapter_styles and target_styles are required when scores is not a DataFrame")
        matrix = np.asarray(scores, dtype=np.float64)
        if matrix.shape != (len(adapter_styles), len(target_styles)):
            raise ValueError(f"scores has shape {matrix.shape}, expected (len(adapter_styles), "
                             f"len(target_styles)) = ({len(adapter_styles)}, {len(target_styles)})")
        frame = pd.DataFrame(matrix, index=list(adapter_styles), columns=list(target_styles))
    missing = [s for s in frame.index if s not in frame.columns]
    if missing:
        raise ValueError(f"adapter_styles: {missing} are not among the target styles {list(frame.columns)}")
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for adapter, row in frame.iterrows():
        others = row.drop(adapter)
        best_other = (others * sign).idxmax() if len(others) else None
        own = float(row[adapter])
        other = float(others[best_other]) if best_other is not None else float("nan")
        margin = sign * (own - other) if best_other is not None else float("inf")
        rows.append({"adapter": adapter, "own_score": own, "best_other_style": best_other,
                     "best_other_score": other, "best_style": adapter if margin > 0 else best_other,
                     "margin": margin, "passes": bool(margin > 0)})
    return pd.DataFrame(rows)


def _unit_rows(features: Any, name: str) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"{name}: expected features (N, D) with N >= 1, got shape {x.shape}")
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def fidelity_cosine(generated_features: Any, training_features: Any) -> float:
    """Mean cosine similarity over all (generated, training) pairs (LyCORIS "image similarity")."""
    g, t = _unit_rows(generated_features, "generated_features"), _unit_rows(training_features, "training_features")
    if g.shape[1] != t.shape[1]:
        raise ValueError(f"feature sizes differ: generated {g.shape[1]}, training {t.shape[1]}")
    return float((g @ t.T).mean())


def squared_centroid_distance(generated_features: Any, training_features: Any) -> float:
    """``||mean(g) - mean(t)||^2`` of L2-normalised features (LyCORIS squared centroid distance)."""
    g, t = _unit_rows(generated_features, "generated_features"), _unit_rows(training_features, "training_features")
    if g.shape[1] != t.shape[1]:
        raise ValueError(f"feature sizes differ: generated {g.shape[1]}, training {t.shape[1]}")
    return float(np.sum((g.mean(0) - t.mean(0)) ** 2))


def fidelity(generated: Any, training_images: Any, backbone: str = "effnet-lite0", cache: Any = None,
             generator: torch.Generator | None = None, n_resamples: int = 1000) -> dict[str, MetricResult]:
    """Fidelity to the training images: ``{"cosine", "centroid"}``, both sets bootstrapped independently."""
    from lora_core.metrics.backbones import get_backbone

    net = get_backbone(backbone)
    g = net.features(generated, "generated", cache=cache).numpy()
    t = net.features(training_images, "training_images", cache=cache).numpy()
    return {"cosine": bootstrap_result("fidelity cosine", net.name, (g, t), fidelity_cosine, n_resamples, generator),
            "centroid": bootstrap_result("squared centroid distance", net.name, (g, t),
                                         squared_centroid_distance, n_resamples, generator)}


def gram_matrices(feature_maps: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, C) Gram matrices ``F F^T / (C H W)`` (Gatys et al.)."""
    if feature_maps.ndim != 4:
        raise ValueError(f"feature_maps must be (N, C, H, W), got shape {tuple(feature_maps.shape)}")
    n, c, h, w = feature_maps.shape
    flat = feature_maps.reshape(n, c, h * w).double()
    return flat @ flat.transpose(1, 2) / (c * h * w)


def gram_distance_pairs(maps_a: Sequence[torch.Tensor], maps_b: Sequence[torch.Tensor]) -> np.ndarray:
    """Per-pair style distance: sum over layers of the mean squared Gram-matrix difference."""
    if len(maps_a) != len(maps_b):
        raise ValueError(f"maps_a and maps_b need the same layers: {len(maps_a)} vs {len(maps_b)}")
    total = None
    for a, b in zip(maps_a, maps_b):
        check_same_shape(a, b, "maps_a", "maps_b")
        layer = (gram_matrices(a) - gram_matrices(b)).pow(2).flatten(1).mean(1)
        total = layer if total is None else total + layer
    return total.numpy()


@torch.no_grad()
def effnet_feature_maps(images: Any, blocks: Sequence[int] = GRAM_BLOCKS, batch_size: int = 16) -> list[torch.Tensor]:
    """EfficientNet-Lite0 block outputs for ``images``, from the public backbone's network.

    Runs the stem and the blocks up to the last one asked for, in the order of
    ``EfficientNet.extract_features`` (drop-connect is inactive in eval mode), and stops there.
    """
    from lora_core.metrics.backbones import get_backbone

    backbone = get_backbone("effnet-lite0")
    net = backbone.net
    images = as_uint8_images(images, "images")
    if not blocks or min(blocks) < 0 or max(blocks) >= len(net._blocks):
        raise ValueError(f"blocks must be indices in [0, {len(net._blocks) - 1}], got {tuple(blocks)}")
    captured: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    for start in range(0, len(images), batch_size):
        x = backbone.normalise(resize_for_backbone(images[start:start + batch_size], backbone.input_size))
        x = net._swish(net._bn0(net._conv_stem(x)))
        for index, block in enumerate(net._blocks[:max(blocks) + 1]):
            x = block(x)
            if index in captured:
                captured[index].append(x)
    return [torch.cat(captured[b]) for b in blocks]


def preservation_gram_distance(base_images: Any, adapted_images: Any, blocks: Sequence[int] = GRAM_BLOCKS,
                               generator: torch.Generator | None = None) -> MetricResult:
    """Gram style distance between base and adapted outputs of the same prompts and seeds (lower = preserved)."""
    base = as_uint8_images(base_images, "base_images")
    adapted = as_uint8_images(adapted_images, "adapted_images")
    check_same_shape(base, adapted, "base_images", "adapted_images")
    distances = gram_distance_pairs(effnet_feature_maps(base, blocks), effnet_feature_maps(adapted, blocks))
    return bootstrap_result("Gram style distance (base vs adapted)", f"effnet-lite0 blocks {tuple(blocks)}",
                            distances, generator=generator)
