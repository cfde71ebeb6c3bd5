"""Chapter 6: S3's recipe at each scale, the kohya repeat folder, l2 with huber settings trains as
l2, the foreign and single-file copies load the same weights, the decisions keep what they say,
and the planned counts are the images the tests ask for."""
import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from lora_core import blend
from lora_core.data import DataConfig, load_image_caption_set
from lora_core.experiments import kohya_character as chapter
from lora_core.experiments import kohya_recipe as recipe_module
from lora_core.experiments import kohya_tests
from lora_core.experiments.common import style_lora_config
from lora_core.experiments.evaluate import reported_table
from lora_core.experiments.kohya_recipe import (HUBER_ARM, LOSS_ARMS, S3_ARM, TWIN_ARM, KohyaRecipe, character_config,
                                                epoch_files, kohya_recipe, kohya_training_folder, same_training)
from lora_core.profiles import get_profile
from lora_core.train import train

SMOKE, TINY, SD15 = get_profile("smoke"), get_profile("tiny"), get_profile("sd15")
pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class FakeSet:
    """A stand-in for ``lora_core.world.SubjectSet`` whose folders are a test's own."""

    root: Path
    vendor: str = "openmoji"
    trigger: str = "wenja"

    def caption(self, catalogue_caption: str) -> str:
        return f"{catalogue_caption}, {self.trigger}"

    def folder(self, split: str = "train") -> str:
        return str(self.root / split)


WOMEN = {"1f469-200d-1f33e": "woman farmer", "1f469-200d-1f373": "woman cook", "1f469-200d-1f393": "woman student",
         "1f469-200d-1f3a4": "woman singer", "1f469-200d-1f3a8": "woman artist", "1f469-200d-1f3eb": "woman teacher"}


@pytest.fixture(scope="module")
def person_set(tmp_path_factory):
    """Four training and two held-out members with captions, as the set builder writes them."""
    spec = FakeSet(tmp_path_factory.mktemp("person_character"))
    for i, (key, name) in enumerate(WOMEN.items()):
        folder = Path(spec.folder("heldout" if i >= 4 else "train"))
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (40, 40), (40 * i, 100, 200)).save(folder / f"{key}.png")
        (folder / f"{key}.txt").write_text(spec.caption(f"{name}, person role") + "\n")
    return spec


# ---- the recipe ---------------------------------------------------------------------------------

def test_sd15_recipe_is_s3_as_reported():
    reported = reported_table("S3").set_index("metric")["value"].astype(float)
    sd15 = kohya_recipe(SD15, int(reported["train_images"]))
    assert (sd15.repeats, sd15.batch_size, sd15.total_steps) == (reported["repeats"], reported["batch_size"],
                                                                   reported["max_train_steps"])
    assert (sd15.unet_lr, sd15.text_encoder_lr) == (reported["unet_lr"], reported["text_encoder_lr"])
    assert (recipe_module.S3_CYCLES, recipe_module.S3_WARMUP, recipe_module.S3_HUBER_C) == (
        reported["lr_num_cycles"], reported["lr_warmup_ratio"], reported["huber_c"])
    assert sd15.epochs == 4 != reported["epochs_stated"]   # S3's "10 epochs" does not follow from its numbers


def test_other_profiles_train_their_own_steps_at_s3_batch_epochs_and_lr_ratio():
    for profile in (TINY, TINY.replace(train_steps=300, learning_rate=5e-4), SMOKE):
        recipe = kohya_recipe(profile, 20)
        assert (recipe.batch_size, recipe.epochs) == (2, 4)
        assert recipe.repeats == max(1, round(profile.train_steps * 2 / (4 * 20)))
        assert recipe.unet_lr == pytest.approx(2 * recipe.text_encoder_lr)
        assert recipe.unet_lr == pytest.approx(1e-4 * profile.learning_rate / 1e-4)
        assert (recipe.rank, recipe.alpha) == (4 * profile.lora_rank, 4 * profile.lora_rank)
    assert kohya_recipe(TINY.replace(train_steps=300), 20).repeats == 8


def test_character_config_is_s3_recipe_with_a_checkpoint_every_epoch():
    recipe = kohya_recipe(TINY, 20)
    config = character_config(TINY, recipe, "data/cache/kohya/x/4_repeats", seed=1)
    assert (config.optimizer, config.lr_scheduler, config.lr_num_cycles, config.lr_warmup_ratio) == (
        "adamw8bit", "cosine_with_restarts", 4, 0.1)
    assert (config.epochs, config.batch_size, config.checkpoint_every_steps) == (4, 2, recipe.steps_per_epoch)
    assert (config.loss_type, config.huber_c, config.huber_schedule, config.cache_latents) == ("l2", 0.1, "snr", True)
    assert config.options.train_text_encoder and "ff.net.2" in config.options.target_modules
    assert character_config(TINY, recipe, "x", 1, HUBER_ARM).loss_type == "huber"
    with pytest.raises(ValueError, match="arm: 'l1' is not one of"):
        character_config(TINY, recipe, "x", 1, "l1")


