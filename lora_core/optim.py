"""Optimizers and learning-rate schedules, by name.

Optimizers: ``adamw`` (torch), ``adamw8bit`` (bitsandbytes; 8-bit state for tensors of
4096 elements or more, also on CPU), ``prodigy`` (prodigyopt). Prodigy estimates the step size
``d`` itself and uses each group's ``lr`` as a multiplier of ``d``: ``lr=1.0`` is the usual
setting, and because ``d`` is shared, every group must have the same ``lr`` (or 0) — so separate
UNet and text-encoder learning rates are refused with Prodigy (prodigyopt raises at the first
step; we refuse before training). Prodigy runs with :data:`PRODIGY_SETTINGS`, its README's advice
for diffusion models; after each step :func:`step_size_estimate` reads its current ``d`` for the
run's metrics.

Schedules: ``constant``, ``linear``, ``cosine``, ``cosine_with_restarts`` (``num_cycles`` hard
restarts), each after a linear warmup of ``warmup_steps`` (diffusers.optimization.get_scheduler
with ``constant_with_warmup`` for a warmed-up constant).

>>> import torch
>>> w = torch.nn.Parameter(torch.zeros(2))
>>> opt = build_optimizer("adamw", [{"name": "unet", "params": [w], "lr": 1.0}])
>>> sched = build_scheduler("cosine_with_restarts", opt, total_steps=8, warmup_steps=0, num_cycles=2)
>>> [round(lr, 3) for lr in lr_curve(sched, 8)]
[1.0, 0.854, 0.5, 0.146, 1.0, 0.854, 0.5, 0.146]
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts")
# prodigyopt's README for diffusion models: safeguard_warmup, bias correction (and weight decay
# 0.01, a TrainConfig field); d_coef scales the estimated d and stays at its default 1.0, the
# README's advice being to change d_coef, never lr, when d comes out too small or too large.
PRODIGY_SETTINGS = {"d_coef": 1.0, "safeguard_warmup": True, "use_bias_correction": True}


def build_optimizer(name: str, param_groups: list[dict], weight_decay: float = 1e-2,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """The named optimizer over adapter ``param_groups`` (each with ``params`` and ``lr``)."""
    groups = [{"params": g["params"], "lr": g["lr"], "name": g.get("name", str(i))}
              for i, g in enumerate(param_groups)]
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "prodigy":
        from prodigyopt import Prodigy

        distinct = {g["lr"] for g in groups if g["lr"] != 0.0}
        if len(distinct) > 1:
            raise ValueError(
                "optimizer 'prodigy' shares one adapted step size d across parameter groups and uses "
                f"lr only as its multiplier, so all groups need the same lr (got {sorted(distinct)} "
                f"for {[g['name'] for g in groups]}); set text_encoder_learning_rate equal to "
                "learning_rate (usually 1.0) or 0")
        return Prodigy(groups, betas=betas, eps=eps, weight_decay=weight_decay, **PRODIGY_SETTINGS)
    raise ValueError(f"unknown optimizer {name!r}. Valid optimizers: {', '.join(OPTIMIZERS)}")


def step_size_estimate(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"d": ...}``: Prodigy's current estimate of the step size (one value shared by its groups;
    the step taken is ``d * lr``), for the metrics row of each step; ``{}`` for optimizers whose
    step size is the learning rate alone.

    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = build_optimizer("prodigy", [{"params": [w], "lr": 1.0}])
    Using decoupled weight decay
    >>> before = step_size_estimate(opt)
    >>> for _ in range(20):  # minimise |w|^2 / 2: d grows from d0 = 1e-6 as progress shows
    ...     w.grad = w.detach().clone()
    ...     opt.step()
    >>> before, round(step_size_estimate(opt)["d"], 10), step_size_estimate(torch.optim.SGD([w], lr=0.1))
    ({'d': 1e-06}, 1.7985e-06, {})
    """
    group = optimizer.param_groups[0]
    return {"d": float(group["d"])} if "d" in group else {}


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warmup length in steps: ``warmup_steps`` if set, else ``round(warmup_ratio * total_steps)``.

    >>> warmup_steps_for(400, 0, 0.1)
    40
    """
    return warmup_steps if warmup_steps else int(round(warmup_ratio * total_steps))


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    num_cycles: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """The named schedule over ``total_steps`` optimizer steps (see the module docstring)."""
    from diffusers.optimization import get_scheduler

    if name not in SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {name!r}. Valid schedulers: {', '.join(SCHEDULERS)}")
    if name == "constant":
        name = "constant_with_warmup"
    # num_cycles only reaches cosine_with_restarts; "cosine" is one half-wave down to 0
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         num_cycles=num_cycles)


def lr_curve(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The first group's lr at each of ``steps`` steps, read from the schedule's own lambda
    (the optimizer is not stepped; for plots and tests)."""
    base_lr = scheduler.base_lrs[0]
    return [base_lr * scheduler.lr_lambdas[0](step) for step in range(steps)]

