"""Chapter 4: mixed LoRA files equal the formulas, endpoints are the pure LoRAs, tables are labelled."""
import copy

import pandas as pd
import pytest
import torch

from lora_core import blend
from lora_core.experiments import mixing
from lora_core.experiments.common import eval_set, style_lora_config
from lora_core.experiments.evaluate import results_frame
from lora_core.formats import save_lora_diffusers
from lora_core.metrics.stats import MetricResult
from lora_core.profiles import get_profile
from lora_core.toy import STYLE_SETS

SMOKE, TINY = get_profile("smoke"), get_profile("tiny")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tiny_base):
    return copy.deepcopy(tiny_base)


@pytest.fixture(scope="module")
def lora_files(base, tmp_path_factory):
    """Two random attention LoRAs of rank 4 with different alphas (so scales 1 and 2 differ)."""
    folder = tmp_path_factory.mktemp("loras")
    paths = []
    for name, alpha, seed in (("ink", 4.0, 1), ("moss", 8.0, 2)):
        blend.add_random_adapter(base, name, rank=4, alpha=alpha, seed=seed)
        paths.append(save_lora_diffusers(folder / f"{name}.safetensors", base.unet, None, name, {}))
    factors = blend.lora_factors(base, "ink"), blend.lora_factors(base, "moss")
    blend.remove_adapters(base, ["ink", "moss"])
    return paths, factors


def test_lora_configs_are_chapter_ones_configs_so_runs_are_shared():
    settings = mixing.mixing_settings(SMOKE, n_seeds=2)
    configs = mixing.lora_configs(SMOKE, settings)
    assert mixing.mixing_settings(SMOKE).training_seeds(SMOKE) == (0,)
    assert mixing.mixing_settings(TINY).training_seeds(TINY) == (0, 1, 2)
    assert sorted(configs) == [("openmoji", 0), ("openmoji", 1), ("twemoji", 0), ("twemoji", 1)]
    for (style, seed), config in configs.items():
        assert config.hash() == style_lora_config(SMOKE, style, seed).hash()
        assert (config.options.rank, config.options.effective_alpha) == (SMOKE.lora_rank, SMOKE.lora_alpha)


def test_settings_refuse_bad_values_with_the_reason():
    with pytest.raises(ValueError, match="two different style sets"):
        mixing.mixing_settings(SMOKE, styles=("twemoji", "twemoji"))
    with pytest.raises(ValueError, match=r"weights must be non-empty and in \[0, 1\]"):
        mixing.mixing_settings(SMOKE, weights=(1.0, 1.5))
    with pytest.raises(ValueError, match="strip_prompts"):
        mixing.mixing_settings(SMOKE, n_prompts=3, strip_prompts=4)
    with pytest.raises(ValueError, match="n_promts"):
        mixing.mixing_settings(SMOKE, n_promts=3)


def test_eval_set_keeps_held_out_subjects_and_names_both_triggers():
    settings = mixing.mixing_settings(SMOKE, n_prompts=3)
    mixed = mixing.mixing_eval_set(settings)
    held_out = eval_set("twemoji", "heldout", 3)
    assert mixed.subject_keys == held_out.subject_keys and mixed.seeds == held_out.seeds
    assert mixed.captions == held_out.captions
    assert mixed.prompts[0] == (f"{held_out.captions[0]}, in the style of {STYLE_SETS['twemoji'].trigger} "
                                f"and {STYLE_SETS['openmoji'].trigger}")


