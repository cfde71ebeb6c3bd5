"""Read the answer files the page saves, check each against its kit, and unblind the answers.

A file is accepted only if it was written by this page version for this kit, names exactly the
kit's images, shows the trials in the order the participant's code gives (recomputed with
:func:`lora_core.user_study.shuffle.trial_order`), and answers every trial with images of that
trial. Anything else is one ``ValueError`` naming the file and what is wrong.

The answer file (``answers-<code>.json``)::

    {"page_version", "kit_id", "participant_code",
     "image_ids": [every image id of the kit, sorted],
     "order": [{"trial", "original", "A", "B"}, ...],   # as shown
     "shown": [original, A, B of each trial, in order],
     "answers": [{"trial", "buy": id, "style": id, "recognisable": [ids]}, ...]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from lora_core.user_study.design import METHODS
from lora_core.user_study.shuffle import check_code, trial_order

ANSWER_KEYS = ("page_version", "kit_id", "participant_code", "image_ids", "order", "shown", "answers")


@dataclass(frozen=True)
class Participant:
    """One participant's checked answers, in the order shown (``answers`` as the page wrote them)."""

    code: str
    source: str  # the answer file's name, for messages
    answers: tuple[Mapping[str, Any], ...]


def answer_file(manifest: Mapping[str, Any], code: str, choices: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """The answer file the page saves for ``code`` when, set by set in the order shown, the
    participant picks ``choices`` (the page's option values: ``buy``/``style`` "A" or "B",
    ``recognisable`` "both", "A", "B" or "neither"). The Python twin of the page's ``finish``."""
    page = manifest["page"]
    order = trial_order(page["trials"], page["kit_id"], code)
    if len(choices) != len(order):
        raise ValueError(f"answer_file: {len(order)} sets shown but {len(choices)} choices given")
    answers = []
    for shown, choice in zip(order, choices):
        recognised = {"both": [shown["A"], shown["B"]], "A": [shown["A"]], "B": [shown["B"]], "neither": []}
        answers.append({"trial": shown["trial"], "buy": shown[choice["buy"]], "style": shown[choice["style"]],
                        "recognisable": recognised[choice["recognisable"]]})
    return {"page_version": page["page_version"], "kit_id": page["kit_id"], "participant_code": check_code(code),
            "image_ids": sorted(page["images"]), "order": order,
            "shown": [image for shown in order for image in (shown["original"], shown["A"], shown["B"])],
            "answers": answers}


def _check_answer(answer: Any, shown: Mapping[str, str]) -> str | None:
    """What is wrong with one trial's answer (None when it is well formed)."""
    if not isinstance(answer, dict) or answer.get("trial") != shown["trial"]:
        return f"answer for trial {shown['trial']} missing or out of order"
    pair = {shown["A"], shown["B"]}
    for question in ("buy", "style"):
        if answer.get(question) not in pair:
            return f"trial {shown['trial']}: '{question}' must be one of its images A or B"
    recognised = answer.get("recognisable")
    if not isinstance(recognised, list) or len(set(recognised)) != len(recognised) or not set(recognised) <= pair:
        return f"trial {shown['trial']}: 'recognisable' must list distinct images of A and B"
    return None


def _problem(data: Any, manifest: Mapping[str, Any]) -> str | None:
    """What is wrong with an answer file's content (None when it matches the kit)."""
    if not isinstance(data, dict) or not set(ANSWER_KEYS) <= set(data):
        return f"not an answer file of this study (needs keys {', '.join(ANSWER_KEYS)})"
    page = manifest["page"]
    for name in ("page_version", "kit_id"):
        if data[name] != page[name]:
            return f"{name} {data[name]!r} is not this kit's {page[name]!r}"
    try:
        code = check_code(str(data["participant_code"]))
    except ValueError as error:
        return str(error)
    if data["image_ids"] != sorted(page["images"]):
        return "its image ids are not this kit's"
    if data["order"] != trial_order(page["trials"], page["kit_id"], code):
        return f"its order is not the one the page shows for code {code!r} (edited, or written for another kit)"
    if data["shown"] != [image for shown in data["order"] for image in (shown["original"], shown["A"], shown["B"])]:
        return "'shown' does not list the images of 'order'"
    if not isinstance(data["answers"], list):
        return "'answers' is not a list"
    if len(data["answers"]) != len(data["order"]):
        return f"{len(data['order'])} trials shown but answers has {len(data['answers'])} entries"
    for answer, shown in zip(data["answers"], data["order"]):
        problem = _check_answer(answer, shown)
        if problem:
            return problem
    return None


def check_answer_file(data: Any, manifest: Mapping[str, Any], source: str) -> Participant:
    """``data`` (a parsed answer file) as a :class:`Participant`, or a ValueError naming ``source``."""
    problem = _problem(data, manifest)
    if problem:
        raise ValueError(f"{source}: {problem}")
    return Participant(check_code(data["participant_code"]), source, tuple(data["answers"]))


def read_answer_folder(folder: str | Path, manifest: Mapping[str, Any]) -> list[Participant]:
    """Every ``*.json`` answer file in ``folder``, checked; a code that answers twice is an error."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not paths:
        raise ValueError(f"{folder}: no answer files (*.json) here")
    participants, seen = [], {}
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not a JSON file ({error})") from error
        participant = check_answer_file(data, manifest, str(path))
        if participant.code in seen:
            raise ValueError(f"{path}: participant code {participant.code!r} also answered in {seen[participant.code]}")
        seen[participant.code] = str(path)
        participants.append(participant)
    return participants


def failed_attention_checks(participant: Participant, manifest: Mapping[str, Any]) -> int:
    """How many attention-check questions (style and recognisable of each check trial) ``participant``
    got wrong; the obvious answer is the exact copy of the original."""
    expected = manifest["key"]["attention"]
    failed = 0
    for answer in participant.answers:
        if answer["trial"] in expected:
            target = expected[answer["trial"]]
            failed += answer["style"] != target["style"]
            failed += sorted(answer["recognisable"]) != sorted(target["recognisable"])
    return failed


def recognised_outcome(methods: set[str]) -> str:
    """The outcome of the recognisability question from the methods whose image was recognised.

    >>> recognised_outcome({"lora"}), recognised_outcome(set())
    ('lora only', 'neither')
    """
    if methods == set(METHODS):
        return "both"
    return f"{methods.pop()} only" if methods else "neither"


def unblinded_answers(participants: Sequence[Participant], manifest: Mapping[str, Any]) -> pd.DataFrame:
    """One row per participant and study subject (attention checks left out): the method each
    question's answer points to (``buy``, ``style``: lora/ti; ``recognisable``: both, lora only,
    ti only, neither)."""
    images, trials = manifest["key"]["images"], manifest["key"]["trials"]
    rows = []
    for participant in participants:
        for answer in participant.answers:
            if trials[answer["trial"]]["kind"] != "study":
                continue
            rows.append({"participant": participant.code, "subject": trials[answer["trial"]]["subject"],
                         "buy": images[answer["buy"]]["role"], "style": images[answer["style"]]["role"],
                         "recognisable": recognised_outcome({images[i]["role"] for i in answer["recognisable"]})})
    return pd.DataFrame(rows, columns=["participant", "subject", "buy", "style", "recognisable"])
