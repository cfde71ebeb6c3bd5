"""Diffusion training losses: the prediction target, l2/huber/smooth_l1, min-SNR weighting.

Conventions follow kohya sd-scripts (``get_huber_threshold_if_needed``, ``conditional_loss``)
and the diffusers examples (``compute_snr`` and min-SNR-gamma), so numbers compare with theirs:

* ``huber``:     ``2 c (sqrt(d^2 + c^2) - c)``  (pseudo-Huber, ~ d^2 for |d| << c)
* ``smooth_l1``: ``2   (sqrt(d^2 + c^2) - c)``  (~ 2|d| for |d| >> c)
* huber threshold ``c``: ``constant`` (c = huber_c) or ``snr``:
  ``c(t) = (1 - huber_c) / (1 + sigma_t)^2 + huber_c`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)``;
  as in kohya, the huber settings are ignored when ``loss_type="l2"``.
* min-SNR-gamma (Hang et al. 2023): per-sample weight ``min(SNR_t, gamma) / SNR_t`` for
  epsilon prediction and ``min(SNR_t, gamma) / (SNR_t + 1)`` for v-prediction.

>>> import torch
>>> pred, target = torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.0, 3.0]]]])
>>> per_sample_loss(pred, target, "l2", huber_c=None).tolist()
[4.5]
>>> round(per_sample_loss(pred, target, "smooth_l1", huber_c=torch.tensor([1.0])).item(), 4)
2.1623
"""
from __future__ import annotations

import torch

LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "snr")


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` at each timestep, float32."""
    abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return abar / (1.0 - abar)


def huber_threshold(loss_type: str, schedule: str, huber_c: float, alphas_cumprod: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor | None:
    """Per-sample huber threshold ``c`` (``None`` for l2, which ignores it, as kohya does)."""
    if loss_type == "l2":
        return None
    if schedule == "constant":
        return torch.full(timesteps.shape, huber_c, device=timesteps.device)
    if schedule == "snr":
        abar = alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigma = ((1.0 - abar) / abar) ** 0.5
        return (1.0 - huber_c) / (1.0 + sigma) ** 2 + huber_c
    raise ValueError(f"unknown huber_schedule {schedule!r}. Valid: {', '.join(HUBER_SCHEDULES)}")


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                    huber_c: torch.Tensor | None) -> torch.Tensor:
    """Loss of each sample in the batch, averaged over its elements (shape ``(batch,)``)."""
    pred, target = pred.float(), target.float()
    if loss_type == "l2":
        elementwise = (pred - target) ** 2
    elif loss_type in ("huber", "smooth_l1"):
        c = huber_c.view(-1, *([1] * (pred.dim() - 1))).to(pred.device)
        root = torch.sqrt((pred - target) ** 2 + c ** 2) - c
        elementwise = 2 * c * root if loss_type == "huber" else 2 * root
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}. Valid: {', '.join(LOSS_TYPES)}")
    return elementwise.mean(dim=tuple(range(1, pred.dim())))


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Per-sample min-SNR-gamma loss weights (see the module docstring)."""
    signal_to_noise = snr(alphas_cumprod, timesteps)
    clipped = torch.clamp(signal_to_noise, max=gamma)
    if prediction_type == "epsilon":
        return clipped / signal_to_noise
    if prediction_type == "v_prediction":
        return clipped / (signal_to_noise + 1.0)
    raise ValueError(f"min-SNR weighting needs epsilon or v_prediction, not {prediction_type!r}")


def prediction_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, from the scheduler's ``prediction_type``."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} in the noise scheduler config")


def offset_noise(latents: torch.Tensor, noise_offset: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise plus ``noise_offset`` times a per-channel constant (Guttenberg's offset
    noise, as in the diffusers examples), drawn from ``generator``."""
    # drawn on the generator's device (CPU): the same numbers on every accelerator
    noise = torch.randn(latents.shape, generator=generator, device=generator.device)
    if noise_offset:
        channel_shift = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                                    device=generator.device)
        noise = noise + noise_offset * channel_shift
    return noise.to(latents.device, latents.dtype)