def test_every_run_of_the_chapter_builds_for_sd15_with_s3_settings():
    settings = chapter.character_settings(SD15)
    folder = "data/cache/kohya/person_character/100_repeats"
    configs = chapter.chapter_configs(SD15, settings, kohya_recipe(SD15, 20), folder)
    seeds = settings.seeds(SD15)
    assert len(configs) == 2 * len(seeds) + 2 + 1 + len(settings.other_bases) == 12
    s3 = configs[(S3_ARM, 0)]
    assert (s3.base_model, s3.data.resolution, s3.mixed_precision) == (SD15.base_model, 512, "fp16")
    assert (s3.epochs, s3.batch_size, s3.checkpoint_every_steps, s3.learning_rate) == (4, 2, 1000, 1e-4)
    short_s3, short_twin = (configs[(label, 0)] for label in chapter.TWIN_PAIR)
    assert short_s3.max_train_steps == short_twin.max_train_steps == 250 and short_s3.epochs == short_twin.epochs == 0
    assert (short_twin.huber_c, short_twin.huber_schedule) == (1.0, "constant")
    assert short_s3.replace(max_train_steps=s3.max_train_steps, epochs=4) == s3   # otherwise S3's run
    assert configs[("foreign twemoji", 0)].hash() == style_lora_config(SD15, "twemoji", 0).hash()   # chapter 1's run
    assert all(configs[("base " + style, 0)].method == "dreambooth" for style in settings.other_bases)


# ---- the kohya folder ---------------------------------------------------------------------------

def test_repeat_folder_is_read_with_its_repeats_and_built_once(person_set, tmp_path):
    train_folder = Path(person_set.folder("train"))
    parent = kohya_training_folder(train_folder, 3, "wenja", "woman", tmp_path)
    subfolder = parent / "3_wenja woman"
    assert parent == tmp_path / "3_repeats" and sorted(p.name for p in parent.iterdir()) == ["3_wenja woman"]
    data = load_image_caption_set(DataConfig(folder=str(parent), resolution=32))
    assert len(data) == 4 and data.repeats == [3] * 4 and len(data.epoch_indices()) == 12
    assert data.captions[0] == (train_folder / f"{data.paths[0].stem}.txt").read_text().strip()
    stamp = (subfolder / recipe_module.STAMP_FILE).stat().st_mtime_ns
    assert kohya_training_folder(train_folder, 3, "wenja", "woman", tmp_path) == parent
    assert (subfolder / recipe_module.STAMP_FILE).stat().st_mtime_ns == stamp   # the second call rewrote nothing
    changed = tmp_path / "changed"
    changed.mkdir()
    for path in train_folder.iterdir():
        (changed / path.name).write_bytes(path.read_bytes())
    (changed / next(iter(WOMEN))).with_suffix(".txt").write_text("a new caption, wenja\n")
    kohya_training_folder(changed, 3, "wenja", "woman", tmp_path)
    assert (subfolder / f"{next(iter(WOMEN))}.txt").read_text() == "a new caption, wenja\n"


# ---- l2 with huber settings is l2 ---------------------------------------------------------------

@pytest.fixture(scope="module")
def arm_runs(person_set, tiny_base, tmp_path_factory):
    """The three loss arms of a two-epoch smoke recipe on the small set, trained once."""
    root = tmp_path_factory.mktemp("arms")
    folder = str(kohya_training_folder(person_set.folder("train"), 1, "wenja", "woman", root / "data"))
    recipe = KohyaRecipe(images=4, repeats=1, batch_size=2, epochs=2, unet_lr=1e-3, text_encoder_lr=5e-4, rank=4,
                         alpha=4.0)
    records = {arm: train(character_config(SMOKE, recipe, folder, 0, arm), base=tiny_base, runs_root=root / "runs",
                          progress=False) for arm in LOSS_ARMS}
    return recipe, records


