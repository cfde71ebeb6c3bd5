"""Samplers: the registry builds what each A1111 name means, a second-order solver follows the
ODE more closely than DDIM at equal steps (against DDIM with many steps), the profile's sampler
reaches the cached generations, and the rule that decides whether a cheaper setting may replace
the current one."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from lora_core.experiments.samplers import paired_rows, replaces_current, rms_error
from lora_core.generate import SAMPLERS, Cell, generate_cells, grid_cells, make_scheduler
from lora_core.models import SD_SCHEDULER, load_base

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("sampler, class_name, options", [
    ("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "use_karras_sigmas": False}),
    ("DPM++ 2M Karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ("UniPC", "UniPCMultistepScheduler", {"solver_order": 2}),
])
def test_each_sampler_name_builds_its_scheduler_from_the_training_schedule(sampler, class_name, options):
    scheduler = make_scheduler(sampler, SD_SCHEDULER)
    assert type(scheduler).__name__ == class_name
    assert {key: scheduler.config[key] for key in options} == options
    assert scheduler.config.beta_schedule == "scaled_linear" and scheduler.config.steps_offset == 1
    assert sampler in SAMPLERS


def test_two_multistep_solvers_converge_to_the_same_image_on_the_base_schedule():
    """DPM-Solver++ and UniPC are two implementations of second-order solvers of the same ODE on the
    same timesteps (the base's leading spacing): at 40 steps they agree to a fraction of a grey
    level, while 10 steps are several levels away from that image."""
    base = load_base("toy:base")
    prompts = ["a red heart, in the style of opnmj", "a cat face, in the style of twmj", "a green apple", "a star"]

    def images(sampler: str, steps: int) -> torch.Tensor:
        cells = grid_cells(prompts=prompts, seeds=7, samplers=sampler, steps=steps, guidance_scales=4.0)
        grid = generate_cells(base, cells, batch_size=4)
        return torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1) for image in grid.images])

    converged = images("DPM++ 2M", 40)
    assert rms_error(images("UniPC", 40), converged).mean() < 0.5        # measured 0.15
    assert rms_error(images("DPM++ 2M", 10), converged).mean() > 2.0     # measured 5.1


def test_the_profiles_sampler_reaches_the_generations_and_their_cache_key(tiny_base, tmp_path):
    from lora_core.experiments.common import generate_eval_images
    from lora_core.profiles import get_profile

    smoke = get_profile("smoke", inference_steps=3)
    prompts, seeds = ["a red heart", "a cat face"], [1, 2]
    ddim = generate_eval_images(tiny_base, prompts, seeds, smoke, cache_dir=tmp_path)
    dpm = generate_eval_images(tiny_base, prompts, seeds, smoke.replace(sampler="DPM++ 2M"), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2          # two keys, two files
    assert not torch.equal(ddim, dpm)
    cells = [Cell(prompt=p, seed=s, sampler="DPM++ 2M", steps=3, guidance_scale=smoke.guidance_scale)
             for p, s in zip(prompts, seeds)]
    expected = generate_cells(tiny_base, cells, batch_size=smoke.generation_batch_size)
    assert torch.equal(dpm, torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i in expected.images]))


def test_paired_rows_hold_means_and_paired_differences_with_intervals():
    current = {"p_target_style": np.array([0.2, 0.4, 0.6, 0.8])}
    candidate = {"p_target_style": np.array([0.3, 0.4, 0.8, 0.8])}
    rows = paired_rows({"DDIM 20": current, "UniPC 10": candidate}, "DDIM 20", n_resamples=200)
    difference = rows[(rows.setting == "UniPC 10") & (rows.kind == "difference")].iloc[0]
    assert difference.value == pytest.approx(np.mean(candidate["p_target_style"] - current["p_target_style"]))
    assert difference.ci_low <= difference.value <= difference.ci_high
    assert set(rows[rows.setting == "DDIM 20"].kind) == {"mean"}   # no difference of current to itself


def rule_rows(kid: float, style: tuple[float, float], subject: tuple[float, float]) -> pd.DataFrame:
    return pd.DataFrame([
        {"setting": "UniPC 10", "measure": "p_target_style", "kind": "difference", "value": sum(style) / 2,
         "ci_low": style[0], "ci_high": style[1]},
        {"setting": "UniPC 10", "measure": "subject_hit", "kind": "difference", "value": sum(subject) / 2,
         "ci_low": subject[0], "ci_high": subject[1]},
        {"setting": "UniPC 10", "measure": "p_target_style", "kind": "mean", "value": 0.5, "ci_low": 0.0,
         "ci_high": 1.0},
        {"setting": "UniPC 10", "measure": "kid_effnet", "kind": "to DDIM 20", "value": kid, "ci_low": 0.0,
         "ci_high": 0.01},
        {"setting": "DDIM 20 other seeds", "measure": "kid_effnet", "kind": "to DDIM 20", "value": 0.004,
         "ci_low": 0.0, "ci_high": 0.01}])


@pytest.mark.parametrize("kid, style, subject, reason", [
    (0.006, (-0.01, 0.01), (-0.01, 0.01), "KID-EffNet to the current images 0.006 > 0.004 of other seeds"),
    (0.001, (-0.08, 0.01), (-0.01, 0.01), r"P\(style\) moves by more than ±0.05"),
    (0.001, (-0.01, 0.01), (-0.02, 0.06), "subject accuracy moves by more than ±0.05"),
])
def test_a_setting_that_moves_a_measure_or_the_distribution_does_not_replace_the_current(kid, style, subject,
                                                                                         reason):
    replaces, why = replaces_current(rule_rows(kid, style, subject), "UniPC 10", "DDIM 20 other seeds")
    assert not replaces
    assert pd.Series([why]).str.contains(reason).item()


def test_a_setting_within_every_margin_replaces_the_current():
    assert replaces_current(rule_rows(0.004, (-0.04, 0.04), (-0.05, 0.0)), "UniPC 10", "DDIM 20 other seeds")[0]
