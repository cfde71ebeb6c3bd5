"""The per-participant order of the study page, in Python: a twin of the page's JavaScript.

The page shuffles its trials with a tiny deterministic generator seeded by the participant
code, so the order a participant saw can be recomputed here and checked against the order the
answer file records. Both sides use the same three steps, bit for bit:

1. ``seed = fnv1a32(kit_id + ":" + code)`` (32-bit FNV-1a over the characters; codes are ASCII);
2. ``mulberry32(seed)`` draws floats ``u / 2**32`` for 32-bit integers ``u``;
3. a Fisher-Yates shuffle of the trials (sorted by trial id), drawing ``j = floor(r * (i + 1))``
   for ``i = n-1 .. 1``; then, for each trial in the shuffled order, one more draw: below 0.5
   shows the two candidates as given (A = first), otherwise swapped.

Every product stays below 2**53, so JavaScript's doubles and Python's integers agree exactly.

>>> fnv1a32("a")
3826002220
>>> draw = mulberry32(1)
>>> [round(draw(), 6) for _ in range(3)]
[0.627074, 0.002736, 0.527447]
>>> trials = [{"id": "t1", "original": "o1", "candidates": ["x", "y"]},
...           {"id": "t2", "original": "o2", "candidates": ["u", "v"]}]
>>> [(t["trial"], t["A"]) for t in trial_order(trials, "kit0", "P01")]
[('t2', 'u'), ('t1', 'x')]
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

MASK32 = 0xFFFFFFFF
CODE_PATTERN = r"[A-Za-z0-9_-]{1,32}"  # the page enforces the same pattern before it starts


def check_code(code: str) -> str:
    """The participant code, stripped of surrounding spaces; an error if it is not 1-32 of A-Z a-z 0-9 _ -.

    >>> check_code("  P-07 ")
    'P-07'
    """
    stripped = code.strip()
    if not re.fullmatch(CODE_PATTERN, stripped):
        raise ValueError(f"participant code {code!r} must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
    return stripped


def fnv1a32(text: str) -> int:
    """32-bit FNV-1a hash over the character codes of ``text`` (the page's ``hashCode``)."""
    value = 0x811C9DC5
    for char in text:
        value = ((value ^ ord(char)) * 0x01000193) & MASK32
    return value


def _imul(a: int, b: int) -> int:
    """JavaScript's ``Math.imul`` on unsigned 32-bit patterns."""
    return (a * b) & MASK32


def mulberry32(seed: int) -> Callable[[], float]:
    """Tommy Ettinger's mulberry32 generator (the page's ``mulberry32``): floats in [0, 1)."""
    state = seed & MASK32

    def draw() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & MASK32
        t = _imul(state ^ (state >> 15), state | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & MASK32
        return ((t ^ (t >> 14)) & MASK32) / 2**32

    return draw


def trial_order(trials: Sequence[Mapping], kit_id: str, code: str) -> list[dict[str, str]]:
    """The trials as participant ``code`` sees them: ``[{"trial", "original", "A", "B"}, ...]``.

    ``trials`` are the page's trials (``id``, ``original``, ``candidates`` of two image ids).
    """
    draw = mulberry32(fnv1a32(f"{kit_id}:{check_code(code)}"))
    shuffled = sorted(trials, key=lambda trial: trial["id"])
    for i in range(len(shuffled) - 1, 0, -1):
        j = int(draw() * (i + 1))
        shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
    order = []
    for trial in shuffled:
        first, second = trial["candidates"]
        a, b = (first, second) if draw() < 0.5 else (second, first)
        order.append({"trial": trial["id"], "original": trial["original"], "A": a, "B": b})
    return order