def test_l2_with_other_huber_settings_trains_identically_and_huber_does_not(arm_runs):
    recipe, records = arm_runs
    twin = same_training(records[S3_ARM], records[TWIN_ARM])
    assert records[S3_ARM].run_dir != records[TWIN_ARM].run_dir   # two configs, two runs
    assert twin == {"steps_compared": recipe.total_steps, "same_length": True, "max_loss_difference": 0.0,
                    "same_weights": True}
    huber = same_training(records[S3_ARM], records[HUBER_ARM])
    assert huber["max_loss_difference"] > 0 and not huber["same_weights"]


def test_epoch_files_are_each_epochs_checkpoint_and_the_export(arm_runs):
    from lora_core.io import read_safetensors

    recipe, records = arm_runs
    files = epoch_files(records[S3_ARM], recipe)
    assert sorted(files) == [1, 2] and files[2] == records[S3_ARM].exports["diffusers"]
    assert files[1].parent.name == f"step-{recipe.steps_per_epoch:06d}"
    first, last = (read_safetensors(files[epoch])[0] for epoch in (1, 2))
    assert first.keys() == last.keys() and any(not torch.equal(first[k], last[k]) for k in first)


def test_eight_bit_share_counts_tensors_of_4096_values_or_more(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"unet.a.lora_A.weight": torch.zeros(64, 128), "unet.a.lora_B.weight": torch.zeros(128, 64),
               "unet.b.lora_A.weight": torch.zeros(4, 128), "unet.b.lora_B.weight": torch.zeros(128, 4)}, str(path))
    assert recipe_module.eight_bit_share(path) == 0.5
    save_file({"lora_unet_a.alpha": torch.tensor(1.0)}, str(path))
    with pytest.raises(ValueError, match="no lora_A/lora_B tensors"):
        recipe_module.eight_bit_share(path)


# ---- test 2 and 3 inputs: a community copy and a single file ------------------------------------

def test_foreign_copy_keeps_only_kohya_metadata_and_loads_the_same_factors(tiny_base, tmp_path):
    from peft import get_peft_model_state_dict

    from lora_core.formats import provenance_metadata, save_lora_kohya
    from lora_core.io import read_safetensors

    base = copy.deepcopy(tiny_base)
    blend.add_random_adapter(base, "ink", rank=4, alpha=2.0, seed=3)
    ours = save_lora_kohya(tmp_path / "ours.safetensors", get_peft_model_state_dict(base.unet, adapter_name="ink"),
                           None, 2.0, provenance_metadata(method="lora", rank=4, alpha=2.0, seed=3))
    foreign = kohya_tests.foreign_copy(ours, tmp_path / "community")
    metadata = read_safetensors(foreign)[1]
    assert metadata and all(key.startswith("ss_") or key == "format" for key in metadata)
    assert "lsl_config_hash" not in metadata and metadata["ss_network_alpha"] == "2.0"
    assert kohya_tests.foreign_copy(ours, tmp_path / "community") == foreign   # one copy per content
    blend.load_lora(base, foreign, "community")
    expected, loaded = blend.lora_factors(base, "ink"), blend.lora_factors(base, "community")
    assert expected.keys() == loaded.keys()
    for key, factors in expected.items():
        assert torch.equal(factors.delta(), loaded[key].delta())


def test_single_file_base_is_the_fine_tune_read_through_the_single_file_path(tiny_base_dir, tmp_path):
    from lora_core.models import base_fingerprint, load_base

    record = SimpleNamespace(exports={"diffusers": tiny_base_dir}, run_dir=Path("dreambooth-0123"))
    loaded = kohya_tests.single_file_base(record, SMOKE, tmp_path)
    (written,) = tmp_path.iterdir()
    assert loaded.source == str(written) and written.name.startswith("dreambooth-0123-")
    assert base_fingerprint(loaded) == base_fingerprint(load_base(str(tiny_base_dir)))


def test_conventions_prompt_each_base_with_its_phrase_and_the_others_as_negative():
    original, flat, solid = kohya_tests.base_conventions(["twemoji", "fluent3d"])
    assert (original.suffix, original.negative, original.style) == ("", "", None)
    assert (flat.suffix, flat.negative) == (", in the style of twmj", "in the style of flntd")
    assert solid.negative == "in the style of twmj"


def test_character_sets_pair_every_held_out_member_and_keep_triggers_where_they_belong(person_set):
    sets = kohya_tests.character_sets(person_set, heldout_seeds=2, class_word="woman", n_new=2, n_unrelated=3)
    held_out = sets[kohya_tests.CHARACTER]
    assert held_out.subject_keys == ("1f469-200d-1f3a8", "1f469-200d-1f3a8", "1f469-200d-1f3eb", "1f469-200d-1f3eb")
    assert held_out.prompts[0] == "woman artist, person role, wenja"
    assert held_out.captions[0] == "woman artist, person role"
    assert len(set(held_out.seeds)) == 4
    assert sets[kohya_tests.NEW].prompts == ("woman holding a flower, wenja", "woman with a dog, wenja")
    assert sets[kohya_tests.NEW].captions == ("woman holding a flower", "woman with a dog")
    assert not any("wenja" in p for p in sets[kohya_tests.UNRELATED].prompts) and len(sets[kohya_tests.UNRELATED]) == 3


