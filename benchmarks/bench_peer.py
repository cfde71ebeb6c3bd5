"""Training speed and peak memory against a reproduction of diffusers' example step.

**Reproduction of diffusers' example step**, not the example itself: diffusers'
``examples/text_to_image/train_text_to_image_lora.py`` imports torchvision, which cannot be
installed beside the CPU build of torch here, so its training step is reproduced with the same
parts: peft ``LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
target_modules=["to_k", "to_q", "to_v", "to_out.0"])`` on the UNet; AdamW over the LoRA
parameters; a ``DataLoader`` (``num_workers=0``: its default) whose transform opens and converts
each image in the main process at every access, resizes it (Lanczos: its default interpolation),
random-crops, converts to a tensor, normalises to [-1, 1] and tokenises the captions; per step,
the VAE encodes the batch and the text encoder the captions, the noise and timesteps are drawn,
the UNet predicts, MSE loss; ``accelerator.gather(loss.repeat(batch)).mean().item()`` and, after
the optimizer step, ``loss.detach().item()``: the two host syncs of each of its steps. As in the
example, ``clip_grad_norm_`` receives the ``filter`` of trainable parameters that the optimizer
already consumed, so it clips nothing.

Ours is :func:`lora_core.train.train` with the tiny profile's chapter-1 LoRA (attention only,
rank 16, alpha 16: the same LoRA), same model (``toy:base``), style set, batch and learning rate.

Precisions (``--precisions``): fp32 on both sides, and bf16 on both sides as the example's
``--mixed_precision bf16`` runs it (frozen weights in bf16, autocast from ``accelerator.prepare``;
its LoRA weights then bf16 too) and as ours runs it (``mixed_precision="bf16"``: frozen weights
bf16, LoRA weights and optimizer state fp32, with eager attention: on this CPU, which has
avx512_bf16 but no AMX, bf16 SDPA ran slower than fp32). Three comparisons are reported: fp32
against fp32, bf16 against bf16, and ours in bf16 against the example's default (fp32).

Each (side, precision) arm trains in its own child process (its peak memory, ``VmHWM``, is its
own), one torch thread each, once per round, the order turning each round, so a drift in the
machine's load hits every arm; the ratios are taken round by round. Reported: steps/s and images/s of the training
loop (the example's ``DataLoader`` keeps the last, partial batch of each epoch: 100 images make
six batches of 16 and one of 4, so its steps are on average smaller and images/s is the fair
rate), CPU seconds per image (``time.process_time``: little changed by other processes' load),
the whole run including set-up (ours encodes every training image once, the peer nothing ahead),
and peak memory.

    .venv/bin/python benchmarks/bench_peer.py [--steps 40] [--rounds 3] [--precisions fp32 bf16]

Writes ``benchmarks/results/peer.json`` and ``peer.png``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import RESULTS_DIR, load_average, peak_rss_bytes, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any Hugging Face library reads it
PEER_LABEL = "reproduction of diffusers' example step"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
PRECISIONS = ("fp32", "bf16")
OURS_ATTENTION = {"fp32": "sdpa", "bf16": "eager"}  # each precision's faster attention here (scratch measurement)
# (label, ours' precision, the peer's precision): the same precision both sides, and ours in bf16
# against the example's default (fp32)
COMPARISONS = (("fp32", "fp32", "fp32"), ("bf16", "bf16", "bf16"), ("ours bf16 / peer fp32 (its default)", "bf16", "fp32"))


def peer_dataloader(folder: Path, tokenizer, resolution: int, batch_size: int, seed: int):
    """The example's data path: images opened and transformed at every access, in the main process."""
    import numpy as np
    import torch
    from PIL import Image

    paths = sorted(folder.glob("*.png"))
    captions = [p.with_suffix(".txt").read_text().strip() for p in paths]
    generator = torch.Generator().manual_seed(seed)

    def transform(path: Path) -> torch.Tensor:   # Resize(lanczos), RandomCrop, ToTensor, Normalize([0.5], [0.5])
        image = Image.open(path).convert("RGB")
        width, height = image.size
        scale = resolution / min(width, height)
        image = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                             Image.LANCZOS)
        left = int(torch.randint(0, image.size[0] - resolution + 1, (1,), generator=generator))
        top = int(torch.randint(0, image.size[1] - resolution + 1, (1,), generator=generator))
        image = image.crop((left, top, left + resolution, top + resolution))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - 0.5) / 0.5

    def collate(indices: list[int]) -> dict[str, torch.Tensor]:
        ids = tokenizer([captions[i] for i in indices], max_length=tokenizer.model_max_length, padding="max_length",
                        truncation=True, return_tensors="pt").input_ids
        pixels = torch.stack([transform(paths[i]) for i in indices]).to(memory_format=torch.contiguous_format)
        return {"pixel_values": pixels.float(), "input_ids": ids}

    return torch.utils.data.DataLoader(list(range(len(paths))), batch_size=batch_size, shuffle=True,
                                       collate_fn=collate, num_workers=0, generator=generator)


