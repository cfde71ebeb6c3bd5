"""Chapter 5: the runs are S2's recipe and the book's LoRA on one data set, (IA)^3 wraps what it
should, Prodigy's d reaches the metrics, LyCORIS models are not cached as their base, and the FD
section's tables agree with independent computations."""
import copy
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from lora_core import world
from lora_core.experiments import character, character_fd
from lora_core.metrics import small_sample
from lora_core.profiles import get_profile

SMOKE, TINY, SD15 = get_profile("smoke"), get_profile("tiny"), get_profile("sd15")
TRIGGER = "chrfc"

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class FixtureSet:
    """The contract of ``lora_core.world.SUBJECT_SETS`` entries: vendor, trigger, folder(split)."""

    vendor: str
    trigger: str
    root: Path

    def folder(self, split: str) -> Path:
        return self.root / split


def _write_expression(folder: Path, key: str, colour: tuple[int, int, int], caption: str, tags: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(folder / f"{key}.png")
    (folder / f"{key}.txt").write_text(f"{caption}, {TRIGGER}\n")
    (folder / f"{key}.tags").write_text(f"1face, {tags}, yellow, {TRIGGER}\n")


@pytest.fixture
def face_set(tmp_path, monkeypatch):
    """A subject set of 4 training and 3 held-out 'expressions' registered as face_character."""
    root = tmp_path / "face_character"
    for i in range(7):
        split = "train" if i < 4 else "heldout"
        _write_expression(root / split, f"1f6{i:02d}", (40 * i, 200, 30), f"face number {i}, face smiling",
                          f"smiling {i}")
    monkeypatch.setattr(world, "SUBJECT_SETS", {"face_character": FixtureSet("fluent3d", TRIGGER, root)},
                        raising=False)
    return root


# ---- configs --------------------------------------------------------------------------------

def test_arms_share_data_steps_batch_and_seeds_and_differ_only_in_recipe_and_captions():
    settings = character.character_settings(TINY)
    configs = character.character_configs(TINY, settings, folder="sets/face/train")
    assert sorted({(r, c) for r, c, _ in configs}) == sorted(character.ARMS)
    assert sorted({s for _, _, s in configs}) == [0, 1, 2]
    assert {(c.data.folder, c.max_train_steps, c.batch_size, c.base_model) for c in configs.values()} == \
        {("sets/face/train", TINY.train_steps, TINY.batch_size, TINY.base_model)}
    ia3, lora = configs[("ia3_prodigy", "tags", 1)], configs[("lora_adamw", "tags", 1)]
    assert (ia3.method, ia3.options.algo, ia3.options.train_text_encoder, ia3.options.bypass) == \
        ("lycoris", "ia3", True, True)
    assert (ia3.optimizer, ia3.learning_rate, ia3.weight_decay, ia3.lr_scheduler, ia3.adam_betas) == \
        ("prodigy", 1.0, 0.01, "cosine", (0.9, 0.99))
    assert (lora.method, lora.optimizer, lora.learning_rate, lora.lr_scheduler) == ("lora", "adamw", TINY.learning_rate,
                                                                                    "constant")
    assert (lora.options.rank, lora.options.effective_alpha) == (TINY.lora_rank, TINY.lora_alpha)
    assert ia3.data.caption_extension == ".tags" == lora.data.caption_extension
    assert configs[("ia3_prodigy", "sentences", 1)].data.caption_extension == ".txt"
    assert configs[("ia3_prodigy", "sentences", 1)].hash() != ia3.hash()


def test_steps_follow_the_profile_and_sd15_takes_s2s_ten_thousand():
    retuned = get_profile("tiny", train_steps=77)
    config = character.character_config(retuned, "ia3_prodigy", "tags", 0, character.character_settings(retuned), "x")
    assert config.max_train_steps == 77
    sd15 = character.character_configs(SD15, character.character_settings(SD15), folder="x")
    assert {c.max_train_steps for c in sd15.values()} == {10_000}
    assert {c.batch_size for c in sd15.values()} == {SD15.batch_size}


def test_settings_refuse_bad_values_and_keep_the_profile_for_zero():
    assert character.character_settings(TINY, n_seeds=0, real_pool=0) == character.CHARACTER["tiny"]
    assert character.character_settings(TINY, real_pool=900).real_pool == 900
    with pytest.raises(ValueError, match="real_pool must be >= 0"):
        character.character_settings(TINY, real_pool=-1)
    with pytest.raises(ValueError, match="n_draws >= 2"):
        character.character_settings(TINY, n_draws=1)
    with pytest.raises(ValueError, match="unknown key 'n_seed'"):
        character.character_settings(TINY, n_seed=2)
    with pytest.raises(ValueError, match="recipe: unknown recipe 'ia3'"):
        character.character_config(TINY, "ia3", "tags", 0, character.CHARACTER["tiny"], "x")


# ---- the subject set and its evaluation set -----------------------------------------------------

def test_eval_set_prompts_with_the_runs_captions_and_aligns_with_the_sentence(face_set):
    tags = character.character_eval_set("face_character", "heldout", 10, "tags")
    sentences = character.character_eval_set("face_character", "heldout", 10, "sentences")
    assert tags.subject_keys == sentences.subject_keys == ("1f604", "1f605", "1f606")
    assert tags.prompts[0] == f"1face, smiling 4, yellow, {TRIGGER}"
    assert sentences.prompts[0] == f"face number 4, face smiling, {TRIGGER}"
    assert tags.captions == sentences.captions and tags.captions[0] == "face number 4, face smiling"
    assert tags.style == "fluent3d" and tags.seeds == (1000, 1001, 1002)
    assert len(character.character_eval_set("face_character", "heldout", 2, "tags")) == 2
    assert character.character_folder("face_character", "train") == (face_set / "train").as_posix()


def test_eval_set_errors_name_the_set_the_captions_or_the_folder(face_set, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown subject set 'faces'. Valid: face_character"):
        character.character_eval_set("faces", "heldout", 2, "tags")
    with pytest.raises(ValueError, match="captions: 'booru' is not one of tags, sentences"):
        character.character_eval_set("face_character", "heldout", 2, "booru")
    empty = FixtureSet("fluent3d", TRIGGER, tmp_path / "nothing")
    monkeypatch.setattr(world, "SUBJECT_SETS", {"face_character": empty})
    with pytest.raises(FileNotFoundError, match="nothing/heldout: no captions"):
        character.character_eval_set("face_character", "heldout", 2, "tags")


# ---- (IA)^3, Prodigy and the generation cache ---------------------------------------------------

IA3_OPTIONS = {"algo": "ia3", "train_text_encoder": True}


def _ia3_adapter(base):
    from lora_core.adapters.lycoris import LycorisAdapter, LycorisOptions

    adapter = LycorisAdapter(SimpleNamespace(options=LycorisOptions(**IA3_OPTIONS), learning_rate=1.0,
                                             text_encoder_learning_rate=None, seed=0))
    adapter.attach(base)
    return adapter


def _expected_ia3_parameters(base) -> int:
    """One scale per output channel of keys and values, per input channel of the FF output layers."""
    total = 0
    for model, names in ((base.unet, ("to_k", "to_v", "ff.net.2")), (base.text_encoder, ("k_proj", "v_proj", "fc2"))):
        for path, module in model.named_modules():
            if path.endswith((".ff.net.2", ".fc2")):
                total += module.in_features
            elif any(path.endswith(f".{name}") for name in names):
                total += module.out_features
    return total


def test_ia3_wraps_keys_values_and_ff_outputs_of_unet_and_text_encoder(tiny_base):
    from lora_core.adapters.lycoris import wrapped_modules

    base = copy.deepcopy(tiny_base)
    adapter = _ia3_adapter(base)
    rows = wrapped_modules(base, adapter.networks)
    check = character.ia3_check(base, rows)
    expected = check[check.target != "other"]
    assert (expected["wrapped"] == expected["in model"]).all() and (expected["wrapped"] > 0).all()
    assert set(expected.target) == {"to_k", "to_v", "ff.net.2", "k_proj", "v_proj", "fc2"}
    assert check.loc[check.target == "other", "wrapped"].item() == 0
    assert check["parameters"].sum() == _expected_ia3_parameters(base) == adapter.trained_parameter_count(base)
    with_extra = rows + [{"network": "unet", "module": "conv_in", "algo": "ia3", "parameters": 4}]
    assert character.ia3_check(base, with_extra).query("target == 'other'")["wrapped"].item() == 1


def _export(base, adapter, folder: Path, offset: float) -> Path:
    with torch.no_grad():
        for network in adapter.networks.values():
            for parameter in network.parameters():
                parameter.add_(offset)
    return adapter.export(base, folder, {})["kohya"]


def test_a_lycoris_model_is_not_served_the_bases_cached_images(tiny_base, tmp_path):
    """load_lycoris leaves the model's weights alone; before its content joined the fingerprint,
    generate_eval_images handed a LyCORIS model the base's cached images."""
    from lora_core.adapters.lycoris import load_lycoris
    from lora_core.experiments.common import generate_eval_images
    from lora_core.models import base_fingerprint

    files = []
    for name, offset in (("a", 0.5), ("b", -0.5)):
        trained = copy.deepcopy(tiny_base)
        files.append(_export(trained, _ia3_adapter(trained), tmp_path / name, offset))
    adapted = []
    for path in files:
        model = copy.deepcopy(tiny_base)
        load_lycoris(model, path)
        adapted.append(model)
    prints = {base_fingerprint(tiny_base), *(base_fingerprint(model) for model in adapted)}
    assert len(prints) == 3
    again = copy.deepcopy(tiny_base)
    load_lycoris(again, files[0])
    assert base_fingerprint(again) == base_fingerprint(adapted[0])
    profile = get_profile("smoke", inference_steps=2)
    plain = generate_eval_images(tiny_base, ["a face"], [1], profile, cache_dir=tmp_path / "cache")
    with_ia3 = generate_eval_images(adapted[0], ["a face"], [1], profile, cache_dir=tmp_path / "cache")
    assert not torch.equal(plain, with_ia3)


def test_prodigys_d_is_logged_every_step_and_never_falls(tiny_base, tmp_path, face_set):
    from lora_core.train import TrainConfig, train

    common = {"data": {"folder": str(face_set / "train"), "caption_extension": ".tags"}, "max_train_steps": 4,
              "batch_size": 2, "base_model": "tiny-random"}
    prodigy = train(TrainConfig(method="lycoris", options=IA3_OPTIONS, optimizer="prodigy", learning_rate=1.0,
                                lr_scheduler="cosine", **common), base=tiny_base, runs_root=tmp_path, progress=False)
    adamw = train(TrainConfig(**common), base=tiny_base, runs_root=tmp_path, progress=False)
    d = [row["d"] for row in prodigy.metrics()]
    assert len(d) == 4 and d[0] >= 1e-6 and all(b >= a for a, b in zip(d, d[1:]))
    assert not any("d" in row for row in adamw.metrics())
    curves = character.step_size_curves({("ia3_prodigy", "tags", 0): prodigy, ("lora_adamw", "tags", 0): adamw})
    ia3 = curves[curves.arm == "iA3 + Prodigy, tags"]
    assert np.allclose(ia3.step_size, ia3.d * ia3.lr)
    lora = curves[curves.arm == "LoRA + AdamW, tags"]
    assert lora.d.isna().all() and np.allclose(lora.step_size, lora.lr)


# ---- readings ---------------------------------------------------------------------------------

def _aggregated(rows) -> pd.DataFrame:
    return pd.DataFrame([{"recipe": recipe, "captions": captions, "measure": measure, "metric": measure.upper(),
                          "value": value, "ci_low": low, "ci_high": high, "better": better}
                         for recipe, captions, measure, value, low, high, better in rows])


def test_comparisons_read_only_non_overlapping_intervals_in_the_measures_direction():
    aggregated = _aggregated([
        ("iA3 + Prodigy", "tags", "p_style", 0.8, 0.7, 0.9, "higher"),
        ("LoRA + AdamW", "tags", "p_style", 0.5, 0.4, 0.6, "higher"),
        ("iA3 + Prodigy", "tags", "distance", 0.8, 0.7, 0.9, "lower"),
        ("LoRA + AdamW", "tags", "distance", 0.5, 0.4, 0.6, "lower"),
        ("iA3 + Prodigy", "tags", "kid", 0.2, 0.1, 0.3, "lower"),
        ("LoRA + AdamW", "tags", "kid", 0.25, 0.05, 0.5, "lower"),
        ("iA3 + Prodigy", "tags", "only_here", 0.2, 0.1, 0.3, "lower")])
    table = character.comparison_table(aggregated, character.S2_ARM, character.LORA_ARM)
    assert table.set_index("measure")["reading"].to_dict() == {"p_style": "better", "distance": "worse",
                                                               "kid": "no clear difference"}
    assert table.loc[0, "iA3 + Prodigy, tags"] == "0.8 [0.7, 0.9]"
    assert character.tally(table) == "better on 1, worse on 1 and not clearly different on 1 of 3 measures"
    with pytest.raises(ValueError, match="better: must be 'higher' or 'lower'"):
        character.compare(table.iloc[0], table.iloc[0], "up")


def test_ia3_facts_say_whether_every_module_is_wrapped_and_the_counts_match():
    targets = pd.DataFrame({"network": ["unet", "text_encoder", "any"], "target": ["to_k", "k_proj", "other"],
                            "in model": [10, 2, 0], "wrapped": [10, 2, 0], "parameters": [640, 64, 0]})
    record = SimpleNamespace(summary={"trainable_params": 704})
    facts = character.ia3_facts(targets, record)
    assert (facts["ia3_wraps"], facts["ia3_unet_modules"], facts["ia3_te_modules"], facts["ia3_params_match"]) == \
        ("every module of those names", 10, 2, "matches")
    missing = targets.assign(wrapped=[9, 2, 1])
    facts = character.ia3_facts(missing, SimpleNamespace(summary={"trainable_params": 1}))
    assert (facts["ia3_wraps"], facts["ia3_others"], facts["ia3_params_match"]) == \
        ("not every module of those names", 1, "does not match")


# ---- the FD section -----------------------------------------------------------------------------

def test_pool_keys_are_one_fixed_order_so_a_small_pool_starts_every_larger_one(tmp_path):
    from PIL import Image

    for i in range(30):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"k{i:02d}.png")
    everything = character_fd.pool_keys(tmp_path)
    assert sorted(everything) == [f"k{i:02d}" for i in range(30)] and everything != sorted(everything)
    assert character_fd.pool_keys(tmp_path, 10) == everything[:10] == character_fd.pool_keys(tmp_path, 10)
    with pytest.raises(FileNotFoundError, match="no images"):
        character_fd.pool_keys(tmp_path / "missing")


def test_chunked_features_equal_one_pass_and_are_cached_per_chunk(tmp_path, monkeypatch):
    from PIL import Image

    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.cache import FeatureCache
    from lora_core.metrics.style import load_true_images

    keys = [f"k{i:03d}" for i in range(10)]
    for i, key in enumerate(keys):
        Image.new("RGB", (16, 16), (20 * i, 255 - 20 * i, 7 * i)).save(tmp_path / f"{key}.png")
    monkeypatch.setattr(character_fd, "CHUNK", 4)
    cache, net = FeatureCache(), get_backbone("pixels-8")
    chunked = character_fd.chunked_features(net, keys, tmp_path, 16, cache)
    whole = net.features(load_true_images(keys, tmp_path, 16)).numpy()
    assert np.array_equal(chunked, whole) and cache.misses == 3
    character_fd.chunked_features(net, keys[:8], tmp_path, 16, cache)
    assert cache.misses == 3 and cache.hits == 2


def _gaussian_sets(seed: int = 0, dim: int = 6) -> character_fd.FeatureSets:
    rng = np.random.default_rng(seed)
    pool = rng.normal(size=(120, dim))
    return character_fd.FeatureSets("pixels-8", "32", pool, pool[:28].copy(),
                                    {"near": rng.normal(0.1, 1.0, size=(40, dim)),
                                     "far": rng.normal(2.0, 1.0, size=(40, dim))})


def test_sweeps_draw_every_n_with_bands_and_the_whole_pool_once():
    sets = _gaussian_sets()
    by_n, by_m = character_fd.size_sweeps(sets, (10, 60, 500), (20, 40), n_draws=5,
                                          generator=torch.Generator().manual_seed(0))
    near = by_n[by_n.arm == "near"]
    assert near.n_real.tolist() == [10, 60, 120] and near.draws.tolist() == [5, 5, 1]
    assert (near.n_generated == 40).all()
    whole = near[near.n_real == 120].iloc[0]
    fd, kid = small_sample.fd_and_kid(sets.pool, sets.generated["near"])
    assert whole.fd_mean == pytest.approx(fd) and whole.kid_mean == pytest.approx(kid)
    assert sorted(set(zip(by_m.n_real, by_m.n_generated))) == [(28, 20), (28, 40), (120, 20), (120, 40)]
    far = by_n[(by_n.arm == "far") & (by_n.n_real == 120)].fd_mean.item()
    assert far > whole.fd_mean


def test_same_style_sweep_keeps_the_sizes_that_fit_disjointly():
    pool = np.random.default_rng(1).normal(size=(100, 4))
    bands = character_fd.same_style_sweep(pool, (10, 28, 60), 40, n_draws=6, generator=torch.Generator().manual_seed(0))
    assert bands.n_real.tolist() == [10, 28, 60] and (bands.arm == character_fd.SAME_STYLE).all()
    assert (bands.fd_low > 0).all()  # FD of two samples of one distribution is biased above 0
    with pytest.raises(ValueError, match="holds no disjoint pair"):
        character_fd.same_style_sweep(pool, (80,), 40, n_draws=2, generator=torch.Generator())


def test_fd_against_the_training_images_is_the_closed_form_frechet_distance():
    from scipy import linalg

    sets = _gaussian_sets()
    table = character_fd.against_references(sets, n_resamples=50, generator=torch.Generator().manual_seed(0))
    assert sorted(set(table.reference)) == ["120 vendor images", "28 training images"]
    row = table[(table.arm == "far") & (table.measure == "fd") & (table.reference == "28 training images")].iloc[0]
    real, fake = sets.training, sets.generated["far"]
    covariance = linalg.sqrtm(np.cov(real, rowvar=False) @ np.cov(fake, rowvar=False)).real
    expected = (np.sum((real.mean(0) - fake.mean(0)) ** 2) + np.trace(np.cov(real, rowvar=False))
                + np.trace(np.cov(fake, rowvar=False)) - 2 * np.trace(covariance))
    assert row.value == pytest.approx(expected, rel=1e-6) and row.ci_low <= row.value <= row.ci_high
    assert row.metric == "FD-pixels (raw pixels, 32->8 px)"


def test_extrapolations_are_least_squares_lines_in_one_over_m():
    sets = _gaussian_sets()
    fits, points = character_fd.extrapolations(sets, n_draws=2, n_real_draws=3, generator=torch.Generator().manual_seed(0))
    same_small = fits[fits.case == f"{character_fd.SAME_STYLE}, n = 28"]
    assert len(same_small) == 3 and (fits.case == f"{character_fd.SAME_STYLE}, n = 60").sum() == 3
    for _, fit in fits.iterrows():
        measured = points[(points.case == fit.case) & (points.draw == fit.draw)]
        slope, intercept = np.polyfit(1.0 / measured.m.to_numpy(float), measured.fd.to_numpy(), 1)
        assert fit.fd_inf == pytest.approx(intercept, abs=1e-9) and fit.slope == pytest.approx(slope, abs=1e-7)
    rescued, draws = character_fd.rescued_draws(fits, f"{character_fd.SAME_STYLE}, n = 28")
    assert draws == 3 and 0 <= rescued <= 3


def test_fd_facts_read_the_rank_the_same_style_band_and_the_arms():
    sets = _gaussian_sets(dim=40)
    study = character_fd.fd_study(sets, (10, 60), same_style_m=30, n_draws=5, n_resamples=50)
    facts = character_fd.fd_facts(study, 77.29, "near", "far")
    assert facts["rank_training"] == "27 of 40" and facts["rank_zero_share"] == "32.5%"
    mean, low, high = character_fd.band_at(study.same_style, 28)
    assert facts["same_style_small"] == f"{mean:.3g} [{low:.3g}, {high:.3g}]"
    assert facts["s2_position"] == character_fd.band_position(77.29, low, high) == "above"
    assert facts["fd_separates"] == "separates" and facts["kid_separates"] == "separates"
    assert facts["fd_short"] == "FD-pixels" and facts["found_fd"].startswith("Between two samples")
    panels = study.size_panels()
    assert set(panels.panel) == {"FD-pixels (raw pixels, 32->8 px)", "KID-pixels (raw pixels, 32->8 px)"}
    assert {"near, m = 40", f"{character_fd.SAME_STYLE}, m = 30"} <= set(panels.line)
    assert study.fits_table()["intervals containing 0"].str.endswith("of 5").sum() == 2


# ---- the whole chapter, smoke-sized, on the fixture set --------------------------------------------

def test_the_chapter_runs_and_every_number_its_page_quotes_is_a_fact(face_set, tiny_base, tmp_path, monkeypatch):
    import re

    from lora_core.book import NOTEBOOK_DIR
    from lora_core.experiments import common

    monkeypatch.setattr(common, "generation_cache_dir", lambda: tmp_path / "generated")
    profile = get_profile("smoke", train_steps=2, n_eval_images=3, n_bootstrap=20)
    monkeypatch.setitem(character.CHARACTER, "smoke", character.CharacterSettings(
        real_pool=24, real_sizes=(6,), same_style_m=8, n_draws=2, sheet_rows=2))
    result = character.run_character(profile, base=tiny_base, runs_root=tmp_path / "runs", n_seeds=2)
    source = (NOTEBOOK_DIR / "05_character_ia3.py").read_text()
    quoted = {name.split(":")[0] for name in re.findall(r"\{glue:text\}`([^`]+)`", source)}
    assert quoted <= set(result.facts), sorted(quoted - set(result.facts))
    from lora_core.experiments.claims import CHARACTER, facts_read_from

    assert facts_read_from(CHARACTER) <= set(result.facts)   # what chapter 9 reads
    assert set(result.aggregated.arm) == {"base, tags", "base, sentences", "iA3 + Prodigy, tags",
                                          "LoRA + AdamW, tags", "iA3 + Prodigy, sentences"}
    assert (result.aggregated[result.aggregated.recipe != "base"].n_seeds == 2).all()
    assert result.facts["n_train"] == 4 and result.facts["rank_training"].startswith("3 of ")
    assert result.facts["ia3_params_match"] == "matches"
    assert len(result.sample_sheet().images) == 2 * 5