@pytest.mark.parametrize("a", [0.0, 0.25, 0.5, 1.0])
def test_mixed_factors_match_the_two_formulas(lora_files, a):
    _, (ink, moss) = lora_files
    blended = mixing.mixed_factors(ink, moss, a, "blend")
    interpolated = mixing.mixed_factors(ink, moss, a, "interpolate")
    for key, fa in ink.items():
        fb = moss[key]
        expected_blend = a * fa.scale * fa.up @ fa.down + (1 - a) * fb.scale * fb.up @ fb.down
        torch.testing.assert_close(blended[key].delta(), expected_blend, rtol=1e-5, atol=1e-7)
        # scales differ (1 vs 2): each factor carries sqrt(scale) before mixing
        up = a * fa.scale ** 0.5 * fa.up + (1 - a) * fb.scale ** 0.5 * fb.up
        down = a * fa.scale ** 0.5 * fa.down + (1 - a) * fb.scale ** 0.5 * fb.down
        torch.testing.assert_close(interpolated[key].delta(), up @ down, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="mode: 'average' is not one of blend, interpolate"):
        mixing.mixed_factors(ink, moss, a, "average")


def test_mix_files_write_each_interior_mix_once_and_reload_exactly(base, lora_files, tmp_path):
    (ink_file, moss_file), (ink, moss) = lora_files
    files = mixing.mix_files(base, ink_file, moss_file, (1.0, 0.5, 0.0), cache_dir=tmp_path)
    assert files[("blend", 1.0)] == files[("interpolate", 1.0)] == ink_file
    assert files[("blend", 0.0)] == files[("interpolate", 0.0)] == moss_file
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["blend", "interpolate"]
    assert blend.adapter_names(base) == []
    written = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert mixing.mix_files(base, ink_file, moss_file, (1.0, 0.5, 0.0), cache_dir=tmp_path) == files
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == written
    for mode in mixing.MODES:
        expected = mixing.mixed_factors(ink, moss, 0.5, mode)
        reloaded, _ = mixing.load_factors(base, files[(mode, 0.5)], ink_file)
        for key in expected:
            torch.testing.assert_close(reloaded[key].delta(), expected[key].delta(), rtol=1e-5, atol=1e-7)


def test_blend_file_generates_what_two_active_adapters_generate(base, lora_files, tmp_path):
    """The materialised blend is the output-space blend: same image as diffusers-style set_adapters."""
    from lora_core.generate import Cell, generate_cells

    (ink_file, moss_file), _ = lora_files
    blend_file = mixing.mix_files(base, ink_file, moss_file, (0.75,), cache_dir=tmp_path)[("blend", 0.75)]
    cell = Cell(prompt="a red heart", seed=3, steps=2, guidance_scale=3.0)
    two_adapters = generate_cells(base, [cell.replace(adapters=((str(ink_file), 0.75), (str(moss_file), 0.25)))])
    one_file = generate_cells(base, [cell.replace(adapters=((str(blend_file), 1.0),))])
    difference = (torch.tensor(list(two_adapters.images[0].getdata())).int()
                  - torch.tensor(list(one_file.images[0].getdata())).int()).abs().max()
    assert difference <= 1


def test_gaps_vanish_at_the_ends_and_divergence_measures_factor_distance(lora_files):
    _, (ink, moss) = lora_files
    gaps = mixing.layer_gaps(ink, moss, (1.0, 0.5, 0.0))
    assert (gaps.loc[gaps["a"] != 0.5, "gap_norm"] == 0).all() and (gaps.loc[gaps["a"] == 0.5, "gap_norm"] > 0).all()
    assert set(gaps["block"]) >= {"mid_block attn1", "mid_block attn2"}
    same = mixing.factor_divergence(ink, ink)
    assert (same[["down", "up"]] == 0).all().all()
    key = next(iter(ink))
    expected = float(torch.linalg.norm(ink[key].down - moss[key].down) / torch.linalg.norm(ink[key].down))
    assert mixing.factor_divergence(ink, moss).set_index("module").loc[key, "down"] == pytest.approx(expected)


class ConstantEvaluator:
    """Stands in for evaluate.Evaluator: one constant result per requested measure."""

    profile, n_resamples, seed = SMOKE, 20, 0

    def evaluate(self, images, evalset, target_style, labels, measures):
        result = MetricResult("M", "b", len(images), 1.0, 0.5, 1.5)
        return results_frame({m: result for m in measures},
                             {"eval_set": evalset.name, "target_style": target_style, **labels})