def run_peer(folder: Path, steps: int, warmup: int, batch_size: int, rank: int, learning_rate: float,
             precision: str) -> dict:
    """The reproduced example loop; seconds of the timed steps (after ``warmup``). With
    ``precision="bf16"`` as the example's ``--mixed_precision bf16``: the frozen UNet, VAE and text
    encoder cast to bf16 before the adapter is added (peft gives the LoRA weights their layer's
    dtype; the example upcasts them to fp32 only for fp16), the batch cast for the VAE, and
    ``accelerator.prepare`` runs the UNet's forward under autocast."""
    import itertools

    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig

    from lora_core.models import load_base

    started = time.perf_counter()
    base = load_base("toy:base")
    unet, vae, text_encoder, noise_scheduler = base.unet, base.vae, base.text_encoder, base.noise_scheduler
    weight_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    accelerator = Accelerator(mixed_precision=precision if precision == "bf16" else "no")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.to(dtype=weight_dtype)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    lora_layers = filter(lambda p: p.requires_grad, unet.parameters())
    optimizer = torch.optim.AdamW(lora_layers, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    dataloader = peer_dataloader(folder, base.tokenizer, base.resolution, batch_size, seed=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    unet, optimizer, dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, dataloader, lr_scheduler)
    batches = itertools.chain.from_iterable(itertools.repeat(dataloader))
    unet.train()
    images = 0
    for step in range(warmup + steps):
        if step == warmup:
            loop_wall, loop_cpu = time.perf_counter(), time.process_time()
        batch = next(batches)
        images += len(batch["input_ids"]) if step >= warmup else 0
        with accelerator.accumulate(unet):
            latents = vae.encode(batch["pixel_values"].to(weight_dtype)).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            encoder_hidden_states = text_encoder(batch["input_ids"], return_dict=False)[0]
            model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
            accelerator.gather(loss.repeat(batch_size)).mean().item()       # host sync 1
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_layers, 1.0)               # the consumed filter: clips nothing
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
        loss.detach().item()                                                # host sync 2
    return {"loop_s": time.perf_counter() - loop_wall, "loop_cpu_s": time.process_time() - loop_cpu,
            "total_s": time.perf_counter() - started, "images": images,
            "lora_dtype": str(next(p for p in unet.parameters() if p.requires_grad).dtype)}


def run_ours(folder: Path, steps: int, warmup: int, batch_size: int, rank: int, learning_rate: float,
             precision: str) -> dict:
    """What :func:`lora_core.train.train` runs (its stages, in its order) on the same inputs; the
    steps after ``warmup`` timed, set-up (the latent and caption caches) and export in ``total_s``.
    ``precision="bf16"``: ``mixed_precision="bf16"`` with eager attention (on this CPU bf16 SDPA is
    slower than fp32; :data:`OURS_ATTENTION`)."""
    from lora_core import train as training
    from lora_core.data import DataConfig

    started = time.perf_counter()
    config = training.TrainConfig(method="lora", options={"rank": rank, "alpha": float(rank)}, base_model="toy:base",
                                  data=DataConfig(folder=str(folder), resolution=32), max_train_steps=warmup + steps,
                                  batch_size=batch_size, learning_rate=learning_rate,
                                  mixed_precision="bf16" if precision == "bf16" else "no",
                                  attention=OURS_ATTENTION[precision])
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as root:
        run = training.set_up(config, Path(root) / f"lora-{config.hash()}", training.load_inputs(config, None),
                              True, None)
        for step in range(warmup + steps):
            if step == warmup:
                loop_wall, loop_cpu = time.perf_counter(), time.process_time()
            training.end_of_step(run, training.train_step(run, step))
        timing = {"loop_s": time.perf_counter() - loop_wall, "loop_cpu_s": time.process_time() - loop_cpu,
                  "images": steps * batch_size, "lora_dtype": str(run.params[0].dtype)}
        training.finish(run, wall=timing["loop_s"])
    return {**timing, "total_s": time.perf_counter() - started}


