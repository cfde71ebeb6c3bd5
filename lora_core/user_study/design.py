"""The study's design: roles of the images, S4's three questions, their answer options and chance.

S4 does not publish its form, only its questions and results (STUDIES.md): "which would you buy"
(90% LoRA), "which style is closest to the originals" (80% LoRA) and "is the landmark
recognisable" (50% said neither method kept it). We read them as questions about one subject at a
time: the page shows the subject's original beside its LoRA and TI versions, labelled only A and
B (which is which is shuffled per participant), and asks

1. ``buy``: which of A and B the participant would rather buy (A or B);
2. ``style``: which of A and B is closest in style to the original (A or B);
3. ``recognisable``: in which of A and B the subject of the original is still recognisable
   (both, only A, only B, neither).

Chance is what a participant answering at random would give: 1/2 for LoRA in the two-way
questions and 1/4 for "neither" among the four options of the third.

>>> [q.id for q in QUESTIONS], [q.chance for q in QUESTIONS]
(['buy', 'style', 'recognisable'], [0.5, 0.5, 0.25])
"""
from __future__ import annotations

from dataclasses import dataclass

PAGE_VERSION = "lora-style-lab user study, page 1"
METHODS = ("lora", "ti")  # the two methods compared; the image folder's subfolders besides "original"
ROLES = ("original", *METHODS)
RECOGNISED_OUTCOMES = ("both", "lora only", "ti only", "neither")


@dataclass(frozen=True)
class Question:
    """One question of the page: its wording, answer options (value, label) and what is reported."""

    id: str
    text: str
    options: tuple[tuple[str, str], ...]
    outcome: str  # the reported outcome, e.g. "chose LoRA"
    counted: str  # the unblinded answer that counts as that outcome: "lora", or "neither"
    chance: float  # the outcome's probability for a participant who answers at random


QUESTIONS = (
    Question("buy", "If you were buying one of these two pictures, which would you buy?",
             (("A", "A"), ("B", "B")), "chose LoRA", "lora", 0.5),
    Question("style", "Which of the two pictures is closest in style to the original?",
             (("A", "A"), ("B", "B")), "chose LoRA", "lora", 0.5),
    Question("recognisable", "In which pictures can you still recognise the subject of the original?",
             (("both", "Both A and B"), ("A", "Only A"), ("B", "Only B"), ("neither", "Neither")),
             "neither method kept the subject", "neither", 0.25),
)
