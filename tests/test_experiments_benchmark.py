"""Chapter 1's logic on constructed result tables (hand-computed effects, spreads and verdicts)."""
import numpy as np
import pandas as pd
import pytest
import torch

from lora_core.experiments import benchmark
from lora_core.experiments.common import eval_set, style_lora_config
from lora_core.metrics.style import load_true_images
from lora_core.profiles import get_profile
from lora_core.world import true_images_dir

HELD = "held-out captions"


def _row(style, adapter, seed, measure, value, eval_set=HELD, low=None, high=None):
    return {"eval_set": eval_set, "target_style": style, "style": style, "adapter": adapter, "seed": seed,
            "measure": measure, "metric": measure.upper(), "backbone": "b", "n": 10, "value": value,
            "ci_low": value - 0.05 if low is None else low, "ci_high": value + 0.05 if high is None else high,
            "note": "", "better": ""}


def _results():
    rows = [_row("twemoji", "base", None, "feature_to_target", 10.0),
            *(_row("twemoji", "lora", s, "feature_to_target", v) for s, v in enumerate([8.0, 8.5, 9.0])),
            _row("twemoji", "base", None, "target_style_rate", 0.2),
            *(_row("twemoji", "lora", s, "target_style_rate", v) for s, v in enumerate([0.2, 0.6, 0.3])),
            _row("twemoji", "base", None, "feature_to_base", 9.0),
            *(_row("twemoji", "lora", s, "feature_to_base", v) for s, v in enumerate([9.5, 9.6, 9.7])),
            _row("twemoji", "base", None, "subject_group_accuracy", 0.5, low=0.4, high=0.6),
            *(_row("twemoji", "lora", s, "subject_group_accuracy", v) for s, v in enumerate([0.45, 0.5, 0.55])),
            _row("twemoji", "base", None, "feature_to_target", 1.0, eval_set="training captions")]
    return pd.DataFrame(rows)


def test_benchmark_configs_are_the_shared_style_loras():
    smoke = get_profile("smoke")
    configs = benchmark.benchmark_configs(smoke)
    assert sorted(configs) == [(s, seed) for s in sorted(smoke.benchmark_styles) for seed in range(smoke.n_seeds)]
    assert configs[("openmoji", 1)].hash() == style_lora_config(smoke, "openmoji", 1).hash()


def test_check3_effect_against_the_seed_range():
    table = benchmark.check3_table(_results()).set_index("measure")
    distance = table.loc["feature_to_target"]
    assert distance.effect == pytest.approx(8.5 - 10.0) and distance.seed_range == pytest.approx(1.0)
    assert distance.passes and distance.expected == "lower" and distance.n_seeds == 3
    rate = table.loc["target_style_rate"]     # +0.167 on average, but seeds span 0.4: not enough
    assert rate.effect == pytest.approx(1 / 3 * 1.1 - 0.2) and rate.seed_range == pytest.approx(0.4)
    assert not rate.passes
    assert table.loc["feature_to_base", "expected"] == "context" and table.loc["feature_to_base", "passes"] is None
    assert len(table) == 4   # training-caption rows are not part of check 3
    inside = _results()        # beyond the seed range, but inside the base's interval over images
    inside.loc[(inside.measure == "feature_to_target") & (inside.adapter == "base"), ["ci_low", "ci_high"]] = (8.0, 11.0)
    assert not benchmark.check3_table(inside).set_index("measure").loc["feature_to_target", "passes"]


def test_subject_recognisability_compares_with_the_base_interval():
    table = benchmark.subject_recognisability(_results())
    row = table.iloc[0]
    assert (row.base_accuracy, row.base_ci_low, row.lora_accuracy) == pytest.approx((0.5, 0.4, 0.5))
    assert row.recognisable and row.lora_seed_range == pytest.approx(0.1)
    worse = _results()
    worse.loc[(worse.measure == "subject_group_accuracy") & (worse.adapter == "lora"), "value"] = 0.1
    assert not benchmark.subject_recognisability(worse).iloc[0].recognisable


