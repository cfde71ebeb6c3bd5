"""Chapter 8: S5's recipe as configs, the prompt groups and the stand-in's trust check, the
memorisation readings on constructed cases with known answers, the seed statistics against
independent computations, and one smoke run whose facts chapter 9 can read."""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from lora_core import world
from lora_core.experiments import copying, prompt_groups, rank_costs
from lora_core.experiments import rank_memorisation as chapter
from lora_core.experiments.common import GENERATION_SEED_START, lr_scale, method_config
from lora_core.metrics.memorisation import copy_share
from lora_core.metrics.proportions import difference_interval, wilson_interval
from lora_core.profiles import get_profile

SMOKE, TINY, SD15 = get_profile("smoke"), get_profile("tiny"), get_profile("sd15")
SET = "large_captioned"
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class FakeSet:
    """The contract of ``lora_core.world.SUBJECT_SETS`` entries (vendor, trigger, folder(split))."""

    vendor: str
    trigger: str
    root: Path

    def folder(self, split: str) -> str:
        return str(self.root / split)


@pytest.fixture(scope="module")
def captioned_set(tmp_path_factory) -> Path:
    """16 training and 8 held-out twemoji of the toy world with their catalogue captions."""
    from lora_core.toy.heads import load_catalog

    root = tmp_path_factory.mktemp("large_captioned")
    catalog = load_catalog(world.DATA_DIR)
    keys = [k for k in catalog.index if catalog.at[k, "twemoji"] == "1"][:24]
    for split, chosen in (("train", keys[:16]), ("heldout", keys[16:])):
        (root / split).mkdir()
        for key in chosen:
            shutil.copy(world.true_images_dir("twemoji") / f"{key}.png", root / split / f"{key}.png")
            (root / split / f"{key}.txt").write_text(f"{catalog.at[key, 'caption']}, in the style of twpool\n")
    return root


@pytest.fixture
def subject_sets(monkeypatch, captioned_set):
    monkeypatch.setattr(world, "SUBJECT_SETS", {SET: FakeSet("twemoji", "twpool", captioned_set)}, raising=False)
    return captioned_set


# ---- configs ------------------------------------------------------------------------------------------

def test_rank_configs_follow_s5s_recipe_scaled_by_the_profile(subject_sets):
    settings = chapter.rank_settings(TINY)
    for rank in (16, 64):
        config = chapter.rank_config(TINY, settings, rank, seed=2)
        assert (config.options.rank, config.options.effective_alpha, config.options.scale) == (rank, 2.0 * rank, 2.0)
        assert config.options.target_modules == ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
        assert config.learning_rate == pytest.approx(5e-4 * lr_scale(TINY)) and config.adam_betas == (0.9, 0.999)
        assert (config.batch_size, config.max_train_steps, config.epochs) == (TINY.batch_size, TINY.train_steps, 0)
        assert (config.seed, config.data.folder) == (2, str(subject_sets / "train"))
        assert (config.validation_folder, config.validation_every_steps) == (str(subject_sets / "heldout"),
                                                                             TINY.train_steps)
    study = chapter.rank_config(SD15, chapter.rank_settings(SD15), 16, seed=0)
    assert (study.epochs, study.batch_size, study.learning_rate, study.mixed_precision) == (10, 4, 5e-4, "fp16")
    assert study.validation_every_steps == 0   # once per epoch
    assert chapter.rank_config(SMOKE, chapter.rank_settings(SMOKE), 4, 0).validation_folder == ""


def test_the_full_fine_tune_is_chapter_threes_dreambooth_on_the_same_images_batch_and_steps(subject_sets):
    settings = chapter.rank_settings(TINY)
    full, lora = chapter.full_config(TINY, settings, 0), chapter.rank_config(TINY, settings, 16, 0)
    reference = method_config(TINY, "dreambooth", "twemoji", 0)
    assert (full.method, full.options.train_text_encoder) == ("dreambooth", True)
    assert (full.learning_rate, full.text_encoder_learning_rate) == (reference.learning_rate,
                                                                     reference.text_encoder_learning_rate)
    for field in ("data", "batch_size", "max_train_steps", "adam_betas", "base_model"):
        assert getattr(full, field) == getattr(lora, field), field
    assert full.validation_folder == ""   # the validation loss compares the ranks only
    configs = chapter.chapter_configs(TINY, settings)
    assert list(configs) == [("rank 16", 0), ("rank 16", 1), ("rank 16", 2), ("rank 64", 0), ("rank 64", 1),
                             ("rank 64", 2), (chapter.FULL, 0)]
    assert len({c.hash() for c in configs.values()}) == 7
    assert configs[("rank 64", 1)].hash() == chapter.rank_config(TINY, settings, 64, 1).hash()


