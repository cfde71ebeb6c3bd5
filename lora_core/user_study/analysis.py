"""Per-question results of the study: proportions with three kinds of uncertainty.

For each of S4's questions (:data:`lora_core.user_study.design.QUESTIONS`) the table gives the
share of answers with the reported outcome (chose LoRA; neither kept the subject) and

- ``wilson_low``/``wilson_high``: the Wilson 95% interval over answers;
- ``p_value``: the exact two-sided binomial test of that share against ``chance`` (1/2 for the two
  A/B questions, 1/4 for "neither" among four options);
- ``cluster_low``/``cluster_high``: a participant-level (cluster) bootstrap 95% interval.

The first two treat every answer as independent. One participant answers once per subject, and
their answers lean the same way (a LoRA-liker likes it for every subject), so with several
subjects they overstate the evidence; the cluster bootstrap resamples whole participants and is
the interval to quote. With one answer per participant all three agree.

>>> answers = pd.DataFrame({"participant": ["p1", "p1", "p2", "p2"], "subject": ["cat", "owl"] * 2,
...                         "buy": ["lora", "lora", "lora", "ti"], "style": ["lora"] * 4,
...                         "recognisable": ["neither", "both", "neither", "lora only"]})
>>> table = question_table(outcome_flags(answers), n_resamples=200)
>>> print(table[["question", "count", "answers", "proportion"]].to_string(index=False))
    question  count  answers  proportion
         buy      3        4        0.75
       style      4        4        1.00
recognisable      2        4        0.50
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.metrics.proportions import binomial_p_value, wilson_interval
from lora_core.metrics.stats import CONFIDENCE, bootstrap_replicates, percentile_interval
from lora_core.user_study.answers import Participant, failed_attention_checks, read_answer_folder, unblinded_answers
from lora_core.user_study.design import QUESTIONS, RECOGNISED_OUTCOMES
from lora_core.user_study.kit import load_manifest

TABLE_COLUMNS = ["question", "outcome", "chance", "participants", "answers", "count", "proportion",
                 "wilson_low", "wilson_high", "p_value", "cluster_low", "cluster_high"]


def outcome_flags(answers: pd.DataFrame) -> pd.DataFrame:
    """Per answer row, whether each question's answer is its reported outcome (True/False)."""
    flags = pd.DataFrame({"participant": answers["participant"]})
    for question in QUESTIONS:
        flags[question.id] = answers[question.id] == question.counted
    return flags


def _pooled_share(rows: np.ndarray) -> float:
    """Share of outcomes over resampled participants, rows = (outcomes, answers) per participant."""
    return float(rows[:, 0].sum() / rows[:, 1].sum())


def cluster_interval(per_participant: pd.DataFrame, n_resamples: int, seed: int,
                     confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled share, resampling participants (clusters)."""
    rows = per_participant[["count", "answers"]].to_numpy(dtype=np.float64)
    replicates = bootstrap_replicates(rows, _pooled_share, n_resamples, torch.Generator().manual_seed(seed))
    return percentile_interval(replicates, confidence)


def question_table(flags: pd.DataFrame, n_resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per question (columns :data:`TABLE_COLUMNS`) from :func:`outcome_flags`."""
    if flags.empty:
        raise ValueError("question_table: no answers to analyse")
    rows = []
    for question in QUESTIONS:
        per_participant = flags.groupby("participant", sort=True)[question.id].agg(count="sum", answers="size")
        count, n = int(per_participant["count"].sum()), int(per_participant["answers"].sum())
        wilson_low, wilson_high = wilson_interval(count, n)
        cluster_low, cluster_high = cluster_interval(per_participant, n_resamples, seed)
        rows.append({"question": question.id, "outcome": question.outcome, "chance": question.chance,
                     "participants": len(per_participant), "answers": n, "count": count, "proportion": count / n,
                     "wilson_low": wilson_low, "wilson_high": wilson_high,
                     "p_value": binomial_p_value(count, n, question.chance),
                     "cluster_low": cluster_low, "cluster_high": cluster_high})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def recognisable_table(answers: pd.DataFrame) -> pd.DataFrame:
    """All four outcomes of the recognisability question with counts, shares and Wilson intervals."""
    counts = answers["recognisable"].value_counts().reindex(RECOGNISED_OUTCOMES, fill_value=0)
    n = int(counts.sum())
    rows = [{"outcome": outcome, "count": int(count), "proportion": count / n,
             **dict(zip(("wilson_low", "wilson_high"), wilson_interval(int(count), n)))}
            for outcome, count in counts.items()]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class StudyAnalysis:
    """A study's results: who was dropped, the unblinded answers kept, and the per-question table."""

    label: str  # what the data are, e.g. "simulated panel (seed 0)"
    n_files: int
    dropped: tuple[str, ...]  # codes of participants who failed the attention checks
    answers: pd.DataFrame
    table: pd.DataFrame

    @property
    def n_kept(self) -> int:
        return self.n_files - len(self.dropped)

    def summary(self) -> str:
        return (f"{self.label}: {self.n_files} participants, {len(self.dropped)} dropped for failing the "
                f"attention checks, {self.n_kept} analysed")


def analyse_participants(participants: Sequence[Participant], manifest: Mapping[str, Any], label: str,
                         max_failed_checks: int = 0, n_resamples: int = 2000, seed: int = 0) -> StudyAnalysis:
    """Drop participants with more than ``max_failed_checks`` wrong attention answers, then tabulate."""
    passed = [failed_attention_checks(p, manifest) <= max_failed_checks for p in participants]
    kept = [p for p, ok in zip(participants, passed) if ok]
    if not kept:
        raise ValueError(f"{label}: all {len(participants)} participants failed the attention checks")
    dropped = tuple(p.code for p, ok in zip(participants, passed) if not ok)
    answers = unblinded_answers(kept, manifest)
    return StudyAnalysis(label, len(participants), dropped, answers,
                         question_table(outcome_flags(answers), n_resamples, seed))


def analyse_folder(answers_folder: str | Path, kit: str | Path, **options: Any) -> StudyAnalysis:
    """:func:`analyse_participants` on every answer file in ``answers_folder`` for the kit at ``kit``."""
    manifest = load_manifest(kit)
    participants = read_answer_folder(answers_folder, manifest)
    return analyse_participants(participants, manifest, label=f"answers in {answers_folder}", **options)
