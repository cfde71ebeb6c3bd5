"""lora_core.data: layouts, exact preprocessing, captions, repeats, split stability, report, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lora_core.data import (DataConfig, DatasetError, ImageCaptionSet, dataset_report,
                            load_image_caption_set, load_train_validation, split_train_validation)
from lora_core.images import to_uint8


def save_pair(folder: Path, name: str, image: Image.Image, caption: str | None = "a thing") -> Path:
    """Save ``image`` as ``folder/name`` and, unless ``caption`` is None, its kohya caption file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    image.save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path


def load_uint8(folder: Path, **options) -> tuple[np.ndarray, ImageCaptionSet]:
    """Loaded set and its pixels as uint8 (N, H, W, 3), the values a PNG of them would hold."""
    data = load_image_caption_set(DataConfig(folder=str(folder), **options))
    return to_uint8(data.pixel_values).permute(0, 2, 3, 1).numpy(), data


def rgb(size: tuple[int, int] = (32, 32), colour: tuple[int, int, int] = (10, 200, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


# --- pixels -------------------------------------------------------------------------------------

@pytest.mark.parametrize("background, expected", [
    ((255, 255, 255), (255, 127, 127)),   # 255 * (1 - 128/255) = 127 on the non-red channels
    ((0, 0, 255), (128, 0, 127)),         # red 255 * 128/255 = 128, blue 255 * 127/255 = 127
])
def test_half_transparent_red_is_composited_onto_the_background(tmp_path, background, expected):
    save_pair(tmp_path, "red.png", Image.new("RGBA", (32, 32), (255, 0, 0, 128)))
    pixels, data = load_uint8(tmp_path, background=background)
    assert data.pixel_values.dtype == torch.float32 and tuple(data.pixel_values.shape) == (1, 3, 32, 32)
    assert float(data.pixel_values.min()) >= -1.0 and float(data.pixel_values.max()) <= 1.0
    assert np.all(pixels[0] == np.array(expected, dtype=np.uint8))


def test_palette_transparent_index_becomes_the_background(tmp_path):
    indices = np.zeros((32, 32), dtype=np.uint8)
    indices[:, 16:] = 1
    palette_image = Image.fromarray(indices, mode="P")
    palette_image.putpalette([0, 255, 0, 255, 0, 0] + [0] * (256 * 3 - 6))   # 0 green, 1 red
    palette_image.save(tmp_path / "pal.png", transparency=0)
    (tmp_path / "pal.txt").write_text("half green, half red")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    pixels, _ = load_uint8(tmp_path, background=(0, 0, 255))
    assert np.all(pixels[0, :, :16] == (0, 0, 255))    # transparent green -> background blue
    assert np.all(pixels[0, :, 16:] == (255, 0, 0))    # opaque red stays red


def test_greyscale_and_jpeg_load_as_rgb(tmp_path):
    save_pair(tmp_path, "grey.png", Image.new("L", (32, 32), 77))
    save_pair(tmp_path, "photo.jpg", rgb(colour=(200, 40, 40)))
    pixels, data = load_uint8(tmp_path)
    assert [p.name for p in data.paths] == ["grey.png", "photo.jpg"]
    assert np.all(pixels[0] == 77)
    assert np.abs(pixels[1].astype(int) - (200, 40, 40)).max() <= 3   # JPEG is lossy


def test_exif_orientation_is_applied_before_the_crop(tmp_path):
    stored = np.zeros((32, 48, 3), dtype=np.uint8)   # 48 wide: left half red, right half blue
    stored[:, :24] = (255, 0, 0)
    stored[:, 24:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6   # Orientation: the camera was turned, display rotated 90 degrees clockwise
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    (tmp_path / "phone.txt").write_text("a phone photo")
    upright = np.rot90(stored, k=-1)   # 48 tall: red on top
    pixels, _ = load_uint8(tmp_path)
    assert np.array_equal(pixels[0], upright[8:40])


def test_real_photo_matches_centre_crop_and_pil_lanczos(tmp_path):
    from skimage import data as skimage_data

    astronaut = skimage_data.astronaut()[:, 40:440]   # 512 x 400: the crop has work to do
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    (tmp_path / "astronaut.txt").write_text("an astronaut")
    top = (512 - 400) // 2
    reference = Image.fromarray(astronaut[top:top + 400]).resize((48, 48), Image.Resampling.LANCZOS)
    pixels, _ = load_uint8(tmp_path, resolution=48)
    assert np.array_equal(pixels[0], np.asarray(reference))


# --- captions and repeats ------------------------------------------------------------------------

def test_caption_template_trigger_and_first_line(tmp_path):
    save_pair(tmp_path, "cat.png", rgb(), "  a cat face \nsecond line is ignored, as in kohya\n")
    _, data = load_uint8(tmp_path, caption_template="{caption}, in the style of {trigger}",
                         trigger_word="sks")
    assert data.captions == ["a cat face, in the style of sks"]


def test_caption_template_is_checked():
    with pytest.raises(ValueError, match=r"\{style\} is unknown. Valid fields: \{caption\}, \{trigger\}"):
        DataConfig(folder="x", caption_template="{caption} {style}")
    with pytest.raises(ValueError, match="trigger_word is empty"):
        DataConfig(folder="x", caption_template="{trigger} {caption}")
    with pytest.raises(ValueError, match="validation_fraction"):
        DataConfig(folder="x", validation_fraction=1.0)


def test_config_round_trips_through_json():
    cfg = DataConfig(folder="data/x", background=(1, 2, 3), validation_fraction=0.25)
    assert DataConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="unknown key 'resoluton'"):
        DataConfig.from_dict({"folder": "x", "resoluton": 64})


def test_kohya_repeat_folders(tmp_path):
    save_pair(tmp_path, "top.png", rgb(), "top")
    save_pair(tmp_path / "10_mystyle", "b.png", rgb(), "b")
    save_pair(tmp_path / "10_mystyle", "a.png", rgb(), "a")
    save_pair(tmp_path / "3_other_style", "c.png", rgb(), "c")
    save_pair(tmp_path / "notes", "skipped.png", rgb(), "skipped")   # no N_ prefix: kohya skips it
    _, data = load_uint8(tmp_path)
    assert data.captions == ["top", "a", "b", "c"]
    assert data.repeats == [1, 10, 10, 3]
    assert data.epoch_indices() == [0] + [1] * 10 + [2] * 10 + [3] * 3
    subset = data.subset([3, 0])
    assert subset.captions == ["c", "top"] and subset.repeats == [3, 1]
    assert torch.equal(subset.pixel_values, data.pixel_values[[3, 0]])


def test_hidden_files_and_zero_repeat_folders(tmp_path):
    save_pair(tmp_path, "a.png", rgb(), "a")
    (tmp_path / "._a.png").write_bytes(b"\0\5\26\7 macOS resource fork")   # not an image
    save_pair(tmp_path / ".cache", "b.png", rgb())
    _, data = load_uint8(tmp_path)
    assert [p.name for p in data.paths] == ["a.png"]
    assert sorted((p.name, r) for p, r in dataset_report(DataConfig(folder=str(tmp_path))).ignored) == [
        ("._a.png", "hidden file"), (".cache", "hidden folder")]
    save_pair(tmp_path / "0_disabled", "c.png", rgb())
    with pytest.raises(DatasetError, match=r"0_disabled: 0 repeats"):
        load_image_caption_set(DataConfig(folder=str(tmp_path)))


def test_imagefolder_metadata_jsonl(tmp_path):
    save_pair(tmp_path / "train", "x.png", rgb(colour=(1, 2, 3)), caption="ignored txt")
    save_pair(tmp_path, "y.png", rgb(colour=(4, 5, 6)), caption=None)
    lines = [{"file_name": "y.png", "text": "why"}, {"file_name": "train/x.png", "text": " ex "}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    pixels, data = load_uint8(tmp_path, caption_template="{trigger}: {caption}", trigger_word="t")
    assert data.captions == ["t: ex", "t: why"]     # sorted by path, like the kohya layout
    assert data.repeats == [1, 1]
    assert np.all(pixels[0] == (1, 2, 3)) and np.all(pixels[1] == (4, 5, 6))
    report = dataset_report(DataConfig(folder=str(tmp_path)))
    assert report.layout == "imagefolder"
    assert [(p.name, r) for p, r in report.ignored] == [("x.txt", "not an image file")]


@pytest.mark.parametrize("metadata, match", [
    ('{"file_name": "y.png", "text": "why"}\n{"file_name": "gone.png", "text": "g"}', r"gone\.png: listed"),
    ('{"file_name": "y.png", "text": "why"}\nnot json', r"metadata\.jsonl:2: invalid JSON"),
    ('{"file_name": "y.png", "caption": "why"}', r"metadata\.jsonl:1: needs keys 'file_name' and 'text'"),
    ('{"file_name": "z.png", "text": "zed"}', r"y\.png: image not listed in metadata\.jsonl"),
    ('{"file_name": "../y.png", "text": "up"}', r"metadata\.jsonl:1: file_name '\.\./y\.png' is outside"),
])
def test_imagefolder_errors_name_the_file(tmp_path, metadata, match):
    save_pair(tmp_path, "y.png", rgb(), caption=None)
    save_pair(tmp_path, "z.png", rgb(), caption=None)
    if "z.png" not in metadata:
        (tmp_path / "z.png").unlink()
    (tmp_path / "metadata.jsonl").write_text(metadata + "\n")
    with pytest.raises(DatasetError, match=match):
        load_image_caption_set(DataConfig(folder=str(tmp_path)))


# --- errors --------------------------------------------------------------------------------------

def write_truncated_png(folder: Path, name: str) -> None:
    save_pair(folder, name, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
    payload = (folder / name).read_bytes()
    (folder / name).write_bytes(payload[: len(payload) // 2])


def write_cmyk_jpeg(folder: Path, name: str) -> None:
    save_pair(folder, name, Image.new("CMYK", (32, 32), (0, 255, 255, 0)))


def write_16bit_png(folder: Path, name: str) -> None:
    save_pair(folder, name, Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)))
    assert Image.open(folder / name).mode == "I;16"


def write_zero_byte(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb())
    (folder / name).write_bytes(b"")


def write_small(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb((40, 16)))


def write_missing_caption(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb(), caption=None)


def write_latin1_caption(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb(), caption=None)
    (folder / name).with_suffix(".txt").write_bytes("café au lait".encode("latin-1"))


def write_empty_caption(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb(), caption="  \n")


def write_not_an_image(folder: Path, name: str) -> None:
    save_pair(folder, name, rgb())
    (folder / name).write_bytes(b"this is text, not a PNG")


BAD_FILES = [
    (write_truncated_png, "broken.png", r"broken\.png: corrupt or truncated image"),
    (write_not_an_image, "text.png", r"text\.png: corrupt or truncated image"),
    (write_cmyk_jpeg, "print.jpg", r"print\.jpg: unsupported image mode CMYK"),
    (write_16bit_png, "deep.png", r"deep\.png: unsupported image mode I;16"),
    (write_zero_byte, "empty.png", r"empty\.png: empty file \(0 bytes\)"),
    (write_small, "small.png", r"small\.png: 40x16 is smaller than the training resolution 32 px"),
    (write_missing_caption, "nocap.png", r"nocap\.png: missing caption file nocap\.txt"),
    (write_latin1_caption, "latin.png", r"latin\.txt: not valid UTF-8 \(byte 0xe9 at position 3\)"),
    (write_empty_caption, "blank.png", r"blank\.txt: caption file is empty"),
]


@pytest.mark.parametrize("write, name, match", BAD_FILES, ids=[name for _, name, _ in BAD_FILES])
def test_bad_file_gives_one_error_naming_it(tmp_path, write, name, match):
    save_pair(tmp_path, "good.png", rgb())
    write(tmp_path, name)
    cfg = DataConfig(folder=str(tmp_path))
    with pytest.raises(DatasetError, match=match) as raised:
        load_image_caption_set(cfg)
    assert raised.value.path.parent == tmp_path
    report = dataset_report(cfg)
    assert [str(path) + ": " + reason for path, reason in report.problems] == [str(raised.value)]
    assert [Path(row["path"]).name for row in report.rows] == ["good.png"]


def test_duplicate_stems_are_refused(tmp_path):
    save_pair(tmp_path, "a.png", rgb())
    save_pair(tmp_path, "a.jpg", rgb())
    with pytest.raises(DatasetError, match=r"a\.png: a\.jpg and a\.png share the stem 'a'"):
        load_image_caption_set(DataConfig(folder=str(tmp_path)))


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=rf"{tmp_path.name}: no images found"):
        load_image_caption_set(DataConfig(folder=str(tmp_path)))
    with pytest.raises(DatasetError, match=r"nowhere: dataset folder does not exist"):
        load_image_caption_set(DataConfig(folder=str(tmp_path / "nowhere")))


# --- report --------------------------------------------------------------------------------------

def test_report_counts_everything_and_lists_all_problems(tmp_path):
    from lora_core.tokenizer import build_clip_tokenizer, load_clip_tokenizer

    save_pair(tmp_path, "big.png", rgb((64, 48)), "a big red heart")
    save_pair(tmp_path / "5_style", "cat.png", rgb(), "a cat face\nand a note")
    write_zero_byte(tmp_path, "empty.png")
    write_missing_caption(tmp_path, "nocap.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "settings.json").write_text("{}")
    (tmp_path / "orphan.txt").write_text("no image")
    tokenizer = load_clip_tokenizer(build_clip_tokenizer(["a red heart", "a cat face"], tmp_path / "tok"))
    cfg = DataConfig(folder=str(tmp_path), caption_template="{caption}, {trigger}", trigger_word="sks")
    report = dataset_report(cfg, tokenizer=tokenizer)

    assert not report.ok
    assert [(p.name, r) for p, r in report.problems] == [("empty.png", "empty file (0 bytes)"),
                                                          ("nocap.png", "missing caption file nocap.txt")]
    assert sorted((p.name, r) for p, r in report.ignored) == [
        (".DS_Store", "hidden file"), ("orphan.txt", "caption without an image"),
        ("settings.json", "not an image file"), ("tok", "subfolder without a kohya 'N_' repeat prefix")]
    summary = report.summary()
    assert {k: summary[k] for k in ("images", "images_with_repeats", "problems", "ignored", "sizes")} == {
        "images": 2, "images_with_repeats": 6, "problems": 2, "ignored": 4,
        "sizes": {"32x32": 1, "64x48": 1}}
    assert (summary["caption_words_min"], summary["caption_words_max"]) == (4, 5)
    expected_tokens = [len(tokenizer(c).input_ids) - 2 for c in ("a big red heart, sks", "a cat face, sks")]
    assert [row["caption_tokens"] for row in report.rows] == expected_tokens
    assert summary["captions_truncated"] == 0 and summary["captions_multiline"] == 1
    frame = report.to_frame()
    assert frame["status"].value_counts().to_dict() == {"ok": 2, "problem": 2, "ignored": 4}


# --- split ---------------------------------------------------------------------------------------

def synthetic_set(stems: list[str]) -> ImageCaptionSet:
    pixels = torch.arange(len(stems), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)
    return ImageCaptionSet.from_tensors(pixels, [f"caption {s}" for s in stems], [f"{s}.png" for s in stems])


def test_split_is_deterministic_disjoint_and_stable_under_added_files():
    stems = [f"emoji_{i:03d}" for i in range(200)]
    train, validation = split_train_validation(synthetic_set(stems), 0.2, seed=7)
    again_train, again_validation = split_train_validation(synthetic_set(stems), 0.2, seed=7)
    assert train.paths == again_train.paths and validation.paths == again_validation.paths
    assert sorted(train.paths + validation.paths) == sorted(Path(f"{s}.png") for s in stems)
    assert 20 <= len(validation) <= 60                                    # about 40, by hash
    assert train.captions == [f"caption {p.stem}" for p in train.paths]   # items stay together
    assert torch.equal(train.pixel_values[:, 0, 0, 0],
                       torch.tensor([float(stems.index(p.stem)) for p in train.paths]))

    grown = stems + [f"new_{i}" for i in range(50)]
    _, grown_validation = split_train_validation(synthetic_set(grown), 0.2, seed=7)
    old_held_out = {p for p in grown_validation.paths if not p.stem.startswith("new_")}
    assert old_held_out == set(validation.paths)

    _, other_seed_validation = split_train_validation(synthetic_set(stems), 0.2, seed=8)
    assert set(other_seed_validation.paths) != set(validation.paths)


def test_load_train_validation_uses_the_config_split(tmp_path):
    for i in range(8):
        save_pair(tmp_path, f"item{i}.png", rgb(colour=(i, i, i)), f"item {i}")
    cfg = DataConfig(folder=str(tmp_path), validation_fraction=0.4, split_seed=3)
    train, validation = load_train_validation(cfg)
    expected_train, expected_validation = split_train_validation(load_image_caption_set(cfg), 0.4, 3)
    assert train.paths == expected_train.paths and validation.paths == expected_validation.paths
    assert len(train) > 0 and len(validation) > 0


def test_split_edge_cases():
    data = synthetic_set(["a", "b", "c"])
    train, validation = split_train_validation(data, 0.0, seed=0)
    assert len(train) == 3 and len(validation) == 0
    train, validation = split_train_validation(data, 0.01, seed=0)   # tiny sets still hold one out
    assert len(train) == 2 and len(validation) == 1
    train, validation = split_train_validation(data, 0.999, seed=0)  # ... and keep one to train on
    assert len(train) == 1 and len(validation) == 2
    with pytest.raises(ValueError, match="fraction must be in"):
        split_train_validation(data, 1.0, seed=0)


def test_from_tensors_checks_lengths():
    with pytest.raises(ValueError, match="pixel_values has 2 images"):
        ImageCaptionSet(torch.zeros(2, 3, 4, 4), ["one"], [Path("a")], [1])