def test_cross_style_control_on_distances_and_probabilities():
    cross = pd.DataFrame([
        {"adapter_style": a, "target_style": t, "measure": "feature_to_target", "value": v}
        for (a, t), v in {("twemoji", "twemoji"): 5.0, ("twemoji", "openmoji"): 7.0,
                          ("openmoji", "twemoji"): 6.0, ("openmoji", "openmoji"): 6.5}.items()])
    table = benchmark.cross_style_control_table(cross, "feature_to_target").set_index("adapter")
    assert table.loc["twemoji", "passes"] and table.loc["twemoji", "margin"] == pytest.approx(2.0)
    assert not table.loc["openmoji", "passes"] and table.loc["openmoji", "best_style"] == "twemoji"
    with pytest.raises(ValueError, match="no cross-style rows for 'p_target_style'"):
        benchmark.cross_style_control_table(cross, "p_target_style")


def test_s1_directions_read_the_reported_table():
    aggregated = pd.DataFrame([
        {"eval_set": "training captions", "style": "twemoji", "adapter": a, "measure": "fd_effnet", "value": v}
        for a, v in (("base", 300.0), ("lora", 250.0))] + [
        {"eval_set": "training captions", "style": "twemoji", "adapter": a, "measure": "alignment", "value": v}
        for a, v in (("base", 20.0), ("lora", 25.0))])
    table = benchmark.s1_directions(aggregated).set_index("S1 metric")
    assert table.loc["FID", "S1 base -> LoRA"] == "american_comic: fell, ghibli: fell, shinkai: fell"
    assert table.loc["FID", "ours base -> LoRA"] == "twemoji: fell" and table.loc["FID", "agrees"]
    assert table.loc["CLIP", "ours base -> LoRA"] == "twemoji: rose" and not table.loc["CLIP", "agrees"]
    assert table.loc["IS", "ours base -> LoRA"] == "not measured" and table.loc["IS", "agrees"] is None


def test_style_verdicts_separate_toward_the_style_from_away_from_the_base():
    verdicts = benchmark.style_verdicts(benchmark.check3_table(_results())).set_index("style")
    assert verdicts.loc["twemoji", "checks_passed"] == "1 of 2" and verdicts.loc["twemoji", "verdict"] == "toward twemoji"
    worse = _results()   # the LoRA no longer nears twemoji but leaves the base style by more than its seed range
    worse.loc[(worse.measure == "feature_to_target") & (worse.adapter == "lora"), "value"] = 10.5
    verdicts = benchmark.style_verdicts(benchmark.check3_table(worse)).set_index("style")
    assert verdicts.loc["twemoji", "checks_passed"] == "0 of 2" and verdicts.loc["twemoji", "verdict"] == "away from the base only"
    worse.loc[(worse.measure == "feature_to_base") & (worse.adapter == "lora"), "value"] = 9.0
    assert benchmark.style_verdicts(benchmark.check3_table(worse)).verdict.tolist() == ["no clear change"]


def test_benchmark_facts_read_counts_and_sentences_from_the_tables():
    check3 = benchmark.check3_table(_results())
    controls = pd.DataFrame({"adapter": ["twemoji", "openmoji"], "measure": ["m", "m"], "passes": [True, False]})
    directions = pd.DataFrame({"agrees": [True, None, False]})   # None: S1's own direction was mixed
    facts = benchmark.benchmark_facts(check3, benchmark.style_verdicts(check3),
                                      benchmark.subject_recognisability(_results()), controls, directions)
    assert facts["check3_pass"] == "1 of 2" and facts["check3_verdict"].startswith("not all pass")
    assert facts["style_verdicts"] == "twemoji: toward twemoji (1 of 2 checks)"
    assert facts["n_recognisable"] == "1 of 1" and facts["recognisable_reading"] == "No LoRA lost the subjects."
    assert facts["cross_style_pass"] == "1 of 2" and facts["s1_agree"] == "1 of 2"
    assert facts["feature_reading"] == "fell for twemoji"
    assert facts["found_verdicts"] == ("On subjects no LoRA trained on, per style: twemoji: toward twemoji "
                                       "(1 of 2 checks) (1 of 2 directional checks pass).")
    assert facts["found_subjects"].startswith("Subjects stay recognisable for 1 of 1 styles")
    empty = benchmark.benchmark_facts(check3, benchmark.style_verdicts(check3), pd.DataFrame(), pd.DataFrame(),
                                      directions)
    assert empty["n_recognisable"] == "none (no subject classifier)"
    assert empty["cross_style_pass"] == "not run (one style)"


