"""The experiments' shared layer: config builders, evaluation sets, cached generation, result tables."""
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from lora_core.experiments import common
from lora_core.experiments.common import (EvalSet, eval_set, generate_eval_images, method_config, style_folder,
                                          style_lora_config)
from lora_core.experiments.evaluate import (RESULT_COLUMNS, Evaluator, aggregate_seeds, ci_text, format_results,
                                            rank_agreement, reported_table, tables_by_eval_set,
                                            unavailable_table)
from lora_core.profiles import get_profile
from lora_core.train import TrainConfig

SMOKE = get_profile("smoke")


def test_shared_settings_hash_identically_and_differences_do_not():
    chapter1 = style_lora_config(SMOKE, "twemoji", seed=2)
    chapter2_cell = style_lora_config(SMOKE, "twemoji", seed=2, lora={"rank": SMOKE.lora_rank, "alpha": SMOKE.lora_alpha},
                                      learning_rate=SMOKE.learning_rate)
    assert chapter1.hash() == chapter2_cell.hash()
    assert chapter1 == TrainConfig.from_dict(chapter1.to_dict())
    assert style_lora_config(SMOKE, "twemoji", seed=3).hash() != chapter1.hash()
    assert style_lora_config(SMOKE, "openmoji", seed=2).hash() != chapter1.hash()
    assert chapter1.method == "lora" and chapter1.max_train_steps == SMOKE.train_steps
    assert chapter1.data.folder == "data/styles/twemoji/train" and chapter1.data.resolution == SMOKE.resolution


def test_rank_alpha_and_scale_are_explicit_fixed_or_tied():
    fixed = style_lora_config(get_profile("tiny"), "twemoji", lora={"rank": 32})
    assert (fixed.options.rank, fixed.options.effective_alpha, fixed.options.scale) == (32, 16.0, 0.5)
    tied = style_lora_config(get_profile("tiny"), "twemoji", lora={"rank": 32, "alpha": None, "alpha_per_rank": 1.0})
    assert (tied.options.effective_alpha, tied.options.scale) == (32.0, 1.0)


def test_method_configs_follow_s1_scaled_by_the_profile():
    tiny = get_profile("tiny")   # lr 1e-3 = 10 x S1's 1e-4
    assert common.lr_scale(tiny) == pytest.approx(10.0)
    ti = method_config(tiny, "textual_inversion", "openmoji")
    assert ti.learning_rate == pytest.approx(5e-2) and ti.options.trigger_word == "opnmj"
    db = method_config(tiny, "dreambooth", "openmoji")
    assert (db.learning_rate, db.text_encoder_learning_rate) == pytest.approx((1e-3, 5e-5))
    assert db.options.train_text_encoder
    lora = method_config(tiny, "lora", "openmoji")
    assert lora.options.rank == 32 and lora.hash() == style_lora_config(tiny, "openmoji", lora={"rank": 32}).hash()
    assert method_config(tiny, "loha", "openmoji").options.algo == "loha"
    assert method_config(tiny, "lokr", "openmoji").method == "lycoris"
    with pytest.raises(ValueError, match="unknown method 'lorax'. Valid: lora, textual_inversion"):
        method_config(tiny, "lorax", "openmoji")


def test_style_folder_refuses_unknown_styles_and_splits():
    with pytest.raises(ValueError, match="unknown style set 'ghibli'. Valid: twemoji"):
        style_folder("ghibli")
    with pytest.raises(ValueError, match="split: 'test' is not one of train, heldout"):
        style_folder("twemoji", "test")


def test_eval_sets_pair_prompts_seeds_and_subjects():
    train, held = eval_set("twemoji", "train", 5), eval_set("twemoji", "heldout", 5)
    assert not set(train.subject_keys) & set(held.subject_keys)
    assert held.seeds == tuple(range(1000, 1005)) and held.paired
    for key, prompt, caption in zip(held.subject_keys, held.prompts, held.captions):
        on_disk = (common.data_dir() / "styles" / "twemoji" / "heldout" / f"{key}.txt").read_text().strip()
        assert prompt == on_disk == f"{caption}, in the style of twmj"
    assert eval_set("openmoji", "heldout", 5).subject_keys == held.subject_keys  # same subjects in every style
    assert eval_set("twemoji", "heldout", 5) == held                           # deterministic selection
    unseen = eval_set("openmoji", "unseen", 1000)
    assert len(unseen) == len(common.UNSEEN_SUBJECTS) and not unseen.paired
    assert unseen.prompts[0] == f"{unseen.captions[0]}, in the style of opnmj"
    with pytest.raises(ValueError, match="at least one prompt"):
        eval_set("twemoji", "train", 0)


