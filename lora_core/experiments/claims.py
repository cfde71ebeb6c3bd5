"""Chapter 9: every main claim of studies S1-S5 held against what this book measured.

Each :class:`Claim` names the executed chapter and the glued fact(s) it is read from, and a
verdict rule (:class:`Rule`). :func:`read_glued_facts` reads the facts back from the executed
notebook ``<executed_dir>/<chapter>.ipynb`` (myst-nb's glue outputs), so the table is rebuilt
from the chapters each time the book builds and cannot drift from them. A claim is

* **confirmed** when its fact says so beyond the stated uncertainty (an interval on the claimed
  side, every seed or every case agreeing, the chapter's own decision word);
* **not confirmed** otherwise, with why (the opposite, or a difference within the noise);
* **not testable at this scale** when no measurement could speak to it here (it needs people,
  or names no criterion, or the stand-in metric cannot read the prompts it concerns);
* **not measured in this build** when its chapter has not been executed, was executed with
  another profile, or glued no such fact (or glued that the measure was missing).

The facts read from chapters 5-7 (claim -> chapter -> fact and its form); :func:`expected_facts`
lists every claim's facts; the smoke runs of chapters 5, 7 and 8 assert that they glue
:func:`facts_read_from` of them (chapter 6's fact functions are tested one by one):

* S2, iA3 + Prodigy as good as LoRA -> ``05_character_ia3`` -> ``method_tally``: "better on a,
  worse on b and not clearly different on c of n measures"
* S2, a 28-image FID measures the result -> ``05_character_ia3`` -> ``fd_separates``:
  "separates" / "does not separate"
* S3, weight 0.5-0.75 best -> ``06_kohya_character`` -> ``best_range_vs_s3``: the words of
  ``lora_sweep.compare_ranges`` ("the same as", "inside", "overlapping", "outside (above)", ...)
* S3, 50-60 steps best -> ``06_kohya_character`` -> ``steps_vs_s3``: the same words for the
  steps range against S3's, scaled
* S3, the LoRA carries over to other bases -> ``06_kohya_character`` -> ``n_bases_kept`` and
  ``n_bases``: two integers
* S4, LoRA's best validation loss below TI's -> ``07_lora_vs_ti`` -> ``val_loss_gap``:
  "v [lo, hi]", LoRA minus TI, over seeds
* S4, TI overfits; LoRA does not -> ``07_lora_vs_ti`` -> ``textual_inversion_rises``, ``lora_rises``:
  "k of n" seeds
* S4, TI faster per step -> ``07_lora_vs_ti`` -> ``ratio_equal_terms``: LoRA over TI seconds
  per step, both with cached latents (a number, or "v [lo, hi]")
* S4, LoRA's style closest -> ``07_lora_vs_ti`` -> ``compare_p_target_style``: "LoRA higher",
  "TI higher" or "no clear difference ..."
* S4, neither keeps the landmark -> ``07_lora_vs_ti`` -> ``lora_subject_group_accuracy`` and
  ``base_subject_group_accuracy``: "v [lo, hi]" each
* S4, 50 participants establish the findings -> ``07_lora_vs_ti`` -> ``n_established``: an
  integer, of S4's three

>>> Interval("below").judge(["-0.02 [-0.03, -0.01]"]).verdict
'confirmed'
>>> Interval("below").judge(["-0.02 [-0.05, 0.01]"]).why
'the interval [-0.05, 0.01] covers 0: no difference beyond the noise'
>>> Count("all").judge(["2 of 3"]).verdict, Count("none").judge(["0 of 3"]).verdict
('not confirmed', 'confirmed')
"""
from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.profiles import Profile

