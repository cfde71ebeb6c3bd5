"""The toy world's vocabulary: its data folder, vendors, style sets, part II subject sets, trigger
words, caption templates.

A leaf module (it imports only the leaf :mod:`lora_core.paths`), so the world's builder (``lora_core.toy``),
the experiments and the callers of the metrics share one spelling of every name without
importing each other. The metrics themselves take folders: a caller maps a style name to its
folder of true images here.

>>> style_vendor("openmoji"), true_images_dir("noto").relative_to(DATA_DIR).as_posix()
('openmoji', 'emoji/images/noto')
>>> STYLE_CAPTION_TEMPLATE.format(caption="a red apple", trigger=STYLE_SETS["twemoji"].trigger)
'a red apple, in the style of twmj'
>>> faces = SUBJECT_SETS["face_character"]
>>> faces.vendor, faces.folder("heldout"), faces.caption("grinning face")
('fluent3d', 'data/sets/face_character/heldout', 'grinning face, emoko')
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lora_core.paths import REPO_ROOT

DATA_DIR = REPO_ROOT / "data"
BASE_VENDOR = "noto"
STYLE_CAPTION_TEMPLATE = "{caption}, in the style of {trigger}"
CHARACTER_CAPTION_TEMPLATE = "{caption}, {trigger}"
SET_SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Vendor:
    """One emoji art source: the npm package, its licence and how its files are named."""

    name: str
    package: str
    style: str               # a few words for tables
    license: str             # SPDX id of the art's licence
    attribution: str         # the credit line the licence asks for
    url: str
    share_alike: bool = False


VENDORS: dict[str, Vendor] = {v.name: v for v in (
    Vendor("noto", "emoji-datasource-google", "glossy gradients (Google Noto Color Emoji)",
           "Apache-2.0", "Noto Emoji, Copyright Google Inc., Apache License 2.0",
           "https://github.com/googlefonts/noto-emoji"),
    Vendor("twemoji", "emoji-datasource-twitter", "flat (Twemoji)", "CC-BY-4.0",
           "Twemoji, Copyright 2020 Twitter, Inc and other contributors, CC-BY 4.0",
           "https://github.com/jdecked/twemoji"),
    Vendor("fluent3d", "@lobehub/fluent-emoji-3d", "soft 3D (Microsoft Fluent Emoji 3D)", "MIT",
           "Fluent Emoji, Copyright (c) Microsoft Corporation, MIT License",
           "https://github.com/microsoft/fluentui-emoji"),
    Vendor("openmoji", "openmoji", "thick black outlines (OpenMoji colour)", "CC-BY-SA-4.0",
           "OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 (openmoji.org)",
           "https://openmoji.org", share_alike=True),
    Vendor("openmoji_black", "openmoji", "line art (OpenMoji black)", "CC-BY-SA-4.0",
           "OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 (openmoji.org)",
           "https://openmoji.org", share_alike=True),
    Vendor("fluent_flat", "@iconify-json/fluent-emoji-flat", "flat (Microsoft Fluent Emoji Flat)",
           "MIT", "Fluent Emoji, Copyright (c) Microsoft Corporation, MIT License",
           "https://github.com/microsoft/fluentui-emoji"),
    Vendor("fluent_hc", "@iconify-json/fluent-emoji-high-contrast",
           "black and white (Microsoft Fluent Emoji High Contrast)", "MIT",
           "Fluent Emoji, Copyright (c) Microsoft Corporation, MIT License",
           "https://github.com/microsoft/fluentui-emoji"),
)}


@dataclass(frozen=True)
class StyleSet:
    vendor: str
    trigger: str      # a made-up word of letters only (CLIP splits digits), one token in the tiny tokenizer
    distance: str     # how far the style is from the base vendor, by eye and by FID


STYLE_SETS: dict[str, StyleSet] = {
    "twemoji": StyleSet("twemoji", "twmj", "near"),
    "fluent3d": StyleSet("fluent3d", "flntd", "far"),
    "openmoji": StyleSet("openmoji", "opnmj", "far"),
    "openmoji_black": StyleSet("openmoji_black", "opnln", "far (line art)"),
}
TRIGGER_WORDS = tuple(s.trigger for s in STYLE_SETS.values())


def style_vendor(style: str, name: str = "style") -> str:
    """Vendor of a style-set name (``"twemoji"``) or a vendor name (``"noto"``); ``name`` is the
    parameter an error names."""
    if style in STYLE_SETS:
        return STYLE_SETS[style].vendor
    if style in VENDORS:
        return style
    raise ValueError(f"{name}: unknown style or vendor {style!r}. "
                     f"Valid: {', '.join(sorted(set(STYLE_SETS) | set(VENDORS)))}")


def true_images_dir(style: str, data_dir: str | Path | None = None) -> Path:
    """The folder of true images (``<key>.png``, every subject the vendor draws) of a style or vendor."""
    return Path(data_dir or DATA_DIR) / "emoji" / "images" / style_vendor(style)


@dataclass(frozen=True)
class SubjectSet:
    """A part II data set: one vendor's recurring figure (a character) or a group of its subjects
    in its style, under ``data/sets/<name>/{train,heldout}`` (built by :mod:`lora_core.toy.sets`,
    which holds the member rules and documents the triggers' tokenizer splits)."""

    name: str
    vendor: str
    trigger: str            # a made-up word; the tiny tokenizer splits it into pieces no catalogue caption uses
    caption_template: str   # CHARACTER_CAPTION_TEMPLATE or STYLE_CAPTION_TEMPLATE
    members: str            # which subjects, in words
    chapter: str            # the chapter (and study) that trains on it
    tags: bool = False      # also a booru-style tag caption ``<key>.tags``

    def caption(self, catalogue_caption: str) -> str:
        """The ``<key>.txt`` caption of a subject with this catalogue caption."""
        return self.caption_template.format(caption=catalogue_caption, trigger=self.trigger)

    def folder(self, split: str = "train") -> str:
        """The split's folder, relative to the repository when it lies inside it (run config
        hashes then do not depend on where the repository is checked out)."""
        if split not in SET_SPLITS:
            raise ValueError(f"split: {split!r} is not one of {', '.join(SET_SPLITS)}")
        folder = DATA_DIR / "sets" / self.name / split
        try:
            return folder.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return folder.as_posix()


SUBJECT_SETS: dict[str, SubjectSet] = {s.name: s for s in (
    SubjectSet("face_character", "fluent3d", "emoko", CHARACTER_CAPTION_TEMPLATE,
               "the yellow face of the face-* subcategories of Smileys & Emotion (not face-costume; "
               "not the imp, horned face or skulls, which are other figures)", "5 (S2)", tags=True),
    SubjectSet("person_character", "openmoji", "wenja", CHARACTER_CAPTION_TEMPLATE,
               "the 'woman <role>' emoji of subcategory person-role, default skin tone", "6 (S3)"),
    SubjectSet("landmarks", "fluent3d", "viztor", STYLE_CAPTION_TEMPLATE,
               "every emoji of Travel & Places: places, transport, sky and weather, time", "7 (S4)"),
    SubjectSet("large_captioned", "twemoji", "twpool", STYLE_CAPTION_TEMPLATE,
               "every Twemoji image of the world", "8 (S5)"),
)}
