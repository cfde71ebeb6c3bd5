"""Image-caption datasets from a folder, the way kohya sd-scripts and diffusers users lay them out.

Two layouts are read:

* **kohya**: ``<stem>.png`` beside ``<stem>.txt`` (the caption). Images may sit directly in
  ``folder`` (1 repeat) or in ``N_name`` subfolders, where ``N`` is the number of repeats per
  epoch (``10_mystyle/`` = 10 repeats). Like kohya, the caption is the first line of the file,
  stripped, and a subfolder without the ``N_`` prefix is skipped (and listed in the report).
  Hidden files (``.DS_Store``, macOS ``._a.png``) are skipped as kohya's ``glob`` does; a
  ``0_name`` folder is an error, since its images would never be seen.
* **imagefolder** (diffusers/datasets): a ``metadata.jsonl`` in ``folder`` with one
  ``{"file_name": ..., "text": ...}`` object per line; ``file_name`` is relative to ``folder``.

Every image goes through :func:`lora_core.images.prepare_image` (transparency composited onto
``background``, centre crop, Lanczos resize), after EXIF orientation is applied. An image whose
shorter side is below the resolution is refused: upscaling would teach the model blur.

Image modes are handled by one rule: ``RGB``, ``L``, ``1`` and opaque palette (``P``) images are
converted to RGB; ``RGBA``,
``LA``, ``PA`` and palette (``P``) images with a transparent index are composited onto the
background (the transparent palette entry becomes the background colour); every other mode is
refused. ``CMYK`` is refused because converting it without its colour profile silently changes
the colours; 16-bit and 32-bit modes (``I;16``, ``I``, ``F``) are refused because Pillow's
conversion clips them to 255 instead of rescaling. Save such files as 8-bit RGB(A) PNG first.

Loading stops at the first bad file with one :class:`DatasetError` naming it (what kohya users
expect); :func:`dataset_report` lists every problem without raising.

>>> import tempfile, pathlib
>>> from PIL import Image
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> Image.new("RGBA", (40, 40), (255, 0, 0, 128)).save(folder / "heart.png")
>>> _ = (folder / "heart.txt").write_text("a red heart")
>>> data = load_image_caption_set(DataConfig(folder=str(folder), trigger_word="sks",
...                               caption_template="{caption}, in the style of {trigger}"))
>>> len(data), data.captions, tuple(data.pixel_values.shape)
(1, ['a red heart, in the style of sks'], (1, 3, 32, 32))
"""
from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from lora_core.config import Config, option
from lora_core.images import ImageFileError, prepare_image, read_image, to_tensor
from lora_core.io import PathError
from lora_core.paths import resolve

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")   # kohya's list, case-insensitive
METADATA_FILE = "metadata.jsonl"
ACCEPTED_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA")
TEMPLATE_FIELDS = ("caption", "trigger")
_REPEAT_FOLDER = re.compile(r"^(\d+)_(.*)$")


class DatasetError(PathError):
    """Bad dataset input: ``str(error)`` is ``"<path>: <reason>"``; ``.path`` and ``.reason`` hold both."""