# ---- decisions ----------------------------------------------------------------------------------

def rows(*entries, **labels):
    columns = ["weight", "measure", "target_style", "value", "ci_low", "ci_high", "better"]
    return pd.DataFrame(entries, columns=columns).assign(**labels)


def test_clearly_better_needs_disjoint_intervals_on_the_better_side():
    low = {"value": 1.0, "ci_low": 0.9, "ci_high": 1.1, "better": "lower"}
    assert chapter.clearly_better(low, {"ci_low": 1.2, "ci_high": 1.4})
    assert not chapter.clearly_better(low, {"ci_low": 1.05, "ci_high": 1.4})   # overlapping
    assert not chapter.clearly_better({**low, "better": "higher"}, {"ci_low": 1.2, "ci_high": 1.4})


def test_epoch_ranges_read_each_epoch_with_the_base_at_weight_zero():
    TO_TRUTH = "feature_to_target"
    grid = pd.concat([
        rows((0.0, TO_TRUTH, "openmoji", 30, 29, 31, "lower"), (0.5, TO_TRUTH, "openmoji", 25, 24, 26, "lower"),
             (1.0, TO_TRUTH, "openmoji", 20, 19, 21, "lower"), epoch=1),
        rows((0.0, TO_TRUTH, "openmoji", 30, 29, 31, "lower"), (0.5, TO_TRUTH, "openmoji", 20, 19, 22, "lower"),
             (1.0, TO_TRUTH, "openmoji", 20.5, 19, 22, "lower"), epoch=2)])
    ranges = chapter.epoch_ranges(grid)
    assert ranges[1].values == (1.0,) and ranges[2].text == "0.5-1"


# ---- the plan -----------------------------------------------------------------------------------

class CountingEvaluator:
    """Scores nothing: the tests' bookkeeping without the networks."""

    profile, seed, n_resamples, cache = SMOKE, 0, 10, None

    def evaluate(self, images, evalset, target, labels, measures=()):
        return pd.DataFrame([{**labels, "measure": m, "target_style": target} for m in measures])


def test_plan_counts_are_the_images_the_four_tests_generate(person_set, monkeypatch):
    """Every distinct (base, LoRA files and weights, prompt, seed, sampler settings) the tests ask
    for is one generated image; generate_eval_images' cache makes a repeat free."""
    generated = set()

    def counting_sweep(base, adapters, sets, weights, profile, cache_dir=None, **cell):
        images = {}
        for w in weights:
            loras = tuple(sorted((str(path), w * own) for path, own in adapters.items())) if w else ()
            for name, evalset in sets.items():
                generated.update((id(base), loras, p, s, tuple(sorted(cell.items())))
                                 for p, s in zip(evalset.prompts, evalset.seeds))
                images[(name, w)] = torch.zeros(len(evalset), 3, 8, 8, dtype=torch.uint8)
        return images

    def counting_sets(base, requests, profile, batch_size=None, cache_dir=None):
        for request in requests:
            loras = tuple(sorted(request.adapter.items())) if request.adapter else ()
            generated.update((id(base), loras, p, s, tuple(sorted(request.settings.items())))
                             for p, s in zip(request.prompts, request.seeds))
        return [torch.zeros(len(r.prompts), 3, 8, 8, dtype=torch.uint8) for r in requests]

    monkeypatch.setattr(kohya_tests, "sweep_images", counting_sweep)
    monkeypatch.setattr(kohya_tests, "generate_eval_sets", counting_sets)
    monkeypatch.setattr(kohya_tests, "sweep_scores", lambda *args, **kwargs: pd.DataFrame())
    settings = chapter.character_settings(TINY)
    recipe = kohya_recipe(TINY, 20)
    sets = kohya_tests.character_sets(person_set, settings.heldout_seeds, settings.class_word,
                                      settings.n_new_prompts, settings.n_unrelated)
    held_out = sets[kohya_tests.CHARACTER]
    merged = kohya_tests.with_suffix(held_out, ", in the style of opnln", "merged")
    references = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    scorer = kohya_tests.Scorer(object(), TINY, CountingEvaluator(), "openmoji", references)
    seeds = settings.seeds(TINY)
    files = {(arm, seed): {e: Path(f"{arm}-{seed}-{e}.safetensors") for e in range(1, recipe.epochs + 1)}
             for arm in (S3_ARM, HUBER_ARM) for seed in seeds}
    kohya_tests.score_weight_epoch(scorer, files, sets, settings.weights)
    last = {seed: files[(S3_ARM, seed)][recipe.epochs] for seed in seeds}
    kohya_tests.score_merge(scorer, last, Path("foreign.safetensors"), merged, "openmoji_black", settings.weights)
    bases = {c.name: object() for c in kohya_tests.base_conventions(settings.other_bases)}
    kohya_tests.score_bases(scorer, bases, kohya_tests.base_conventions(settings.other_bases), last,
                            held_out, settings.test_weight)
    plan = chapter.plan_counts(TINY, settings, recipe, n_heldout=2)
    steps_images = {key for key in generated if dict(key[4]).get("steps")}
    assert not steps_images and len(generated) == plan["images"]
    kohya_tests.score_steps(scorer, last, held_out, settings.test_weight, kohya_tests.scaled_steps(TINY))
    assert len(generated) == plan["images"] + plan["step_images"]