def test_generation_is_cached_by_content(tiny_base, tmp_path, monkeypatch):
    profile = SMOKE.replace(inference_steps=1)
    first = generate_eval_images(tiny_base, ["a cat", "a dog"], [1, 2], profile, cache_dir=tmp_path)
    assert first.dtype == torch.uint8 and first.shape == (2, 3, 32, 32)
    import lora_core.generate

    monkeypatch.setattr(lora_core.generate, "generate_cells", lambda *a, **k: pytest.fail("regenerated"))
    assert torch.equal(generate_eval_images(tiny_base, ["a cat", "a dog"], [1, 2], profile, cache_dir=tmp_path), first)
    monkeypatch.undo()
    other_seed = generate_eval_images(tiny_base, ["a cat", "a dog"], [1, 3], profile, cache_dir=tmp_path)
    assert torch.equal(other_seed[0], first[0]) and not torch.equal(other_seed[1], first[1])
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    with pytest.raises(ValueError, match="prompts and seeds must pair up"):
        generate_eval_images(tiny_base, ["a cat"], [1, 2], profile, cache_dir=tmp_path)


def _rows(values, adapter="lora", seeds=(0, 1, 2)):
    return pd.DataFrame({"style": "twemoji", "adapter": adapter, "seed": list(seeds), "measure": "m", "metric": "M",
                         "backbone": "b", "n": 10, "value": values, "ci_low": [v - 0.1 for v in values],
                         "ci_high": [v + 0.1 for v in values], "note": "", "better": "lower"})


def test_aggregate_over_seeds_matches_a_hand_t_interval():
    values = [0.3, 0.5, 0.9]
    table = pd.concat([_rows(values), _rows([0.7], adapter="base", seeds=[None])], ignore_index=True)
    agg = aggregate_seeds(table).set_index("adapter")
    half = scipy_stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert agg.loc["lora", "value"] == pytest.approx(np.mean(values))
    assert (agg.loc["lora", "ci_low"], agg.loc["lora", "ci_high"]) == pytest.approx((np.mean(values) - half,
                                                                                   np.mean(values) + half))
    assert agg.loc["lora", "n_seeds"] == 3 and "mean over 3 seeds" in agg.loc["lora", "note"]
    assert (agg.loc["base", "value"], agg.loc["base", "ci_low"], agg.loc["base", "n_seeds"]) == pytest.approx((0.7, 0.6, 1))
    assert agg.loc["base", "note"].startswith("one run: interval over images")
    assert "seed" not in agg.columns and set(RESULT_COLUMNS) <= set(agg.columns)


def test_format_results_pivots_value_and_interval_text():
    agg = aggregate_seeds(pd.concat([_rows([1.0, 2.0, 3.0]), _rows([5.0], "base", [None])], ignore_index=True))
    wide = format_results(agg, index="style", columns="adapter")
    assert wide.loc["twemoji", "base"] == ci_text(5.0, 4.9, 5.1) == "5 [4.9, 5.1]"
    assert wide.loc["twemoji", "lora"].startswith("2 [")


def test_reported_table_holds_s1_exp_one():
    table = reported_table("S1", "I")
    assert len(table) == 24 and set(table.method) == {"baseline", "lora"}
    row = table[(table.setting == "ghibli") & (table.method == "lora") & (table.metric == "FID")]
    assert row.value.item() == pytest.approx(188.23)
    with pytest.raises(ValueError, match="study: 'S9' is not in"):
        reported_table("S9")


