"""The subject catalogue: every emoji of ``emoji-datasource`` (and Noto's skin-tone variants) with a caption.

A caption joins the emoji's name, skin tone, subcategory, category and short names, so the
text encoder sees words that tell subjects apart and group them:

>>> subject_caption({"name": "GRINNING FACE", "subcategory": "face-smiling",
...                  "category": "Smileys & Emotion", "short_names": ["grinning"]})
'grinning face, face smiling, smileys and emotion, grinning'
>>> subject_caption({"name": "THUMBS UP SIGN", "subcategory": "hand-fingers-closed",
...                  "category": "People & Body", "short_names": ["+1", "thumbsup"]}, ("1F3FB",))
'thumbs up sign, light skin tone, hand fingers closed, people and body, +1, thumbsup'
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lora_core.toy.sources import normalize_key

SKIN_TONES = {"1f3fb": "light skin tone", "1f3fc": "medium-light skin tone", "1f3fd": "medium skin tone",
              "1f3fe": "medium-dark skin tone", "1f3ff": "dark skin tone"}


@dataclass(frozen=True)
class Subject:
    key: str            # normalised codepoints, the file stem in every vendor folder
    unified: str        # emoji-datasource's codepoints, as published
    name: str
    category: str
    subcategory: str
    skin_tone: str      # "" for the base emoji
    caption: str
    short_names: tuple[str, ...] = ()   # emoji-datasource's short names, underscores as spaces

    @property
    def is_base(self) -> bool:
        return not self.skin_tone

    @property
    def base_key(self) -> str:
        """Key of the emoji this is a skin-tone variant of (its own key for a base emoji)."""
        return "-".join(c for c in self.key.split("-") if c not in SKIN_TONES)


def _words(text: str) -> str:
    return text.lower().replace("&", "and").replace("-", " ").replace("_", " ")


def subject_caption(entry: dict, tone_codepoints: tuple[str, ...] = ()) -> str:
    """Caption of one emoji-datasource entry (optionally a skin-tone variant)."""
    parts = [entry["name"].lower()]
    parts += [SKIN_TONES[normalize_key(c)] for c in tone_codepoints]
    parts += [_words(entry["subcategory"]), _words(entry["category"])]
    parts += [s.replace("_", " ") for s in entry.get("short_names", [])]
    return ", ".join(parts)


def load_subjects(node_modules: Path) -> list[Subject]:
    """All base emoji and their skin-tone variants, sorted by key."""
    entries = json.loads((Path(node_modules) / "emoji-datasource" / "emoji.json").read_text())
    subjects = []
    for entry in entries:
        subjects.append(_subject(entry, entry["unified"], ()))
        for tones, variant in sorted(entry.get("skin_variations", {}).items()):
            subjects.append(_subject(entry, variant["unified"], tuple(tones.split("-"))))
    subjects.sort(key=lambda s: s.key)
    keys = [s.key for s in subjects]
    if len(set(keys)) != len(keys):
        raise ValueError("emoji.json: two entries normalise to the same codepoint key")
    return subjects


def _subject(entry: dict, unified: str, tones: tuple[str, ...]) -> Subject:
    tone = ", ".join(SKIN_TONES[normalize_key(t)] for t in tones)
    return Subject(normalize_key(unified), unified, entry["name"].lower(), entry["category"],
                   entry["subcategory"], tone, subject_caption(entry, tones),
                   tuple(s.replace("_", " ") for s in entry.get("short_names", [])))


def hash_order(keys, salt: str) -> list[str]:
    """``keys`` in a fixed pseudo-random order that depends only on the keys and ``salt``.

    >>> hash_order(["a", "b", "c"], "x") == hash_order(["c", "b", "a"], "x")
    True
    """
    return sorted(keys, key=lambda k: hashlib.sha256(f"{salt}:{k}".encode()).hexdigest())
