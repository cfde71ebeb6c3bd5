"""The four part II subject sets (:data:`lora_core.world.SUBJECT_SETS`): members, splits, tag captions.

Each set is one vendor's art of a group of subjects, laid out as kohya folders
``data/sets/<name>/{train,heldout}/<key>.png`` + ``<key>.txt`` (``<key>.tags`` too where the set
has tag captions). Its members are the subjects its rule picks that both its vendor and the base
vendor draw, so every held-out subject has its true image in the set's style and in Noto's. The
first ``n_train`` members in a fixed hash order (salt ``<selection salt>/sets/<name>``) train, the
others are held out: no random generator, and train and held-out never share a subject. Images
are the vendor's images of the build, byte for byte, as in the style sets.

Tag captions imitate the booru tags of an anime tagger (study S2): ``1face``, an expression
tag from the subcategory, feature tags from words of the name and short names, a colour and
the trigger, in that order:

>>> face_tags("face with tears of joy", "face-smiling", ("joy",), "emoko")
'1face, smiling, tears, laughing, yellow, emoko'
>>> face_tags("nauseated face", "face-unwell", ("nauseated face",), "emoko")
'1face, unwell, nausea, green, emoko'

Every face of the set gets its expression and at least one feature tag (a test checks), so each
tag caption says more than ``1face`` and the colour. Sentence captions (``<key>.txt``) are the
catalogue caption and the trigger, by :meth:`lora_core.world.SubjectSet.caption`.

Triggers are made-up words that no catalogue caption contains and that the shipped tiny
tokenizer (``models/tiny-sd/tokenizer``) splits into pieces no catalogue caption's tokens use,
so a trigger's tokens mean nothing to the base until training gives them a meaning:
``emoko`` -> ``emo ko</w>``, ``wenja`` -> ``w en ja</w>``, ``viztor`` -> ``v iz tor</w>``,
``twpool`` -> ``tw p ool</w>`` (tests/test_toy_sets.py checks these splits).
"""
from __future__ import annotations

from pathlib import Path

from lora_core.toy.catalog import Subject, hash_order
from lora_core.world import BASE_VENDOR, SUBJECT_SETS

NOT_THE_FACE = ("imp", "smiling face with horns", "skull", "skull and crossbones")  # other figures

# Expression tag of each face subcategory (face-costume is not the character).
EXPRESSION_TAGS = {
    "face-smiling": "smiling", "face-affection": "loving", "face-tongue": "playful",
    "face-hand": "hand gesture", "face-neutral-skeptical": "skeptical", "face-concerned": "worried",
    "face-sleepy": "sleepy", "face-unwell": "unwell", "face-glasses": "eyewear", "face-hat": "headwear",
    "face-negative": "angry",
}
# Feature tags: (words of the name or a short name, tag), in the order tags are written; every
# face has at least one (a test checks), drawn as the vendors draw it.
FEATURE_TAGS = (
    ("tears", "tears"), ("tear", "tears"), ("cry", "tears"), ("crying", "tears"), ("sob", "tears"),
    ("heart", "hearts"), ("hearts", "hearts"), ("kiss", "kiss"), ("kissing", "kiss"),
    ("sweat", "sweat"), ("tongue", "tongue"), ("yum", "tongue"), ("drooling", "drool"),
    ("glasses", "glasses"), ("nerd", "glasses"), ("sunglasses", "sunglasses"), ("monocle", "monocle"),
    ("hat", "hat"), ("disguised", "disguise"), ("halo", "halo"), ("star eyes", "star eyes"),
    ("open mouth", "open mouth"), ("anguished", "open mouth"), ("weary", "open mouth"),
    ("tired", "open mouth"), ("astonished", "surprised"), ("hushed", "surprised"),
    ("closed eyes", "closed eyes"), ("relaxed", "closed eyes"), ("relieved", "closed eyes"),
    ("pensive", "closed eyes"), ("smiling eyes", "smiling eyes"), ("smile", "smile"),
    ("slightly smiling", "smile"), ("wink", "wink"), ("winking", "wink"), ("joy", "laughing"),
    ("laughing", "laughing"), ("grinning", "grin"), ("grin", "grin"), ("grimacing", "teeth"),
    ("confounded", "squinting"), ("persevering", "squinting"), ("frowning", "frown"),
    ("confused", "frown"), ("disappointed", "frown"), ("worried", "frown"), ("diagonal", "crooked mouth"),
    ("angry", "v-shaped eyebrows"), ("pouting", "v-shaped eyebrows"), ("serious", "v-shaped eyebrows"),
    ("symbols", "censored"), ("triumph", "steam"), ("exhaling", "breath"), ("scream", "scared"),
    ("fearful", "scared"), ("pleading", "puppy eyes"), ("flushed", "blush"),
    ("finger", "finger to mouth"), ("hand over mouth", "hand over mouth"),
    ("hand covering mouth", "hand over mouth"), ("peeking", "peeking"), ("hugging", "open hands"),
    ("saluting", "salute"), ("thinking", "hand on chin"), ("dotted line", "dotted outline"),
    ("expressionless", "straight mouth"), ("neutral", "straight mouth"), ("clouds", "clouds"),
    ("eyebrow", "raised eyebrow"), ("rolling eyes", "rolling eyes"), ("without mouth", "no mouth"),
    ("shaking", "motion lines"), ("lying", "long nose"), ("smirk", "smirk"), ("unamused", "side glance"),
    ("zipper", "zipper mouth"), ("bags under eyes", "eye bags"), ("sleeping", "zzz"),
    ("sleepy", "snot bubble"), ("yawning", "yawn"), ("melting", "melting"), ("upside down", "upside-down"),
    ("money", "money"), ("dizzy", "x eyes"), ("spiral", "spiral eyes"), ("bandage", "bandage"),
    ("mask", "mask"), ("thermometer", "thermometer"), ("wavy mouth", "wavy mouth"), ("freezing", "frost"),
    ("nauseated", "nausea"), ("overheated", "heat"), ("vomiting", "vomit"), ("exploding", "explosion"),
    ("sneezing", "tissue"),
)
COLOUR_TAGS = (("nauseated", "green"), ("freezing", "blue"), ("overheated", "red"), ("pouting", "red"),
               ("symbols", "red"))
