"""Metric inputs: one documented path from images to a backbone's input tensor.

Real and generated images go through exactly the same two steps:

1. :func:`as_uint8_images` turns whatever the caller holds (a uint8 tensor, a float tensor in
   [0, 1], a PIL image or list of them, a folder of PNGs, a list of paths) into one uint8 RGB
   tensor (N, 3, H, W). Floats are quantised as a PNG save would, so a generated tensor and its
   saved PNG give the same features and the same cache key. PIL images are composited onto white
   with :mod:`lora_core.images` (the rule used for training images).
2. :func:`resize_for_backbone` resizes with one fixed filter (:data:`RESIZE_FILTER`: bicubic with
   antialiasing, which is PIL's BICUBIC up to rounding, clean-fid's recommendation) in float, then
   each backbone applies its own normalisation.

>>> import torch
>>> images = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
>>> x = resize_for_backbone(as_uint8_images(images), 299)
>>> tuple(x.shape), x.dtype, round(float(x.min()), 4), float(x.max())
((2, 3, 299, 299), torch.float32, 1.0, 1.0)
>>> as_uint8_images(torch.full((1, 3, 8, 8), -1.0), name="generated")
Traceback (most recent call last):
...
ValueError: generated: float images must be in [0, 1], got values in [-1, -1] (for [-1, 1] tensors use lora_core.images.to_uint8)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from lora_core.images import ImageFileError, composite_rgb, prepare_image, read_image

RESIZE_FILTER = "bicubic, antialiased, float (torch.nn.functional.interpolate)"
IMAGE_SUFFIXES = (".png",)


def as_uint8_images(images: Any, name: str = "images", size: int | None = None) -> torch.Tensor:
    """Any supported image source -> uint8 tensor (N, 3, H, W).

    ``name`` is the argument name used in error messages. ``size`` (PIL/folder inputs only)
    centre-crops and Lanczos-resizes with :func:`lora_core.images.prepare_image`; without it, all
    images must already share one size.
    """
    if isinstance(images, torch.Tensor):
        if size is not None:
            raise ValueError(f"{name}: size= applies to PIL images and folders, not tensors")
        return _tensor_to_uint8(images, name)
    if isinstance(images, (str, Path)):
        return _pil_to_uint8(_load_folder(Path(images), name), name, size)
    if isinstance(images, Image.Image):
        return _pil_to_uint8([images], name, size)
    if isinstance(images, Sequence) and not isinstance(images, (bytes, np.ndarray)):
        if len(images) == 0:
            raise ValueError(f"{name}: no images (empty list)")
        if all(isinstance(im, Image.Image) for im in images):
            return _pil_to_uint8(list(images), name, size)
        if all(isinstance(p, (str, Path)) for p in images):
            return _pil_to_uint8([_open(Path(p), name) for p in images], name, size)
    raise TypeError(f"{name}: expected a uint8 tensor, a float tensor in [0, 1], PIL image(s), a folder or "
                    f"a list of image paths; got {type(images).__name__}")


def resize_for_backbone(images_uint8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, size, size) in [0, 1], resized with :data:`RESIZE_FILTER`."""
    x = images_uint8.float().div(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0)


def check_same_shape(first: torch.Tensor, second: torch.Tensor, first_name: str, second_name: str) -> None:
    """Paired metrics: same number of images and same size, else an error naming both arguments."""
    if first.shape != second.shape:
        raise ValueError(f"{first_name} and {second_name} must pair up image by image: shapes "
                         f"{tuple(first.shape)} and {tuple(second.shape)} differ")


def _tensor_to_uint8(images: torch.Tensor, name: str) -> torch.Tensor:
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected an image tensor (N, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{name}: no images (tensor has 0 rows)")
    if images.dtype == torch.uint8:
        return images.detach().cpu().contiguous()
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or float in [0, 1], got dtype {images.dtype}")
    low, high = float(images.min()), float(images.max())
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0.0 or high > 1.0:
        hint = " (for [-1, 1] tensors use lora_core.images.to_uint8)" if low >= -1.0 and high <= 1.0 else ""
        raise ValueError(f"{name}: float images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]{hint}")
    return images.detach().cpu().float().mul(255.0).round().to(torch.uint8).contiguous()


def _open(path: Path, name: str) -> Image.Image:
    try:
        return read_image(path)
    except ImageFileError as error:
        raise ValueError(f"{name}: cannot read image {error}") from None


def _load_folder(folder: Path, name: str) -> list[Image.Image]:
    if not folder.is_dir():
        raise ValueError(f"{name}: {folder} is not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{name}: no {'/'.join(IMAGE_SUFFIXES)} files in {folder}")
    return [_open(p, name) for p in paths]


def _pil_to_uint8(images: list[Image.Image], name: str, size: int | None) -> torch.Tensor:
    rgb = [prepare_image(im, size) if size is not None else composite_rgb(im) for im in images]
    sizes = sorted({im.size for im in rgb})
    if len(sizes) > 1:
        raise ValueError(f"{name}: images have different sizes {sizes}; pass size= to resize them")
    array = np.stack([np.asarray(im, dtype=np.uint8) for im in rgb])
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
