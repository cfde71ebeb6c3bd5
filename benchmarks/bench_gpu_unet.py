"""SD v1.5 UNet training steps against the GPU's limit: LoRA and full fine-tune at 512 px in bf16
with SDPA, on the published architecture with random weights (valid for speed and memory only).

For each step: seconds per step, peak allocated memory (beside the memory plan's estimate,
``lora_core.gpu.estimate_step_memory``), model FLOPs counted by torch's FlopCounterMode, achieved
TFLOP/s and model-FLOPs utilisation (MFU) against the card's dense bf16 peak; the target is 40%.
Published speeds are set beside ours at the FLOPs their settings cost, each as MFU on its own
card where the card is known.

    python benchmarks/bench_gpu_unet.py                 # on a GPU: benchmarks/results/bench_gpu_unet.{json,png}
    python benchmarks/bench_gpu_unet.py --dry-run --out /tmp/x   # the same code on the CPU, seconds
"""
from __future__ import annotations

import gc
from dataclasses import asdict, replace

import gpu_bench
from gpu_bench import StepSetup

SETUPS = {"lora r16": StepSetup("lora", rank=16, batch=4), "lora r128": StepSetup("lora", rank=128, batch=4),
          "full fine-tune": StepSetup("full", batch=4)}
# Speeds others reported, with the settings that set their FLOPs. The card is needed to turn a
# speed into MFU: unknown for kohya's figure (fill it in here when known); S4 ran on Kaggle,
# whose P100 is assumed. S4's batch, resolution and rank are not reported: 1, 512 and 16 assumed.
REFERENCES = (
    {"name": "kohya (reported)", "s_per_step": 1 / 1.11, "setup": StepSetup("lora", rank=128, batch=3, resolution=768,
                                                                            precision="fp16"), "card": None},
    {"name": "S4 (reported)", "s_per_step": 9.3, "setup": StepSetup("lora", rank=16, batch=1, precision="fp16"),
     "card": "Tesla P100-PCIE-16GB (assumed: Kaggle)"},
)


def measure(name: str, setup: StepSetup, args, device) -> dict:
    """One setup on a fresh random model: timing, memory, FLOPs, efficiency and the plan's estimate."""
    from lora_core.gpu import StudySettings, estimate_step_memory

    setup = gpu_bench.adapt_setup(setup, args.dry_run, device)
    base = gpu_bench.build_base(args.dry_run, device)
    timing = gpu_bench.time_steps(gpu_bench.trainer_step(base, setup, device), device, args.warmup, args.steps)
    del base
    gc.collect()
    flops = gpu_bench.count_step_flops(setup, args.dry_run)
    device_name = gpu_bench.header(device, args.dry_run)["device"]
    row = {"name": name, **asdict(setup), **timing, **gpu_bench.efficiency(flops, timing, device_name,
                                                                          setup.precision, setup.batch)}
    if not args.dry_run:
        study = StudySettings(method=setup.method, resolution=setup.resolution, images_per_step=setup.batch,
                              rank=setup.rank, optimizer="adamw")
        row["estimated_peak_bytes"] = estimate_step_memory(study, setup.batch, True, setup.checkpointing, "adamw").total
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
    return row


def references(dry_run: bool) -> list[dict]:
    """Each reported speed as achieved TFLOP/s at its settings' FLOPs, and MFU on its card."""
    rows = []
    for reference in REFERENCES:
        setup = reference["setup"] if not dry_run else replace(reference["setup"], resolution=32, batch=1)
        flops = gpu_bench.count_step_flops(setup, dry_run)
        card = reference["card"] or "unknown card"
        rows.append({"name": reference["name"], **asdict(setup), "card": card,
                     **gpu_bench.efficiency(flops, {"s_per_step": reference["s_per_step"]}, card, setup.precision,
                                            setup.batch), "s_per_step": reference["s_per_step"]})
    return rows


def draw(payload: dict, plt):
    figure, (speed, utilisation) = plt.subplots(1, 2, figsize=(10, 3.8))
    rows = payload["steps"]
    names = [row["name"] for row in rows]
    speed.barh(names, [row["s_per_step"] / row["batch"] for row in rows])
    speed.set_xlabel("seconds per image (median step / batch)")
    ours = [(row["name"], row["mfu"]) for row in rows if row["mfu"] is not None]
    theirs = [(row["name"], row["mfu"]) for row in payload["references"] if row["mfu"] is not None]
    if ours + theirs:
        labels, values = zip(*(ours + theirs))
        utilisation.barh(labels, [100 * v for v in values], color=["C0"] * len(ours) + ["C7"] * len(theirs))
        utilisation.axvline(100 * gpu_bench.TARGET_MFU, color="C3", linestyle="--", label="target 40%")
        utilisation.legend(loc="lower right", fontsize=8)
    utilisation.set_xlabel("model-FLOPs utilisation, % of the card's dense peak")
    return figure


def main(argv: list[str] | None = None) -> dict:
    args = gpu_bench.parse_args(__doc__.split("\n\n")[0], argv)
    device = gpu_bench.bench_device(args.dry_run)
    steps = [measure(name, setup, args, device) for name, setup in SETUPS.items()]
    payload = {"benchmark": "bench_gpu_unet", **gpu_bench.header(device, args.dry_run),
               "target_mfu": gpu_bench.TARGET_MFU, "reference_tflop_per_image": gpu_bench.REFERENCE_TFLOP,
               "steps": steps, "references": references(args.dry_run)}
    gpu_bench.write_results("bench_gpu_unet", payload, args.out, draw)
    for row in steps:
        mfu = f"{100 * row['mfu']:.0f}%" if row["mfu"] is not None else "n/a"
        print(f"{row['name']:16s} {row['s_per_step']:.3f} s/step, MFU {mfu}, {row['step_tflop_per_image']:.2f} TFLOP/image")
    return payload


if __name__ == "__main__":
    main()
