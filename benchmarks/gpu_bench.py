"""What the GPU benchmarks share: SD v1.5's UNet with random weights, the trainer's step, model
FLOPs, timing and peak memory, and results written as JSON plus a plot stamped with the date, the
GPU and the library versions.

Random weights are valid for speed and memory, never for quality; every result says so. With
``--dry-run`` a benchmark runs the same code on the CPU on the tiny SD-architecture model at 32 px
for two steps (the tests use it); its numbers mean nothing and say so.

    python benchmarks/gpu_bench.py plot benchmarks/results/bench_gpu_unet.json   # redraw a plot
"""
from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: this checkout's lora_core
    sys.path.insert(0, str(REPO))

RESULTS_DIR = REPO / "benchmarks" / "results"
RANDOM_WEIGHTS = "SD v1.5's published architecture with random weights: valid for speed and memory, not quality"
DRY_RUN = "dry run: the tiny SD-architecture model on the CPU at 32 px, two steps; the numbers mean nothing"
# Dense tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, by a substring of
# the device name (first match wins); None where the card has no native bf16.
PEAK_TFLOPS = (("H200", 989.4, 989.4), ("H100 PCIe", 756.0, 756.0), ("H100", 989.4, 989.4), ("A100", 312.0, 312.0),
               ("L40S", 362.1, 362.1), ("L4", 121.0, 121.0), ("RTX 4090", 165.2, 165.2), ("V100", None, 125.0),
               ("T4", None, 65.0), ("P100", None, 18.7))
TARGET_MFU = 0.40
# The brief's per-image model FLOPs of SD v1.5's UNet at 512 px, beside the counted ones.
REFERENCE_TFLOP = {"forward": 0.80, "lora_step": 1.73}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The card's dense peak for ``precision`` (bf16 or fp16), None when unknown or on a CPU.

    >>> peak_tflops("NVIDIA H200", "bf16"), peak_tflops("Tesla T4", "bf16"), peak_tflops("x86_64", "fp32")
    (989.4, None, None)
    """
    for name, bf16, fp16 in PEAK_TFLOPS:
        if name in device_name:
            return {"bf16": bf16, "fp16": fp16}.get(precision)
    return None


@dataclass(frozen=True)
class StepSetup:
    """One benchmarked training step."""

    method: str = "lora"            # lora (rank-r LoRA on the attention projections) or full (the whole UNet)
    rank: int = 16
    batch: int = 4
    resolution: int = 512
    precision: str = "bf16"         # bf16, fp16 or fp32 (no autocast)
    checkpointing: bool = False


def parse_args(description: str, argv: list[str] | None, add: Callable | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dry-run", action="store_true", help=DRY_RUN)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder of the JSON and the plot")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cuDNN autotune)")
    if add:
        add(parser)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.steps, args.warmup = 2, 1
    return args


def bench_device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the GPU benchmarks need one (use --dry-run to check the code on a CPU)")
    from lora_core.gpu import require_usable

    require_usable()  # a P100 under a CUDA 12.8 torch stops here with the fix
    return torch.device("cuda")


@functools.lru_cache(maxsize=1)
def _tiny_base():
    from lora_core.models import build_tiny_random

    return build_tiny_random(seed=0)


def build_base(dry_run: bool, device: torch.device):
    """SD v1.5's architecture with random weights, built on ``device`` (a fresh copy of the tiny
    model for a dry run): nothing else stays resident to blur the next peak."""
    from lora_core import sd15

    base = copy.deepcopy(_tiny_base()) if dry_run else sd15.build_random(seed=0, device=device)
    for module in (base.unet, base.vae, base.text_encoder):
        module.to(device)
    return base


def adapt_setup(setup: StepSetup, dry_run: bool, device: torch.device) -> StepSetup:
    """The setup as this device runs it: fp32 at 32 px on a dry run, fp16 where bf16 is not native."""
    from lora_core.gpu import mixed_precision_for, read_device_properties

    if dry_run:  # the tiny model's 32 px, unless a dry grid asks for its own small sizes
        resolution = setup.resolution if setup.resolution <= 64 else 32
        return StepSetup(setup.method, min(setup.rank, 8), min(setup.batch, 2), resolution, "fp32", setup.checkpointing)
    if setup.precision == "bf16" and mixed_precision_for(read_device_properties(device.index or 0)) != "bf16":
        return StepSetup(**{**asdict(setup), "precision": "fp16"})
    return setup


def trainer_step(base, setup: StepSetup, device: torch.device) -> Callable[[], float]:
    """One optimizer step of our trainer's pieces on ``base`` (changed in place: attach once per
    base): the method's adapter, ``lora_core.train.diffusion_loss`` on cached latents and text
    embeddings, AdamW; frozen weights in half precision and trainables in fp32, as ``train()``."""
    from lora_core.adapters import get_adapter, trainable_parameters
    from lora_core.optim import build_optimizer
    from lora_core.train import MIXED_PRECISION, TrainConfig, _set_attention, diffusion_loss

    method, options = (("lora", {"rank": setup.rank, "alpha": float(setup.rank)}) if setup.method == "lora"
                       else ("dreambooth", {}))
    precision = "no" if setup.precision == "fp32" else setup.precision
    config = TrainConfig(method=method, options=options, data={"folder": "random-latents"}, batch_size=setup.batch,
                         mixed_precision=precision, gradient_checkpointing=setup.checkpointing)
    adapter = get_adapter(method)(config)
    adapter.attach(base)
    dtype = MIXED_PRECISION[precision]
    if dtype != torch.float32:
        base.unet.to(dtype=dtype)
    groups = adapter.param_groups(base)
    for param in trainable_parameters(groups):
        param.data = param.data.float()
    optimizer = build_optimizer("adamw", groups)
    _set_attention(base.unet, "sdpa")
    if setup.checkpointing:
        base.unet.enable_gradient_checkpointing()
    base.unet.train()
    side, width = setup.resolution // base.vae_scale_factor, base.unet.config.cross_attention_dim
    latents = torch.randn(setup.batch, 4, side, side, device=device)
    text = torch.randn(setup.batch, 77, width, device=device, dtype=dtype)
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=precision != "no"):
            loss = diffusion_loss(base.unet, base.noise_scheduler, latents, text, generator, config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return step


def time_steps(step: Callable[[], object], device: torch.device, warmup: int, steps: int) -> dict[str, float]:
    """Median and mean seconds per step after ``warmup`` steps, and the peak allocated bytes of the
    timed steps (CUDA; None on the CPU, where the process's memory is not the step's)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"s_per_step": statistics.median(seconds), "s_per_step_mean": statistics.fmean(seconds),
            "peak_memory_bytes": peak}