def test_evaluator_rows_paired_distances_against_the_backbone(tiny_base, tmp_path):
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.style import load_true_images
    from lora_core.world import true_images_dir

    es = eval_set("twemoji", "heldout", 4)
    generated = load_true_images(es.subject_keys, true_images_dir("openmoji"), 32)   # stands in for generated images
    evaluator = Evaluator(SMOKE, n_resamples=20)
    measures = ("feature_to_target", "feature_to_base", "fd_effnet", "kid_effnet")
    table = evaluator.evaluate(generated, es, "twemoji", {"adapter": "x", "seed": 0}, measures=measures)
    assert list(table.measure) == list(measures)
    assert {"eval_set", "target_style", "adapter", "seed", "better", *RESULT_COLUMNS} <= set(table.columns)
    assert (table.eval_set == "held-out captions").all() and (table.n == 4).all()
    net = get_backbone("effnet-lite0")
    expected = np.linalg.norm(net.features(generated).numpy() - net.features(load_true_images(es.subject_keys, true_images_dir("twemoji"), 32)).numpy(), axis=1)
    row = table.set_index("measure").loc["feature_to_target"]
    assert row.value == pytest.approx(expected.mean(), rel=1e-5) and row.ci_low <= row.value <= row.ci_high
    assert table.set_index("measure").loc["fd_effnet", "metric"].startswith("FD-EffNet")
    unseen = eval_set("twemoji", "unseen", 4)
    no_pairs = evaluator.evaluate(generated, unseen, "twemoji", measures=measures)
    assert no_pairs.empty   # no true images and no reference: nothing paired, no FD
    with pytest.raises(ValueError, match="images and eval_set must pair up: 3 images, 4 prompts"):
        evaluator.evaluate(generated[:3], es, "twemoji", measures=measures)
    with pytest.raises(ValueError, match="measures: unknown \\['fidd'\\]"):
        evaluator.evaluate(generated, es, "twemoji", measures=("fidd",))


def test_tables_by_eval_set_caption_each_set_and_show_intervals():
    aggregated = pd.DataFrame({
        "eval_set": ["held-out captions", "held-out captions", "unseen prompts"],
        "measure": ["p_style", "p_style", "p_style"], "backbone": ["effnet-lite0"] * 3,
        "method": ["base", "lora", "lora"], "value": [0.1, 0.8, 0.5], "ci_low": [0.05, 0.7, 0.4],
        "ci_high": [0.15, 0.9, 0.6]})
    tables = tables_by_eval_set(aggregated, "method", "openmoji (smoke profile)")
    assert [t.caption for t in tables] == ["held-out captions: openmoji (smoke profile)",
                                           "unseen prompts: openmoji (smoke profile)"]
    first = tables[0].data
    assert list(first.columns) == ["base", "lora"] and list(first.index) == ["p_style (effnet-lite0)"]
    assert first.loc["p_style (effnet-lite0)", "lora"] == ci_text(0.8, 0.7, 0.9, 3)
    assert list(unavailable_table({"style": "no model file"}).columns) == ["measure group", "left out because"]


def test_rank_agreement_ranks_sets_both_measures_scored_including_the_seedless_base():
    sets = [("twemoji", "base", None), ("twemoji", "lora", 0), ("twemoji", "lora", 1), ("openmoji", "lora", 0)]
    fid = [40.0, 10.0, 20.0, 30.0]
    fd = [0.1, 0.4, 0.3, 0.2]  # the reverse order of fid
    rows = pd.DataFrame([{"style": st, "adapter": ad, "seed": seed, "eval_set": "training captions",
                          "measure": measure, "metric": measure, "backbone": "b", "n": 100, "value": value,
                          "ci_low": value, "ci_high": value, "note": "", "better": "lower"}
                         for (st, ad, seed), a, b in zip(sets, fid, fd)
                         for measure, value in (("fid", a), ("fd_effnet", b), ("kid_effnet", 0.0))]
                        + [{"style": "fluent3d", "adapter": "lora", "seed": 0, "eval_set": "training captions",
                            "measure": "fd_effnet", "metric": "m", "backbone": "b", "n": 100, "value": 9.0,
                            "ci_low": 9.0, "ci_high": 9.0, "note": "", "better": "lower"}])  # no FID: left out
    table, summary = rank_agreement(rows)
    assert len(table) == summary["n_sets"] == 4 and "fluent3d" not in set(table["style"])
    assert table["rank fid"].tolist() == [4, 1, 2, 3] and table["rank fd_effnet"].tolist() == [1, 4, 3, 2]
    assert summary["spearman_rho"] == pytest.approx(scipy_stats.spearmanr(fid, fd).statistic) == pytest.approx(-1.0)
    assert summary["kendall_tau"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="2 sets scored by both fid and fd_effnet"):
        rank_agreement(rows[rows["style"].eq("twemoji") & ~rows["seed"].eq(1)])
