"""The three scales of every experiment, defined in one place.

``smoke`` runs in seconds for tests and CI (its numbers mean nothing), ``tiny`` is the
default offline CPU profile on the project's own pretrained tiny model and emoji style
sets, ``sd15`` is Stable Diffusion v1.5 at 512 px with the studies' settings.

>>> get_profile("tiny").name
'tiny'
>>> get_profile("smoke", train_steps=3).train_steps
3
"""
from __future__ import annotations

from dataclasses import dataclass

from lora_core.config import Config, option


# UNet module names (suffixes) a style LoRA wraps: diffusers' examples take attention only; kohya's
# LoRA-C3Lier (network_args conv_dim) adds the feed-forward, the transformer's projections and
# the ResNet blocks' 3x3 convolutions. The tiny profile takes C3Lier: on the tiny base (OpenMoji,
# 150 steps, held-out subjects, the style judge) attention only went 0.57 of the way from the base
# to the true images' style, C3Lier 0.75 at the same subject accuracy, for 1.3x the training time
# (benchmarks/results/recipe_search.jsonl). For Fluent 3D no knob tried there (lr 3e-3, rank 32, the
# text encoder, min-SNR 5, 400 steps) went beyond 0.34 of the way: the cap is not the LoRA's settings.
# Nor is it the adapter: fine-tuning the whole UNet and text encoder (DreamBooth, 400 steps at 3e-4)
# went 0.31 of the way (at chapter 3's 1e-3 it wrecks the images: 0.05 at 150 steps, 0.17 at 400).
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
C3LIER = (*ATTENTION, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2")
# The tiny profile generates with DDIM at 10 steps, not 20: on 192 held-out prompts (the base and
# chapter 1's three style LoRAs, paired by prompt and seed) P(style) moved by -0.003 [-0.007, 0.001]
# and subject accuracy by -0.005 [-0.026, 0.021], and KID-EffNet to the 20-step images stayed below
# the seed-to-seed floor, at half the CPU time per image (benchmarks/bench_generate.py,
# results/generate.json; the rule is lora_core.experiments.samplers.replaces_current)


@dataclass(frozen=True)
class Profile(Config):
    name: str = option("tiny", "profile name: smoke, tiny or sd15")
    description: str = option("", "one line for tables and the book")
    base_model: str = option("toy:base", "base model source: 'tiny-random', 'toy:base' (the shipped "
                                         "pretrained tiny model), a hub id, a diffusers folder or a "
                                         ".safetensors file")
    resolution: int = option(32, "training and generation resolution in pixels (square)")
    train_steps: int = option(150, "optimizer steps per adapter training run")
    batch_size: int = option(16, "images per micro-batch (times gradient_accumulation_steps per optimizer step)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory, more compute)")
    optimizer: str = option("adamw", "adamw, adamw8bit (bitsandbytes) or prodigy")
    checkpoint_every_steps: int = option(0, "full resume state every N optimizer steps (0: none); a re-run "
                                            "after a dead session resumes from the last one")
    learning_rate: float = option(1e-4, "default UNet learning rate")
    lora_rank: int = option(16, "default LoRA rank r")
    lora_alpha: float = option(16.0, "default LoRA alpha (scale = alpha / rank)")
    lora_targets: tuple[str, ...] = option(ATTENTION, "UNet modules the style LoRA of every chapter wraps "
                                                      "(diffusers' examples: attention only)")
    sampler: str = option("DDIM", "A1111 name of the sampler of every generated image (lora_core.generate."
                                  "SAMPLERS: DDIM, Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, UniPC, PNDM); "
                                  "part of the generation cache key")
    inference_steps: int = option(30, "denoising steps at generation")
    guidance_scale: float = option(7.5, "classifier-free guidance scale")
    n_eval_images: int = option(100, "generated images per evaluated set")
    n_seeds: int = option(3, "training seeds per configuration")
    mixed_precision: str = option("no", "accelerate mixed precision: no, fp16 or bf16")
    fid_backbone: str = option("inception-2015", "network of the FID proper")
    feature_backbone: str = option("effnet-lite0", "cheaper ImageNet features for FD-/KID- metrics")
    lpips_backbone: str = option("st-lpips-alex", "perceptual distance network")
    alignment_backbone: str = option("standin-minilm-effnet", "prompt-alignment model")
    device: str = option("cpu", "torch device")
    n_bootstrap: int = option(1000, "bootstrap resamples behind every 95% interval over images")
    generation_batch_size: int = option(16, "images generated at once in the experiments (same images "
                                            "up to float rounding at any batch size)")
    benchmark_styles: tuple[str, ...] = option(("twemoji", "openmoji", "fluent3d"),
                                               "chapter 1's style sets, near to far from the base style")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description="seconds, for tests and CI: a random tiny model, numbers mean nothing",
        base_model="tiny-random", resolution=32, train_steps=4, batch_size=4, lora_rank=4,
        lora_alpha=4.0, lora_targets=C3LIER, inference_steps=2, guidance_scale=3.0, n_eval_images=8, n_seeds=2,
        fid_backbone="none", feature_backbone="effnet-lite0", alignment_backbone="none",
        n_bootstrap=100, generation_batch_size=8, benchmark_styles=("twemoji", "openmoji"),
    ),
    "tiny": Profile(
        name="tiny",
        description="offline CPU: the pretrained tiny SD-architecture model on emoji style sets, 32 px",
        base_model="toy:base", resolution=32, train_steps=150, batch_size=16, learning_rate=1e-3,
        lora_rank=16, lora_alpha=16.0, lora_targets=C3LIER, inference_steps=10, guidance_scale=4.0,
        n_eval_images=50, n_seeds=3,
    ),
    # The memory plan of a 16 GB T4 (lora_core.gpu.plan_for; tests keep them equal), which fits
    # every card the studies used. The Colab/Kaggle set-up cell takes the plan of the card it finds
    # (lora_core.gpu.sd15_for): the same images per step, split into micro-batches where the memory is smaller.
    "sd15": Profile(
        name="sd15",
        description="Stable Diffusion v1.5 at 512 px on one GPU with the studies' settings",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5", resolution=512, train_steps=1000,
        batch_size=4, gradient_accumulation_steps=1, optimizer="adamw8bit", checkpoint_every_steps=100,
        learning_rate=1e-4, lora_rank=16, lora_alpha=16.0, inference_steps=30, guidance_scale=7.5,
        n_eval_images=100, n_seeds=3, mixed_precision="fp16", device="cuda", lpips_backbone="lpips-alex",
        alignment_backbone="clip-vit-large-patch14",
    ),
}
SD15_IMAGES_PER_STEP = 4  # the diffusers LoRA example's 1 x 4 accumulation


def get_profile(name: str, **overrides) -> Profile:
    """The named profile with ``overrides`` applied (unknown names and keys raise ValueError)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}")
    return PROFILES[name].replace(**overrides) if overrides else PROFILES[name]