def test_mixing_measures_label_every_row_and_compare_with_the_pure_loras():
    settings = mixing.mixing_settings(SMOKE, weights=(1.0, 0.5, 0.0), n_prompts=3)
    evalset = mixing.mixing_eval_set(settings)
    generator = torch.Generator().manual_seed(0)
    pure_a, pure_b, mid = (torch.randint(0, 256, (3, 3, 32, 32), generator=generator, dtype=torch.uint8)
                           for _ in range(3))
    images = {("blend", 1.0): pure_a, ("blend", 0.5): mid, ("blend", 0.0): pure_b,
              ("interpolate", 1.0): pure_a, ("interpolate", 0.5): mid, ("interpolate", 0.0): pure_b}
    table = mixing.mixing_measures(ConstantEvaluator(), images, evalset, settings, {"seed": 7})
    assert (table["seed"] == 7).all() and set(table["eval_set"]) == {evalset.name}
    style_rows = table[table["measure"] == "p_target_style"]
    assert len(style_rows) == 6 * 2 and set(style_rows["target_style"]) == {"twemoji", "openmoji"}
    assert set(table.loc[table["measure"].isin(mixing.SET_MEASURES), "target_style"]) == {mixing.NO_TARGET}
    to_pure = table[table["measure"] == mixing.ENDPOINT_MEASURE].set_index(["mode", "a", "target_style"])["value"]
    assert to_pure[("blend", 1.0, "twemoji")] == 0 and to_pure[("interpolate", 0.0, "openmoji")] == 0
    assert to_pure[("blend", 1.0, "openmoji")] > 0
    gap = table[table["measure"] == mixing.MODE_GAP_MEASURE].set_index("a")["value"]
    assert list(gap.index) == [1.0, 0.5, 0.0] and (gap == 0).all()


def test_summary_words_follow_the_numbers():
    settings = mixing.mixing_settings(SMOKE, weights=(1.0, 0.5, 0.0))
    rows = []
    for mode, p_style, alignment in (("blend", [0.9, 0.5, 0.1], [30, 20, 32]),
                                     ("interpolate", [0.9, 0.95, 0.1], [30, 40, 32])):
        for a, p, s in zip((1.0, 0.5, 0.0), p_style, alignment):
            rows += [{"mode": mode, "a": a, "target_style": "twemoji", "measure": "p_target_style", "value": p},
                     {"mode": mode, "a": a, "target_style": "-", "measure": "alignment", "value": s}]
    rows.append({"mode": "interpolate", "a": 0.5, "target_style": "-", "measure": mixing.MODE_GAP_MEASURE,
                 "value": 0.25})
    summary = mixing.mixing_summary(pd.DataFrame(rows), settings)
    assert summary == {"middle_a": 0.5, "shift_blend": "changes monotonically with a",
                       "shift_interpolate": "does not change monotonically with a", "mid_alignment_blend": "is lower",
                       "mid_alignment_interpolate": "is higher", "mode_gap_mid": 0.25}
    assert mixing.mixing_summary(pd.DataFrame(rows[:0], columns=["mode", "a", "target_style", "measure", "value"]),
                                 settings) == {"middle_a": 0.5}


def test_gap_facts_read_the_middle_weight():
    gaps = pd.DataFrame({"a": [0.5, 0.5, 0.5, 1.0], "relative_gap": [0.1, 0.3, 0.2, 0.0],
                         "block": ["mid_block attn1", "up_blocks.1 attn2", "mid_block attn2", "mid_block attn1"]})
    divergence = pd.DataFrame({"down": [0.01, 0.03], "up": [0.5, 0.7]})
    facts = mixing.gap_facts(gaps, divergence, (1.0, 0.5, 0.0))
    assert (facts["middle_a"], facts["gap_median"], facts["gap_max"], facts["gap_max_block"]) == \
        (0.5, pytest.approx(0.2), pytest.approx(0.3), "up_blocks.1 attn2")
    assert (facts["down_divergence"], facts["up_divergence"]) == (pytest.approx(0.02), pytest.approx(0.6))
    assert facts["found_gap"] == ("At a = 0.5, weight-space interpolation differs from the blend by a median 0.200 "
                                  "of the blend's size per layer (largest 0.300, in up_blocks.1 attn2).")


