"""Chapter 7: equal terms for LoRA and TI, logs read per epoch, speed ratios, S4's claims, the kit."""
import csv
import json
import math
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from scipy import stats as scipy_stats

from lora_core import book, world
from lora_core.experiments import lora_vs_ti
from lora_core.experiments.lora_vs_ti import (EqualTermsSettings, chapter_settings, compare_methods, cost_facts,
                                              overfit_facts, plan_chapter, scaled_batch_size)
from lora_core.experiments.run_logs import best_epochs, epoch_table, median_seconds_per_step, speed_ratios
from lora_core.experiments.subject_sets import held_out_plan, validation_folder
from lora_core.paths import REPO_ROOT
from lora_core.profiles import get_profile
from lora_core.user_study.s4 import claim_verdicts, s4_reported_analysis

SMOKE, TINY, SD15 = get_profile("smoke"), get_profile("tiny"), get_profile("sd15")
TRIGGER = "lndmrk"


@dataclass(frozen=True)
class FakeSubjectSet:
    """The SUBJECT_SETS contract (vendor, trigger, folder(split)) on a small folder."""

    vendor: str
    trigger: str
    root: Path

    def folder(self, split: str) -> Path:
        return self.root / split


@pytest.fixture(scope="module")
def landmark_folder(tmp_path_factory):
    """12 training and 20 held-out Travel & Places emoji of fluent3d with trigger captions, in the
    layout of data/sets/landmarks (kohya <key>.png + <key>.txt)."""
    catalogue = REPO_ROOT / "data" / "emoji" / "catalog.csv"
    rows = [row for row in csv.DictReader(catalogue.open()) if row["category"] == "Travel & Places"
            and row["fluent3d"] == "1"][:32]
    root = tmp_path_factory.mktemp("landmarks")
    for i, row in enumerate(rows):
        split = root / ("train" if i < 12 else "heldout")
        split.mkdir(exist_ok=True)
        shutil.copy(REPO_ROOT / "data" / "emoji" / "images" / "fluent3d" / f"{row['key']}.png", split)
        (split / f"{row['key']}.txt").write_text(f"{row['caption']}, in the style of {TRIGGER}\n")
    return root


@pytest.fixture
def landmarks(landmark_folder, monkeypatch, tmp_path):
    """``landmarks`` in lora_core.world.SUBJECT_SETS points at the small set; the chapter's cache
    (validation folders) goes to a temporary folder."""
    monkeypatch.setattr(world, "SUBJECT_SETS", {"landmarks": FakeSubjectSet("fluent3d", TRIGGER, landmark_folder)},
                        raising=False)
    monkeypatch.setattr(lora_vs_ti, "data_dir", lambda: tmp_path / "data")
    return landmark_folder


@pytest.mark.parametrize("n_train, epochs, steps", [(115, 10, 150), (115, 10, 1000), (115, 1, 4), (12, 1, 4),
                                                    (11, 3, 7), (7, 3, 2)])
