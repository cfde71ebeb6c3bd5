"""What S4's user study can support: its reported shares as 50 participants, and a simulated panel.

S4 reports three shares from 50 participants (STUDIES.md): 90% would buy the LoRA image, 80% found
LoRA's style closest to the originals, 50% said neither method kept the landmark. It publishes no
per-participant data, so :func:`s4_reported_analysis` reads each share as one answer from each of
the 50 participants; that is the most the report supports (if each participant answered for all
five landmarks, the answers are not independent and the effective sample lies between 50 and 250).

:func:`simulated_panel_analysis` runs the whole pipeline (answer files, checks, attention, tables)
on a SIMULATED panel that answers like S4's shares, for one answer per subject: its numbers are
not data, they show what the analysis reports and how much the cluster interval widens when
participants differ in taste.

>>> table = s4_reported_analysis(n_resamples=200)
>>> print(table[["question", "count", "participants", "verdict"]].to_string(index=False))
    question  count  participants                verdict
         buy     45            50 more often than chance
       style     40            50 more often than chance
recognisable     25            50 more often than chance
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lora_core.user_study.analysis import StudyAnalysis, analyse_participants, question_table
from lora_core.user_study.answers import answer_file, check_answer_file
from lora_core.user_study.design import QUESTIONS, ROLES
from lora_core.user_study.kit import SourceImage, plan_kit
from lora_core.user_study.shuffle import trial_order

S4_PARTICIPANTS = 50
S4_SUBJECTS = 5
S4_REPORTED = {"buy": 0.90, "style": 0.80, "recognisable": 0.50}  # share with each question's outcome
S4_CLAIMS = {"buy": "90% would buy the LoRA image",
             "style": "80% found LoRA's style closest to the originals",
             "recognisable": "50% said neither method kept the landmark"}


def verdict(low: float, high: float, chance: float) -> str:
    """Whether a 95% interval puts the outcome above chance, below it, or cannot tell.

    >>> verdict(0.37, 0.63, 0.25), verdict(0.37, 0.63, 0.5)
    ('more often than chance', 'not told apart from chance')
    """
    if low > chance:
        return "more often than chance"
    if high < chance:
        return "less often than chance"
    return "not told apart from chance"


def with_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a ``verdict`` column read from the cluster (participant-level) interval."""
    verdicts = [verdict(row.cluster_low, row.cluster_high, row.chance) for row in table.itertuples()]
    return table.assign(verdict=verdicts)


def reported_flags(shares: Mapping[str, float] = S4_REPORTED, n_participants: int = S4_PARTICIPANTS) -> pd.DataFrame:
    """One answer per participant and question, with ``round(share * n)`` of them the outcome."""
    flags = pd.DataFrame({"participant": [f"P{i + 1:03d}" for i in range(n_participants)]})
    for question in QUESTIONS:
        flags[question.id] = np.arange(n_participants) < round(shares[question.id] * n_participants)
    return flags


