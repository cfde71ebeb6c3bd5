"""Perceptual distances: shift-tolerant LPIPS offline, LPIPS in the GPU profile.

``ST-LPIPS`` (Ghildyal & Liu, ECCV 2022) is LPIPS whose AlexNet/VGG trunk blurs before every
subsampling step (reflect-padded [1, 2, 1] filters, stride-1 first conv), so a one-pixel shift
barely moves it. ``stlpips-pytorch`` ships the complete trained networks (trunk and linear
heads, ``weights/vST0.0/{alex,vgg}_shift_tolerant.pth``) but imports torchvision and IPython, so
this module rebuilds the same architecture with the same parameter names and loads the file
with ``weights_only=True``. Its values differ from LPIPS: they are reported as ``ST-LPIPS``.

Standard ``LPIPS`` needs torchvision's pretrained trunks (a download), so it is available only
in the sd15/GPU profile through the ``lpips`` package, imported when asked for.

Images are compared at their own resolution, but never below :data:`MIN_SIZE` (the 64 px patch
size LPIPS was calibrated on); smaller images are upsampled with the metric filter of
:mod:`lora_core.metrics.preprocess`.

>>> import torch
>>> metric = get_perceptual("st-lpips-alex")
>>> image = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
>>> float(metric.distances(image, image)[0])
0.0
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lora_core.metrics.backbones import _site_file
from lora_core.metrics.preprocess import as_uint8_images, check_same_shape, resize_for_backbone
from lora_core.metrics.stats import MetricResult, bootstrap_result
from lora_core.profiling import phase

MIN_SIZE = 64
BATCH_SIZE = 16
ST_WEIGHTS = {"alex": "weights/vST0.0/alex_shift_tolerant.pth", "vgg": "weights/vST0.0/vgg_shift_tolerant.pth"}


class BlurDownsample(nn.Module):
    """Reflect-pad by 2, blur with the normalised [1, 2, 1] x [1, 2, 1] filter, subsample by 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1))
        self.pad = nn.ReflectionPad2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=x.shape[1])


def _slices(layers: list[nn.Module], bounds: list[int]) -> nn.ModuleList:
    """Cut ``layers`` at ``bounds`` into Sequentials that keep the global layer index as name."""
    slices = nn.ModuleList()
    for start, stop in zip(bounds[:-1], bounds[1:]):
        part = nn.Sequential()
        for index in range(start, stop):
            part.add_module(str(index), layers[index])
        slices.append(part)
    return slices


def _alex_trunk() -> tuple[list[nn.Module], list[int], list[int]]:
    layers = [
        nn.Conv2d(3, 64, 11, stride=1, padding=2), BlurDownsample(64), nn.ReLU(),
        nn.MaxPool2d(3, stride=1), BlurDownsample(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=1), BlurDownsample(192), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
    ]
    return layers, [0, 3, 7, 11, 13, 15], [64, 192, 384, 256, 256]


def _vgg_trunk() -> tuple[list[nn.Module], list[int], list[int]]:
    layers: list[nn.Module] = []
    channels_in = 3
    for stage, (width, convs) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]):
        if stage > 0:
            layers += [nn.MaxPool2d(2, stride=1), BlurDownsample(channels_in)]
        for _ in range(convs):
            layers += [nn.Conv2d(channels_in, width, 3, padding=1), nn.ReLU()]
            channels_in = width
    return layers, [0, 4, 10, 18, 26, 34], [64, 128, 256, 512, 512]