class _Record:
    """A run record with a loss per step, as ``RunRecord.metrics()`` returns them."""

    def __init__(self, losses):
        self.losses = losses

    def metrics(self):
        return [{"step": step, "loss": loss} for step, loss in enumerate(self.losses, start=1)]


def test_loss_curves_smooth_each_run_on_its_own():
    records = {("twemoji", 0): _Record([1.0, 3.0, 2.0]), ("twemoji", 1): _Record([5.0, 5.0, 8.0])}
    result = benchmark.BenchmarkResult(get_profile("smoke"), configs={}, records=records, eval_sets={})
    curves = result.loss_curves(window=2)
    assert curves["smoothed loss"].tolist() == [1.0, 2.0, 2.5, 5.0, 5.0, 6.5]
    assert curves.groupby("seed").size().tolist() == [3, 3]


def test_sample_sheet_puts_the_true_images_beside_base_and_lora():
    smoke = get_profile("smoke")
    sets = {style: {split: eval_set(style, split, 3) for split in ("heldout", "unseen")}
            for style in ("twemoji", "openmoji")}
    images = {(style, adapter, seed, split): torch.full((3, 3, 32, 32), 10 * i, dtype=torch.uint8)
              for i, (style, adapter, seed) in enumerate([(s, "base", None) for s in sets] + [(s, "lora", 0) for s in sets])
              for split in ("heldout", "unseen")}
    result = benchmark.BenchmarkResult(smoke, configs={}, records={}, eval_sets=sets, images=images)
    sheet = benchmark.sample_sheet(result, "heldout", n=2)
    # each LoRA column directly beside its true target image, the base's after them
    assert list(dict.fromkeys(sheet.table["column"])) == [
        "true noto", "true twemoji", "LoRA twemoji", "base (twemoji prompt)",
        "true openmoji", "LoRA openmoji", "base (openmoji prompt)"]
    assert len(sheet.images) == 14 and sheet.table["subject"].nunique() == 2
    lora = sheet.table.index[(sheet.table["column"] == "LoRA openmoji")][1]
    assert (sheet.images[lora] == 30).all() and sheet.images[lora].shape == (32, 32, 3)
    base = sheet.table.index[(sheet.table["column"] == "base (openmoji prompt)")][0]
    assert (sheet.images[base] == 10).all()
    truth = load_true_images([sets["openmoji"]["heldout"].subject_keys[0]], true_images_dir("openmoji"), 32)[0]
    first_true = sheet.table.index[sheet.table["column"] == "true openmoji"][0]
    assert (sheet.images[first_true] == truth.permute(1, 2, 0).numpy()).all()
    unseen = benchmark.sample_sheet(result, "unseen", n=2)   # no true image exists for unseen prompts
    assert not unseen.table["column"].str.startswith("true").any() and len(unseen.images) == 8
    assert list(dict.fromkeys(unseen.table["column"]))[:2] == ["LoRA twemoji", "base (twemoji prompt)"]


def _shares():
    rows = [{"style": "openmoji", "share": 0.8, "share_low": 0.7, "share_high": 0.9, "subject_lora": 0.4,
             "subject_base": 0.45, "meets_target": True, "verdict": "met: 0.80 of the way"},
            {"style": "twemoji", "share": float("nan"), "share_low": float("nan"), "share_high": float("nan"),
             "gain": -0.02, "subject_lora": 0.5, "subject_base": 0.5, "meets_target": False,
             "verdict": "not met: 2 seed(s)"}]
    return pd.DataFrame(rows)


