"""The part II subject sets: members and counts, splits, captions and tags, triggers, build and manifest."""
import csv
import hashlib
import re
import shutil

import pytest
from PIL import Image

from lora_core.toy import BuildConfig, build, verify
from lora_core.toy.build import NODE_MODULES
from lora_core.toy.catalog import load_subjects
from lora_core.toy.sets import (EXPRESSION_TAGS, MEMBER_RULES, content_tags, face_tags, set_members,
                                subject_set_splits)
from lora_core.toy.sources import VendorFiles
from lora_core.world import BASE_VENDOR, DATA_DIR, REPO_ROOT, SUBJECT_SETS, TRIGGER_WORDS

pytestmark = pytest.mark.skipif(not (NODE_MODULES / "emoji-datasource").exists(),
                                reason="node_modules missing: run `npm ci`")
# The counts of PARTII.md's table: training subjects, and the held-out rest of the members.
SHIPPED_COUNTS = {"face_character": (28, 75), "person_character": (20, 4), "landmarks": (115, 103),
                  "large_captioned": (1500, 411)}
PAIRED_IN_BASE = ("face_character", "person_character", "landmarks")   # chapters pair held-out truth in Noto too
# 300 base subjects hold 15 faces, 2 women in roles, 33 landmarks and 298 Twemoji images.
SMALL = BuildConfig(limit=300, style_train_subjects=3, style_heldout_subjects=4,
                    subject_set_train=(("face_character", 5), ("person_character", 1), ("landmarks", 10),
                                       ("large_captioned", 200)))


@pytest.fixture(scope="module")
def subjects():
    return load_subjects(NODE_MODULES)


@pytest.fixture(scope="module")
def available(subjects):
    """What a full build draws: every subject for the base vendor, base emoji for the others."""
    vendors = {BASE_VENDOR, *(s.vendor for s in SUBJECT_SETS.values())}
    drawn = {v: set(VendorFiles(v, NODE_MODULES).sources) for v in vendors}
    return {v: {s.key for s in subjects if (s.is_base or v == BASE_VENDOR) and s.key in drawn[v]} for v in vendors}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("sets")
    return data_dir, build(SMALL, data_dir=data_dir, log=lambda _: None)


def test_full_catalogue_splits_have_the_contracts_counts(subjects, available):
    splits = subject_set_splits(subjects, available, dict(BuildConfig().subject_set_train), "lora-style-lab/v1")
    assert {name: (len(s["train"]), len(s["heldout"])) for name, s in splits.items()} == SHIPPED_COUNTS
    for s in splits.values():
        assert not set(s["train"]) & set(s["heldout"]) and s["train"] == sorted(s["train"])
    by_key = {s.key: s for s in subjects}
    faces = [by_key[k] for k in splits["face_character"]["train"] + splits["face_character"]["heldout"]]
    assert {s.category for s in faces} == {"Smileys & Emotion"}
    assert all(s.subcategory.startswith("face-") and s.subcategory != "face-costume" for s in faces)
    assert not {"skull", "imp"} & {s.name for s in faces}
    women = sorted(by_key[k].name for s in splits["person_character"].values() for k in s)
    assert women[:3] == ["woman artist", "woman astronaut", "woman construction worker"] and len(women) == 24
    landmarks = splits["landmarks"]["train"] + splits["landmarks"]["heldout"]
    assert {by_key[k].category for k in landmarks} == {"Travel & Places"}
    everything = set(splits["large_captioned"]["train"]) | set(splits["large_captioned"]["heldout"])
    assert everything == available["twemoji"]


def test_split_is_a_hash_order_not_the_member_order(subjects, available):
    members = set_members("landmarks", subjects, available)
    splits = subject_set_splits(subjects, available, {"landmarks": 115}, "lora-style-lab/v1")
    first = sorted(members)[:115]
    assert splits["landmarks"]["train"] != first   # not the first keys alphabetically
    again = subject_set_splits(list(reversed(subjects)), available, {"landmarks": 115}, "lora-style-lab/v1")
    assert again == splits
    other_salt = subject_set_splits(subjects, available, {"landmarks": 115}, "another salt")
    assert other_salt["landmarks"]["train"] != splits["landmarks"]["train"]


