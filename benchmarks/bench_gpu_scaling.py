"""How a LoRA step's cost grows on SD v1.5's architecture (random weights): seconds per step, peak
memory and model FLOPs against the LoRA rank (4-128), the batch and the resolution, each varied
around rank 16, batch 4, 512 px, in bf16 with SDPA.

    python benchmarks/bench_gpu_scaling.py              # on a GPU: benchmarks/results/bench_gpu_scaling.{json,png}
    python benchmarks/bench_gpu_scaling.py --dry-run --out /tmp/x
"""
from __future__ import annotations

import gc
from dataclasses import asdict, replace

import gpu_bench
from gpu_bench import StepSetup

CENTRE = StepSetup("lora", rank=16, batch=4, resolution=512)
GRID = {"rank": (4, 8, 16, 32, 64, 128), "batch": (1, 2, 4, 8), "resolution": (256, 384, 512, 640, 768)}
DRY_GRID = {"rank": (4, 8), "batch": (1, 2), "resolution": (32, 64)}


def measure(axis: str, value: int, args, device) -> dict:
    setup = gpu_bench.adapt_setup(replace(CENTRE, **{axis: value}), args.dry_run, device)
    base = gpu_bench.build_base(args.dry_run, device)
    timing = gpu_bench.time_steps(gpu_bench.trainer_step(base, setup, device), device, args.warmup, args.steps)
    del base
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    flops = gpu_bench.count_step_flops(setup, args.dry_run)
    device_name = gpu_bench.header(device, args.dry_run)["device"]
    return {"name": f"{axis} {value}", "axis": axis, **asdict(setup), **timing,
            **gpu_bench.efficiency(flops, timing, device_name, setup.precision, setup.batch)}


def draw(payload: dict, plt):
    axes_names = list(payload["grid"])
    figure, axes = plt.subplots(2, len(axes_names), figsize=(4 * len(axes_names), 6), squeeze=False)
    for column, axis in enumerate(axes_names):
        rows = [row for row in payload["rows"] if row["axis"] == axis]
        values = [row[axis] for row in rows]
        axes[0][column].plot(values, [row["s_per_step"] for row in rows], "o-")
        axes[0][column].set_ylabel("seconds per step")
        memory = [row["peak_memory_bytes"] for row in rows]
        if all(m is not None for m in memory):
            axes[1][column].plot(values, [m / 2**30 for m in memory], "o-", color="C1")
            axes[1][column].set_ylabel("peak memory, GiB")
        else:
            axes[1][column].plot(values, [row["step_tflop_per_image"] for row in rows], "o-", color="C2")
            axes[1][column].set_ylabel("TFLOP per image (counted)")
        for row_axes in axes:
            row_axes[column].set_xlabel(axis)
            if axis == "rank":
                row_axes[column].set_xscale("log", base=2)
    return figure


def main(argv: list[str] | None = None) -> dict:
    args = gpu_bench.parse_args(__doc__.split("\n\n")[0], argv)
    device = gpu_bench.bench_device(args.dry_run)
    grid = DRY_GRID if args.dry_run else GRID
    rows = [measure(axis, value, args, device) for axis, values in grid.items() for value in values]
    payload = {"benchmark": "bench_gpu_scaling", **gpu_bench.header(device, args.dry_run), "centre": asdict(CENTRE),
               "grid": {axis: list(values) for axis, values in grid.items()}, "rows": rows}
    gpu_bench.write_results("bench_gpu_scaling", payload, args.out, draw)
    return payload


if __name__ == "__main__":
    main()
