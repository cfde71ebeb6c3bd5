"""Chapter 9: glued facts read back from executed notebooks (a real myst-nb glue round trip and
constructed notebooks), every verdict rule on constructed facts, the parsers against the Part I
chapters' own fact formatters, and the claims table with a missing chapter and a chapter of
another profile."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_core.experiments import claims
from lora_core.experiments.claims import (CONFIRMED, NOT_CONFIRMED, NOT_MEASURED, NOT_TESTABLE, Between, Claim, Count,
                                          Direction, Equals, Interval, Lower, Phrase, Tally, Untestable)


class Printed(str):
    """A value whose text/plain form is itself (a table's printout), not a Python literal."""


def glued_notebook(path: Path, facts: dict, shown: tuple[str, ...] = ()) -> Path:
    """An executed notebook whose one code cell glued ``facts`` as ``myst_nb.glue`` writes them
    (``display=False`` unless the name is in ``shown``), beside an ordinary output."""
    outputs = [{"output_type": "stream", "name": "stdout", "text": ["training...\n"]}]
    for name, value in facts.items():
        prefix = "" if name in shown else claims.GLUE_PREFIX
        text = str(value) if isinstance(value, Printed) else repr(value)
        outputs.append({"output_type": "display_data", "data": {f"{prefix}text/plain": text},
                        "metadata": {"scrapbook": {"name": name, "mime_prefix": prefix}}})
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# a chapter"]},
                          {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["run()"],
                           "outputs": outputs}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook))
    return path


def test_facts_glued_by_a_real_kernel_read_back_as_they_were(tmp_path):
    import nbformat
    import papermill

    source = nbformat.v4.new_notebook()
    source.cells = [nbformat.v4.new_code_cell(
        "import numpy as np\nfrom lora_core.experiments.chapter import glue_facts\n"
        "glue_facts({'profile_name': 'smoke', 'gap': '-0.02 [-0.03, -0.01]', 'n': 3, 'share': np.float64(0.25), "
        "'missing': float('nan'), 'verdict': \"rank 64 copies more: 'a' quote\"})\n"
        "glue_facts({'n': 4})")]
    source.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(source, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               cwd=str(Path(__file__).resolve().parents[1]), progress_bar=False)
    facts = claims.read_glued_facts(tmp_path / "out.ipynb")
    assert {k: v for k, v in facts.items() if k != "missing"} == {
        "profile_name": "smoke", "gap": "-0.02 [-0.03, -0.01]", "n": 4, "share": 0.25,
        "verdict": "rank 64 copies more: 'a' quote"}
    assert np.isnan(facts["missing"])


def test_read_glued_facts_takes_shown_and_hidden_glue_and_refuses_a_non_notebook(tmp_path):
    path = glued_notebook(tmp_path / "08_x.ipynb", {"a": "1 of 2", "b": 0.5, "table": Printed("   x\n0  1")},
                          shown=("b",))
    assert claims.read_glued_facts(path) == {"a": "1 of 2", "b": 0.5, "table": "x\n0  1"}
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.ipynb: not a notebook"):
        claims.read_glued_facts(tmp_path / "broken.ipynb")


# ---- rules on constructed facts -----------------------------------------------------------------------

