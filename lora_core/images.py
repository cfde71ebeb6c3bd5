"""One image preprocessing rule, used for real and generated images alike.

Transparency is composited onto a fixed background colour, the image is centre-cropped to a
square and resized with Lanczos, then quantised to uint8 RGB. The same function prepares
training images, reference images for metrics and decoded generations, so no metric sees a
difference that preprocessing made (clean-fid's point about resize filters).

>>> from PIL import Image
>>> rgba = Image.new("RGBA", (64, 48), (255, 0, 0, 0))   # fully transparent red
>>> out = prepare_image(rgba, size=32)
>>> out.size, out.mode, out.getpixel((0, 0))
((32, 32), 'RGB', (255, 255, 255))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from lora_core.io import PathError

BACKGROUND = (255, 255, 255)  # white: the page colour emoji are designed for


class ImageFileError(PathError):
    """An image file that cannot be read: ``str(error)`` is ``"<path>: <reason>"``."""


def read_image(path: str | Path, upright: bool = False) -> Image.Image:
    """The image in ``path``, decoded now (a truncated file fails here, not later), turned by its
    EXIF orientation when ``upright``. Every image a user gives goes through here.

    >>> import tempfile, pathlib
    >>> empty = pathlib.Path(tempfile.mkdtemp()) / "cat.png"
    >>> _ = empty.write_bytes(b"")
    >>> read_image(empty)
    Traceback (most recent call last):
    ...
    lora_core.images.ImageFileError: .../cat.png: empty file (0 bytes)
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ImageFileError(path, "empty file (0 bytes)")
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened) if upright else opened.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFileError(path, f"corrupt or truncated image ({error})") from None


def composite_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """RGB image with any alpha (RGBA, LA, or palette transparency) composited onto ``background``."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def center_crop_square(image: Image.Image) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.crop((left, top, left + side, top + side))


def prepare_image(image: Image.Image, size: int, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Composite onto ``background``, centre-crop, Lanczos-resize to ``size`` x ``size``, RGB uint8."""
    square = center_crop_square(composite_rgb(image, background))
    if square.size != (size, size):
        square = square.resize((size, size), Image.Resampling.LANCZOS)
    return square


def to_tensor(images: list[Image.Image] | Image.Image) -> torch.Tensor:
    """PIL image(s) -> float32 tensor (N, 3, H, W) in [-1, 1], the range the VAE expects."""
    if isinstance(images, Image.Image):
        images = [images]
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(tensor: torch.Tensor) -> torch.Tensor:
    """Tensor in [-1, 1] (N, 3, H, W) -> uint8 tensor, rounding as a PNG save would."""
    return tensor.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


def to_pil(tensor: torch.Tensor) -> list[Image.Image]:
    """Tensor in [-1, 1] (N, 3, H, W) -> list of RGB PIL images."""
    return [Image.fromarray(a) for a in to_uint8(tensor).permute(0, 2, 3, 1).numpy()]