CONFIRMED, NOT_CONFIRMED = "confirmed", "not confirmed"
NOT_TESTABLE, NOT_MEASURED = "not testable at this scale", "not measured in this build"
VERDICTS = (CONFIRMED, NOT_CONFIRMED, NOT_TESTABLE, NOT_MEASURED)
VERDICT_COLOURS = dict(zip(VERDICTS, ("tab:green", "tab:red", "tab:gray", "lightgray")))
COUNT_FACTS = dict(zip(VERDICTS, ("n_confirmed", "n_not_confirmed", "n_not_testable", "n_not_measured")))
GLUE_PREFIX = "application/papermill.record/"   # myst_nb.ext.glue.GLUE_PREFIX (glue with display=False)
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
INTERVAL_TEXT = re.compile(rf"^\s*({NUMBER})\s*\[\s*({NUMBER})\s*,\s*({NUMBER})\s*\]")
COUNT_TEXT = re.compile(r"^\s*(\d+) of (\d+)\b")
DIRECTION_TEXT = re.compile(r"^(fell|rose) at (\d+) of (\d+) ranks \((\d+) of them beyond")
TALLY_TEXT = re.compile(r"^better on (\d+), worse on (\d+) and not clearly different on (\d+) of (\d+)")
UNMEASURED_TEXT = re.compile(r"not measured|could not be measured|not computed|not trained|cannot be judged|"
                             r"not comparable")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    why: str


# ---- reading an executed chapter -------------------------------------------------------------------