def test_settings_refuse_bad_values_and_name_them():
    with pytest.raises(ValueError, match="ranks must be two or more positive integers"):
        chapter.rank_settings(TINY, ranks=(16,))
    with pytest.raises(ValueError, match=r"counts must be >= 1 \(n_abstract=0\)"):
        chapter.rank_settings(TINY, n_abstract=0)
    with pytest.raises(ValueError, match="n_promts"):
        chapter.rank_settings(TINY, n_promts=3)


def test_a_missing_subject_set_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(world, "SUBJECT_SETS", {}, raising=False)
    with pytest.raises(ValueError, match="'large_captioned' is not a subject set of lora_core.world"):
        prompt_groups.subject_set(SET)
    monkeypatch.setattr(world, "SUBJECT_SETS", {SET: FakeSet("twemoji", "twpool", tmp_path)})
    with pytest.raises(FileNotFoundError, match=r"heldout: no captions; build the toy world"):
        prompt_groups.set_keys(SET, "heldout")


def test_predicted_cost_counts_runs_steps_and_images():
    settings = chapter.rank_settings(TINY)
    table = chapter.predicted_cost(TINY, settings, n_train=1500, n_held_out=411).set_index("item")
    assert table.loc["LoRA steps", "count"] == 2 * 3 * TINY.train_steps
    assert table.loc["images generated", "count"] == (1 + 7) * (25 + 25 + settings.n_memorisation)
    assert table.loc["validation samples (4 timesteps each)", "count"] == 6 * 411 * 4
    epochs = chapter.predicted_cost(SD15, chapter.rank_settings(SD15), 1500, 411).set_index("item")
    assert epochs.loc["LoRA steps", "count"] == 2 * 3 * 10 * 375   # S5: 10 epochs of 1,500 at batch 4


# ---- prompt groups -------------------------------------------------------------------------------------

def test_no_caption_of_the_vendor_names_an_abstract_idea_and_every_depicting_emoji_exists():
    from lora_core.toy.heads import load_catalog

    catalog = load_catalog(world.DATA_DIR)
    twemoji = catalog[catalog["twemoji"] == "1"]
    assert prompt_groups.named_ideas(prompt_groups.ABSTRACT_IDEAS, list(twemoji["caption"])) == {}
    for idea in prompt_groups.ABSTRACT_IDEAS:
        for key, name in idea.depicted_by:
            assert twemoji.at[key, "name"] == name, (idea.word, key)
    depicting = [key for idea in prompt_groups.ABSTRACT_IDEAS for key, _ in idea.depicted_by]
    assert len(depicting) == len(set(depicting)) and len(prompt_groups.ABSTRACT_IDEAS) == 25


def test_named_ideas_catches_a_word_its_stem_and_a_longer_idea():
    ideas = [prompt_groups.Idea(w, ()) for w in ("joy", "sleepiness", "victories", "grief")]
    captions = ["face with tears of joy", "sleepy face", "victory hand"]
    assert prompt_groups.named_ideas(ideas, captions) == {"joy": ["joy"], "sleepiness": ["sleepy"],
                                                          "victories": ["victory"]}


def test_prompt_sets_pair_captions_keys_and_seeds(subject_sets):
    concrete = prompt_groups.caption_eval_set(SET, "heldout", 3)
    keys = sorted(p.stem for p in (subject_sets / "heldout").glob("*.txt"))
    assert set(concrete.subject_keys) <= set(keys) and len(concrete) == 3
    assert concrete.seeds == tuple(GENERATION_SEED_START + i for i in range(3))
    for prompt, caption, key in zip(concrete.prompts, concrete.captions, concrete.subject_keys):
        assert prompt == f"{caption}, in the style of twpool"
        assert (subject_sets / "heldout" / f"{key}.txt").read_text().startswith(caption)
    abstract = prompt_groups.abstract_eval_set(SET, 2)
    assert abstract.prompts == ("happiness, in the style of twpool", "sadness, in the style of twpool")
    assert abstract.captions == ("happiness", "sadness") and not abstract.paired
    with pytest.raises(ValueError, match="between 1 and 25 abstract prompts, got 26"):
        prompt_groups.abstract_eval_set(SET, 26)