def _result(weights=(1.0, 0.5, 0.0), aggregated=None):
    settings = mixing.mixing_settings(SMOKE, weights=weights, n_prompts=3, strip_prompts=2)
    evalset = mixing.mixing_eval_set(settings)
    images = {0: {(mode, a): torch.full((3, 3, 32, 32), int(100 * a) + (mode == "blend"), dtype=torch.uint8)
                  for mode in mixing.MODES for a in weights}}
    return mixing.MixingResult(SMOKE, settings=settings, configs={}, records={}, evalset=evalset, images=images,
                               aggregated=aggregated if aggregated is not None else pd.DataFrame())


def test_strip_sheet_has_a_row_per_subject_and_mode_and_a_column_per_weight():
    result = _result()
    sheet = result.strip_sheet()
    subject = result.evalset.captions[0].split(",")[0]
    assert list(dict.fromkeys(sheet.table["row"]))[:2] == [f"{subject}\nblend", f"{subject}\ninterpolate"]
    assert list(dict.fromkeys(sheet.table["a"])) == [1.0, 0.5, 0.0] and len(sheet.images) == 2 * 2 * 3
    cell = sheet.table.index[(sheet.table["row"] == f"{subject}\nblend") & (sheet.table["a"] == 0.5)][0]
    assert (sheet.images[cell] == 51).all()


def test_measure_panels_label_mode_and_target_and_read_mixing_says_what_it_cannot_judge():
    rows = pd.DataFrame([{"mode": mode, "a": a, "target_style": target, "measure": measure, "metric": f"{name}{target}",
                          "value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "eval_set": "e"}
                         for mode in mixing.MODES for a in (1.0, 0.5, 0.0)
                         for measure, name, target in (("p_target_style", "P(style=", "twemoji"),
                                                       ("p_target_style", "P(style=", "openmoji"),
                                                       ("alignment", "AlignScore", ""))])
    rows.loc[rows["measure"] == "alignment", "target_style"] = mixing.NO_TARGET
    result = _result(aggregated=rows)
    panels = result.measure_panels(["alignment", "p_target_style"])   # one panel per measure, both targets in it
    assert list(dict.fromkeys(panels["panel"])) == ["alignment\n(AlignScore)", "p_target_style\n(P(style=twemoji)"]
    assert set(panels.loc[panels["measure"] == "p_target_style", "line"]) == {
        "output-space blend, to twemoji", "weight-space interpolation, to twemoji",
        "output-space blend, to openmoji", "weight-space interpolation, to openmoji"}
    assert set(panels.loc[panels["measure"] == "alignment", "line"]) == {"output-space blend",
                                                                         "weight-space interpolation"}
    result.gaps = pd.DataFrame({"a": [0.5], "relative_gap": [0.1], "block": ["mid_block attn1"]})
    result.divergence = pd.DataFrame({"down": [0.0], "up": [0.1]})
    facts = mixing.read_mixing(result).facts
    assert facts["shift_blend"] == "changes monotonically with a" and facts["mid_alignment_blend"] == "is higher"
    assert facts["found_shift"].startswith("P(twemoji) changes monotonically with a under the output-space blend")
    assert facts["n_prompts"] == 3 and facts["n_seeds"] == 1 and facts["missing_measures"] == "none"
    no_alignment = _result(aggregated=rows[rows["measure"] != "alignment"])
    no_alignment.gaps, no_alignment.divergence = result.gaps, result.divergence
    assert mixing.read_mixing(no_alignment).facts["mid_alignment_blend"] == \
        "cannot be judged in this build (its measure is missing)"
