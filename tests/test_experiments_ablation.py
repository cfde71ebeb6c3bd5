"""Chapter 2: the grid's configs (arms, sharing, chapter 1's cell), run facts, tables and sentences."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lora_core.experiments import ablation
from lora_core.experiments.style_share import gain_table
from lora_core.experiments.common import style_lora_config
from lora_core.experiments.evaluate import aggregate_seeds, reported_table
from lora_core.profiles import get_profile

SMOKE, TINY, SD15 = get_profile("smoke"), get_profile("tiny"), get_profile("sd15")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_arms_differ_only_in_alpha_and_meet_where_rank_equals_alpha():
    configs = ablation.ablation_configs(TINY, ablation.ablation_settings(TINY))
    for (mode, rank, study_lr, seed), config in configs.items():
        assert config.options.rank == rank and config.seed == seed
        assert config.options.effective_alpha == (16.0 if mode == "fixed" else float(rank))
        assert config.options.scale == config.options.effective_alpha / rank
        assert config.learning_rate == {1e-4: 1e-3, 5e-4: 5e-3}[study_lr]
        other = configs[("tied" if mode == "fixed" else "fixed", rank, study_lr, seed)]
        assert (config.hash() == other.hash()) == (rank == 16)
        assert config.replace(options=other.options).hash() == other.hash()


def test_one_cell_is_chapter_ones_run_in_tiny_and_sd15_uses_s1_steps():
    tiny = ablation.ablation_configs(TINY, ablation.ablation_settings(TINY))
    assert tiny[("fixed", 16, 1e-4, 0)].hash() == style_lora_config(TINY, "twemoji", 0).hash()
    smoke = ablation.ablation_configs(SMOKE, ablation.ablation_settings(SMOKE))
    assert smoke[("tied", 4, 1e-4, 0)].hash() == style_lora_config(SMOKE, "twemoji", 0).hash()
    sd15 = ablation.ablation_configs(SD15, ablation.ablation_settings(SD15))
    assert {c.max_train_steps for c in sd15.values()} == {3000} and len(sd15) == 2 * 3 * 2 * 3
    assert sd15[("fixed", 8, 5e-4, 2)].learning_rate == 5e-4


def test_grid_table_marks_shared_runs_and_settings_refuse_bad_values():
    table = ablation.grid_table(ablation.ablation_configs(TINY, ablation.ablation_settings(TINY)))
    assert len(table) == 12 and table["config_hash"].nunique() == 10
    assert set(table.loc[table["shared by both arms"], "rank"]) == {16}
    assert list(table.loc[(table["alpha mode"] == "fixed"), "scale"].unique()) == [2.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="ranks must be positive integers"):
        ablation.ablation_settings(TINY, ranks=(0, 8))
    with pytest.raises(ValueError, match="fixed_alpha and alpha_per_rank must be positive"):
        ablation.ablation_settings(TINY, fixed_alpha=0.0)
    with pytest.raises(ValueError, match="mode: 'free' is not one of fixed, tied"):
        ablation.alpha_for("free", 8, ablation.AblationSettings())


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """The smoke grid (ranks 2 and 4, one step each) on a four-image folder in a temporary runs root."""
    folder = tmp_path_factory.mktemp("swatches")
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 50 * i, np.uint8)).save(folder / f"s{i}.png")
        (folder / f"s{i}.txt").write_text(f"swatch {i}")
    settings = ablation.ablation_settings(SMOKE, train_steps=1)
    configs = {key: config.replace(data=config.data.replace(folder=str(folder)))
               for key, config in ablation.ablation_configs(SMOKE, settings).items()}
    records = ablation.train_grid(configs, base=tiny_base, runs_root=tmp_path_factory.mktemp("runs"))
    return ablation.AblationResult(SMOKE, settings=settings, configs=configs, records=records), tiny_base


def test_shared_cells_train_once_and_facts_follow_rank_and_scale(trained):
    result, base = trained
    assert len(result.records) == 6
    facts = result.run_facts(base).set_index(["alpha_mode", "rank", "study_lr"])
    params = facts["trainable_params"]
    assert params[("fixed", 4, 1e-4)] == 2 * params[("fixed", 2, 1e-4)] == 2 * params[("tied", 2, 5e-4)]
    # same rank and seed, hence the same initial A; after one Adam step B is the same up to the
    # scale, so ||s B A|| is proportional to s: rank 2 at alpha 4 (s = 2) vs alpha 2 (s = 1)
    ratio = facts.loc[("fixed", 2, 1e-4), "delta_norm"] / facts.loc[("tied", 2, 1e-4), "delta_norm"]
    assert ratio == pytest.approx(2.0, rel=1e-3)
    assert facts.loc[("fixed", 4, 5e-4), "delta_norm"] == facts.loc[("tied", 4, 5e-4), "delta_norm"]
    curves = result.loss_curves(window=2)
    assert len(curves) == 8 and set(curves.columns) >= {"step", "loss", "loss_smooth", "alpha_mode", "rank"}
    assert set(curves["panel"]) == {"alpha fixed (S1), S1 lr 0.0001", "alpha fixed (S1), S1 lr 0.0005",
                                    "alpha tied to rank, S1 lr 0.0001", "alpha tied to rank, S1 lr 0.0005"}
    assert sorted(set(curves["line"])) == ["r=2", "r=4"]


def _aggregated_rows():
    rows = []
    for mode in ("fixed", "tied"):
        for rank in (8, 16):
            for study_lr, shift in ((1e-4, 0.0), (5e-4, -30.0 if mode == "fixed" else 1.0)):
                for seed, noise in ((0, -1.0), (1, 1.0)):
                    value = 180.0 + rank + shift + noise
                    rows.append({"alpha_mode": mode, "rank": rank, "study_lr": study_lr, "seed": seed,
                                 "measure": "fd_effnet", "metric": "FD-EffNet", "backbone": "effnet", "n": 32,
                                 "value": value, "ci_low": value - 0.5, "ci_high": value + 0.5, "note": "",
                                 "better": "lower"})
    return aggregate_seeds(pd.DataFrame(rows))


def test_lr_effects_and_sentences_from_a_hand_made_table():
    aggregated = _aggregated_rows()
    assert aggregated["n_seeds"].eq(2).all()
    effects = ablation.lr_effects(aggregated, "fd_effnet").set_index(["alpha_mode", "rank"])
    assert effects.loc[("fixed", 8), "difference"] == pytest.approx(-30.0)
    # t-interval over two seeds 2 apart: mean +- 12.706 * 1.414 / 1.414, so a shift of 1 overlaps, 30 does not
    assert not effects.loc[("fixed", 8), "intervals_overlap"] and effects.loc[("tied", 8), "intervals_overlap"]
    assert ablation.direction_sentence(effects.reset_index(), "fixed") == \
        "fell at 2 of 2 ranks (2 of them beyond overlapping 95% intervals)"
    assert ablation.direction_sentence(effects.reset_index(), "tied").startswith("rose at 2 of 2 ranks")
    assert ablation.direction_sentence(ablation.lr_effects(aggregated, "alignment"), "fixed") == \
        "could not be measured in this build"


def test_s1_comparison_puts_their_number_beside_our_interval():
    table = ablation.s1_comparison(_aggregated_rows(), reported_table("S1", "II")).set_index(["rank", "S1 lr"])
    assert table.loc[(8, 1e-4), "S1 FID"] == 179.05 and table.loc[(16, 5e-4), "S1 FID"] == 175.05
    assert table.loc[(8, 1e-4), "ours: FD-EffNet"].startswith("188 [")
    assert table.loc[(8, 1e-4), "ours: alignment"] == "-"
    assert ablation.s1_setting(8, 1e-4) == "r8_lr1e-4"


def _scored(result, fd_of=lambda rank, study_lr: rank + 100 * study_lr):
    """``result`` with hand-made FID and FD-EffNet rows per cell (FID orders the runs as ``fd_of``)."""
    rows = []
    for (mode, rank, study_lr, seed), config in result.configs.items():
        for measure, value in (("fid", 100.0 * rank + 1e4 * study_lr), ("fd_effnet", fd_of(rank, study_lr))):
            rows.append({"alpha_mode": mode, "rank": rank, "study_lr": study_lr, "seed": seed,
                         "alpha": config.options.effective_alpha, "scale": config.options.scale,
                         "eval_set": "training captions", "measure": measure, "metric": measure, "backbone": "b",
                         "n": 4, "value": value, "ci_low": value - 0.5, "ci_high": value + 0.5, "note": "",
                         "better": "lower"})
    return ablation.AblationResult(result.profile, settings=result.settings, configs=result.configs,
                                   records=result.records, results=pd.DataFrame(rows))


def test_backbone_agreement_counts_a_run_both_arms_share_once(trained):
    result, _ = trained
    ranking, agreement = _scored(result).backbone_agreement()
    assert len(result.configs) == 8 and agreement["n_sets"] == len(result.records) == 6 == len(ranking)
    assert agreement["spearman_rho"] == pytest.approx(1.0) and agreement["kendall_tau"] == pytest.approx(1.0)


def test_backbones_agree_from_a_spearman_rho_of_0_8_and_the_sentences_follow():
    assert ablation.backbones_agree({"spearman_rho": 0.8}) and not ablation.backbones_agree({"spearman_rho": 0.79})
    alike = ablation.agreement_facts({"n_sets": 10, "spearman_rho": 0.93, "kendall_tau": 0.8})
    assert alike["fid_agreement"] == ("over the 10 distinct runs, Spearman's rho between the two rankings is 0.93 "
                                      "and Kendall's tau 0.80")
    assert alike["fid_reading"].startswith("The two backbones order the runs alike")
    partly = ablation.agreement_facts({"n_sets": 10, "spearman_rho": 0.5, "kendall_tau": 0.4})
    assert partly["fid_reading"].startswith("The two backbones agree only partly")
    assert "rho 0.50, below 0.8" in partly["found_fid"]
    missing = ablation.agreement_facts(None, "fid=false")
    assert missing["fid_agreement"] == "FID was not computed (fid=false)"


def test_read_ablation_fills_the_page_from_the_scores(trained):
    from lora_core.experiments.chapter import show_table

    result, base = trained
    # FD-EffNet falls by 4 with the higher lr at every rank, far beyond its +-0.5 intervals
    page = ablation.read_ablation(_scored(result, lambda rank, study_lr: rank - 1e4 * study_lr), base)
    facts = page.facts
    assert (facts["n_cells"], facts["n_runs"], facts["n_seeds"], facts["steps"]) == (8, 6, 1, 1)
    assert facts["profile_note"].startswith("This page was built with the smoke profile")
    assert facts["missing_measures"] == "none" and facts["seed_note"].startswith("With one training seed")
    assert facts["fid_agreement"].startswith("over the 6 distinct runs") and "rho" in facts["found_fid"]
    assert facts["found_tradeoff"].startswith("The trade-off of style against subject was not measured")
    assert page.tradeoff.empty and page.tradeoff_guides()["y_guide"] is None
    assert facts["fd_fixed"] == "fell at 2 of 2 ranks (2 of them beyond overlapping 95% intervals)"
    assert (facts["rank_low"], facts["rank_high"], facts["rank_ratio"]) == (2, 4, 2.0)
    assert facts["params_ratio"] == pytest.approx(2.0)
    # rank 4 trains at scale 1 in both arms, rank 2 at scale 2 with alpha fixed (4/2) and 1 tied,
    # and ||s B A|| after one Adam step follows the scale: the fixed arm's growth is half the tied arm's
    assert facts["fixed_norm_ratio"] == pytest.approx(facts["tied_norm_ratio"] / 2, rel=1e-3)
    assert facts["found_scale"].startswith(f"From rank 2 to 4, the learned update grows {facts['fixed_norm_ratio']:.2f}x")
    assert "seed" not in page.ranking.columns and {"fid", "fd_effnet", "rank"} <= set(page.ranking.columns)
    assert page.ranking_keys() == ["rank", "study_lr", "alpha"]   # what chapter 2 shows first (tiny failed on alpha_mode)
    show_table(page.ranking, first=page.ranking_keys())
    assert set(page.cost_panels()["panel"]) == {"trainable parameters", "LoRA file (bytes)",
                                                "mean ||s B A||_F per module"}
    panels = page.rank_panels(["fd_effnet", "fid"])
    assert list(dict.fromkeys(panels["measure"])) == ["fd_effnet", "fid"]
    assert set(panels.loc[panels["dashed"], "alpha_mode"]) == {"tied"}


def _gains(share=True):
    """Per cell of a two-rank grid, one seed: rank 4 is shared by both arms (alpha 4)."""
    rows = []
    for mode, rank, alpha, gained, lost in (("fixed", 2, 4.0, 0.9, 0.3), ("fixed", 4, 4.0, 0.5, 0.05),
                                            ("tied", 2, 2.0, 0.6, 0.1), ("tied", 4, 4.0, 0.5, 0.05)):
        row = {"style": "twemoji", "alpha_mode": mode, "rank": rank, "study_lr": 1e-4, "alpha": alpha, "n_seeds": 1}
        for name, value in (("share", gained if share else float("nan")), ("gain", gained / 2), ("subject_lost", lost)):
            row.update({name: value, f"{name}_low": value - 0.1, f"{name}_high": value + 0.1})
        rows.append(row)
    return pd.DataFrame(rows)


def test_tradeoff_points_show_each_distinct_run_once_and_say_what_y_is():
    points = ablation.tradeoff_points(_gains()).set_index("label")
    assert list(points.index) == ["r2 alpha 4, lr 0.0001", "r4 alpha 4, lr 0.0001", "r2 alpha 2, lr 0.0001"]
    assert len(points) == 3 and points["arm"].tolist() == ["alpha fixed (S1)", "both arms", "alpha tied to rank"]
    first = points.iloc[0]
    assert (first["style_gained"], first["style_gained_high"], first["subject_lost"]) == pytest.approx((0.9, 1.0, 0.3))
    assert set(points["style_measure"]) == {"share of the way from the base to the truth"}
    plain = ablation.tradeoff_points(_gains(share=False))       # no truth judged: P_LoRA - P_base instead
    assert plain["style_gained"].tolist() == pytest.approx([0.45, 0.25, 0.3])
    assert set(plain["style_measure"]) == {"P(style) gained, P_LoRA - P_base"}
    assert ablation.tradeoff_points(pd.DataFrame()).empty


def test_tradeoff_facts_name_the_best_run_and_the_best_within_the_bound():
    facts = ablation.tradeoff_facts(ablation.tradeoff_points(_gains()))
    assert facts["tradeoff_measure"] == "share of the way from the base to the truth"
    assert facts["found_tradeoff"] == (
        "On held-out subjects, the run that gains most style (r2 alpha 4, lr 0.0001, alpha fixed (S1)) reaches 0.90 "
        "(share of the way from the base to the truth) and loses 0.30 of subject accuracy; among the runs that lose at "
        "most 0.10, the best (r2 alpha 2, lr 0.0001, alpha tied to rank) reaches 0.60.")
    none_kept = ablation.tradeoff_facts(ablation.tradeoff_points(_gains()), max_lost=0.01)
    assert none_kept["found_tradeoff"].endswith("no run loses at most 0.01 of it.")
    assert ablation.tradeoff_facts(pd.DataFrame())["tradeoff_measure"].startswith("not measured")


def test_judge_grid_judges_every_distinct_run_once_on_held_out_subjects(trained, tmp_path, monkeypatch,
                                                                      brightness_evaluator):
    from lora_core.experiments import common

    result, base = trained
    monkeypatch.setattr(common, "generation_cache_dir", lambda: tmp_path)
    evaluator = brightness_evaluator(("noto", "twemoji", "openmoji", "fluent3d"))
    held_out = common.eval_set(result.settings.style, "heldout", SMOKE.n_eval_images)
    judged_runs = {run: ablation.judge_run(base, evaluator, SMOKE, held_out, result.settings.style,
                                           record.exports["diffusers"] if record else None)
                   for run, record in {"base": None, **result.records}.items()}
    judged = ablation.judge_grid(SMOKE, result.settings, result.configs, judged_runs, base, evaluator)
    n = SMOKE.n_eval_images
    assert judged.groupby("source").size().to_dict() == {"true": n, "base": n, "lora": n * len(result.configs)}
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 + len(result.records)   # a shared run generated once
    lora = judged[judged["source"] == "lora"]
    shared = lora[(lora["rank"] == 4) & (lora["study_lr"] == 1e-4)]
    assert shared.groupby("alpha_mode")["p_style"].apply(list).pipe(lambda arms: arms["fixed"] == arms["tied"])
    gains = gain_table(judged, ablation.CELL_COLUMNS, n_resamples=20)
    assert len(gains) == len(result.configs) and gains["subject_lost"].eq(0.0).all()
    page = ablation.AblationResult(SMOKE, settings=result.settings, configs=result.configs, records=result.records,
                                   tradeoff=ablation.tradeoff_points(gains))
    assert len(page.tradeoff) == len(result.records) and "both arms" in set(page.tradeoff["arm"])
    assert set(page.tradeoff["label"]) >= {"r2 alpha 4, lr 0.0001", "r4 alpha 4, lr 0.0005"}
    # through the random VAE truth and generations all turn grey: whether a share exists is a coin toss here
    shared_measure = gains["share"].notna().all()
    assert set(page.tradeoff["style_measure"]) == {ablation.STYLE_MEASURES["share" if shared_measure else "gain"]}
    assert page.tradeoff_guides()["x_guide"] == (0.10, "at most 10 points lost")
    page.tradeoff = ablation.tradeoff_points(_gains())
    assert page.tradeoff_guides()["y_guide"] == (0.75, "0.75 of the way (far styles)")
    page.tradeoff = ablation.tradeoff_points(_gains(share=False))
    assert page.tradeoff_guides()["y_guide"] is None