def test_top1_hits_against_a_brute_force_argmax():
    generator = torch.Generator().manual_seed(0)
    images, texts = torch.randn(30, 8, generator=generator), torch.randn(5, 8, generator=generator)
    labels, text_labels = [f"t{i % 5}" for i in range(30)], [f"t{i}" for i in range(5)]
    hits = prompt_groups.top1_hits(images, texts, labels, text_labels)
    for i in range(30):
        cosines = [float(images[i] @ texts[j] / images[i].norm() / texts[j].norm()) for j in range(5)]
        assert hits[i] == (text_labels[int(np.argmax(cosines))] == labels[i])
    with pytest.raises(ValueError, match=r"image_labels: no text for \['t9'\]"):
        prompt_groups.top1_hits(images[:1], texts, ["t9"], text_labels)


def test_trust_rows_count_hits_per_image_set_with_wilson_intervals():
    hits = np.array([True, True, False, True, False, False])
    held_out = np.array([True, True, True, False, False, False])
    rows = prompt_groups.trust_rows("abstract", hits, np.arange(6.0), held_out, n_texts=25)
    assert [(r["n"], r["top-1 hits"]) for r in rows] == [(3, 2), (6, 3)]
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == wilson_interval(2, 3)
    assert rows[0]["own-prompt AlignScore"] == 1.0 and rows[1]["chance"] == 0.04
    assert rows[0]["verdict"] == ("trusted" if wilson_interval(2, 3)[0] > 0.04 else "not trusted")
    assert prompt_groups.trust_verdict(1, 25, 0.04) == "not trusted"   # 1 of 25 is chance itself


def test_alignment_summary_and_gaps_pair_runs_by_seed():
    rng = np.random.default_rng(0)
    rows = [{"model": model, "seed": seed, "group": group, "prompt": f"p{i}", "score": float(rng.normal(20 + shift, 2))}
            for model, shift in (("rank 16", 2.0), ("rank 64", 0.0)) for seed in range(3)
            for group, extra in (("concrete", 3.0), ("abstract", 0.0)) for i in range(5)
            for shift in [shift + extra]]
    rows += [{"model": "base", "seed": None, "group": "concrete", "prompt": f"p{i}", "score": 10.0 + i}
             for i in range(5)]
    scores = pd.DataFrame(rows)
    summary = prompt_groups.alignment_summary(scores, "AlignScore", "stand-in", 200).set_index(["model", "group"])
    per_seed = scores[(scores.model == "rank 16") & (scores.group == "concrete")].groupby("seed")["score"].mean()
    half = scipy.stats.t.ppf(0.975, 2) * per_seed.std(ddof=1) / math.sqrt(3)
    row = summary.loc[("rank 16", "concrete")]
    assert (row["value"], row["ci_low"], row["ci_high"]) == pytest.approx((per_seed.mean(), per_seed.mean() - half,
                                                                          per_seed.mean() + half))
    assert row["std"] == pytest.approx(scores[(scores.model == "rank 16") & (scores.group == "concrete")].score.std())
    assert summary.loc[("base", "concrete"), "value"] == 12.0 and summary.loc[("base", "concrete"), "n_seeds"] == 1
    means = prompt_groups.seed_means(scores, "concrete")
    gap = rank_costs.paired_gap(means, "value", "rank 16", "rank 64")
    expected = (means[means.model == "rank 16"].value.to_numpy() - means[means.model == "rank 64"].value.to_numpy())
    assert gap.value == pytest.approx(expected.mean())
    by_group = prompt_groups.group_gap(scores, "rank 16")
    concrete, abstract = (scores[(scores.model == "rank 16") & (scores.group == g)].groupby("seed").score.mean()
                          for g in ("concrete", "abstract"))
    assert by_group.value == pytest.approx((concrete - abstract).mean()) and by_group.n == 3


# ---- memorisation readings on constructed cases ------------------------------------------------------------

def _features(images: torch.Tensor) -> np.ndarray:
    return copying.unit_rows(images.reshape(len(images), -1).double().numpy() - 127.5)


@pytest.fixture(scope="module")
def references() -> copying.References:
    generator = torch.Generator().manual_seed(0)
    training = torch.randint(0, 256, (60, 3, 8, 8), generator=generator, dtype=torch.uint8)
    held_out = torch.randint(0, 256, (60, 3, 8, 8), generator=generator, dtype=torch.uint8)
    return copying.References(tuple(f"k{i}" for i in range(60)), training, _features(training), held_out,
                              _features(held_out))