def test_face_tags_examples_and_every_face_has_two_content_tags(subjects, available):
    assert face_tags("face with tears of joy", "face-smiling", ("joy",), "emoko") == \
        "1face, smiling, tears, laughing, yellow, emoko"
    assert face_tags("pouting face", "face-negative", ("rage",), "emoko") == \
        "1face, angry, v-shaped eyebrows, red, emoko"
    assert face_tags("face with cowboy hat", "face-hat", ("face with cowboy hat",), "x") == "1face, headwear, hat, yellow, x"
    by_key = {s.key: s for s in subjects}
    faces = [by_key[k] for k in set_members("face_character", subjects, available)]
    assert {s.subcategory for s in faces} == set(EXPRESSION_TAGS)
    for face in faces:
        tags = face_tags(face.name, face.subcategory, face.short_names, "emoko").split(", ")
        assert tags[0] == "1face" and tags[1] == EXPRESSION_TAGS[face.subcategory] and tags[-1] == "emoko"
        assert tags[-2] in ("yellow", "red", "green", "blue") and len(set(tags)) == len(tags)
        assert len(content_tags(", ".join(tags), "emoko")) >= 2, face.name


def test_unknown_or_repeated_set_names_and_too_few_members_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"subject_set_train: \('faces', 3\) needs a set name listed once "
                                         r"\(valid: face_character, person_character, landmarks, large_captioned\)"):
        BuildConfig(subject_set_train=(("faces", 3),))
    with pytest.raises(ValueError, match=r"\('landmarks', 3\) needs a set name listed once"):
        BuildConfig(subject_set_train=(("landmarks", 3), ("landmarks", 4)))
    with pytest.raises(ValueError, match=r"\('landmarks', 0\) .* at least 1 training subject"):
        BuildConfig(subject_set_train=(("landmarks", 0),))
    with pytest.raises(ValueError, match=r"subject set 'person_character': only 0 members are drawn; 20 train"):
        build(BuildConfig(limit=60, style_train_subjects=3, style_heldout_subjects=4,
                          subject_set_train=(("person_character", 20),)), data_dir=tmp_path, log=lambda _: None)
    assert not (tmp_path / "sets").exists() and not (tmp_path / "emoji").exists()   # nothing half-written


def test_triggers_are_new_words_and_split_as_documented(subjects):
    from lora_core.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer(REPO_ROOT / "models" / "tiny-sd" / "tokenizer")
    splits = {name: tokenizer.tokenize(s.trigger) for name, s in SUBJECT_SETS.items()}
    assert splits == {"face_character": ["emo", "ko</w>"], "person_character": ["w", "en", "ja</w>"],
                      "landmarks": ["v", "iz", "tor</w>"], "large_captioned": ["tw", "p", "ool</w>"]}
    triggers = [s.trigger for s in SUBJECT_SETS.values()]
    assert len(set(triggers)) == len(triggers) and not set(triggers) & set(TRIGGER_WORDS)
    caption_words = {w for s in subjects for w in re.findall(r"[a-z0-9]+", s.caption)}
    tag_words = {w for s in subjects if MEMBER_RULES["face_character"](s) and s.is_base
                 for w in re.findall(r"[a-z0-9]+", face_tags(s.name, s.subcategory, s.short_names, "-"))}
    assert not set(triggers) & (caption_words | tag_words)
    # No piece of a trigger occurs in any catalogue caption: the base has no meaning for them yet.
    caption_pieces = {piece for s in subjects for piece in tokenizer.tokenize(s.caption)}
    assert not {p for pieces in splits.values() for p in pieces} & caption_pieces
    pieces = [p for name in splits for p in splits[name]]
    assert len(set(pieces)) == len(pieces)   # two sets share no piece either


def test_folder_is_repository_relative_and_checks_the_split():
    assert SUBJECT_SETS["landmarks"].folder("heldout") == "data/sets/landmarks/heldout"
    assert SUBJECT_SETS["large_captioned"].folder() == "data/sets/large_captioned/train"
    with pytest.raises(ValueError, match="split: 'test' is not one of train, heldout"):
        SUBJECT_SETS["landmarks"].folder("test")