def test_scaled_batch_is_the_smallest_whose_samples_cover_the_epochs(n_train, epochs, steps):
    batch = scaled_batch_size(n_train, epochs, steps)
    # the budget's samples (batch x steps) cover the epochs' images, with the smallest such batch
    # (or every image in one batch); then the epochs (last partial batch dropped) fit the budget
    assert batch * steps >= n_train * epochs or batch == n_train
    assert batch == 1 or (batch - 1) * steps < n_train * epochs
    assert epochs * (n_train // batch) <= steps or batch == n_train
    with pytest.raises(ValueError, match="need positive counts, got n_train=0"):
        scaled_batch_size(0, epochs, steps)


def test_settings_keep_s4_epochs_and_refuse_bad_values():
    assert (chapter_settings(TINY).lora_epochs, chapter_settings(TINY).ti_epochs) == (10, 15)
    assert chapter_settings(SD15).batch_size == 1 and chapter_settings(SMOKE, n_eval=3).n_eval == 3
    assert chapter_settings(SMOKE, n_seeds=0).seeds(SMOKE) == [0] and chapter_settings(TINY).seeds(TINY) == [0, 1, 2]
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        EqualTermsSettings(lora_dropout=1.0)
    with pytest.raises(ValueError, match="timing_steps must be >= 2"):
        EqualTermsSettings(timing_steps=1)
    with pytest.raises(ValueError, match="n_evl"):
        chapter_settings(TINY, n_evl=3)
    with pytest.raises(ValueError, match="'dreambooth' is not one of lora, textual_inversion"):
        EqualTermsSettings().epochs("dreambooth")


def test_held_out_plan_is_disjoint_deterministic_and_kit_subjects_are_scored():
    keys = [f"{i:04x}" for i in range(40)]
    plan = held_out_plan(list(reversed(keys)), n_eval=20, n_validation=10, n_kit=5)
    assert plan == held_out_plan(keys, 20, 10, 5)
    assert len(set(plan.eval_keys)) == 20 and len(set(plan.validation_keys)) == 10
    assert not set(plan.eval_keys) & set(plan.validation_keys)
    assert list(plan.eval_keys) == sorted(plan.eval_keys) and plan.kit_keys == plan.eval_keys[:5]
    with pytest.raises(ValueError, match="40 held-out subjects cannot give 35 scored and 10 validation"):
        held_out_plan(keys, 35, 10, 5)
    with pytest.raises(ValueError, match=r"n_kit_subjects must be in \[1, n_eval=3\], got 5"):
        held_out_plan(keys, 3, 10, 5)


def test_validation_folder_is_written_once_and_named_by_its_content(landmark_folder, tmp_path):
    source = landmark_folder / "heldout"
    keys = sorted(p.stem for p in source.glob("*.png"))[:3]
    named = validation_folder(source, keys, tmp_path / "cache", write=False)
    assert not named.exists()
    folder = validation_folder(source, keys, tmp_path / "cache")
    assert folder == named and sorted(p.name for p in folder.iterdir()) == sorted(
        f"{k}{suffix}" for k in keys for suffix in (".png", ".txt"))
    assert (folder / f"{keys[0]}.png").read_bytes() == (source / f"{keys[0]}.png").read_bytes()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no staging folder left
    changed = tmp_path / "changed"
    shutil.copytree(source, changed)
    (changed / f"{keys[0]}.txt").write_text("another caption\n")
    assert validation_folder(changed, keys, tmp_path / "cache", write=False) != folder
    with pytest.raises(FileNotFoundError, match="validation files missing: nokey.png, nokey.txt"):
        validation_folder(source, ["nokey"], tmp_path / "cache")


def test_both_methods_train_on_equal_terms_and_timing_runs_differ_only_in_caching(landmarks):
    plan = plan_chapter(SMOKE, chapter_settings(SMOKE, n_seeds=2))
    assert plan.batch_size == scaled_batch_size(12, 1, SMOKE.train_steps)
    assert plan.steps_per_epoch == 12 // plan.batch_size
    assert (REPO_ROOT / plan.validation).is_dir() or Path(plan.validation).is_dir()
    shared = ("data", "validation_folder", "base_model", "seed", "batch_size", "mixed_precision", "cache_latents",
              "attention", "gradient_checkpointing", "optimizer", "lr_scheduler", "max_grad_norm", "loss_type")
    for seed in (0, 1):
        lora, ti = plan.configs[("lora", seed)], plan.configs[("textual_inversion", seed)]
        assert {name: getattr(lora, name) for name in shared} == {name: getattr(ti, name) for name in shared}
        assert lora.cache_latents and lora.attention == "sdpa" and lora.seed == seed
        assert (lora.epochs, ti.epochs) == (1, 2) and lora.options.dropout == 0.1
        assert ti.options.trigger_word == TRIGGER
        assert ti.learning_rate == pytest.approx(5e-3 * SMOKE.learning_rate / 1e-4)  # S1's TI lr, the profile's scale
    assert list(plan.timing) == [(variant, r) for r in (0, 1) for variant in lora_vs_ti.TIMING_VARIANTS]
    for (variant, r), config in plan.timing.items():
        method, cached = lora_vs_ti.TIMING_VARIANTS[variant]
        base = plan.configs[(method, 0)]
        assert config.to_dict() == base.replace(epochs=0, max_train_steps=3, validation_folder="", seed=r,
                                                cache_latents=cached).to_dict()
    sd15 = plan_chapter(SD15, chapter_settings(SD15), write=False)
    lora = sd15.configs[("lora", 0)]
    assert (lora.batch_size, lora.epochs, lora.data.resolution, lora.mixed_precision) == (1, 10, 512, "fp16")
    assert len(sd15.held_out.validation_keys) == 14 and len(sd15.held_out.eval_keys) == 6  # 20 held-out images
    assert not Path(sd15.validation).exists()  # named, not written


def test_epoch_table_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    losses, seconds = rng.uniform(0.1, 1.0, 9), rng.uniform(0.2, 0.4, 9)
    rows = [{"step": s + 1, "loss": losses[s], "s_per_it": seconds[s]} for s in range(9)]
    for step, value in ((3, 0.5), (6, 0.4), (9, 0.45)):
        rows[step - 1]["val_loss"] = value
    table = epoch_table(rows, steps_per_epoch=3)
    assert table["epoch"].tolist() == [1, 2, 3] and table["val_loss"].tolist() == [0.5, 0.4, 0.45]
    for e in range(3):
        assert table["train_loss"][e] == pytest.approx(losses[3 * e:3 * e + 3].mean())
        assert table["s_per_it"][e] == pytest.approx(np.median(seconds[3 * e:3 * e + 3]))
        assert table["train_s"][e] == pytest.approx(seconds[3 * e:3 * e + 3].sum())
    assert median_seconds_per_step(rows) == pytest.approx(np.median(seconds[1:]))
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        epoch_table(rows, 0)


def test_best_epoch_rise_and_the_overfit_sentence():
    epochs = pd.DataFrame({"method": ["lora"] * 3 + ["textual_inversion"] * 3, "seed": [0] * 6,
                           "epoch": [1, 2, 3] * 2, "val_loss": [0.3, 0.2, 0.1, 0.3, 0.1, 0.12]})
    best = best_epochs(epochs)
    assert best[["best_epoch", "rises_after_best"]].values.tolist() == [[3, False], [2, True]]
    assert best["rise_after_best"].tolist() == pytest.approx([0.0, 0.2])
    tie = best_epochs(epochs.assign(val_loss=[0.2, 0.1, 0.1, 0.3, 0.1, 0.1]))
    assert tie[["best_epoch", "rises_after_best"]].values.tolist() == [[2, False], [2, False]]  # a plateau is no rise
    facts = overfit_facts(best)
    assert facts["textual_inversion_rises"] == "1 of 1" and facts["lora_best_epochs"] == "3 of 3"
    assert facts["found_overfit"].startswith("TI's validation loss rose after its best epoch in 1 of 1 seeds")


def test_speed_ratios_are_per_round_with_a_t_interval_over_rounds():
    rng = np.random.default_rng(1)
    fast, slow = rng.uniform(0.5, 1.0, 4), rng.uniform(1.0, 2.0, 4)
    timing = pd.DataFrame({"variant": ["slow", "fast"] * 4, "round": np.repeat(range(4), 2),
                           "s_per_it": np.ravel(np.column_stack([slow, fast]))})
    row = speed_ratios(timing, {"slow_over_fast": ("slow", "fast")}).iloc[0]
    ratios = slow / fast
    half = scipy_stats.t.ppf(0.975, 3) * ratios.std(ddof=1) / 2
    assert (row.value, row.ci_low, row.ci_high) == pytest.approx((ratios.mean(), ratios.mean() - half,
                                                                  ratios.mean() + half))
    with pytest.raises(ValueError, match=r"no timing runs of \['cached'\]"):
        speed_ratios(timing, {"x": ("cached", "fast")})


@pytest.mark.parametrize("caching, equal, expected", [
    (1.3, 1.1, "{:.0%} of it".format(math.log(1.3) / math.log(1.43))),
    (1.3, 0.9, "all of it: with both cached, LoRA takes 0.9x"),
    (0.95, 1.2, "none of it: caching did not make LoRA faster"),
    (1.1, 0.8, "none: there is no gap to explain"),
])
def test_caching_share_reads_each_case(caching, equal, expected):
    ratios = pd.DataFrame({"ratio": ["caching", "equal_terms", "as_s4"], "value": [caching, equal, caching * equal]})
    facts = cost_facts(ratios, 9.3 / 7.3)
    assert facts["caching_share"].startswith(expected)
    assert all(type(facts[k]) is float for k in ("ratio_caching", "ratio_equal_terms", "ratio_as_s4", "s4_ratio"))


def test_compare_methods_needs_separate_intervals():
    rows = pd.DataFrame({"method": ["lora", "textual_inversion"], "measure": ["m"] * 2, "value": [0.5, 0.6],
                         "ci_low": [0.4, 0.45], "ci_high": [0.6, 0.7]})
    assert compare_methods(rows, "m") == "no clear difference (the intervals overlap)"
    assert compare_methods(rows.assign(ci_low=[0.4, 0.65], value=[0.5, 0.7], ci_high=[0.6, 0.75]), "m") == "TI higher"
    assert compare_methods(rows[rows.method == "lora"], "m") == "not measured in this build"


def test_s4_claims_need_both_readings_above_chance_and_nothing_missing():
    reported = s4_reported_analysis(n_resamples=200)
    verdicts = claim_verdicts(reported, reported).set_index("question")
    assert verdicts["established"].to_dict() == {"buy": True, "style": True, "recognisable": False}
    assert verdicts.loc["recognisable", "as 50 participants"] == "more often than chance"  # beats 1/4 ...
    assert "control" in verdicts.loc["recognisable", "what the claim would need"]           # ... but lacks a control
    weak = reported.assign(verdict=["more often than chance", "not told apart from chance", "more often than chance"])
    assert claim_verdicts(reported, weak)["established"].tolist() == [True, False, False]
    assert claim_verdicts(reported, weak)["what it supports"][1] == "nothing"


def test_kit_folder_link_and_book_config_agree():
    """_config.yml serves <executed_dir>/_extra; the chapter writes the kit below it and its page links to it."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    assert config["sphinx"]["config"]["html_extra_path"] == [book.EXTRA_DIR.as_posix()]
    assert book.EXTRA_DIR == book.EXECUTED_DIR.relative_to(REPO_ROOT) / lora_vs_ti.KIT_FOLDER.parent
    page = "book/notebooks/07_lora_vs_ti.html"
    assert posixpath.normpath(posixpath.join(posixpath.dirname(page), lora_vs_ti.KIT_LINK)) == \
        f"{lora_vs_ti.KIT_FOLDER.name}/index.html"
    assert lora_vs_ti.KIT_LINK in (REPO_ROOT / "notebooks" / "07_lora_vs_ti.py").read_text()


def test_chapter_runs_in_smoke_and_builds_the_kit_from_its_own_images(landmarks, tiny_base, tmp_path, one_thread):
    from lora_core.user_study.kit import load_manifest

    runs, book_dir = tmp_path / "runs", tmp_path / "book"
    result = lora_vs_ti.run_lora_vs_ti("smoke", base=tiny_base, runs_root=runs, executed_dir=book_dir)
    assert result.epochs.groupby("method")["epoch"].max().to_dict() == {"lora": 1, "textual_inversion": 2}
    assert result.epochs["val_loss"].notna().all()  # one validation at every epoch end
    assert result.timing.groupby("variant")["cached_latents"].first().to_dict() == {
        variant: cached for variant, (_, cached) in lora_vs_ti.TIMING_VARIANTS.items()}
    kit = tmp_path / "book" / lora_vs_ti.KIT_FOLDER
    manifest = load_manifest(kit)
    assert result.kit == kit and result.facts["kit_id"] == manifest["kit_id"] and result.facts["n_kit_images"] == 15
    by_role = {(entry["role"], entry["subject"]): image_id for image_id, entry in manifest["key"]["images"].items()}
    for i, key in enumerate(result.plan.held_out.kit_keys):
        for role, images in (("original", result.images[("true image", None)]), ("lora", result.images[("lora", 0)]),
                             ("ti", result.images[("textual_inversion", 0)])):
            shown = np.asarray(Image.open(kit / "images" / f"{by_role[(role, key)]}.png"))
            assert np.array_equal(shown, images[i].permute(1, 2, 0).numpy()), (role, key)
    json.dumps(result.facts)  # every fact is a plain value that glue can show
    tables = [result.config_table(), result.config_table("sd15"), result.equal_terms_table(), result.best_table(),
              result.costs_per_run(), result.timing_panel(), result.measure_panels(), result.results_table(),
              result.beside_s4(), result.cost_counts(), result.study_panel(), *result.epoch_curves()]
    assert all(len(table) for table in tables)
    assert result.config_table()["steps"].tolist() == [result.plan.steps_per_epoch, 2 * result.plan.steps_per_epoch]
    assert list(result.results_table().columns) == ["LoRA", "TI", "base (no adapter)", "true held-out image"]
    assert set(result.aggregated["method"]) == {"lora", "textual_inversion", "base", "true image"}
    again = lora_vs_ti.run_lora_vs_ti("smoke", base=tiny_base, runs_root=runs, executed_dir=book_dir)
    assert again.facts["kit_id"] == result.facts["kit_id"]  # same runs, same images, same kit
    assert torch.equal(again.images[("lora", 0)], result.images[("lora", 0)])


def test_set_folder_names_an_unknown_set_and_an_unbuilt_one(landmarks, tmp_path, monkeypatch):
    from lora_core.experiments.subject_sets import set_folder

    assert set_folder("landmarks", "heldout") == landmarks / "heldout"
    with pytest.raises(ValueError, match="unknown subject set 'landmark'. Valid: landmarks"):
        set_folder("landmark", "train")
    monkeypatch.setattr(world, "SUBJECT_SETS", {"landmarks": FakeSubjectSet("fluent3d", TRIGGER, tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"train: no images; build the data sets with `python -m lora_core.toy"):
        set_folder("landmarks", "train")


def test_study_facts_say_why_a_claim_is_not_established():
    from lora_core.experiments.lora_vs_ti import study_facts
    from lora_core.user_study.s4 import read_s4

    study = read_s4(n_resamples=200)
    facts = study_facts(study)
    assert facts["n_established"] == 2 and facts["unestablished"].startswith("50% said neither method kept the "
                                                                               "landmark (needs a control")
    assert facts["simulated_summary"].startswith("SIMULATED panel, not data")
    weak = study.verdicts.assign(established=[True, False, False])
    weak.loc[1, "what the claim would need"] = "-"
    facts = study_facts(type(study)(study.reported, study.simulated, study.power, weak))
    assert "80% found LoRA's style closest to the originals (not above chance in both readings)" in \
        facts["unestablished"]