def count_step_flops(setup: StepSetup, dry_run: bool) -> dict[str, float]:
    """Model FLOPs of one training step (forward and backward, matmuls and convolutions as torch's
    FlopCounterMode counts them) and of one forward, on the meta device: no memory, no GPU."""
    from torch.utils.flop_counter import FlopCounterMode

    from lora_core import sd15
    from lora_core.models import TINY_UNET

    if dry_run:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            unet = UNet2DConditionModel(**TINY_UNET)
    else:
        unet = sd15.build_components("meta")[0]
    unet.requires_grad_(setup.method == "full")
    if setup.method == "lora":
        from peft import LoraConfig

        from lora_core.adapters.lora import ATTENTION_TARGETS

        unet.add_adapter(LoraConfig(r=setup.rank, lora_alpha=setup.rank, target_modules=list(ATTENTION_TARGETS)))
    side = setup.resolution // 8 if not dry_run else setup.resolution // 4
    latents = torch.empty(setup.batch, 4, side, side, device="meta")
    text = torch.empty(setup.batch, 77, unet.config.cross_attention_dim, device="meta")
    timesteps = torch.zeros(setup.batch, dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as forward_only:
        with torch.no_grad():
            unet(latents, timesteps, text)
    with FlopCounterMode(display=False) as whole:
        unet(latents, timesteps, text).sample.float().pow(2).mean().backward()
    return {"step_flops": float(whole.get_total_flops()), "forward_flops": float(forward_only.get_total_flops())}


def efficiency(flops: dict[str, float], timing: dict[str, float], device_name: str, precision: str,
               batch: int) -> dict[str, float | None]:
    """Achieved TFLOP/s, model-FLOPs utilisation against the card's peak, and TFLOP per image."""
    achieved = flops["step_flops"] / timing["s_per_step"] / 1e12
    peak = peak_tflops(device_name, precision)
    return {"achieved_tflops": achieved, "peak_tflops": peak, "mfu": achieved / peak if peak else None,
            "step_tflop_per_image": flops["step_flops"] / batch / 1e12,
            "forward_tflop_per_image": flops["forward_flops"] / batch / 1e12}


def header(device: torch.device, dry_run: bool) -> dict[str, object]:
    """Date, device, library versions, and what the weights are."""
    from lora_core.environment import environment_info

    info = environment_info(device)
    return {"date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "device": info["device_name"] if device.type == "cpu" else info["gpu"],
            "dry_run": dry_run, "weights": DRY_RUN if dry_run else RANDOM_WEIGHTS, "versions": info}


def write_results(name: str, payload: dict, out_dir: Path, draw: Callable) -> dict[str, Path]:
    """``<out_dir>/<name>.json`` (atomically) and, where matplotlib is installed, ``<name>.png``
    drawn by ``draw(payload, axes_factory)``; the GPU image may lack matplotlib: then redraw here
    with ``python benchmarks/gpu_bench.py plot <json>``."""
    from lora_core.io import atomic_write_json

    written = {"json": atomic_write_json(out_dir / f"{name}.json", payload)}
    try:
        written["png"] = plot(payload, out_dir / f"{name}.png", draw)
    except ImportError:
        print(f"matplotlib is missing: redraw with `python benchmarks/gpu_bench.py plot {written['json']}`")
    for kind, path in written.items():
        print(f"{kind}: {path}")
    return written


def plot(payload: dict, path: Path, draw: Callable) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # a script, not a notebook: no figure to capture
    import matplotlib.pyplot as plt

    from lora_core.io import atomic_path

    figure = draw(payload, plt)
    versions = payload["versions"]
    figure.suptitle(f"{payload['device']}, {payload['date_utc'][:10]}; torch {versions['torch']}, diffusers "
                    f"{versions['diffusers']}\n{payload['weights']}", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Redraw a GPU benchmark's plot from its JSON.")
    parser.add_argument("command", choices=["plot"])
    parser.add_argument("json", type=Path)
    args = parser.parse_args(argv)
    payload = json.loads(args.json.read_text())
    module = __import__(payload["benchmark"])
    print(plot(payload, args.json.with_suffix(".png"), module.draw))


if __name__ == "__main__":
    main()