def synthetic_result(rows):
    """A chapter result holding only an aggregated table (the facts' input)."""
    columns = ["test", "measure", "target_style", "value", "ci_low", "ci_high", "better"]
    aggregated = pd.DataFrame([dict(zip(columns, row[:7]), **row[7]) for row in rows])
    recipe = KohyaRecipe(images=20, repeats=1, batch_size=2, epochs=2, unet_lr=1e-3, text_encoder_lr=5e-4, rank=4,
                         alpha=4.0)
    result = chapter.KohyaCharacterResult(SMOKE, settings=chapter.character_settings(SMOKE), recipe=recipe, configs={},
                                          records={}, sets={}, aggregated=aggregated)
    result.add_facts(vendor="openmoji")
    return result


def test_merge_facts_name_the_weights_where_each_lora_is_clearly_present():
    merge, to_truth, style = kohya_tests.TESTS[1], "feature_to_target", "p_target_style"
    result = synthetic_result([
        (merge, to_truth, "openmoji", 30, 29, 31, "lower", {"weight": 0.0}),
        (merge, to_truth, "openmoji", 25, 24, 26, "lower", {"weight": 0.5}),
        (merge, to_truth, "openmoji", 29.5, 28, 31, "lower", {"weight": 1.0}),
        (merge, style, "twemoji", 0.1, 0.05, 0.15, "higher", {"weight": 0.0}),
        (merge, style, "twemoji", 0.3, 0.25, 0.35, "higher", {"weight": 0.5}),
        (merge, style, "twemoji", 0.5, 0.45, 0.55, "higher", {"weight": 1.0})])
    facts = chapter.merge_facts(result)
    assert (facts["merge_character"], facts["merge_style"]) == ("weight 0.5", "weights 0.5 and 1")


def test_base_and_step_facts_read_survival_and_the_best_steps():
    bases, steps, to_truth = kohya_tests.TESTS[2], kohya_tests.TESTS[3], "feature_to_target"
    result = synthetic_result([
        (bases, to_truth, "openmoji", 30, 29, 31, "lower", {"base": "original base", "weight": 0.0}),
        (bases, to_truth, "openmoji", 25, 24, 26, "lower", {"base": "original base", "weight": 0.75}),
        (bases, to_truth, "openmoji", 30, 29, 31, "lower", {"base": "twemoji fine-tune", "weight": 0.0}),
        (bases, to_truth, "openmoji", 29, 27, 31, "lower", {"base": "twemoji fine-tune", "weight": 0.75}),
        (steps, to_truth, "openmoji", 24, 23.5, 24.5, "lower", {"steps": 2}),
        (steps, to_truth, "openmoji", 22, 21.5, 22.5, "lower", {"steps": 3}),
        (steps, to_truth, "openmoji", 22.2, 21.8, 22.6, "lower", {"steps": 4})])
    facts = chapter.base_facts(result)
    assert (facts["bases_kept"], facts["n_bases_kept"], facts["n_bases"]) == ("original base", 1, 2)
    facts = chapter.step_facts(result)   # smoke: 2 steps where sd15 takes 30, so S3's 50-60 scale to 3-4
    assert (facts["steps_range"], facts["steps_s3_scaled"], facts["steps_vs_s3"]) == ("3-4", "3-4", "the same as")
    assert "the same as S3's best 50-60" in facts["found_steps"]
