"""Throughput of the metric networks, before and after their speed-ups, and the FID network on two cores.

Every network is timed in this one process on one torch thread, interleaved over ``--rounds``
rounds: CPU seconds per image (``time.process_time``: little changed by other processes' load)
and wall images/s. "As shipped" rows run the networks as their packages ship them (the
TorchScript FID Inception; EfficientNet-Lite0 with its batch norms, 16 images a batch) beside
``lora_core.metrics.backbones`` (batch norms folded into the convolutions, channels-last, each
network's fastest batch), so the speed-up is a ratio measured side by side. Then the FID network
on two cores: two processes with one thread each, on half the images each, at the same time, and
one process with two threads (``OMP_WAIT_POLICY=PASSIVE``), with the load beside them.

    .venv/bin/python benchmarks/bench_metrics.py [--n 32] [--size 32] [--rounds 2]

Writes ``benchmarks/results/metrics.json`` and ``metrics.png``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from _record import RESULTS_DIR, load_average, save_figure, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def as_shipped() -> dict[str, Callable[[torch.Tensor], object]]:
    """The FID Inception from its TorchScript file and the unfolded EfficientNet-Lite0, batch 16."""
    from efficientnet_lite_pytorch import EfficientNet

    from lora_core.metrics.backbones import EfficientNetLite0, InceptionFID, _site_file
    from lora_core.metrics.preprocess import resize_for_backbone

    scripted = torch.jit.load(str(_site_file(*InceptionFID.weights_file)), map_location="cpu").eval()
    effnet = EfficientNet.from_name("efficientnet-lite0")
    effnet.load_state_dict(torch.load(_site_file(*EfficientNetLite0.weights_file), map_location="cpu",
                                      weights_only=True))
    effnet.eval()

    def batched(network, size: int, scale: Callable[[torch.Tensor], torch.Tensor]):
        @torch.inference_mode()
        def run(images: torch.Tensor):
            return [network(scale(resize_for_backbone(images[i:i + 16], size))) for i in range(0, len(images), 16)]
        return run

    return {"inception (TorchScript, as shipped)": batched(scripted, 299, lambda x: x.mul(255).div(128).sub(1)),
            "effnet-lite0 (unfolded, batch 16, as shipped)": batched(
                lambda x: effnet._fc(effnet.extract_features(x).mean(dim=(2, 3))), 224,
                lambda x: x.mul(255).sub(127).div(128))}


def workloads(images: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Name -> a call that processes ``len(images)`` images (pairs for the perceptual metrics)."""
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.lpips import get_perceptual

    jobs: dict[str, Callable[[], object]] = {}
    for name in ("inception", "effnet-lite0", "pixels-8"):
        backbone = get_backbone(name)
        jobs[f"{name} ({backbone.input_size} px)"] = lambda b=backbone: b._run(images, "images")
    for name, run in as_shipped().items():
        jobs[name] = lambda r=run: r(images)
    shifted = images.roll(1, dims=-1)
    for name in ("st-lpips-alex", "st-lpips-vgg"):
        metric = get_perceptual(name)
        jobs[f"{name} pairs ({metric.input_size(images.shape[-1])} px)"] = (
            lambda m=metric: m.distances(images, shifted))
    return jobs


def timed(jobs: dict[str, Callable[[], object]], n: int, rounds: int) -> list[dict]:
    for job in jobs.values():          # warm-up: weights loaded, kernels chosen
        job()
    totals = {name: [0.0, 0.0] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            job()
            totals[name][0] += time.perf_counter() - wall
            totals[name][1] += time.process_time() - cpu
    return [{"workload": name, "cpu_s_per_image": cpu / (n * rounds), "wall_images_per_s": n * rounds / wall}
            for name, (wall, cpu) in totals.items()]


def inception_child(n: int, size: int) -> None:
    """Features of ``n`` images with the policy's threads; prints the wall seconds of the timed pass."""
    from lora_core.metrics.backbones import get_backbone

    backbone = get_backbone("inception")
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    backbone._run(images[:4], "images")
    start = time.perf_counter()
    backbone._run(images, "images")
    print(json.dumps({"seconds": time.perf_counter() - start}))


def two_cores(n: int, size: int) -> dict:
    """The FID network's images/s on two cores: two one-thread processes at once, each on n/2
    images, and one two-thread process on n (passive waiting)."""
    def launch(images: int, threads: int) -> subprocess.Popen:
        env = {**os.environ, "LORA_CORE_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
               "OMP_WAIT_POLICY": "PASSIVE"}
        return subprocess.Popen([sys.executable, __file__, "--inception-child", str(images), "--size", str(size)],
                                stdout=subprocess.PIPE, text=True, env=env)

    def seconds(process: subprocess.Popen) -> float:
        out, _ = process.communicate()
        return json.loads(out.strip().splitlines()[-1])["seconds"]

    load = load_average()
    pair = [launch(n // 2, 1) for _ in range(2)]
    two_processes = 2 * (n // 2) / max(seconds(p) for p in pair)
    two_threads = n / seconds(launch(n, 2))
    return {"images": n, "two_processes_images_per_s": two_processes, "two_threads_images_per_s": two_threads,
            "load_before": load, "load_after": load_average()}


def figure(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["rows"], key=lambda r: r["cpu_s_per_image"])
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(rows) + 1.2))
    ax.barh([r["workload"] for r in rows], [1 / r["cpu_s_per_image"] for r in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("images per CPU second, one thread (log scale)")
    return save_figure(fig, ax, result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per timed call")
    parser.add_argument("--size", type=int, default=32, help="source image side in pixels")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    parser.add_argument("--inception-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from lora_core.threads import apply_thread_policy

    apply_thread_policy()
    if args.inception_child:
        return inception_child(args.inception_child, args.size)
    load_before = load_average()
    images = torch.randint(0, 256, (args.n, 3, args.size, args.size), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    rows = timed(workloads(images), args.n, args.rounds)
    path = write_result("metrics", {"rows": rows, "n": args.n, "size": args.size, "rounds": args.rounds,
                                    "fid_two_cores": two_cores(args.n, args.size)}, load_before)
    figure(json.loads(path.read_text()), RESULTS_DIR / "metrics.png")
    print(f"{args.n} images of {args.size} px, {args.rounds} rounds, torch threads={torch.get_num_threads()}")
    for row in rows:
        print(f"{row['workload']:48s} {row['cpu_s_per_image']:.4f} CPU s/image {row['wall_images_per_s']:8.2f} images/s")
    print(json.dumps(json.loads(path.read_text())["fid_two_cores"]))


if __name__ == "__main__":
    main()
