"""Small trained heads of the learned metrics: modules, training loop, files.

The learned metrics are small heads on top of frozen backbone features (the offline alignment
stand-in, the subject-group classifier) or a small CNN on the pixels themselves (the style judge).
Each ships as a safetensors file under ``models/metrics/`` with a JSON card beside it (data,
split, accuracy, seed); the card is also stored in the safetensors metadata, so a file found
alone still says what it is.

>>> import torch
>>> head = FeatureClassifier(in_dim=3, classes=("a", "b"))
>>> head(torch.zeros(5, 3)).shape
torch.Size([5, 2])
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lora_core.io import atomic_path, atomic_write_json, read_safetensors
from lora_core.paths import REPO_ROOT

METRIC_MODELS_DIR = REPO_ROOT / "models" / "metrics"


class Standardize(torch.nn.Module):
    """Feature-wise (x - mean) / std with statistics fixed from the training features."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features: torch.Tensor) -> "Standardize":
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0).clamp_min(1e-6))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureClassifier(torch.nn.Module):
    """Logistic regression on standardised frozen features; ``classes`` name the outputs."""

    def __init__(self, in_dim: int, classes: tuple[str, ...]):
        super().__init__()
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be >= 2 distinct names, got {classes!r}")
        self.classes = tuple(classes)
        self.standardize = Standardize(in_dim)
        self.linear = torch.nn.Linear(in_dim, len(classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardize(features))

    @torch.no_grad()
    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, n_classes); rows sum to 1."""
        return torch.softmax(self(features.float()), dim=-1)


class ImageClassifier(torch.nn.Module):
    """A small CNN that names the class of a uint8 image straight from its pixels.

    Three stages of two 3x3 convolutions (batch norm, ReLU) of ``width``, ``2 width`` and
    ``4 width`` channels with 2x2 max pooling between stages, then the mean and the maximum of
    each channel over the image and one linear layer. At 32 px and width 32 a forward pass costs
    about 0.08 GFLOP per image (roughly a tenth of EfficientNet-Lite0 at 224 px), so it can score
    thousands of generations per book build.

    >>> net = ImageClassifier(("a", "b"), width=4).eval()
    >>> probs = net.predict_proba(torch.zeros(3, 3, 32, 32, dtype=torch.uint8))
    >>> tuple(probs.shape), bool(torch.allclose(probs.sum(1), torch.ones(3)))
    ((3, 2), True)
    """

    def __init__(self, classes: tuple[str, ...], width: int = 32):
        super().__init__()
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"classes must be >= 2 distinct names, got {classes!r}")
        self.classes, self.width = tuple(classes), width
        layers, channels = [], 3
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            if stage:
                layers.append(torch.nn.MaxPool2d(2))
            for _ in range(2):
                layers += [torch.nn.Conv2d(channels, out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(out),
                           torch.nn.ReLU(inplace=True)]
                channels = out
        self.features = torch.nn.Sequential(*layers)
        self.linear = torch.nn.Linear(2 * channels, len(classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of float images in [-1, 1], (N, 3, H, W)."""
        maps = self.features(images)
        return self.linear(torch.cat([maps.mean((2, 3)), maps.amax((2, 3))], dim=1))

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities (N, n_classes) of uint8 images; rows sum to 1."""
        if self.training:
            raise RuntimeError("predict_proba needs eval mode (batch norm would use the batch's statistics)")
        return torch.cat([torch.softmax(self(images[i:i + batch_size].float() / 127.5 - 1), dim=-1)
                          for i in range(0, len(images), batch_size)])


def train_classifier(features: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...], *,
                     seed: int = 0, epochs: int = 300, lr: float = 1e-2,
                     weight_decay: float = 1e-2) -> FeatureClassifier:
    """Full-batch AdamW on cross-entropy: no data order, so the result depends only on ``seed``."""
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"features (N, D) and labels (N,) must match, got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(seed)
    head = FeatureClassifier(features.shape[1], classes)
    with torch.no_grad():
        head.linear.weight.copy_(torch.randn(head.linear.weight.shape, generator=generator) * 0.01)
        head.linear.bias.zero_()
    head.standardize.fit(features)
    optimizer = torch.optim.AdamW(head.linear.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval()


def accuracy(logits_or_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy.

    >>> accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
    0.6666666666666666
    """
    return float((logits_or_probs.argmax(-1) == labels).double().mean())


def save_head(module: torch.nn.Module, path: str | Path, card: dict[str, Any]) -> Path:
    """Write ``module``'s tensors to ``path`` (safetensors, card in metadata) and ``<path>.json``."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"card": json.dumps(card, sort_keys=True)})
    atomic_write_json(path.with_suffix(".json"), card)
    return path


def load_head(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and card of a head file written by :func:`save_head` (safetensors only)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: heads load only from .safetensors files")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such head file; retrain with "
                                "`python -m lora_core.toy train-heads`")
    state, metadata = read_safetensors(path)
    return state, json.loads(metadata.get("card", "{}"))


IMAGE_CNN = "image-cnn"   # the card's ``architecture["kind"]`` of an :class:`ImageClassifier`


def load_classifier(path: str | Path) -> tuple[FeatureClassifier | ImageClassifier, dict[str, Any]]:
    """The classifier of a head file and its card: an :class:`ImageClassifier` when the card's
    ``architecture`` says so, else a :class:`FeatureClassifier`; class names come from the card."""
    state, card = load_head(path)
    if "classes" not in card:
        raise ValueError(f"{path}: card has no 'classes'; not a classifier head")
    architecture = card.get("architecture", {})
    if architecture.get("kind") == IMAGE_CNN:
        head = ImageClassifier(tuple(card["classes"]), int(architecture["width"]))
    else:
        head = FeatureClassifier(state["linear.weight"].shape[1], tuple(card["classes"]))
    head.load_state_dict(state)
    return head.eval(), card