DEFAULT_COLOUR = "yellow"


def _is_face(subject: Subject) -> bool:
    return (subject.category == "Smileys & Emotion" and subject.subcategory.startswith("face-")
            and subject.subcategory != "face-costume" and subject.name not in NOT_THE_FACE)


MEMBER_RULES = {  # set name -> does a base subject belong to it
    "face_character": _is_face,
    "person_character": lambda s: s.subcategory == "person-role" and s.name.startswith("woman "),
    "landmarks": lambda s: s.category == "Travel & Places",
    "large_captioned": lambda s: True,
}


def _words(text: str) -> str:
    """Lowercase words separated by single spaces, with a space at both ends for phrase matching."""
    return " " + " ".join(text.lower().replace("-", " ").replace("_", " ").split()) + " "


def face_tags(name: str, subcategory: str, short_names: tuple[str, ...], trigger: str) -> str:
    """Booru-style tag caption of a face: ``1face, <expression>, <features...>, <colour>, <trigger>``."""
    text = _words(" ".join((name, *short_names)))
    tags = ["1face", EXPRESSION_TAGS[subcategory]]
    tags += [tag for phrase, tag in FEATURE_TAGS if f" {phrase} " in text]
    colour = next((c for phrase, c in COLOUR_TAGS if f" {phrase} " in text), DEFAULT_COLOUR)
    return ", ".join(dict.fromkeys(tags + [colour, trigger]))


def content_tags(tags: str, trigger: str) -> list[str]:
    """The tags of a tag caption that describe the face: all but ``1face``, the colour and the trigger.

    >>> content_tags("1face, smiling, tears, yellow, emoko", "emoko")
    ['smiling', 'tears']
    """
    colours = {DEFAULT_COLOUR, *(c for _, c in COLOUR_TAGS)}
    return [t for t in tags.split(", ") if t not in ("1face", trigger) and t not in colours]


def set_members(name: str, subjects: list[Subject], available: dict[str, set[str]]) -> list[str]:
    """Keys of the base subjects of set ``name`` that its vendor and the base vendor both draw."""
    rule, vendor = MEMBER_RULES[name], SUBJECT_SETS[name].vendor
    return [s.key for s in subjects if s.is_base and rule(s)
            and s.key in available[vendor] and s.key in available[BASE_VENDOR]]


def split_members(name: str, members: list[str], n_train: int, salt: str) -> dict[str, list[str]]:
    """The first ``n_train`` members in hash order train, the others are held out (both sorted)."""
    ordered = hash_order(members, f"{salt}/sets/{name}")
    if len(ordered) <= n_train:
        raise ValueError(f"subject set {name!r}: only {len(ordered)} members are drawn; "
                         f"{n_train} train + at least 1 held-out requested")
    return {"train": sorted(ordered[:n_train]), "heldout": sorted(ordered[n_train:])}


def subject_set_splits(subjects: list[Subject], available: dict[str, set[str]],
                       train_counts: dict[str, int], salt: str) -> dict[str, dict[str, list[str]]]:
    """Set name -> ``{"train": keys, "heldout": keys}`` for the sets in ``train_counts``."""
    return {name: split_members(name, set_members(name, subjects, available), n_train, salt)
            for name, n_train in train_counts.items()}


def write_subject_sets(root: Path, subjects: list[Subject], splits: dict[str, dict[str, list[str]]]) -> None:
    """Write every set's folders under ``root/sets`` (made even when there is no set) from the
    vendor images under ``root/emoji/images``."""
    (root / "sets").mkdir()
    by_key = {s.key: s for s in subjects}
    for name, set_splits in splits.items():
        spec = SUBJECT_SETS[name]
        images = root / "emoji" / "images" / spec.vendor
        for split, keys in set_splits.items():
            folder = root / "sets" / name / split
            folder.mkdir(parents=True)
            for key in keys:
                subject = by_key[key]
                (folder / f"{key}.png").write_bytes((images / f"{key}.png").read_bytes())
                (folder / f"{key}.txt").write_text(spec.caption(subject.caption) + "\n", encoding="utf-8")
                if spec.tags:
                    tags = face_tags(subject.name, subject.subcategory, subject.short_names, spec.trigger)
                    (folder / f"{key}.tags").write_text(tags + "\n", encoding="utf-8")


def subject_sets_manifest(splits: dict[str, dict[str, list[str]]], sources: dict[str, dict]) -> dict:
    """The manifest's record of each set: vendor, trigger, caption form, source package and
    licence (from the manifest's ``sources``), counts and the keys of each split."""
    record = {}
    for name, set_splits in splits.items():
        spec = SUBJECT_SETS[name]
        source = sources[spec.vendor]
        record[name] = {
            "vendor": spec.vendor, "trigger": spec.trigger, "caption_template": spec.caption_template,
            "tag_captions": spec.tags, "members": spec.members, "chapter": spec.chapter,
            **{k: source[k] for k in ("package", "version", "license", "attribution", "url", "share_alike")},
            "counts": {split: len(keys) for split, keys in set_splits.items()}, "splits": set_splits}
    return record