def child(side: str, args: argparse.Namespace) -> None:
    """One side in this process: prints its JSON line (steps/s, CPU s/step, total s, peak RSS)."""
    from lora_core.paths import resolve
    from lora_core.threads import apply_thread_policy

    apply_thread_policy()
    folder = resolve(f"data/styles/{args.style}/train")
    run = run_ours if side == "ours" else run_peer
    timing = run(folder, args.steps, args.warmup, args.batch_size, args.rank, args.learning_rate, args.precision)
    print(json.dumps({"side": side, "precision": args.precision, "lora_dtype": timing["lora_dtype"],
                      "steps_per_s": args.steps / timing["loop_s"], "images_per_s": timing["images"] / timing["loop_s"],
                      "cpu_s_per_step": timing["loop_cpu_s"] / args.steps,
                      "cpu_s_per_image": timing["loop_cpu_s"] / timing["images"], "total_s": timing["total_s"],
                      "peak_rss_bytes": peak_rss_bytes(), "load": load_average()}))


def spawn(side: str, precision: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--child", side] + [f"--{k.replace('_', '-')}={v}" for k, v in (
        ("steps", args.steps), ("warmup", args.warmup), ("batch_size", args.batch_size), ("rank", args.rank),
        ("learning_rate", args.learning_rate), ("style", args.style), ("precision", precision))]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side} ({precision}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pair(ours: dict, peer: dict) -> dict:
    """Ours against the peer, one run each: > 1 means ours is faster or smaller."""
    return {"ours": ours, "peer": peer, "speed_ratio": ours["steps_per_s"] / peer["steps_per_s"],
            "image_speed_ratio": ours["images_per_s"] / peer["images_per_s"],
            "cpu_ratio": peer["cpu_s_per_image"] / ours["cpu_s_per_image"],
            "memory_ratio": peer["peak_rss_bytes"] / ours["peak_rss_bytes"]}


RATIOS = ("speed_ratio", "image_speed_ratio", "cpu_ratio", "memory_ratio")


def figure(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["steps/s", "images/s", "CPU s per image (inverse)", "peak memory (inverse)"]
    comparisons = result["comparisons"]
    fig, axes = plt.subplots(1, len(comparisons), figsize=(3.2 * len(comparisons) + 1.6, 2.8), sharey=True,
                             squeeze=False)
    for ax, comparison in zip(axes[0], comparisons):
        for i, key in enumerate(RATIOS):
            values = [p[key] for p in comparison["pairs"]]
            ax.plot(values, [i] * len(values), "o", color="tab:blue", alpha=0.6)
            ax.plot([comparison["summary"][key]["median"]], [i], "|", color="black", markersize=16)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.axvline(1.5, color="tab:green", lw=0.8, ls=":")
        ax.set_title(comparison["label"], fontsize=8)
        ax.set_xlabel("ours / peer (> 1: ours better)", fontsize=8)
    axes[0][0].set_yticks(range(len(RATIOS)), labels)
    machine = result["machine"]
    fig.suptitle(f"ours against a {PEER_LABEL}; {machine['date_utc'][:10]}, {machine['cpu']}, "
                 f"{machine['cpu_count']} cores, load {result['load_before']}-{result['load_after']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def measure(args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every (side, precision) run once per round, the order turning each round so that drift in
    the machine's load hits every arm; the runs per arm, in round order."""
    arms = [(side, precision) for precision in args.precisions for side in ("ours", "peer")]
    runs: dict[str, list[dict]] = {f"{side} {precision}": [] for side, precision in arms}
    for round_index in range(args.rounds):
        shift = round_index % len(arms)
        for side, precision in arms[shift:] + arms[:shift]:
            runs[f"{side} {precision}"].append(spawn(side, precision, args))
            print(json.dumps(runs[f"{side} {precision}"][-1]), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each arm, order turning")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--style", default="openmoji")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--child", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args)
    load_before = load_average()
    runs = measure(args)
    comparisons = []  # a list: the JSON keeps this order (fp32 first: the headline)
    for label, ours, peer in COMPARISONS:
        if f"ours {ours}" in runs and f"peer {peer}" in runs:
            pairs = [pair(o, p) for o, p in zip(runs[f"ours {ours}"], runs[f"peer {peer}"])]
            comparisons.append({"label": label, "pairs": pairs,
                                "summary": {key: _spread([p[key] for p in pairs]) for key in RATIOS}})
    settings = {k: getattr(args, k) for k in ("steps", "warmup", "rounds", "batch_size", "rank", "learning_rate",
                                              "style", "precisions")}
    headline = comparisons[0]
    path = write_result("peer", {"peer": PEER_LABEL, "settings": {**settings, "ours_attention": OURS_ATTENTION},
                                 "pairs": headline["pairs"], "summary": headline["summary"],
                                 "comparisons": comparisons}, load_before)
    figure(json.loads(path.read_text()), RESULTS_DIR / "peer.png")
    for comparison in comparisons:
        for key, spread in comparison["summary"].items():
            print(f"{comparison['label']}: {key}: median {spread['median']:.2f} (min {spread['min']:.2f}, max {spread['max']:.2f})")


def _spread(values: list[float]) -> dict[str, float]:
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


if __name__ == "__main__":
    main()
