"""Losses, min-SNR weights and learning-rate schedules against hand-written formulas."""
import math

import numpy as np
import pytest
import torch

from lora_core import losses
from lora_core.models import SD_SCHEDULER
from lora_core.optim import build_optimizer, build_scheduler, lr_curve, warmup_steps_for


@pytest.fixture(scope="module")
def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULER)


def _pred_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 4, 2, 2, generator=g) * 2, torch.randn(3, 4, 2, 2, generator=g)


def test_l2_is_mean_squared_error_per_sample():
    pred, target = _pred_target()
    expected = ((pred - target) ** 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(losses.per_sample_loss(pred, target, "l2", None), expected)


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_huber_and_smooth_l1_match_kohya_formulas(c):
    pred, target = _pred_target(1)
    d = (pred - target).numpy().reshape(3, -1)
    huber = (2 * c * (np.sqrt(d ** 2 + c ** 2) - c)).mean(1)
    smooth_l1 = (2 * (np.sqrt(d ** 2 + c ** 2) - c)).mean(1)
    c_per_sample = torch.full((3,), c)
    np.testing.assert_allclose(losses.per_sample_loss(pred, target, "huber", c_per_sample), huber, rtol=1e-5)
    np.testing.assert_allclose(losses.per_sample_loss(pred, target, "smooth_l1", c_per_sample), smooth_l1, rtol=1e-5)


def test_huber_approaches_l2_for_small_errors_and_smooth_l1_approaches_2_l1_for_large():
    small = torch.full((1, 1, 1, 1), 0.05)
    large = torch.full((1, 1, 1, 1), 1e3)
    zero, c = torch.zeros(1, 1, 1, 1), torch.tensor([1.0])
    assert losses.per_sample_loss(small, zero, "huber", c).item() == pytest.approx(0.05 ** 2, rel=2e-3)
    assert losses.per_sample_loss(large, zero, "smooth_l1", c).item() == pytest.approx(2e3, rel=1e-2)


def test_huber_threshold_schedules(scheduler):
    t = torch.tensor([0, 250, 999])
    assert losses.huber_threshold("l2", "snr", 0.1, scheduler.alphas_cumprod, t) is None  # kohya: l2 ignores huber
    constant = losses.huber_threshold("huber", "constant", 0.1, scheduler.alphas_cumprod, t)
    assert constant.tolist() == pytest.approx([0.1, 0.1, 0.1])
    abar = scheduler.alphas_cumprod.numpy()[[0, 250, 999]].astype(np.float64)
    sigma = np.sqrt((1 - abar) / abar)
    expected = (1 - 0.1) / (1 + sigma) ** 2 + 0.1
    np.testing.assert_allclose(losses.huber_threshold("smooth_l1", "snr", 0.1, scheduler.alphas_cumprod, t),
                               expected, rtol=1e-5)
    assert expected[0] > 0.9 and expected[2] < 0.11  # near 1 at low noise, near huber_c at high noise


def test_min_snr_weights_follow_the_paper(scheduler):
    t = torch.tensor([1, 100, 500, 990])
    abar = scheduler.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    gamma = 5.0
    eps = torch.minimum(snr, torch.full_like(snr, gamma)) / snr
    v = torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)
    torch.testing.assert_close(losses.min_snr_weights(scheduler.alphas_cumprod, t, gamma, "epsilon").double(), eps,
                               rtol=1e-5, atol=0)
    torch.testing.assert_close(losses.min_snr_weights(scheduler.alphas_cumprod, t, gamma, "v_prediction").double(),
                               v, rtol=1e-5, atol=0)
    assert losses.min_snr_weights(scheduler.alphas_cumprod, t, gamma, "epsilon")[-1].item() == pytest.approx(1.0)


def test_prediction_target_epsilon_and_v(scheduler):
    from diffusers import DDPMScheduler

    latents, noise = _pred_target(2)
    t = torch.tensor([10, 500, 900])
    assert losses.prediction_target(scheduler, latents, noise, t) is noise
    v_scheduler = DDPMScheduler(**{**SD_SCHEDULER, "prediction_type": "v_prediction"})
    abar = v_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = abar.sqrt() * noise - (1 - abar).sqrt() * latents
    torch.testing.assert_close(losses.prediction_target(v_scheduler, latents, noise, t), expected)


def test_offset_noise_adds_a_per_channel_constant():
    latents = torch.zeros(2, 4, 8, 8)
    plain = losses.offset_noise(latents, 0.0, torch.Generator().manual_seed(0))
    offset = losses.offset_noise(latents, 0.1, torch.Generator().manual_seed(0))
    shift = offset - plain
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)  # constant over pixels
    assert shift.abs().max() > 0


def _curve(name, total, warmup=0, cycles=1):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("adamw", [{"name": "unet", "params": [param], "lr": 1.0}])
    return lr_curve(build_scheduler(name, optimizer, total, warmup, cycles), total)


def test_cosine_with_restarts_has_num_cycles_hard_restarts():
    total, cycles = 40, 4
    curve = _curve("cosine_with_restarts", total, 0, cycles)
    expected = [0.5 * (1 + math.cos(math.pi * ((cycles * s / total) % 1.0))) for s in range(total)]
    assert curve == pytest.approx(expected)
    restarts = [s for s in range(1, total) if curve[s] > curve[s - 1]]
    assert restarts == [10, 20, 30]


def test_warmup_ratio_gives_a_linear_ramp_then_the_schedule():
    warmup = warmup_steps_for(100, 0, 0.1)
    assert warmup == 10 and warmup_steps_for(100, 5, 0.1) == 5
    curve = _curve("cosine", 100, warmup)
    assert curve[:10] == pytest.approx([s / 10 for s in range(10)])
    assert curve[10] == pytest.approx(1.0)
    assert curve[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert _curve("constant", 20, 5)[5:] == pytest.approx([1.0] * 15)
    linear = _curve("linear", 20, 0)
    assert linear == pytest.approx([1 - s / 20 for s in range(20)])


def test_prodigy_refuses_different_group_learning_rates():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"name": "unet", "params": [a], "lr": 1.0}, {"name": "text_encoder", "params": [b], "lr": 0.5}]
    with pytest.raises(ValueError, match="prodigy.*same lr"):
        build_optimizer("prodigy", groups)
    assert type(build_optimizer("prodigy", [groups[0]])).__name__ == "Prodigy"
    assert type(build_optimizer("adamw8bit", groups)).__name__ == "AdamW8bit"
    with pytest.raises(ValueError, match="Valid optimizers: adamw, adamw8bit, prodigy"):
        build_optimizer("sgd", groups)