def test_built_sets_layout_images_captions_and_tags(built):
    data_dir, manifest = built
    captions = {r["key"]: r for r in csv.DictReader((data_dir / "emoji/catalog.csv").open(encoding="utf-8"))}
    expected_counts = dict(SMALL.subject_set_train)
    for name, spec in SUBJECT_SETS.items():
        splits = manifest["subject_sets"][name]["splits"]
        assert len(splits["train"]) == expected_counts[name] and splits["heldout"]
        assert not set(splits["train"]) & set(splits["heldout"])
        for split, keys in splits.items():
            folder = data_dir / "sets" / name / split
            suffixes = {".png", ".txt", ".tags"} if name == "face_character" else {".png", ".txt"}
            assert sorted(p.name for p in folder.iterdir()) == sorted(k + s for k in keys for s in suffixes)
            for key in keys:
                png = (folder / f"{key}.png").read_bytes()
                assert png == (data_dir / "emoji/images" / spec.vendor / f"{key}.png").read_bytes()
                caption = captions[key]["caption"]
                sentence = f"{caption}, {spec.trigger}" if name.endswith("_character") \
                    else f"{caption}, in the style of {spec.trigger}"
                assert (folder / f"{key}.txt").read_text(encoding="utf-8") == sentence + "\n"
            if name == "face_character":
                for key in keys:
                    tags = (folder / f"{key}.tags").read_text(encoding="utf-8")
                    assert tags.startswith("1face, ") and tags.endswith(", emoko\n")
                    assert len(content_tags(tags.strip(), "emoko")) >= 2
    with Image.open(data_dir / "sets/landmarks/train" / f"{manifest['subject_sets']['landmarks']['splits']['train'][0]}.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"


def test_every_heldout_subject_has_its_true_image_in_the_set_vendor_and_in_noto(built):
    data_dir, manifest = built
    for name in PAIRED_IN_BASE:
        vendor = SUBJECT_SETS[name].vendor
        for key in manifest["subject_sets"][name]["splits"]["heldout"]:
            assert (data_dir / "emoji/images" / vendor / f"{key}.png").is_file()
            assert (data_dir / "emoji/images" / BASE_VENDOR / f"{key}.png").is_file()


def test_manifest_records_sets_licences_and_hashes_and_verify_checks_them(built, tmp_path):
    data_dir, manifest = built
    record = manifest["subject_sets"]
    assert record["person_character"]["license"] == "CC-BY-SA-4.0" and record["person_character"]["share_alike"]
    assert record["face_character"]["package"] == "@lobehub/fluent-emoji-3d" and record["face_character"]["license"] == "MIT"
    assert record["large_captioned"]["license"] == "CC-BY-4.0" and record["large_captioned"]["trigger"] == "twpool"
    assert record["face_character"]["tag_captions"] and not record["landmarks"]["tag_captions"]
    assert manifest["counts"]["sets/landmarks/train"] == 10
    assert record["landmarks"]["counts"] == {"train": 10, "heldout": len(record["landmarks"]["splits"]["heldout"])}
    on_disk = sorted(p.relative_to(data_dir).as_posix() for p in (data_dir / "sets").rglob("*") if p.is_file())
    assert on_disk and sorted(k for k in manifest["files"] if k.startswith("sets/")) == on_disk
    some = on_disk[len(on_disk) // 3]
    assert manifest["files"][some] == hashlib.sha256((data_dir / some).read_bytes()).hexdigest()
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    (copy / some).write_bytes(b"tampered")
    assert verify(copy) == [some]


def test_a_second_build_is_byte_identical(built, tmp_path):
    _, manifest = built
    again = build(SMALL, data_dir=tmp_path, log=lambda _: None)
    assert again["files"] == manifest["files"] and again["subject_sets"] == manifest["subject_sets"]


@pytest.mark.skipif(not (DATA_DIR / "sets").is_dir(), reason="data/sets not built: python -m lora_core.toy build")
def test_the_built_world_has_the_contracts_sets():
    for name, (n_train, n_heldout) in SHIPPED_COUNTS.items():
        spec = SUBJECT_SETS[name]
        train, heldout = (sorted(p.stem for p in (REPO_ROOT / spec.folder(split)).glob("*.png"))
                          for split in ("train", "heldout"))
        assert (len(train), len(heldout)) == (n_train, n_heldout) and not set(train) & set(heldout)
        if name in PAIRED_IN_BASE:
            for key in heldout:
                assert (DATA_DIR / "emoji/images" / spec.vendor / f"{key}.png").is_file()
                assert (DATA_DIR / "emoji/images" / BASE_VENDOR / f"{key}.png").is_file()
