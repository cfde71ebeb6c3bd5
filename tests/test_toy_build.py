"""The toy world build: vendor matching, captions, determinism, manifest hashes, idempotency."""
import csv
import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lora_core.toy import BuildConfig, build, normalize_key, verify
from lora_core.toy.build import NODE_MODULES
from lora_core.toy.catalog import load_subjects, subject_caption
from lora_core.toy.sources import VendorFiles
from lora_core.world import STYLE_CAPTION_TEMPLATE, STYLE_SETS, VENDORS

pytestmark = pytest.mark.skipif(not (NODE_MODULES / "emoji-datasource").exists(),
                                reason="node_modules missing: run `npm ci`")
# No subject sets: 60 subjects hold too few of their members (tests/test_toy_sets.py builds them).
SMALL = BuildConfig(limit=60, style_train_subjects=3, style_heldout_subjects=4, subject_set_train=())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("toy")
    manifest = build(SMALL, data_dir=data_dir, log=lambda _: None)
    return data_dir, manifest


def test_keys_match_across_vendor_spellings():
    assert normalize_key("0037-FE0F-20E3") == normalize_key("37-fe0f-20e3") == "0037-20e3"
    assert normalize_key("1F9D1_1F3FB_200D_1F3A8") == "1f9d1-1f3fb-200d-1f3a8"
    fluent3d = VendorFiles("fluent3d", NODE_MODULES).sources
    assert "0037-20e3" in fluent3d  # the package spells it 37-fe0f-20e3.webp


def test_fluent3d_keeps_only_microsofts_catalogue():
    packaged = {normalize_key(p.stem) for p in (NODE_MODULES / "@lobehub/fluent-emoji-3d/assets").glob("*.webp")}
    microsoft = {normalize_key(k) for k in json.loads(
        (NODE_MODULES / "@iconify-json/fluent-emoji-flat/chars.json").read_text())}
    kept = set(VendorFiles("fluent3d", NODE_MODULES).sources)
    assert kept == packaged & microsoft
    assert packaged - microsoft, "the package has extra codepoints; the filter must drop them"


def test_no_apple_or_facebook_art():
    assert not [v for v in VENDORS.values() if "apple" in v.package or "facebook" in v.package]


def test_unknown_vendor_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown vendor 'apple'. Valid vendors: noto, twemoji"):
        VendorFiles("apple", NODE_MODULES)


def test_captions_from_emoji_json():
    subjects = {s.key: s for s in load_subjects(NODE_MODULES)}
    assert subjects["1f600"].caption == "grinning face, face smiling, smileys and emotion, grinning"
    assert subjects["1f44d-1f3fd"].skin_tone == "medium skin tone"
    assert subjects["1f44d-1f3fd"].base_key == "1f44d"
    entry = {"name": "A", "subcategory": "b-c", "category": "D & E", "short_names": ["f_g"]}
    assert subject_caption(entry, ("1F3FF",)) == "a, dark skin tone, b c, d and e, f g"


def test_noto_image_equals_independent_composite(built):
    data_dir, _ = built
    key = next(p.stem for p in sorted((data_dir / "base").glob("*.png")))
    source = Image.open(NODE_MODULES / "emoji-datasource-google/img/google/64" /
                        next(p.name for p in (NODE_MODULES / "emoji-datasource-google/img/google/64").glob("*.png")
                             if normalize_key(p.stem) == key)).convert("RGBA")
    rgba = np.asarray(source, dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    expected = rgba[..., :3] * alpha + 255 * (1 - alpha)  # "over" onto white
    built_image = np.asarray(Image.open(data_dir / "base" / f"{key}.png"))
    assert built_image.shape == (64, 64, 3)
    assert np.abs(built_image - expected).max() <= 1  # PIL rounds its 8-bit compositing


def test_layout_captions_and_splits(built):
    data_dir, manifest = built
    rows = list(csv.DictReader((data_dir / "emoji/catalog.csv").open()))
    captions = {r["key"]: r["caption"] for r in rows}
    for png in (data_dir / "base").glob("*.png"):
        assert png.with_suffix(".txt").read_text() == captions[png.stem] + "\n"
    train, heldout = manifest["splits"]["train"], manifest["splits"]["heldout"]
    assert len(train) == 3 and len(heldout) == 4 and not set(train) & set(heldout)
    for style, spec in STYLE_SETS.items():
        for split, keys in (("train", train), ("heldout", heldout)):
            folder = data_dir / "styles" / style / split
            assert sorted(p.stem for p in folder.glob("*.png")) == keys
            for key in keys:
                expected = STYLE_CAPTION_TEMPLATE.format(caption=captions[key], trigger=spec.trigger)
                assert (folder / f"{key}.txt").read_text() == expected + "\n"
                assert (folder / f"{key}.png").read_bytes() == \
                    (data_dir / "emoji/images" / spec.vendor / f"{key}.png").read_bytes()


def test_manifest_hashes_every_file_and_detects_tampering(built, tmp_path):
    data_dir, manifest = built
    on_disk = sorted(p.relative_to(data_dir).as_posix() for part in ("emoji", "base", "styles")
                     for p in (data_dir / part).rglob("*") if p.is_file() and p.name != "MANIFEST.json")
    assert sorted(manifest["files"]) == on_disk
    some = on_disk[len(on_disk) // 2]
    assert manifest["files"][some] == hashlib.sha256((data_dir / some).read_bytes()).hexdigest()
    assert manifest["sources"]["openmoji"]["share_alike"] is True
    assert manifest["sources"]["twemoji"] == {**manifest["sources"]["twemoji"], "license": "CC-BY-4.0",
                                              "version": "16.0.0"}
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    assert verify(copy) == []
    (copy / some).write_bytes(b"tampered")
    assert verify(copy) == [some]


def test_rebuild_is_byte_identical_and_a_matching_manifest_skips(built, tmp_path):
    data_dir, manifest = built
    messages = []
    assert build(SMALL, data_dir=data_dir, log=messages.append)["files"] == manifest["files"]
    assert messages and "up to date" in messages[0]
    again = build(SMALL, data_dir=tmp_path / "again", log=lambda _: None)
    assert again["files"] == manifest["files"] and again["fingerprint"] == manifest["fingerprint"]


def test_too_few_subjects_for_the_splits_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="drawn by every vendor; 3 train \\+ 400 held-out requested"):
        build(BuildConfig(limit=30, style_train_subjects=3, style_heldout_subjects=400),
              data_dir=tmp_path, log=lambda _: None)