class ShiftTolerantLPIPS(nn.Module):
    """ST-LPIPS network with stlpips-pytorch's parameter names; inputs in [-1, 1]."""

    def __init__(self, trunk: str = "alex") -> None:
        super().__init__()
        builders = {"alex": _alex_trunk, "vgg": _vgg_trunk}
        if trunk not in builders:
            raise ValueError(f"ShiftTolerantLPIPS: trunk must be one of {sorted(builders)}, got {trunk!r}")
        layers, bounds, channels = builders[trunk]()
        self.trunk = trunk
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self.slices = _slices(layers, bounds)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)

    @property
    def weights_path(self):
        return _site_file("stlpips_pytorch", ST_WEIGHTS[self.trunk])

    def load_shipped_weights(self) -> "ShiftTolerantLPIPS":
        """Load the shipped file, mapping its names onto this module; every key must match."""
        shipped = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        self.load_state_dict({self.local_name(k): v for k, v in shipped.items()}, strict=True)
        return self.eval()

    @staticmethod
    def local_name(shipped_name: str) -> str:
        """``scaling_layer.shift`` -> ``shift``, ``net.slice2.5.weight`` -> ``slices.1.5.weight``,
        ``lin3.model.1.weight`` -> ``heads.3.weight``."""
        parts = shipped_name.split(".")
        if parts[0] == "scaling_layer":
            return parts[1]
        if parts[0] == "net":
            return ".".join(["slices", str(int(parts[1].removeprefix("slice")) - 1), *parts[2:]])
        if parts[0].startswith("lin"):
            return f"heads.{parts[0].removeprefix('lin')}.weight"
        raise KeyError(f"unexpected key {shipped_name!r} in the ST-LPIPS weights file")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances (N,) between image batches in [-1, 1]."""
        hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for block, head in zip(self.slices, self.heads):
            hx, hy = block(hx), block(hy)
            diff = (_unit_normalise(hx) - _unit_normalise(hy)) ** 2
            total = total + head(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalise(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PerceptualDistance:
    """A perceptual network with the metric's name and input handling."""

    def __init__(self, name: str, metric: str, label: str, network: nn.Module) -> None:
        self.name, self.metric, self.label, self.network = name, metric, label, network

    def input_size(self, source_size: int) -> int:
        return max(source_size, MIN_SIZE)

    def describe(self, source_size: int) -> str:
        return f"{self.metric} ({self.label}, {source_size}->{self.input_size(source_size)} px)"

    @torch.inference_mode()
    def distances(self, images_a: Any, images_b: Any, name_a: str = "images_a", name_b: str = "images_b",
                  batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """Float64 distances (N,) between paired images (any source preprocess accepts)."""
        a, b = as_uint8_images(images_a, name_a), as_uint8_images(images_b, name_b)
        check_same_shape(a, b, name_a, name_b)
        size = self.input_size(a.shape[-1])
        device = next(iter(self.network.state_dict().values())).device   # network.to("cuda") moves it
        out = []
        with phase(f"features: {self.name}"):
            for start in range(0, len(a), batch_size):
                xa = resize_for_backbone(a[start:start + batch_size].to(device), size).mul(2).sub(1)
                xb = resize_for_backbone(b[start:start + batch_size].to(device), size).mul(2).sub(1)
                out.append(self.network(xa, xb).reshape(-1).double().cpu())
        return torch.cat(out)


def _lpips_package_network(trunk: str) -> nn.Module:
    try:
        import lpips
    except ImportError as error:
        raise ImportError("LPIPS needs the 'lpips' package and torchvision (GPU profile: pip install -e .[gpu]); "
                          "offline use 'st-lpips-alex' or 'st-lpips-vgg'") from error
    network = lpips.LPIPS(net=trunk, verbose=False).eval()
    return _PackageLPIPS(network)


class _PackageLPIPS(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.network(x, y).reshape(-1)


PERCEPTUAL = ("st-lpips-alex", "st-lpips-vgg", "lpips-alex", "lpips-vgg")


@functools.lru_cache(maxsize=None)
def get_perceptual(name: str = "st-lpips-alex") -> PerceptualDistance:
    """``st-lpips-{alex,vgg}`` (offline) or ``lpips-{alex,vgg}`` (``lpips`` package, GPU profile)."""
    if name not in PERCEPTUAL:
        raise ValueError(f"unknown perceptual metric {name!r}; choose from {list(PERCEPTUAL)}")
    trunk = name.rsplit("-", 1)[1]
    if name.startswith("st-"):
        return PerceptualDistance(name, "ST-LPIPS", f"shift-tolerant {trunk}",
                                  ShiftTolerantLPIPS(trunk).load_shipped_weights())
    return PerceptualDistance(name, "LPIPS", f"{trunk} v0.1", _lpips_package_network(trunk))


def paired_distance(generated: Any, reference: Any, name: str = "st-lpips-alex", n_resamples: int = 1000,
                    generator: torch.Generator | None = None) -> MetricResult:
    """Mean perceptual distance between each generated image and the true image of its caption."""
    metric = get_perceptual(name)
    generated_uint8 = as_uint8_images(generated, "generated")
    values = metric.distances(generated_uint8, reference, "generated", "reference").numpy()
    return bootstrap_result(metric.describe(generated_uint8.shape[-1]), name, values, np.mean, n_resamples,
                            generator, note="paired: generated vs the true image for the same caption")
