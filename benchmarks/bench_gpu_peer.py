"""Our trainer beside the diffusers example ``train_text_to_image_lora.py``: the same model (SD
v1.5's architecture, random weights), images, batch, rank and precision; steps per second and peak
memory as ratios.

The example's script needs a hub model and a dataset, so its training step is reproduced here and
labelled so: per step it encodes the images with the VAE and the captions with the text encoder (it
caches neither), adds noise at random timesteps, predicts with the LoRA UNet (rank r, alpha r,
gaussian init, attention projections; trainables cast to fp32), takes the MSE to the noise in
float32, clips gradients at 1.0 and steps AdamW. A second row runs the same reproduction on cached
inputs, to separate caching from the step itself. Ours is the trainer's step
(``gpu_bench.trainer_step``, cached latents and text embeddings as ``train()`` caches them) and
``train()`` itself for a few steps (its own per-step times).

    python benchmarks/bench_gpu_peer.py                 # on a GPU: benchmarks/results/bench_gpu_peer.{json,png}
    python benchmarks/bench_gpu_peer.py --dry-run --out /tmp/x
"""
from __future__ import annotations

import copy
import gc
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import gpu_bench
import torch
from gpu_bench import StepSetup

PEER = "reproduction of diffusers examples/text_to_image/train_text_to_image_lora.py's training step"


def example_step(base, setup: StepSetup, pixels: torch.Tensor, input_ids: torch.Tensor, cached: bool):
    """The example's step as described in the module docstring (its own code, not ours)."""
    import torch.nn.functional as F
    from peft import LoraConfig

    from lora_core.adapters.lora import ATTENTION_TARGETS

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[setup.precision]
    for module in (base.unet, base.vae, base.text_encoder):
        module.requires_grad_(False).to(dtype=dtype)
    base.unet.add_adapter(LoraConfig(r=setup.rank, lora_alpha=setup.rank, init_lora_weights="gaussian",
                                     target_modules=list(ATTENTION_TARGETS)))
    lora = [p for p in base.unet.parameters() if p.requires_grad]
    for param in lora:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(lora, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scheduler, scale = base.noise_scheduler, base.vae.config.scaling_factor
    with torch.no_grad():
        cached_latents = base.vae.encode(pixels.to(dtype)).latent_dist.sample() * scale
        cached_text = base.text_encoder(input_ids)[0]

    def step() -> float:
        with torch.autocast(pixels.device.type, dtype=dtype, enabled=setup.precision != "fp32"):
            latents = cached_latents if cached else base.vae.encode(pixels.to(dtype)).latent_dist.sample() * scale
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=latents.device)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            text = cached_text if cached else base.text_encoder(input_ids)[0]
            prediction = base.unet(noisy, timesteps, text, return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), noise.float(), reduction="mean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def random_images(folder: Path, count: int, resolution: int) -> Path:
    """``count`` random RGB images with captions, for ``train()``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        pixels = generator.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
        (folder / f"{index:03d}.txt").write_text(f"a photo of an emoji face {index}")
    return folder


def ours_through_train(base, setup: StepSetup, args, device) -> dict:
    """``train()`` itself on random images: the median of its recorded per-step times."""
    from lora_core.train import TrainConfig, train

    root = Path(tempfile.mkdtemp(prefix="bench-peer-"))
    images = random_images(root / "images", 2 * setup.batch, setup.resolution)
    config = TrainConfig(options={"rank": setup.rank, "alpha": float(setup.rank)}, batch_size=setup.batch,
                         data={"folder": str(images), "resolution": setup.resolution}, learning_rate=1e-4,
                         max_train_steps=args.warmup + args.steps,
                         mixed_precision="no" if setup.precision == "fp32" else setup.precision)
    record = train(config, base=base, runs_root=root / "runs", progress=False)
    timed = [row["s_per_it"] for row in record.metrics()[args.warmup:]]
    return {"name": "ours: train()", "s_per_step": statistics.median(timed), "peak_memory_bytes": None}


def inputs(base, setup: StepSetup, device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(setup.batch, 3, setup.resolution, setup.resolution, generator=generator) * 2 - 1
    ids = base.tokenizer([f"a photo of an emoji face {i}" for i in range(setup.batch)], padding="max_length",
                         max_length=base.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return pixels.to(device), ids.to(device)


def timed_alone(make_step, base, args, device) -> dict:
    """Time the step ``make_step`` builds on a copy of ``base``; the copy is gone before the next
    one, so each peak holds one trained model beside the shared base."""
    step = make_step(copy.deepcopy(base))
    timing = gpu_bench.time_steps(step, device, args.warmup, args.steps)
    del step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return timing


def draw(payload: dict, plt):
    figure, (speed, memory) = plt.subplots(1, 2, figsize=(10, 3.2))
    rows = payload["rows"]
    speed.barh([r["name"] for r in rows], [r["steps_per_s_vs_ours"] for r in rows])
    speed.axvline(1.0, color="C3", linestyle="--")
    speed.set_xlabel("steps per second, relative to ours (trainer step)")
    with_memory = [r for r in rows if r.get("peak_memory_vs_ours") is not None]
    memory.barh([r["name"] for r in with_memory], [r["peak_memory_vs_ours"] for r in with_memory])
    memory.set_xlabel("peak memory, relative to ours")
    return figure


def main(argv: list[str] | None = None) -> dict:
    args = gpu_bench.parse_args(__doc__.split("\n\n")[0], argv)
    device = gpu_bench.bench_device(args.dry_run)
    setup = gpu_bench.adapt_setup(StepSetup("lora", rank=16, batch=4), args.dry_run, device)
    base = gpu_bench.build_base(args.dry_run, device)
    pixels, ids = inputs(base, setup, device)
    steps = {"ours: trainer step (cached latents and text)": lambda model: gpu_bench.trainer_step(model, setup, device),
             "peer: example step (encodes every step)": lambda model: example_step(model, setup, pixels, ids, False),
             "peer: example step on cached inputs": lambda model: example_step(model, setup, pixels, ids, True)}
    rows = [{"name": name, **timed_alone(make_step, base, args, device)} for name, make_step in steps.items()]
    rows.append(ours_through_train(base, setup, args, device))
    ours = rows[0]
    for row in rows:
        row["steps_per_s_vs_ours"] = ours["s_per_step"] / row["s_per_step"]
        row["peak_memory_vs_ours"] = (row["peak_memory_bytes"] / ours["peak_memory_bytes"]
                                      if row["peak_memory_bytes"] and ours["peak_memory_bytes"] else None)
    payload = {"benchmark": "bench_gpu_peer", **gpu_bench.header(device, args.dry_run), "peer": PEER,
               "setup": asdict(setup), "rows": rows}
    gpu_bench.write_results("bench_gpu_peer", payload, args.out, draw)
    for row in rows:
        print(f"{row['name']:48s} {row['s_per_step']:.3f} s/step, x{row['steps_per_s_vs_ours']:.2f} steps/s vs ours")
    return payload


if __name__ == "__main__":
    main()