def _generations(images: torch.Tensor, keys, held_out: torch.Tensor) -> copying.Generations:
    return copying.Generations(images, _features(images), tuple(keys), _features(held_out))


def test_exact_copies_are_copies_by_features_and_pixels_and_fresh_images_are_not(references):
    keys = [f"k{i}" for i in range(40)]
    copies = _generations(references.training_images[:40], keys, references.training_images[:40])
    shares = copying.copy_shares(copies, references)
    assert {name: (s.count, s.n) for name, s in shares.items()} == {name: (40, 40) for name in copying.SHARE_MEASURES}
    table = copying.generation_table(copies, references, shares["pixels, training captions"].threshold)
    assert table["nearest is own"].all() and table["feature copy"].all() and (table["pixel mse to own"] == 0).all()
    fresh = torch.randint(0, 256, (40, 3, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    unrelated = copying.copy_shares(_generations(fresh, keys, fresh), references)
    assert all(s.count <= 3 for s in unrelated.values())   # about 1% beyond a 99% threshold
    assert copying.copying_test(copies, references, n_cells=2).c_t < -3   # copies sit closer than held-out images
    assert abs(copying.copying_test(_generations(fresh, keys, fresh), references, n_cells=2).c_t) < 3


def test_copying_cells_keep_meehans_twenty_generations_per_cell():
    assert [copying.copying_cells(m, 3) for m in (150, 59, 40, 20, 19, 4)] == [(3, 20), (2, 20), (2, 20), (1, 20),
                                                                               (1, 19), (1, 4)]


def test_memorisation_verdict_reads_newcombes_interval():
    none, some = copy_share([0.0] * 120, 0.5, "cos"), copy_share([1.0] * 12 + [0.0] * 108, 0.5, "cos")
    assert copying.share_difference(some, none) == difference_interval(12, 120, 0, 120)
    assert copying.memorisation_verdict(none, some, 16, 64).startswith("rank 64 copies more than rank 16")
    assert copying.memorisation_verdict(some, none, 16, 64).startswith("rank 64 copies less than rank 16")
    one = copy_share([1.0] + [0.0] * 119, 0.5, "cos")
    assert copying.memorisation_verdict(none, one, 16, 64).startswith("no detectable difference")


# ---- seed statistics ---------------------------------------------------------------------------------------

def test_paired_gap_is_a_t_interval_of_the_per_seed_differences():
    rows = pd.DataFrame({"model": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2, "x": [1.0, 2.0, 4.0, 2.0, 2.5, 3.0]})
    differences = np.array([-1.0, -0.5, 1.0])
    half = scipy.stats.t.ppf(0.975, 2) * differences.std(ddof=1) / math.sqrt(3)
    gap = rank_costs.paired_gap(rows, "x", "a", "b")
    assert (gap.value, gap.ci_low, gap.ci_high, gap.n) == pytest.approx((differences.mean(), differences.mean() - half,
                                                                         differences.mean() + half, 3))
    logs = np.log([2.0, 1.25, 0.75])   # a ratio: geometric mean, interval on the log scale
    half = scipy.stats.t.ppf(0.975, 2) * logs.std(ddof=1) / math.sqrt(3)
    ratio = rank_costs.paired_gap(rows, "x", "b", "a", ratio=True)
    assert (ratio.value, ratio.ci_low, ratio.ci_high) == pytest.approx(tuple(np.exp([logs.mean(), logs.mean() - half,
                                                                                      logs.mean() + half])))
    with pytest.raises(ValueError, match="x is missing for 'a' or 'c'"):
        rank_costs.paired_gap(rows, "x", "a", "c")


@dataclass
class FakeRecord:
    summary: dict
    rows: list

    def metrics(self):
        return self.rows

    @property
    def exports(self):
        return {}


def test_loss_curves_and_costs_from_run_records(tmp_path, monkeypatch):
    losses = {0: [1.0, 0.8, 0.6], 1: [1.2, 0.7, 0.5], 2: [0.9, 0.9, 0.4]}
    summary = {"trainable_params": 1000, "final_val_loss": None, "wall_time_s": 9.0, "steps": 3,
               "peak_memory_bytes": 2**20, "peak_memory_kind": "process_rss"}
    records = {("rank 16", seed): FakeRecord({**summary, "final_loss": values[-1]},
                                             [{"step": i + 1, "loss": v, "s_per_it": 0.5}
                                              for i, v in enumerate(values)])
               for seed, values in losses.items()}
    curves = rank_costs.loss_curves(records, window=2).set_index("step")
    smoothed = np.array([pd.Series(v).rolling(2, min_periods=1).mean().to_numpy() for v in losses.values()])
    for step in (1, 2, 3):
        column = smoothed[:, step - 1]
        half = scipy.stats.t.ppf(0.975, 2) * column.std(ddof=1) / math.sqrt(3)
        assert curves.loc[step, ["value", "ci_low", "ci_high"]].tolist() == pytest.approx(
            [column.mean(), column.mean() - half, column.mean() + half])
    (tmp_path / "lora.safetensors").write_bytes(b"x" * 2048)
    monkeypatch.setattr("lora_core.experiments.methods.primary_export", lambda record: tmp_path / "lora.safetensors")
    costs = rank_costs.run_costs(records)
    assert costs["train_time_s"].tolist() == [1.5] * 3 and costs["s_per_step"].tolist() == [0.5] * 3
    assert costs["state_memory_mb"].iloc[0] == pytest.approx(1000 * 16 / 2**20)
    assert costs["file_mb"].iloc[0] == pytest.approx(2048 / 2**20)
    assert costs["start_loss"].tolist() == [1.0, 1.2, 0.9]   # the first 10% of 3 steps: the first step
    assert rank_costs.diverged_text(costs) == "rank 16: 0 of 3 runs"
    costs.loc[2, "final_loss"] = 1.8                          # twice its start: diverged
    assert rank_costs.diverged_text(costs) == "rank 16: 1 of 3 runs (seed 2: 0.90 -> 1.80)"


def test_s5_tables_put_the_reported_numbers_beside_ours():
    from lora_core.experiments.evaluate import reported_table

    summary = pd.DataFrame({"model": ["rank 16"], "measure": ["final_loss"], "value": [0.5], "ci_low": [0.4],
                            "ci_high": [0.6]})
    costs = rank_costs.s5_cost_table(summary, (16, 64), reported_table("S5")).set_index("rank")
    assert (costs.loc[16, "S5 final loss"], costs.loc[16, "ours: final loss"]) == (0.1192, "0.5 [0.4, 0.6]")
    assert (costs.loc[64, "S5 file (MB)"], costs.loc[64, "ours: file (MB)"]) == (64, "-")
    alignment = prompt_groups.s5_alignment_table(pd.DataFrame(columns=prompt_groups.ALIGNMENT_COLUMNS), (16, 64),
                                           reported_table("S5"))
    assert alignment["S5 CLIP score"].tolist() == ["29.26 +- 3.46", "23.38 +- 2.46", "19.79 +- 2.85", "22.11 +- 1.53"]
    assert set(alignment["ours: AlignScore (stand-in)"]) == {rank_costs.NOT_MEASURED}


# ---- one smoke run, read as chapter 9 reads it ------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_result(tiny_base, captioned_set, tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setattr(world, "SUBJECT_SETS", {SET: FakeSet("twemoji", "twpool", captioned_set)}, raising=False)
    patch.setattr("lora_core.experiments.common.generation_cache_dir", lambda: tmp_path_factory.mktemp("generated"))
    try:
        yield chapter.run_rank_memorisation("smoke", base=tiny_base, runs_root=tmp_path_factory.mktemp("runs"),
                                            n_memorisation=4)
    finally:
        patch.undo()


def test_a_smoke_run_measures_every_model(smoke_result):
    result = smoke_result
    assert result.models == ["rank 16", "rank 64", chapter.FULL]
    assert set(result.memorisation.share_table["model"]) == {chapter.BASE, *result.models}
    assert result.memorisation.share_table["n"].tolist() == [4, 3, 4] + [8, 6, 8] * 2 + [4, 3, 4]
    assert result.facts["alignment_gap_concrete"] == rank_costs.NOT_MEASURED   # smoke has no alignment model
    assert result.facts["file_size_ratio"].startswith("3.9")                 # rank 64 stores 4x the factors


def test_chapter_9_reads_every_fact_a_smoke_run_glues(smoke_result):
    from lora_core.experiments.claims import CLAIMS, RANKS, judge_claim

    rows = [judge_claim(claim, smoke_result.facts) for claim in CLAIMS if claim.chapter == RANKS]
    assert not [row for row in rows if "glued no" in row["why"]]
    verdicts = {row["claim"]: row["verdict"] for row in rows}
    assert verdicts["Rank 16 follows normal prompts better than rank 64"] == "not measured in this build"
    assert verdicts["Rank 64's file is four times rank 16's"] == "confirmed"