def s4_reported_analysis(n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The per-question table (``analysis.TABLE_COLUMNS``) for S4's reported shares as 50
    participants, with S4's claim, the reported share and a verdict against chance."""
    table = with_verdicts(question_table(reported_flags(), n_resamples, seed))
    claims = [S4_CLAIMS[question] for question in table["question"]]
    reported = [S4_REPORTED[question] for question in table["question"]]
    return table.assign(s4_claim=claims, s4_reported=reported)


def simulated_manifest(n_subjects: int = S4_SUBJECTS, n_attention: int = 2) -> dict[str, Any]:
    """A kit's manifest for ``n_subjects`` stand-in subjects (no image files: nobody looks at them)."""
    images = [SourceImage(role, f"subject-{k + 1}", None, f"simulated-{role}-{k + 1}", 64, 64)
              for role in ROLES for k in range(n_subjects)]
    return plan_kit(images, n_attention)


def _page_choice(shown: Mapping[str, str], roles: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The page's option values that give the wanted answers (``buy``/``style``: an image role;
    ``recognisable``: an outcome of :data:`design.RECOGNISED_OUTCOMES`) for one shown set."""
    side = {roles[shown["A"]]: "A", roles[shown["B"]]: "B"}
    recognisable = {"both": "both", "neither": "neither", "lora only": side.get("lora"), "ti only": side.get("ti"),
                    "copy": side.get("attention copy")}[wanted["recognisable"]]
    return {"buy": side[wanted["buy"]], "style": side[wanted["style"]], "recognisable": recognisable}


def _random_choice(rng: np.random.Generator) -> dict[str, str]:
    return {"buy": str(rng.choice(["A", "B"])), "style": str(rng.choice(["A", "B"])),
            "recognisable": str(rng.choice(["both", "A", "B", "neither"]))}


def simulated_participant(manifest: Mapping[str, Any], code: str, rng: np.random.Generator, attentive: bool,
                          shares: Mapping[str, float], concentration: float) -> dict[str, Any]:
    """One simulated answer file. An attentive participant draws their own leaning for each question
    from a Beta with mean ``shares[q]`` and ``concentration`` (intra-participant correlation
    1 / (concentration + 1)), answers every subject from it ("neither" otherwise split evenly
    between both / lora only / ti only), and gets the attention checks right; an inattentive one
    picks every option at random."""
    leaning = {q: rng.beta(shares[q] * concentration, (1 - shares[q]) * concentration) for q in shares}
    page, key = manifest["page"], manifest["key"]
    roles = {image_id: entry["role"] for image_id, entry in key["images"].items()}
    choices = []
    for shown in trial_order(page["trials"], page["kit_id"], code):
        if not attentive:
            choices.append(_random_choice(rng))
        elif key["trials"][shown["trial"]]["kind"] == "attention":
            choices.append(_page_choice(shown, roles, {"buy": "attention copy", "style": "attention copy",
                                                       "recognisable": "copy"}))
        else:
            other = str(rng.choice(["both", "lora only", "ti only"]))
            wanted = {"buy": "lora" if rng.random() < leaning["buy"] else "ti",
                      "style": "lora" if rng.random() < leaning["style"] else "ti",
                      "recognisable": "neither" if rng.random() < leaning["recognisable"] else other}
            choices.append(_page_choice(shown, roles, wanted))
    return answer_file(manifest, code, choices)


def simulated_panel_analysis(n_participants: int = S4_PARTICIPANTS, n_inattentive: int = 5,
                             n_subjects: int = S4_SUBJECTS, shares: Mapping[str, float] = S4_REPORTED,
                             concentration: float = 4.0, seed: int = 0, n_resamples: int = 2000) -> StudyAnalysis:
    """The full analysis of a SIMULATED panel: ``n_participants`` answer files (the last
    ``n_inattentive`` answering at random), written and checked exactly as real ones."""
    if not 0 <= n_inattentive <= n_participants:
        raise ValueError(f"n_inattentive must be in [0, n_participants={n_participants}], got {n_inattentive}")
    manifest = simulated_manifest(n_subjects)
    rng = np.random.default_rng(seed)
    participants = []
    for i in range(n_participants):
        code = f"SIM-{i + 1:03d}"
        data = simulated_participant(manifest, code, rng, i < n_participants - n_inattentive, shares, concentration)
        participants.append(check_answer_file(data, manifest, f"simulated {code}"))
    label = (f"SIMULATED panel, not data (seed {seed}): {n_participants} participants of whom {n_inattentive} "
             f"answer at random, {n_subjects} subjects each, S4's shares, concentration {concentration:g}")
    analysis = analyse_participants(participants, manifest, label, n_resamples=n_resamples, seed=seed)
    return dataclasses.replace(analysis, table=with_verdicts(analysis.table))


# ---- which of S4's claims its design could establish -------------------------------------------

# Per question: what the claim needs that S4's design lacks ("" if nothing), and what beating
# chance supports.
CLAIM_LIMITS = {
    "buy": ("", "LoRA preferred to TI more often than chance, for these five landmarks (not a price, not other "
                "subjects)"),
    "style": ("", "LoRA judged closer in style to the originals more often than chance, for these five landmarks"),
    "recognisable": ("a control: the original's own recognisability, and how the other answers split",
                     "'neither' answered more often than a random answerer would (1 in 4)"),
}


def claim_verdicts(reported: pd.DataFrame, simulated: pd.DataFrame) -> pd.DataFrame:
    """Per S4 claim: the reported share, its participant-level 95% interval as 50 participants,
    the verdict against chance there and on the SIMULATED panel, and whether S4's design could
    establish the claim: above chance in both and nothing the claim needs missing
    (:data:`CLAIM_LIMITS`).

    >>> reported = s4_reported_analysis(n_resamples=200)
    >>> simulated = reported.assign(verdict="not told apart from chance")
    >>> claim_verdicts(reported, reported)["established"].tolist()
    [True, True, False]
    >>> claim_verdicts(reported, simulated)["established"].tolist()
    [False, False, False]
    """
    by_question = simulated.set_index("question")
    rows = []
    for row in reported.itertuples():
        needs, supports = CLAIM_LIMITS[row.question]
        panel = by_question.loc[row.question, "verdict"]
        above = row.verdict == "more often than chance" and panel == "more often than chance"
        rows.append({"question": row.question, "S4's claim": row.s4_claim, "reported share": row.s4_reported,
                     "95% interval (as 50 participants)": f"[{row.cluster_low:.2f}, {row.cluster_high:.2f}]",
                     "as 50 participants": row.verdict, "SIMULATED panel": panel,
                     "established": above and not needs, "what it supports": supports if above else "nothing",
                     "what the claim would need": needs or "-"})
    return pd.DataFrame(rows)


@dataclasses.dataclass(frozen=True)
class S4Reading:
    """S4's study read by this package: its shares as 50 participants (``reported``), a SIMULATED
    panel (``simulated``, an ``analysis.StudyAnalysis``), the power table and the claim verdicts."""

    reported: pd.DataFrame
    simulated: StudyAnalysis
    power: pd.DataFrame
    verdicts: pd.DataFrame


def read_s4(n_resamples: int = 2000, seed: int = 0) -> S4Reading:
    """:class:`S4Reading`; the power table covers the two A/B questions (chance 1/2) and "neither"
    among four options (chance 1/4)."""
    from lora_core.metrics.proportions import power_table

    reported = s4_reported_analysis(n_resamples=n_resamples, seed=seed)
    simulated = simulated_panel_analysis(n_resamples=n_resamples, seed=seed)
    power = pd.concat([power_table((0.9, 0.8, 0.7, 0.6), chance=0.5).assign(questions="buy, style"),
                       power_table((0.5, 0.4, 0.35), chance=0.25).assign(questions="recognisable")],
                      ignore_index=True)
    return S4Reading(reported, simulated, power, claim_verdicts(reported, simulated.table))