@pytest.mark.parametrize("rule, values, verdict, why", [
    (Interval("below"), ["-0.02 [-0.03, -0.01]"], CONFIRMED, "lies below 0"),
    (Interval("below"), ["0.02 [0.01, 0.03]"], NOT_CONFIRMED, "the opposite: [0.01, 0.03] lies above 0"),
    (Interval("below"), ["-1e-05 [-0.0002, 3e-05]"], NOT_CONFIRMED, "covers 0: no difference beyond the noise"),
    (Interval("above", 1.0), [1.3], CONFIRMED, "lies above 1 (a single number, without an interval)"),
    (Interval("above", 1.0), ["0.9 [0.8, 0.95]"], NOT_CONFIRMED, "the opposite"),
    (Interval("above"), ["n/a"], NOT_MEASURED, "not a value with an interval"),
    (Between(3.5, 4.5), ["3.94 [3.94, 3.94]"], CONFIRMED, "lies within [3.5, 4.5]"),
    (Between(3.5, 4.5), ["2 [1.5, 2.5]"], NOT_CONFIRMED, "lies outside"),
    (Between(3.5, 4.5), ["4 [3, 5]"], NOT_CONFIRMED, "partly outside"),
    (Count("all"), ["3 of 3"], CONFIRMED, "3 of 3"),
    (Count("all"), [2, 3], NOT_CONFIRMED, "2 of 3, not all"),
    (Count("none"), ["0 of 3"], CONFIRMED, "0 of 3"),
    (Count("none"), ["1 of 3"], NOT_CONFIRMED, "not none"),
    (Count("all"), ["0 of 0"], NOT_MEASURED, "no count of cases"),
    (Phrase(("changes monotonically",), ("does not change",)), ["changes monotonically with a"], CONFIRMED, ""),
    (Phrase(("changes monotonically",), ("does not change",)), ["does not change monotonically with a"],
     NOT_CONFIRMED, "the opposite"),
    (Phrase(("LoRA higher",), ("TI higher",)), ["no clear difference (the intervals overlap)"], NOT_CONFIRMED,
     "no clear difference"),
    (Equals("lora"), ["lora"], CONFIRMED, "lora"),
    (Equals("3"), [2], NOT_CONFIRMED, "2, not 3"),
    (Direction("fell"), ["fell at 3 of 3 ranks (3 of them beyond overlapping 95% intervals)"], CONFIRMED, "every rank"),
    (Direction("fell"), ["fell at 2 of 3 ranks (1 of them beyond overlapping 95% intervals)"], NOT_CONFIRMED,
     "fell at 2 of 3 ranks, 1 of them beyond"),
    (Direction("fell"), ["rose at 3 of 3 ranks (3 of them beyond overlapping 95% intervals)"], NOT_CONFIRMED,
     "the opposite"),
    (Tally(), ["better on 2, worse on 0 and not clearly different on 1 of 3 measures"], CONFIRMED, "worse on none"),
    (Tally(), ["better on 0, worse on 1 and not clearly different on 2 of 3 measures"], NOT_CONFIRMED, "worse on 1"),
    (Lower(), ["0.2 [0.1, 0.3]", "0.6 [0.5, 0.7]"], CONFIRMED, "lower"),
    (Lower(), ["0.4 [0.3, 0.55]", "0.6 [0.5, 0.7]"], NOT_CONFIRMED, "overlap"),
    (Untestable("needs people"), [], NOT_TESTABLE, "needs people"),
])
def test_rules_give_the_verdict_and_say_why(rule, values, verdict, why):
    found = rule.judge(values)
    assert found.verdict == verdict and why in found.why, found


def test_the_parsers_read_what_the_part_one_chapters_write():
    from lora_core.experiments.ablation import direction_sentence
    from lora_core.experiments.benchmark import count_text
    from lora_core.experiments.evaluate import ci_text

    assert claims.parse_interval(ci_text(-0.012345, -0.0301, 0.00052)) == (-0.0123, -0.0301, 0.00052)
    assert claims.parse_interval(ci_text(1.5e-5, 2e-6, 3.1e-5)) == (1.5e-5, 2e-6, 3.1e-5)
    assert claims.parse_count([count_text(pd.Series([True, False, True]))]) == (2, 3)
    effects = pd.DataFrame({"alpha_mode": ["fixed"] * 3, "difference": [-1.0, -2.0, -0.5],
                            "intervals_overlap": [False, False, False]})
    assert Direction("fell").judge([direction_sentence(effects)]).verdict == CONFIRMED
    assert Direction("rose").judge([direction_sentence(effects)]).why.startswith("the opposite")


def test_the_part_one_chapters_glue_every_fact_their_claims_read():
    """A drift guard: each fact a claim reads from chapters 1-4 is a name its module writes."""
    modules = {claims.BENCHMARK: "benchmark", claims.ABLATION: "ablation", claims.METHODS: "methods",
               claims.MIXING: "mixing"}
    root = Path(claims.__file__).parent
    for claim in claims.CLAIMS:
        if claim.chapter in modules:
            source = (root / f"{modules[claim.chapter]}.py").read_text()
            for name in claim.facts:
                assert re.search(rf"[\"']{name}[\"']|\b{name}=", source), (claim.claim, name)