def glued_value(text: str) -> Any:
    """A glued value from its ``text/plain`` form (its ``repr``): strings, numbers (also numpy's
    ``np.float64(0.5)``), ``nan`` and ``inf``; anything else (a table) stays text.

    >>> glued_value("'fell at 2 of 3'"), glued_value("np.float64(0.25)"), glued_value("nan")
    ('fell at 2 of 3', 0.25, nan)
    """
    text = text.strip()
    numpy_scalar = re.fullmatch(r"np\.\w+\((.*)\)", text)
    if numpy_scalar:
        text = numpy_scalar.group(1)
    if text in ("nan", "inf", "-inf"):
        return float(text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def read_glued_facts(path: str | Path) -> dict[str, Any]:
    """Every fact glued (``myst_nb.glue``, shown or not) in the executed notebook at ``path``, by
    name; a later glue of one name replaces an earlier one, as myst-nb's pages do."""
    path = Path(path)
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a notebook ({error})") from None
    facts = {}
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            scrapbook = output.get("metadata", {}).get("scrapbook")
            if not scrapbook:
                continue
            data = output.get("data", {})
            text = data.get(scrapbook.get("mime_prefix", "") + "text/plain", data.get(GLUE_PREFIX + "text/plain"))
            if text is not None:
                facts[scrapbook["name"]] = glued_value("".join(text) if isinstance(text, list) else text)
    return facts


def chapter_facts(executed_dir: str | Path, chapter: str, profile_name: str) -> tuple[dict[str, Any] | None, str]:
    """``(facts, "")`` of an executed chapter of this profile, or ``(None, why not)``."""
    path = Path(executed_dir) / f"{chapter}.ipynb"
    if not path.is_file():
        return None, f"{chapter_label(chapter)} has not been executed ({path.name} is missing)"
    facts = read_glued_facts(path)
    executed_with = facts.get("profile_name")
    if executed_with != profile_name:
        return None, f"{chapter_label(chapter)} was executed with profile {executed_with}, not {profile_name}"
    return facts, ""


def chapter_label(chapter: str) -> str:
    """``"chapter 8"`` for ``"08_rank_memorisation"``.

    >>> chapter_label("08_rank_memorisation"), chapter_label("notes")
    ('chapter 8', 'notes')
    """
    number = re.match(r"(\d+)_", chapter)
    return f"chapter {int(number.group(1))}" if number else chapter


# ---- parsing facts ------------------------------------------------------------------------------------

def parse_interval(value: Any) -> tuple[float, float, float] | None:
    """``(value, low, high)`` from ``"v [lo, hi]"`` text, or a bare number (its own interval).

    >>> parse_interval("0.512 [0.48, 0.553]"), parse_interval(1.5), parse_interval("none")
    ((0.512, 0.48, 0.553), (1.5, 1.5, 1.5), None)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), float(value), float(value)
    found = INTERVAL_TEXT.match(str(value))
    return tuple(float(x) for x in found.groups()) if found else None


def parse_count(values: Sequence[Any]) -> tuple[int, int] | None:
    """``(k, n)`` from one ``"k of n"`` text, or from two integers ``k`` and ``n``.

    >>> parse_count(["2 of 3"]), parse_count([1, 4]), parse_count(["none"])
    ((2, 3), (1, 4), None)
    """
    if len(values) == 2 and all(isinstance(v, int) for v in values):
        return int(values[0]), int(values[1])
    found = COUNT_TEXT.match(str(values[0]))
    return (int(found.group(1)), int(found.group(2))) if found else None


def _number(value: float) -> str:
    return f"{value:.3g}"


# ---- verdict rules -------------------------------------------------------------------------------------

class Rule:
    """A verdict from a claim's fact values (in the order the claim names them)."""

    def judge(self, values: Sequence[Any]) -> Verdict:
        raise NotImplementedError


@dataclass(frozen=True)
class Interval(Rule):
    """The claim holds when the measured interval lies ``above`` or ``below`` ``reference``."""

    direction: str
    reference: float = 0.0

    def judge(self, values: Sequence[Any]) -> Verdict:
        parsed = parse_interval(values[0])
        if parsed is None:
            return Verdict(NOT_MEASURED, f"not a value with an interval: {values[0]}")
        value, low, high = parsed
        bare = " (a single number, without an interval)" if low == high == value else ""
        ref = _number(self.reference)
        claimed, opposite = (low > self.reference, high < self.reference) if self.direction == "above" else \
            (high < self.reference, low > self.reference)
        if claimed:
            return Verdict(CONFIRMED,
                           f"the interval [{_number(low)}, {_number(high)}] lies {self.direction} {ref}{bare}")
        if opposite:
            other = "below" if self.direction == "above" else "above"
            return Verdict(NOT_CONFIRMED, f"the opposite: [{_number(low)}, {_number(high)}] lies {other} {ref}{bare}")
        return Verdict(NOT_CONFIRMED, f"the interval [{_number(low)}, {_number(high)}] covers {ref}: "
                                      f"no difference beyond the noise{bare}")


@dataclass(frozen=True)
class Between(Rule):
    """The claim holds when the measured interval lies within [``low``, ``high``]."""

    low: float
    high: float

    def judge(self, values: Sequence[Any]) -> Verdict:
        parsed = parse_interval(values[0])
        if parsed is None:
            return Verdict(NOT_MEASURED, f"not a value with an interval: {values[0]}")
        _, low, high = parsed
        span = f"[{_number(low)}, {_number(high)}]"
        if self.low <= low and high <= self.high:
            return Verdict(CONFIRMED, f"{span} lies within [{_number(self.low)}, {_number(self.high)}]")
        outside = high < self.low or low > self.high
        return Verdict(NOT_CONFIRMED, f"{span} lies {'outside' if outside else 'partly outside'} "
                                      f"[{_number(self.low)}, {_number(self.high)}]")


@dataclass(frozen=True)
class Count(Rule):
    """The claim holds in ``all`` cases (or in ``none``) of a ``"k of n"`` count."""

    need: str = "all"

    def judge(self, values: Sequence[Any]) -> Verdict:
        parsed = parse_count(values)
        if parsed is None or parsed[1] == 0:
            return Verdict(NOT_MEASURED, f"no count of cases: {', '.join(map(str, values))}")
        k, n = parsed
        holds = k == n if self.need == "all" else k == 0
        return Verdict(CONFIRMED if holds else NOT_CONFIRMED, f"{k} of {n}" + ("" if holds else
                       f", not {'all' if self.need == 'all' else 'none'}"))


@dataclass(frozen=True)
class Phrase(Rule):
    """The claim holds when the chapter's decision words start with one of ``confirms``; it is
    refuted by ``refutes``; other words (a tie, "no clear difference") do not confirm it."""

    confirms: tuple[str, ...]
    refutes: tuple[str, ...] = ()

    def judge(self, values: Sequence[Any]) -> Verdict:
        text = str(values[0]).strip()
        if text.startswith(self.confirms):
            return Verdict(CONFIRMED, text)
        return Verdict(NOT_CONFIRMED, f"the opposite: {text}" if text.startswith(self.refutes) else text)


@dataclass(frozen=True)
class Equals(Rule):
    """The claim holds when the fact is ``value`` (a method's name, a count)."""

    value: str

    def judge(self, values: Sequence[Any]) -> Verdict:
        text = str(values[0]).strip()
        return Verdict(CONFIRMED if text == self.value else NOT_CONFIRMED,
                       f"{text}" if text == self.value else f"{text}, not {self.value}")


@dataclass(frozen=True)
class Direction(Rule):
    """The claim holds when a change went the ``word`` way ("fell", "rose") at every rank, each
    beyond overlapping 95% intervals (chapter 2's ``direction_sentence``)."""

    word: str

    def judge(self, values: Sequence[Any]) -> Verdict:
        found = DIRECTION_TEXT.match(str(values[0]))
        if found is None:
            return Verdict(NOT_MEASURED, str(values[0]))
        word, k, n, clear = found.group(1), *(int(x) for x in found.groups()[1:])
        if word == self.word and k == n == clear:
            return Verdict(CONFIRMED, f"{word} at every rank, beyond the intervals")
        if word != self.word and k == clear:
            return Verdict(NOT_CONFIRMED, f"the opposite: {word} at {k} of {n} ranks, beyond the intervals")
        return Verdict(NOT_CONFIRMED, f"{word} at {k} of {n} ranks, {clear} of them beyond the intervals")


@dataclass(frozen=True)
class Tally(Rule):
    """The claim "as good as" holds when the comparison is worse on no measure."""

    def judge(self, values: Sequence[Any]) -> Verdict:
        found = TALLY_TEXT.match(str(values[0]))
        if found is None:
            return Verdict(NOT_MEASURED, str(values[0]))
        better, worse, _, n = (int(x) for x in found.groups())
        if worse == 0:
            return Verdict(CONFIRMED, f"worse on none of {n} measures (better on {better})")
        return Verdict(NOT_CONFIRMED, f"worse on {worse} of {n} measures")


@dataclass(frozen=True)
class Lower(Rule):
    """The claim holds when the first interval lies wholly below the second."""

    def judge(self, values: Sequence[Any]) -> Verdict:
        first, second = parse_interval(values[0]), parse_interval(values[1])
        if first is None or second is None:
            return Verdict(NOT_MEASURED, f"not values with intervals: {values[0]}; {values[1]}")
        spans = f"[{_number(first[1])}, {_number(first[2])}] against [{_number(second[1])}, {_number(second[2])}]"
        if first[2] < second[1]:
            return Verdict(CONFIRMED, f"{spans}: lower")
        if first[1] > second[2]:
            return Verdict(NOT_CONFIRMED, f"the opposite: {spans}: higher")
        return Verdict(NOT_CONFIRMED, f"{spans}: the intervals overlap")


@dataclass(frozen=True)
class Untestable(Rule):
    """No measurement at this scale speaks to the claim: ``reason`` says why."""

    reason: str

    def judge(self, values: Sequence[Any]) -> Verdict:
        return Verdict(NOT_TESTABLE, self.reason)


# ---- the claims ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One main claim of a study, in our words, with the study's own numbers (``reported``), where
    this book measures it (``chapter``: an executed notebook's name; ``facts``: glued names, read in
    order by ``rule``) and what the fact holds (``measure``). ``requires`` names a fact of the same
    chapter that must start with a word for the measurement to count (e.g. the stand-in metric
    being "trusted" on the prompts concerned); otherwise the claim is not testable here."""

    study: str
    claim: str
    reported: str
    chapter: str
    facts: tuple[str, ...]
    measure: str
    rule: Rule
    requires: tuple[str, str] = ()

    @property
    def reads(self) -> tuple[str, ...]:
        """Every glued name the claim reads: its facts and the fact it ``requires``."""
        return self.facts + self.requires[:1]


BENCHMARK, ABLATION, METHODS, MIXING = "01_style_benchmark", "02_rank_lr", "03_methods", "04_style_mixing"
CHARACTER, KOHYA, LANDMARKS, RANKS = "05_character_ia3", "06_kohya_character", "07_lora_vs_ti", "08_rank_memorisation"
STAND_IN = "the alignment stand-in picks these prompts on real images no better than chance"

CLAIMS: tuple[Claim, ...] = (
    Claim("S1", "A style LoRA moves generations toward its style (Exp. I: FID falls for every style)",
          "FID 235.30 -> 188.23 (Ghibli), 239.29 -> 210.47, 221.28 -> 201.24", BENCHMARK, ("check3_pass",),
          "directional checks on held-out subjects that pass, over every style", Count("all")),
    Claim("S1", "LoRA lowers CLIP, IS and LPIPS diversity slightly while FID falls (Table 1)",
          "e.g. Ghibli CLIP 33.13 -> 32.93, IS 5.92 -> 4.36, LPIPS 0.75 -> 0.65", BENCHMARK, ("s1_agree",),
          "S1's metric directions that ours repeat (where S1's were consistent)", Count("all")),
    Claim("S1", "A five-fold learning rate lowers FID (Exp. II)", "e.g. rank 16: 185.35 -> 175.05", ABLATION,
          ("fd_fixed",), "FD-EffNet at lr x5 against lr x1, alpha fixed, per rank", Direction("fell")),
    Claim("S1", "A five-fold learning rate also lowers CLIP (Exp. II)", "e.g. rank 16: 32.50 -> 31.70", ABLATION,
          ("alignment_fixed",), "AlignScore (stand-in) at lr x5 against lr x1, alpha fixed, per rank",
          Direction("fell")),
    Claim("S1", "Rank 16 balances FID and CLIP best (Exp. II)", "r16 5e-4: FID 175.05, CLIP 31.70", ABLATION, (),
          "-", Untestable("'balances' names no criterion a number could meet; chapter 2 shows the whole grid")),
    Claim("S1", "LoRA, textual inversion and DreamBooth rank on FID, CLIP, IS and LPIPS as in Table 3",
          "FID 180.49 / 200.95 / 224.43; CLIP 33.02 / 30.26 / 28.30", METHODS, ("rank_agree",),
          "(method, metric) cells where our ranking matches S1's", Count("all")),
    Claim("S1", "LoRA reaches the style best of the methods (Exp. III: lowest FID)",
          "FID 180.49 against 200.95, 224.43", METHODS, ("best_method",),
          "the method the style classifier finds most in style", Equals("lora")),
    Claim("S1", "Mixing two style LoRAs shifts the style gradually (Exp. IV)", "by eye, CLIP and LPIPS", MIXING,
          ("shift_blend",), "P(style A) against a, output-space blend",
          Phrase(("changes monotonically",), ("does not change monotonically",))),
    Claim("S1", "Mixing shows artefacts at mid-range a (Exp. IV)", "by eye", MIXING, ("mid_alignment_blend",),
          "alignment at a = 0.5 against the mean of the ends, output-space blend",
          Phrase(("is lower",), ("is higher",))),
    Claim("S2", "iA3 + Prodigy trains a character as well as the usual LoRA (S2's preset)", "FID 77.29",
          CHARACTER, ("method_tally",), "iA3 + Prodigy against LoRA + AdamW on held-out expressions", Tally()),
    Claim("S2", "An FID on 28 real images measures the result", "FID 77.29 (100 generated, 28 real)", CHARACTER,
          ("fd_separates",), "whether FD at n = 28 separates the two arms",
          Phrase(("separates",), ("does not separate",))),
    Claim("S3", "A LoRA weight of 0.5-0.75 looks best (test 1)", "0.5-0.75, by eye", KOHYA, ("best_range_vs_s3",),
          "the weights indistinguishable from the best, against 0.5-0.75",
          Phrase(("the same as", "inside"), ("outside",))),
    Claim("S3", "50-60 inference steps look best (test 4)", "best 50-60 of 30-70, by eye", KOHYA, ("steps_vs_s3",),
          "the steps indistinguishable from the best, against 50-60 scaled",
          Phrase(("the same as", "inside"), ("outside",))),
    Claim("S3", "The character LoRA carries over to other SD 1.5 checkpoints (test 3)",
          "anime, comic, realistic, by eye", KOHYA, ("n_bases_kept", "n_bases"),
          "other bases on which the character stays clearly closer to its images", Count("all")),
    Claim("S4", "LoRA reaches a lower best validation loss than textual inversion", "0.0596 against 0.0618", LANDMARKS,
          ("val_loss_gap",), "best validation loss, LoRA minus TI, over seeds", Interval("below")),
    Claim("S4", "Textual inversion overfits: its validation loss rises after its best epoch", "best at epoch 8 of 15",
          LANDMARKS, ("textual_inversion_rises",), "seeds whose TI validation loss rose after its best", Count("all")),
    Claim("S4", "LoRA's validation loss falls to its last epoch", "best at epoch 10 of 10", LANDMARKS,
          ("lora_rises",), "seeds whose LoRA validation loss rose after its best", Count("none")),
    Claim("S4", "Textual inversion trains faster per step than LoRA", "7.3 against 9.3 s/it (only TI cached latents)",
          LANDMARKS, ("ratio_equal_terms",), "LoRA over TI seconds per step, both with cached latents",
          Interval("above", 1.0)),
    Claim("S4", "People would rather buy LoRA's images", "90% of 50 participants", LANDMARKS, (), "-",
          Untestable("needs participants: chapter 7 ships the blind study kit and reads S4's own numbers")),
    Claim("S4", "LoRA's style is closest to the originals", "80% of 50 participants", LANDMARKS,
          ("compare_p_target_style",), "P(style) by the style classifier (not people), LoRA against TI",
          Phrase(("LoRA higher",), ("TI higher",))),
    Claim("S4", "Neither method keeps the landmark recognisable", "50% said neither kept it", LANDMARKS,
          ("lora_subject_group_accuracy", "base_subject_group_accuracy"),
          "subject classifier accuracy, LoRA against the base, held-out landmarks", Lower()),
    Claim("S4", "Fifty participants establish S4's three findings", "90%, 80%, 50%", LANDMARKS, ("n_established",),
          "findings S4's design could establish, read as 50 participants", Equals("3")),
    Claim("S5", "Rank 16 reaches a lower final loss than rank 64", "0.1192 against 0.1266", RANKS, ("final_loss_gap",),
          "final training loss, rank 16 minus rank 64, paired by seed", Interval("below")),
    Claim("S5", "Rank 64 takes longer to train", "4,541 against 4,383 s", RANKS, ("train_time_ratio",),
          "training time, rank 64 over rank 16, paired by seed", Interval("above", 1.0)),
    Claim("S5", "Rank 64's file is four times rank 16's", "64 against 16 MB", RANKS, ("file_size_ratio",),
          "exported file size, rank 64 over rank 16", Between(3.5, 4.5)),
    Claim("S5", "Rank 16 follows normal prompts better than rank 64", "CLIP 29.26 +- 3.46 against 19.79 +- 2.85",
          RANKS, ("alignment_gap_concrete",), "AlignScore (stand-in) on concrete prompts, rank 16 minus rank 64",
          Interval("above"), ("standin_concrete_trust", "trusted")),
    Claim("S5", "Abstract prompts align worse than normal ones", "rank 16: CLIP 23.38 against 29.26", RANKS,
          ("alignment_gap_groups",), "AlignScore (stand-in), concrete minus abstract prompts, rank 16",
          Interval("above"), ("standin_abstract_trust", "trusted")),
    Claim("S5", "A higher rank memorises more (cited)", "8.77% against 0%", RANKS, ("copy_share_gap_rank",),
          "copy share of training-caption generations, rank 64 minus rank 16", Interval("above")),
    Claim("S5", "Full fine-tuning memorises far more than LoRA (cited)", "46.89%", RANKS, ("copy_share_gap_full",),
          "copy share, full fine-tune (DreamBooth) minus rank 16", Interval("above")),
)


def judge_claim(claim: Claim, facts: Mapping[str, Any] | None, why_unread: str = "") -> dict[str, Any]:
    """One row of the claims table: the claim, what was measured (the facts as the chapter glued
    them) and the verdict with why. ``facts`` is None when the chapter could not be read."""
    row = {"study": claim.study, "claim": claim.claim, "reported by the study": claim.reported,
           "chapter": chapter_label(claim.chapter), "fact": ", ".join(claim.facts) or "-", "measure": claim.measure,
           "measured here": "-"}
    if isinstance(claim.rule, Untestable):
        return {**row, **_verdict(claim.rule.judge(()))}
    if facts is None:
        return {**row, **_verdict(Verdict(NOT_MEASURED, why_unread))}
    missing = [name for name in claim.reads if name not in facts]
    if missing:
        why = f"{chapter_label(claim.chapter)} glued no {', '.join(missing)}"
        return {**row, **_verdict(Verdict(NOT_MEASURED, why))}
    values = [facts[name] for name in claim.facts]
    row["measured here"] = "; ".join(map(str, values))
    if any(UNMEASURED_TEXT.search(str(value)) for value in values):
        return {**row, **_verdict(Verdict(NOT_MEASURED, row["measured here"]))}
    if claim.requires and not str(facts[claim.requires[0]]).startswith(claim.requires[1]):
        return {**row, **_verdict(Verdict(NOT_TESTABLE, f"{STAND_IN} ({claim.requires[0]}: "
                                                       f"{facts[claim.requires[0]]})"))}
    return {**row, **_verdict(claim.rule.judge(values))}


def _verdict(verdict: Verdict) -> dict[str, str]:
    return {"verdict": verdict.verdict, "why": verdict.why}


def claims_table(executed_dir: str | Path, profile_name: str, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """:func:`judge_claim` for every claim, each chapter read once from ``executed_dir``."""
    read = {chapter: chapter_facts(executed_dir, chapter, profile_name)
            for chapter in dict.fromkeys(claim.chapter for claim in claims)}
    return pd.DataFrame([judge_claim(claim, *read[claim.chapter]) for claim in claims])


def expected_facts(claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Claim, chapter and the glued fact names each claim reads (the contract with the chapters)."""
    return pd.DataFrame([{"study": c.study, "claim": c.claim, "chapter": c.chapter,
                          "facts": ", ".join(c.reads) or "-", "rule": type(c.rule).__name__}
                         for c in claims])


def facts_read_from(chapter: str) -> set[str]:
    """Every glued name the claims read from ``chapter`` (its ``requires`` too): what that chapter
    must glue for chapter 9 to judge it.

    >>> sorted(facts_read_from(KOHYA))
    ['best_range_vs_s3', 'n_bases', 'n_bases_kept', 'steps_vs_s3']
    """
    return {name for claim in CLAIMS if claim.chapter == chapter for name in claim.reads}


# ---- the chapter ----------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ClaimsResult(ChapterResult):
    """The claims table and its counts. Facts: ``n_claims``, ``n_<verdict>`` for each verdict
    (``n_confirmed``, ``n_not_confirmed``, ``n_not_testable``, ``n_not_measured``), ``chapters_read``,
    ``chapters_unread`` and the finding box's ``found_claims``."""

    table: pd.DataFrame

    def by_study(self) -> pd.DataFrame:
        """Verdict counts per study (rows) and verdict (columns)."""
        counts = pd.crosstab(self.table["study"], self.table["verdict"])
        return counts.reindex(columns=[v for v in VERDICTS if v in counts.columns]).reset_index()


def run_claims(profile: Profile | str = "tiny", *, executed_dir: str | Path = "book/notebooks") -> ClaimsResult:
    """Chapter 9: every claim of :data:`CLAIMS` judged from the chapters executed in
    ``executed_dir`` with this profile; nothing is trained, so it works whatever ran before."""
    settings = resolve_profile(profile)
    result = ClaimsResult(settings, table=claims_table(executed_dir, settings.name))
    result.add_facts(**claims_facts(result.table, executed_dir, settings.name))
    return result


def claims_facts(table: pd.DataFrame, executed_dir: str | Path, profile_name: str) -> dict[str, Any]:
    """Counts per verdict, which chapters were read, and ``found_claims``.

    >>> table = pd.DataFrame({"verdict": ["confirmed", "not measured in this build"], "chapter": ["chapter 1"] * 2})
    >>> claims_facts(table, "/nowhere", "tiny")["found_claims"].split(": ")[1]
    '1 confirmed, 0 not confirmed, 0 not testable at this scale, 1 not measured in this build.'
    """
    counts = {verdict: int((table["verdict"] == verdict).sum()) for verdict in VERDICTS}
    chapters = sorted({claim.chapter for claim in CLAIMS})
    read = [c for c in chapters if chapter_facts(executed_dir, c, profile_name)[0] is not None]
    facts: dict[str, Any] = {COUNT_FACTS[verdict]: count for verdict, count in counts.items()}
    facts.update(n_claims=len(table), chapters_read=", ".join(chapter_label(c) for c in read) or "none",
                 chapters_unread=", ".join(chapter_label(c) for c in chapters if c not in read) or "none")
    facts["found_claims"] = (f"Of {len(table)} claims of studies S1-S5: "
                             + ", ".join(f"{count} {verdict}" for verdict, count in counts.items()) + ".")
    return facts
