"""Throughput of the metric networks on this machine, as ratios to EfficientNet-Lite0.

Absolute images/s depend on whatever else shares the CPU, so every network is timed in this one
process, interleaved over ``--rounds`` rounds, and reported beside its ratio to EfficientNet
measured the same way. Not a test: nothing is asserted.

    python benchmarks/bench_metrics.py --n 8 --size 32 --rounds 2
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from lora_core.metrics.backbones import get_backbone
from lora_core.metrics.lpips import get_perceptual

REFERENCE = "effnet-lite0"


def workloads(images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Name -> a call that processes ``len(images)`` images (pairs for the perceptual metrics)."""
    jobs: dict[str, Callable[[], object]] = {}
    for name in ("effnet-lite0", "inception", "pixels-8"):
        backbone = get_backbone(name)
        jobs[f"{name} features ({backbone.input_size} px)"] = lambda b=backbone: b.features(images)
    shifted = images.roll(1, dims=-1)
    for name in ("st-lpips-alex", "st-lpips-vgg"):
        metric = get_perceptual(name)
        jobs[f"{name} pairs ({metric.input_size(images.shape[-1])} px)"] = (
            lambda m=metric: m.distances(images, shifted))
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images per timed call")
    parser.add_argument("--size", type=int, default=32, help="source image side in pixels")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    args = parser.parse_args()

    images = torch.randint(0, 256, (args.n, 3, args.size, args.size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    jobs = workloads(images)
    for job in jobs.values():          # warm-up: weights loaded, kernels chosen
        job()
    seconds = {name: 0.0 for name in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            start = time.perf_counter()
            job()
            seconds[name] += time.perf_counter() - start
    rate = {name: args.n * args.rounds / s for name, s in seconds.items()}
    reference = next(v for k, v in rate.items() if k.startswith(REFERENCE))
    print(f"{args.n} images of {args.size} px, {args.rounds} rounds, torch threads={torch.get_num_threads()}")
    print(f"{'workload':40s} {'images/s':>10s} {'vs EffNet':>10s}")
    for name, value in rate.items():
        print(f"{name:40s} {value:10.2f} {value / reference:10.2f}x")


if __name__ == "__main__":
    main()