def test_every_claim_names_its_study_and_a_chapter_and_unmeasured_words_are_not_verdicts():
    assert {c.study for c in claims.CLAIMS} == {"S1", "S2", "S3", "S4", "S5"}
    assert all(re.match(r"\d\d_", c.chapter) for c in claims.CLAIMS)
    assert all(c.facts or isinstance(c.rule, Untestable) for c in claims.CLAIMS)
    expected = claims.expected_facts()
    assert set(expected.loc[expected.chapter == claims.LANDMARKS, "facts"]) >= {"val_loss_gap", "lora_rises"}
    claim = Claim("S9", "x", "-", "08_x", ("gap",), "-", Interval("below"))
    row = claims.judge_claim(claim, {"gap": "not measured in this build (no alignment model)"})
    assert (row["verdict"], row["measured here"]) == (NOT_MEASURED, "not measured in this build (no alignment model)")


# ---- the table from executed chapters ------------------------------------------------------------------

def test_claims_table_reads_executed_chapters_and_marks_missing_ones(tmp_path):
    glued_notebook(tmp_path / f"{claims.RANKS}.ipynb", {
        "profile_name": "tiny", "final_loss_gap": "-0.01 [-0.02, -0.005]", "train_time_ratio": "1.1 [0.9, 1.3]",
        "file_size_ratio": "3.94 [3.94, 3.94]", "alignment_gap_concrete": "2.5 [1.0, 4.0]",
        "standin_concrete_trust": "trusted", "alignment_gap_groups": "5 [4, 6]",
        "standin_abstract_trust": "not trusted", "copy_share_gap_rank": "0 [-0.03, 0.03]"})
    glued_notebook(tmp_path / f"{claims.MIXING}.ipynb",
                   {"profile_name": "smoke", "shift_blend": "changes monotonically"})
    table = claims.claims_table(tmp_path, "tiny").set_index("claim")
    verdict = table["verdict"]
    assert verdict["Rank 16 reaches a lower final loss than rank 64"] == CONFIRMED
    assert verdict["Rank 64 takes longer to train"] == NOT_CONFIRMED
    assert verdict["Rank 64's file is four times rank 16's"] == CONFIRMED
    assert verdict["Rank 16 follows normal prompts better than rank 64"] == CONFIRMED
    row = table.loc["Abstract prompts align worse than normal ones"]
    assert row["verdict"] == NOT_TESTABLE and "standin_abstract_trust: not trusted" in row["why"]
    assert verdict["A higher rank memorises more (cited)"] == NOT_CONFIRMED
    missing = table.loc["Full fine-tuning memorises far more than LoRA (cited)"]
    assert (missing["verdict"], missing["why"]) == (NOT_MEASURED, "chapter 8 glued no copy_share_gap_full")
    unexecuted = table.loc["Textual inversion overfits: its validation loss rises after its best epoch"]
    assert unexecuted["verdict"] == NOT_MEASURED and unexecuted["why"].startswith("chapter 7 has not been executed")
    other = table.loc["Mixing two style LoRAs shifts the style gradually (Exp. IV)"]
    assert (other["verdict"], other["why"]) == (NOT_MEASURED, "chapter 4 was executed with profile smoke, not tiny")
    assert table.loc["People would rather buy LoRA's images", "verdict"] == NOT_TESTABLE


def test_run_claims_counts_verdicts_and_says_which_chapters_it_read(tmp_path):
    glued_notebook(tmp_path / f"{claims.METHODS}.ipynb", {"profile_name": "smoke", "rank_agree": "4 of 12",
                                                           "best_method": "lora"})
    result = claims.run_claims("smoke", executed_dir=tmp_path)
    facts = result.facts
    assert (facts["n_confirmed"], facts["n_not_confirmed"]) == (1, 1)
    assert facts["n_not_testable"] == 2 and facts["n_claims"] == len(claims.CLAIMS)
    assert facts["n_not_measured"] == len(claims.CLAIMS) - 4
    assert facts["chapters_read"] == "chapter 3" and "chapter 8" in facts["chapters_unread"]
    assert facts["found_claims"].startswith(f"Of {len(claims.CLAIMS)} claims of studies S1-S5: 1 confirmed")
    by_study = result.by_study().set_index("study")
    assert by_study.loc["S1", CONFIRMED] == 1 and by_study.loc["S4", NOT_TESTABLE] == 1
    empty = claims.run_claims("smoke", executed_dir=tmp_path / "nowhere")
    assert empty.facts["chapters_read"] == "none" and empty.facts["n_not_measured"] == len(claims.CLAIMS) - 2