def test_share_facts_quote_each_style_and_count_the_targets_met():
    facts = benchmark.share_facts(_shares())
    assert facts["share_reading"] == (
        "openmoji 0.80 [0.70, 0.90] of the way, subject accuracy 0.40 against the base's 0.45; twemoji no way to "
        "share (the truth is judged no more in style than the base), P(style) -0.02 against the base, subject "
        "accuracy 0.50 against the base's 0.50")
    assert facts["share_targets_met"] == "1 of 2"
    assert facts["share_verdicts"] == "openmoji: met: 0.80 of the way; twemoji: not met: 2 seed(s)"
    assert facts["found_share"].endswith("Issue #15's targets hold for 1 of 2 styles.")
    missing = benchmark.share_facts(pd.DataFrame())
    assert missing["found_share"] == ("The share of the way from the base to the true style was not measured (no "
                                      "style judge in this build).")


def test_blind_facts_set_the_lora_between_ceiling_and_floor():
    from lora_core.experiments.style_share import blind_check_table

    judged = pd.DataFrame({"style": "openmoji", "source": ["true"] * 4 + ["base"] * 4 + ["lora"] * 4,
                           "seed": [None] * 8 + [0, 0, 1, 1], "target": "openmoji",
                           "named": ["openmoji"] * 3 + ["noto"] * 5 + ["openmoji"] * 2 + ["twemoji", "openmoji"]})
    facts = benchmark.blind_facts(blind_check_table(judged, 3), ("noto", "twemoji", "openmoji"))
    assert facts["blind_reading"] == "openmoji: LoRA 0.75 [0.30, 0.95] (ceiling 0.75, floor 0.00)"
    assert facts["blind_chance"] == "0.33" and facts["blind_classes"] == "noto, twemoji, openmoji"
    assert facts["found_blind"].startswith("Asked blind which of noto, twemoji, openmoji an image is (chance 0.33)")
    assert benchmark.blind_facts(pd.DataFrame(), ("noto",))["found_blind"] == ("The blind check was not measured "
                                                                              "(no style judge in this build).")


class _Judge:
    classes = ("noto", "twemoji", "openmoji", "fluent_hc")


class _Evaluator:
    """Judges by mean brightness; true images are mid-grey; every subject recognised."""

    style_classifier, base_style, cache = _Judge(), "noto", None

    def true_images(self, subject_keys, style, resolution):
        return torch.full((len(subject_keys), 3, resolution, resolution), 128, dtype=torch.uint8)

    def style_probabilities(self, images):
        bright = images.double().mean(dim=(1, 2, 3)) / 255
        return torch.stack([1 - bright, bright / 3, bright / 3, bright / 3], dim=1)

    def subject_hits(self, images, subject_keys):
        return np.ones(len(subject_keys))


def test_judge_heldout_judges_truth_base_and_every_seed_of_every_style(tiny_base):
    smoke = get_profile("smoke")
    sets = {style: {"heldout": eval_set(style, "heldout", 3)} for style in ("twemoji", "openmoji")}
    images = {(style, adapter, seed, "heldout"): torch.full((3, 3, 32, 32), value, dtype=torch.uint8)
              for style in sets for adapter, seed, value in (("base", None, 0), ("lora", 0, 200), ("lora", 1, 250))}
    result = benchmark.BenchmarkResult(smoke, configs={}, records={}, eval_sets=sets, images=images,
                                       judge_classes=("noto", "twemoji", "openmoji"))
    judged = benchmark.judge_heldout(result, _Evaluator(), tiny_base)
    assert judged.groupby(["style", "source"]).size().to_dict() == {
        (style, source): n for style in sets for source, n in (("base", 3), ("lora", 6), ("true", 3))}
    assert judged.loc[judged.source == "true", "subject_hit"].isna().all()
    assert judged.loc[judged.source == "lora", "subject_hit"].eq(1.0).all()
    assert set(judged.loc[judged.source == "base", "named"]) == {"noto"}
    assert judged.loc[(judged["style"] == "openmoji") & (judged.source == "lora"), "p_style"].tolist() == \
        pytest.approx([200 / 255 / 3] * 3 + [250 / 255 / 3] * 3)