@dataclass(frozen=True)
class DataConfig(Config):
    folder: str = field(metadata={"help": "image folder: kohya <stem>.png + <stem>.txt (optional N_name "
                                          "repeat subfolders) or a diffusers imagefolder with metadata.jsonl; "
                                          "a relative folder is under the project root"})
    resolution: int = option(32, "square training resolution in pixels; smaller images are refused")
    caption_template: str = option("{caption}", "caption after templating; fields {caption} and "
                                                "{trigger}, e.g. '{caption}, in the style of {trigger}'")
    trigger_word: str = option("", "value of {trigger} in caption_template")
    background: tuple[int, int, int] = option((255, 255, 255), "RGB colour transparency is composited onto")
    validation_fraction: float = option(0.0, "share of images held out for validation, in [0, 1)")
    split_seed: int = option(0, "seed of the hash-based train/validation split")
    caption_extension: str = option(".txt", "kohya caption file extension")
    caption_column: str = option("text", "metadata.jsonl key holding the caption (diffusers --caption_column)")

    def __post_init__(self) -> None:
        if self.resolution <= 0:
            raise ValueError(f"DataConfig: resolution must be positive, got {self.resolution}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"DataConfig: validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"DataConfig: background must be three values in 0..255, got {self.background}")
        used = [name for _, name, _, _ in string.Formatter().parse(self.caption_template) if name is not None]
        unknown = [name for name in used if name not in TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(f"DataConfig: caption_template field {{{unknown[0]}}} is unknown. "
                             f"Valid fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
        if "trigger" in used and not self.trigger_word:
            raise ValueError("DataConfig: caption_template uses {trigger} but trigger_word is empty")

    def apply_template(self, caption: str) -> str:
        """``caption`` after the template.

        >>> DataConfig(folder="x", caption_template="{trigger} {caption}", trigger_word="sks").apply_template("a cat")
        'sks a cat'
        """
        return self.caption_template.format(caption=caption, trigger=self.trigger_word)


@dataclass
class ImageCaptionSet:
    """Prepared images and their captions, in a fixed (sorted by path) order."""

    pixel_values: torch.Tensor   # float32 (N, 3, R, R) in [-1, 1]
    captions: list[str]          # after the template
    paths: list[Path]
    repeats: list[int]           # kohya "N_name" folder prefix; 1 otherwise

    def __post_init__(self) -> None:
        n = self.pixel_values.shape[0]
        lengths = {"captions": len(self.captions), "paths": len(self.paths), "repeats": len(self.repeats)}
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise ValueError(f"ImageCaptionSet: pixel_values has {n} images but {wrong}")

    def __len__(self) -> int:
        return len(self.captions)

    def __repr__(self) -> str:
        return (f"ImageCaptionSet({len(self)} images {tuple(self.pixel_values.shape[1:])}, "
                f"repeats={sum(self.repeats)}, first caption={self.captions[0] if self.captions else None!r})")

    def subset(self, indices: Iterable[int]) -> ImageCaptionSet:
        """The items at ``indices``, in that order."""
        indices = [int(i) for i in indices]
        return ImageCaptionSet(self.pixel_values[indices], [self.captions[i] for i in indices],
                               [self.paths[i] for i in indices], [self.repeats[i] for i in indices])

    def epoch_indices(self) -> list[int]:
        """Each index repeated ``repeats`` times: one kohya epoch (before shuffling)."""
        return [i for i, n in enumerate(self.repeats) for _ in range(n)]

    @classmethod
    def from_tensors(cls, pixel_values: torch.Tensor, captions: Sequence[str],
                     paths: Sequence[str | Path] | None = None,
                     repeats: Sequence[int] | None = None) -> ImageCaptionSet:
        """A set from in-memory tensors (tests, synthetic data); paths default to ``item_<i>``."""
        n = pixel_values.shape[0]
        paths = [Path(p) for p in paths] if paths is not None else [Path(f"item_{i}") for i in range(n)]
        return cls(pixel_values.float(), list(captions), paths, list(repeats) if repeats is not None else [1] * n)


@dataclass(frozen=True)
class _Item:
    """One image found in the folder, before it is opened."""

    image: Path
    caption_file: Path | None   # kohya layout
    caption: str | None         # imagefolder layout
    repeats: int


@dataclass
class _Scan:
    items: list[_Item] = field(default_factory=list)
    ignored: list[tuple[Path, str]] = field(default_factory=list)    # not dataset files: listed, not errors
    problems: list[tuple[Path, str]] = field(default_factory=list)   # errors found while listing files


def _scan(cfg: DataConfig) -> _Scan:
    folder = resolve(cfg.folder)
    scan = _Scan()
    if not folder.is_dir():
        scan.problems.append((folder, "dataset folder does not exist"))
        return scan
    if (folder / METADATA_FILE).is_file():
        _scan_imagefolder(folder, cfg, scan)
    else:
        _scan_kohya_folder(folder, 1, cfg, scan)
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            match = _REPEAT_FOLDER.match(sub.name)
            if match and int(match.group(1)) == 0:
                scan.problems.append((sub, "0 repeats: its images would never be seen; use 1_ or remove it"))
            elif match:
                _scan_kohya_folder(sub, int(match.group(1)), cfg, scan)
            elif sub.name.startswith("."):
                scan.ignored.append((sub, "hidden folder"))
            else:
                scan.ignored.append((sub, "subfolder without a kohya 'N_' repeat prefix"))
    if not scan.items and not scan.problems:
        scan.problems.append((folder, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})"))
    return scan


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(path: Path) -> bool:
    """Dotfiles, e.g. macOS ``._a.png`` resource forks: kohya's ``glob("*.png")`` skips them too."""
    return path.name.startswith(".")


def _scan_kohya_folder(folder: Path, repeats: int, cfg: DataConfig, scan: _Scan) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    scan.ignored.extend((p, "hidden file") for p in files if _is_hidden(p))
    files = [p for p in files if not _is_hidden(p)]
    images = [p for p in files if _is_image(p)]
    by_stem: dict[str, Path] = {}
    for image in images:
        if image.stem in by_stem:
            scan.problems.append((image, f"{by_stem[image.stem].name} and {image.name} share the stem "
                                         f"'{image.stem}', so the caption {image.stem}{cfg.caption_extension} "
                                         f"is ambiguous: rename or remove one"))
            continue
        by_stem[image.stem] = image
        scan.items.append(_Item(image, image.with_suffix(cfg.caption_extension), None, repeats))
    used = set(images) | {image.with_suffix(cfg.caption_extension) for image in images}
    for path in files:
        if path in used:
            continue
        reason = ("caption without an image" if path.suffix == cfg.caption_extension
                  else "not an image file")
        scan.ignored.append((path, reason))


def _scan_imagefolder(folder: Path, cfg: DataConfig, scan: _Scan) -> None:
    metadata = folder / METADATA_FILE
    listed: dict[Path, int] = {}
    try:
        text = _read_utf8(metadata)
    except DatasetError as error:
        scan.problems.append((error.path, error.reason))
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = Path(f"{metadata}:{number}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            scan.problems.append((where, f"invalid JSON: {error.msg}"))
            continue
        if not isinstance(record, dict) or "file_name" not in record or cfg.caption_column not in record:
            scan.problems.append((where, f"needs keys 'file_name' and '{cfg.caption_column}'"))
            continue
        image = folder / str(record["file_name"])
        if not image.resolve().is_relative_to(folder.resolve()):
            scan.problems.append((where, f"file_name {record['file_name']!r} is outside {folder}"))
            continue
        if image in listed:
            scan.problems.append((image, f"listed twice in {METADATA_FILE} (lines {listed[image]} and {number})"))
            continue
        listed[image] = number
        if not image.is_file():
            scan.problems.append((image, f"listed in {METADATA_FILE} line {number} but missing"))
            continue
        caption = record[cfg.caption_column]
        if not isinstance(caption, str) or not caption.strip():
            scan.problems.append((image, f"empty or non-text caption in {METADATA_FILE} line {number}"))
            continue
        scan.items.append(_Item(image, None, caption.strip(), 1))
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p != metadata):
        if path in listed:
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            scan.ignored.append((path, "hidden file"))
        elif _is_image(path):
            scan.problems.append((path, f"image not listed in {METADATA_FILE}"))
        else:
            scan.ignored.append((path, "not an image file"))
    scan.items.sort(key=lambda item: item.image)


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(path, f"not valid UTF-8 (byte 0x{error.object[error.start]:02x} at "
                                 f"position {error.start}); re-save the file as UTF-8") from None


def _read_caption(item: _Item) -> tuple[str, int]:
    """Raw caption (before the template) and its number of lines."""
    if item.caption is not None:
        return item.caption, 1
    if not item.caption_file.is_file():
        raise DatasetError(item.image, f"missing caption file {item.caption_file.name}")
    lines = [line.strip() for line in _read_utf8(item.caption_file).splitlines()]
    if not lines or not lines[0]:
        raise DatasetError(item.caption_file, "caption file is empty (or its first line is)")
    return lines[0], len([line for line in lines if line])   # kohya: the first line is the caption


def _open_image(path: Path, resolution: int) -> Image.Image:
    """The decoded image, upright; raises DatasetError for anything this loader refuses."""
    try:
        image = read_image(path, upright=True)   # decoded now, so a bad file fails here, not mid-training
    except ImageFileError as error:
        raise DatasetError(error.path, error.reason) from None
    if image.mode not in ACCEPTED_MODES:
        raise DatasetError(path, f"unsupported image mode {image.mode} (accepted: "
                                 f"{', '.join(ACCEPTED_MODES)}); save it as 8-bit RGB or RGBA")
    if min(image.size) < resolution:
        raise DatasetError(path, f"{image.size[0]}x{image.size[1]} is smaller than the training "
                                 f"resolution {resolution} px (it would be upscaled)")
    return image


def load_image_caption_set(cfg: DataConfig) -> ImageCaptionSet:
    """All images of ``cfg.folder``, prepared at ``cfg.resolution``, with templated captions.

    Raises :class:`DatasetError` naming the first bad file (see :func:`dataset_report` for all).
    """
    scan = _scan(cfg)
    if scan.problems:
        raise DatasetError(*scan.problems[0])
    images, captions = [], []
    for item in scan.items:
        caption, _ = _read_caption(item)
        image = _open_image(item.image, cfg.resolution)
        images.append(prepare_image(image, cfg.resolution, tuple(cfg.background)))
        captions.append(cfg.apply_template(caption))
    return ImageCaptionSet(to_tensor(images), captions, [item.image for item in scan.items],
                           [item.repeats for item in scan.items])


def load_train_validation(cfg: DataConfig) -> tuple[ImageCaptionSet, ImageCaptionSet]:
    """:func:`load_image_caption_set` split by ``cfg.validation_fraction`` and ``cfg.split_seed``."""
    return split_train_validation(load_image_caption_set(cfg), cfg.validation_fraction, cfg.split_seed)


def split_unit_interval(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed`` alone (sha256), so adding files moves no other.

    >>> split_unit_interval("heart", 0) == split_unit_interval("heart", 0)
    True
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_train_validation(data: ImageCaptionSet, fraction: float,
                           seed: int) -> tuple[ImageCaptionSet, ImageCaptionSet]:
    """(train, validation): an image is held out when the hash of its stem with ``seed`` is < ``fraction``.

    Each image's side depends only on its own stem, so adding or removing files never moves
    the others, and the same stem in two repeat folders lands on one side. The validation size
    is therefore about ``fraction * len(data)``, not exact. For tiny sets, a positive fraction
    holds out at least the one lowest-hash image, and the train side keeps at least one image.
    Both keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"split_train_validation: fraction must be in [0, 1), got {fraction}")
    scores = [split_unit_interval(path.stem, seed) for path in data.paths]
    held_out = {i for i, score in enumerate(scores) if score < fraction}
    if fraction > 0 and not held_out and len(data) >= 2:
        held_out = {min(range(len(data)), key=scores.__getitem__)}
    if held_out and len(held_out) == len(data):
        held_out.discard(max(held_out, key=scores.__getitem__))
    train = [i for i in range(len(data)) if i not in held_out]
    return data.subset(train), data.subset(sorted(held_out))


@dataclass
class DatasetReport:
    """What :func:`dataset_report` found: one row per file, plus the problems that stop loading."""

    folder: Path
    layout: str                                   # "kohya" or "imagefolder"
    rows: list[dict[str, Any]]                    # one per image that loads
    problems: list[tuple[Path, str]]              # each would raise DatasetError at load time
    ignored: list[tuple[Path, str]]               # files that are not part of the dataset
    max_caption_tokens: int | None = None         # tokens a caption may have before CLIP truncates

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        """Counts and ranges, for a table in the book."""
        words = [row["caption_words"] for row in self.rows]
        tokens = [row["caption_tokens"] for row in self.rows if row["caption_tokens"] is not None]
        sizes: dict[str, int] = {}
        for row in self.rows:
            key = f"{row['width']}x{row['height']}"
            sizes[key] = sizes.get(key, 0) + 1
        return {
            "folder": str(self.folder), "layout": self.layout,
            "images": len(self.rows), "images_with_repeats": sum(row["repeats"] for row in self.rows),
            "problems": len(self.problems), "ignored": len(self.ignored),
            "sizes": dict(sorted(sizes.items())),
            "modes": sorted({row["mode"] for row in self.rows}),
            "caption_words_min": min(words, default=0), "caption_words_max": max(words, default=0),
            "caption_words_mean": sum(words) / len(words) if words else 0.0,
            "caption_tokens_max": max(tokens) if tokens else None,
            "captions_truncated": (sum(t > self.max_caption_tokens for t in tokens)
                                   if self.max_caption_tokens is not None else None),
            "captions_multiline": sum(row["caption_lines"] > 1 for row in self.rows),
        }

    def to_frame(self):
        """pandas DataFrame: one row per file, ``status`` ok / problem / ignored with the reason."""
        import pandas as pd

        records = [{**row, "status": "ok", "reason": ""} for row in self.rows]
        records += [{"path": str(p), "status": "problem", "reason": r} for p, r in self.problems]
        records += [{"path": str(p), "status": "ignored", "reason": r} for p, r in self.ignored]
        columns = ["path", "status", "reason", "width", "height", "mode", "repeats", "caption",
                   "caption_words", "caption_tokens", "caption_lines"]
        return pd.DataFrame.from_records(records, columns=columns).convert_dtypes()


def dataset_report(cfg: DataConfig, tokenizer=None) -> DatasetReport:
    """Inspect ``cfg.folder`` without raising: every file, its size, caption length, and problems.

    With a ``tokenizer`` (e.g. ``BaseModel.tokenizer``), caption lengths are also counted in
    tokens, and captions longer than ``model_max_length - 2`` (BOS/EOS) are counted as truncated.
    """
    scan = _scan(cfg)
    rows, problems = [], list(scan.problems)
    for item in scan.items:
        try:
            caption, lines = _read_caption(item)
            image = _open_image(item.image, cfg.resolution)
        except DatasetError as error:
            problems.append((error.path, error.reason))
            continue
        templated = cfg.apply_template(caption)
        rows.append({"path": str(item.image), "width": image.size[0], "height": image.size[1],
                     "mode": image.mode, "repeats": item.repeats, "caption": templated,
                     "caption_words": len(templated.split()), "caption_lines": lines,
                     "caption_tokens": len(tokenizer.tokenize(templated)) if tokenizer else None})
    layout = "imagefolder" if (resolve(cfg.folder) / METADATA_FILE).is_file() else "kohya"
    max_tokens = tokenizer.model_max_length - 2 if tokenizer is not None else None
    return DatasetReport(Path(cfg.folder), layout, rows, problems, scan.ignored, max_tokens)
