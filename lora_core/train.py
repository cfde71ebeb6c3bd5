"""The one training loop, for every method (LoRA, textual inversion, DreamBooth, LyCORIS).

Method specifics sit behind :class:`lora_core.adapters.Adapter`; this file holds the config,
the setup (data, caches, optimizer, accelerate), the loop, validation, checkpoints and exact
resume. Records and reuse live in :mod:`lora_core.runs`.

    record = train(TrainConfig(data=DataConfig(folder="data/styles/twemoji/train"),
                               options={"rank": 8}, max_train_steps=300))
    record.exports["diffusers"]      # runs/lora-<hash>/exports/pytorch_lora_weights.safetensors

or ``python -m lora_core.train --config run.yaml options.rank=8 learning_rate=1e-3 [--force]``.

``train`` reads as the loop it runs: :func:`set_up` (checks, adapter, optimizer, caches,
accelerate, resume), then per step :func:`train_step` (micro-batches, clipping, the optimizer and
schedule) and :func:`end_of_step` (validation, metrics, checkpoint), then :func:`finish` (exports,
summary). What the stages share travels in one :class:`Run`, passed, not captured.

Killing a run and calling ``train`` again with the same config resumes from the last full state
(``runs/<method>-<hash>/state/training_state.pt``) and ends bit-identical to an uninterrupted run:
the data order and the noise are functions of the seed and the step, and the state holds the
trainables, optimizer, scheduler, loss scale, noise generator and the torch/numpy/python RNG
states. Checkpoint and export folders are written whole (a temporary folder, renamed), the state
after its checkpoint; what a kill leaves half-written is removed when the run is touched again.

>>> cfg = TrainConfig(data={"folder": "x"}, options={"rank": 8, "alpha": 16})
>>> cfg.options.scale, cfg.lr_scheduler
(2.0, 'constant')
>>> TrainConfig(data={"folder": "x"}, learning_rate=0)
Traceback (most recent call last):
...
ValueError: TrainConfig: learning_rate must be positive, got 0
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from PIL import Image
from tqdm.auto import tqdm

from lora_core import losses, runs
from lora_core.adapters import Adapter, get_adapter, trainable_parameters
from lora_core.adapters.dreambooth import generate_class_images
from lora_core.config import Config, load_yaml, option
from lora_core.data import DataConfig, ImageCaptionSet, load_image_caption_set, split_train_validation
from lora_core.environment import environment_info
from lora_core.formats import provenance_metadata
from lora_core.images import prepare_image, to_tensor
from lora_core.io import atomic_folder, atomic_path
from lora_core.models import BaseModel, base_fingerprint, load_base
from lora_core.optim import (OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, step_size_estimate,
                             warmup_steps_for)
from lora_core.paths import resolve
from lora_core.profiling import phase

MIXED_PRECISION = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainConfig(Config):
    method: str = option("lora", "training method: lora, textual_inversion, dreambooth, lycoris")
    options: Any = option(None, "the method's own options (lora: LoraOptions): a dict in JSON/YAML, "
                                "options.rank=8 on the command line; None gives the method's defaults")
    data: DataConfig | None = option(None, "training images and captions (lora_core.data.DataConfig); "
                                           "data.validation_fraction holds images out for val_loss")
    validation_folder: str = option("", "a separate held-out folder for val_loss (same DataConfig otherwise)")
    base_model: str = option("tiny-random", "lora_core.models.load_base source")
    seed: int = option(0, "seeds the adapter init, data order, noise and timesteps")
    max_train_steps: int = option(100, "optimizer steps (used when epochs is 0)")
    epochs: int = option(0, "if > 0: train this many epochs (kohya repeats count) instead of max_train_steps")
    batch_size: int = option(4, "images per micro-batch (per process)")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(1e-4, "UNet (or the method's main) learning rate; Prodigy: a multiplier, 1.0")
    text_encoder_learning_rate: float | None = option(None, "text encoder learning rate; None = learning_rate")
    optimizer: str = option("adamw", "adamw, adamw8bit (bitsandbytes) or prodigy (prodigyopt)")
    weight_decay: float = option(1e-2, "decoupled weight decay")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "Adam betas")
    adam_epsilon: float = option(1e-8, "Adam epsilon")
    max_grad_norm: float = option(1.0, "gradient clipping norm; 0 disables")
    lr_scheduler: str = option("constant", "constant, linear, cosine or cosine_with_restarts")
    lr_warmup_steps: int = option(0, "linear warmup steps (wins over lr_warmup_ratio)")
    lr_warmup_ratio: float = option(0.0, "warmup as a share of the training steps (kohya: 0.1 = 10%)")
    lr_num_cycles: int = option(1, "hard restarts of cosine_with_restarts")
    loss_type: str = option("l2", "l2, huber or smooth_l1 (kohya conventions)")
    huber_schedule: str = option("snr", "huber threshold schedule: constant or snr; ignored for l2 (as kohya)")
    huber_c: float = option(0.1, "huber threshold c (snr schedule: its value at high noise)")
    min_snr_gamma: float = option(0.0, "min-SNR-gamma loss weighting (5 in the paper); 0 disables")
    noise_offset: float = option(0.0, "offset noise strength (0.05-0.1 typical); 0 disables")
    caption_dropout: float = option(0.0, "probability of training a sample on the empty caption")
    mixed_precision: str = option("no", "accelerate mixed precision: no, fp16 or bf16 (trainables stay fp32)")
    gradient_checkpointing: bool = option(False, "recompute activations in backward (less memory)")
    attention: str = option("sdpa", "attention processor: sdpa (torch scaled_dot_product_attention) or eager")
    cache_latents: bool = option(True, "encode the training images with the VAE once")
    cache_text_embeddings: bool = option(True, "encode captions once when the text encoder does not train")
    validation_every_steps: int = option(0, "val_loss every N steps; 0 = at the end of every epoch")
    validation_timestep_buckets: int = option(4, "fixed timesteps of the validation loss: bucket centres")
    checkpoint_every_steps: int = option(0, "adapter checkpoint + full resume state every N steps; 0 = none")
    class_prompt: str = option("", "prior preservation (DreamBooth): prompt of the class images; '' disables")
    num_class_images: int = option(0, "prior preservation: class images the base model generates (cached in "
                                      "the run dir) before training; 0 disables")
    prior_loss_weight: float = option(1.0, "prior preservation: weight of the class-image loss")
    class_image_steps: int = option(25, "prior preservation: denoising steps per class image")

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _resolve_options(self.method, self.options))
        if isinstance(self.data, dict):
            object.__setattr__(self, "data", DataConfig.from_dict(self.data))
        if self.data is None:
            raise ValueError("TrainConfig: data is required, e.g. data={'folder': 'path/to/images'}")
        for name in ("learning_rate", "batch_size", "gradient_accumulation_steps", "validation_timestep_buckets"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TrainConfig: {name} must be positive, got {getattr(self, name)}")
        if self.epochs < 0 or (self.epochs == 0 and self.max_train_steps <= 0):
            raise ValueError(f"TrainConfig: max_train_steps must be positive (or epochs > 0), got "
                             f"max_train_steps={self.max_train_steps}, epochs={self.epochs}")
        if self.text_encoder_learning_rate is not None and self.text_encoder_learning_rate < 0:
            raise ValueError(f"TrainConfig: text_encoder_learning_rate must be >= 0, got {self.text_encoder_learning_rate}")
        choices = {"optimizer": OPTIMIZERS, "lr_scheduler": SCHEDULERS, "loss_type": losses.LOSS_TYPES,
                   "huber_schedule": losses.HUBER_SCHEDULES, "mixed_precision": tuple(MIXED_PRECISION),
                   "attention": ("sdpa", "eager")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(f"TrainConfig: {name}={getattr(self, name)!r} is not one of {', '.join(valid)}")
        if bool(self.class_prompt) != (self.num_class_images > 0):
            raise ValueError("TrainConfig: prior preservation needs both class_prompt and num_class_images > 0, got "
                             f"class_prompt={self.class_prompt!r}, num_class_images={self.num_class_images}")
        if self.prior_loss_weight < 0 or self.class_image_steps <= 0:
            raise ValueError(f"TrainConfig: prior_loss_weight must be >= 0 and class_image_steps > 0, got "
                             f"{self.prior_loss_weight} and {self.class_image_steps}")
        for name in ("caption_dropout", "lr_warmup_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TrainConfig: {name} must be in [0, 1), got {getattr(self, name)}")


def _resolve_options(method: str, options: Any) -> Config:
    """The method's Options instance from None, a dict or an instance (unknown keys raise)."""
    options_class = get_adapter(method).Options
    if options is None:
        return options_class()
    if isinstance(options, dict):
        return options_class.from_dict(options)
    if not isinstance(options, options_class):
        raise ValueError(f"TrainConfig: options for method {method!r} must be {options_class.__name__}, "
                         f"got {type(options).__name__}")
    return options


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good state."""


# Offsets from config.seed of the run's own random streams, one per purpose, so that what one
# consumes never moves another (validation noise: seed + 7919 in validation_loss).
LATENT_SEED, NOISE_SEED, VALIDATION_LATENT_SEED = 1, 2, 3


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class Inputs:
    """What a run reads: its images, the base model and their fingerprints (``runs.INPUT_FINGERPRINTS``)."""

    train_set: ImageCaptionSet
    val_set: ImageCaptionSet | None
    base: BaseModel
    base_is_callers: bool                   # copied before training changes it
    fingerprints: dict[str, str | None]


def load_inputs(config: TrainConfig, base: BaseModel | None) -> Inputs:
    """The data, the base (``base`` or ``load_base(config.base_model)``) and their fingerprints."""
    if base is not None and base.source != config.base_model:
        raise ValueError(f"base.source={base.source!r} but config.base_model={config.base_model!r}")
    train_set, val_set = load_training_data(config)
    given = base is not None
    base = base if given else load_base(config.base_model, seed=config.seed)
    fingerprints = {"data_fingerprint": fingerprint(train_set),
                    "validation_fingerprint": fingerprint(val_set) if val_set is not None else None,
                    "base_fingerprint": base_fingerprint(base)}
    return Inputs(train_set, val_set, base, given, fingerprints)


def load_training_data(config: TrainConfig) -> tuple[ImageCaptionSet, ImageCaptionSet | None]:
    """(train, validation): the validation set from ``validation_folder`` or the split fraction;
    a fraction that holds out no image (a one-image set) is an error, not a run without val_loss."""
    data = load_image_caption_set(config.data)
    if config.validation_folder:
        return data, load_image_caption_set(config.data.replace(folder=config.validation_folder))
    if config.data.validation_fraction == 0:
        return data, None
    train_set, val_set = split_train_validation(data, config.data.validation_fraction, config.data.split_seed)
    if len(val_set) == 0:
        raise ValueError(f"dataset {config.data.folder} has {len(data)} image(s): validation_fraction="
                         f"{config.data.validation_fraction} holds none out (training keeps at least one); "
                         "set data.validation_fraction=0 or name a validation_folder")
    return train_set, val_set


def epoch_order(items: list[int], seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch: a function of (seed, epoch) only, so resume needs
    nothing but the step to find its place."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]


def batch_indices(items: list[int], config: TrainConfig, micro_step: int, rank: int = 0,
                  world: int = 1) -> list[int]:
    """Dataset indices of micro-batch ``micro_step`` on process ``rank`` (last partial batch dropped)."""
    per_epoch = len(items) // (config.batch_size * world)
    epoch, position = divmod(micro_step, per_epoch)
    start = (position * world + rank) * config.batch_size
    return epoch_order(items, config.seed, epoch)[start:start + config.batch_size]


def step_counts(config: TrainConfig, train_set: ImageCaptionSet, world: int) -> tuple[list[int], int, int]:
    """(training items with repeats, micro-batches per epoch, optimizer steps); too few images or
    epochs that make no step raise ``ValueError``."""
    items = train_set.epoch_indices()
    if len(items) < config.batch_size * world:
        raise ValueError(f"dataset {config.data.folder} has {len(items)} training images (with repeats, after "
                         f"the validation split) but one batch needs {config.batch_size * world}")
    micro_per_epoch = len(items) // (config.batch_size * world)
    total_steps = (config.epochs * micro_per_epoch // config.gradient_accumulation_steps
                   if config.epochs else config.max_train_steps)
    if total_steps <= 0:
        raise ValueError(f"{config.epochs} epochs of {micro_per_epoch} batches make no optimizer step with "
                         f"gradient_accumulation_steps={config.gradient_accumulation_steps}")
    return items, micro_per_epoch, total_steps


def fingerprint(data: ImageCaptionSet) -> str:
    """sha256 (12 hex) of the images and captions: resume refuses changed data."""
    digest = hashlib.sha256(data.pixel_values.numpy().tobytes())
    digest.update("\n".join(data.captions).encode())
    digest.update(str(data.repeats).encode())
    return digest.hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# model pieces


@torch.no_grad()
def encode_latents(vae, pixel_values: torch.Tensor, generator: torch.Generator, batch_size: int = 32) -> torch.Tensor:
    """VAE latents (sampled with ``generator``, times the scaling factor), float32."""
    chunks = []
    for start in range(0, len(pixel_values), batch_size):
        images = pixel_values[start:start + batch_size].to(vae.device, vae.dtype)
        sample = vae.encode(images).latent_dist.sample(generator=generator)
        chunks.append(sample.float() * vae.config.scaling_factor)
    return torch.cat(chunks)


def encode_text(tokenizer, text_encoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """The text encoder's last hidden states of ``captions`` (padded to the tokenizer's length).
    ``text_encoder`` may be the ``accelerator.prepare`` wrapper (DDP): calling the wrapper, not the
    module inside, is what syncs a trained text encoder's gradients across processes."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(device))[0]


def diffusion_loss(unet, noise_scheduler, latents, embeddings, generator, config: TrainConfig) -> torch.Tensor:
    """One training loss: random timesteps and (offset) noise from ``generator``, the UNet's
    prediction against the scheduler's target, huber/smooth_l1/l2, optional min-SNR weights."""
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    noise = losses.offset_noise(latents, config.noise_offset, generator)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = unet(noisy, timesteps, embeddings).sample
    target = losses.prediction_target(noise_scheduler, latents, noise, timesteps)
    alphas_cumprod = noise_scheduler.alphas_cumprod
    threshold = losses.huber_threshold(config.loss_type, config.huber_schedule, config.huber_c,
                                       alphas_cumprod, timesteps)
    per_sample = losses.per_sample_loss(prediction, target, config.loss_type, threshold)
    if config.min_snr_gamma:
        per_sample = per_sample * losses.min_snr_weights(alphas_cumprod, timesteps, config.min_snr_gamma,
                                                         noise_scheduler.config.prediction_type).to(per_sample.device)
    return per_sample.mean()


@torch.no_grad()
def validation_loss(base, latents: torch.Tensor, embeddings: torch.Tensor, config: TrainConfig) -> float:
    """Plain MSE to the target on fixed images, fixed noise and fixed timestep-bucket centres:
    the same number for the same weights, whatever the training RNG did. The global RNG state is
    saved and restored around it, and the UNet's train/eval mode is kept."""
    scheduler, buckets = base.noise_scheduler, config.validation_timestep_buckets
    was_training = base.unet.training
    with torch.random.fork_rng(devices=[latents.device] if latents.device.type == "cuda" else []):
        base.unet.eval()
        generator = torch.Generator().manual_seed(config.seed + 7919)
        total = 0.0
        for bucket in range(buckets):
            t = int((bucket + 0.5) * scheduler.config.num_train_timesteps / buckets)
            timesteps = torch.full((latents.shape[0],), t, dtype=torch.long, device=latents.device)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device, latents.dtype)
            prediction = base.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, embeddings).sample
            target = losses.prediction_target(scheduler, latents, noise, timesteps)
            total += torch.nn.functional.mse_loss(prediction.float(), target.float()).item()
        base.unet.train(was_training)
    return total / buckets


# ----------------------------------------------------------------------------------------------
# checkpoints


def class_images(base, config: TrainConfig, run_dir: Path) -> torch.Tensor:
    """DreamBooth's prior: the base model's own images of ``config.class_prompt``, generated once
    (seeded per image, cached in ``run_dir/class_images``) and returned as pixels in [-1, 1].

    The loop adds ``prior_loss_weight`` x the diffusion loss on as many class images as instance
    images to every micro-batch, with the configured loss type and weighting (diffusers'
    train_dreambooth.py stacks both halves in one batch; the sum is the same objective).
    """
    paths = generate_class_images(base, config.class_prompt, config.num_class_images, run_dir / "class_images",
                                  seed=config.seed, steps=config.class_image_steps,
                                  resolution=config.data.resolution)
    return to_tensor([prepare_image(Image.open(path), config.data.resolution) for path in paths])


def rng_states() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "python": random.getstate()}


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(states["python"])


def load_state(path: Path, config: TrainConfig, fingerprints: dict[str, str | None] | None = None) -> dict[str, Any]:
    """A full training state (weights_only load), refused when written by another config or,
    given ``fingerprints``, on other images or base weights (a state without a key predates it)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config_hash"] != config.hash():
        theirs, ours = state["config"], config.to_dict()
        differing = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ValueError(f"{path}: this resume state was written by config {state['config_hash']}, not by "
                         f"this config {config.hash()}; differing keys: {', '.join(differing)}")
    for key, value in (fingerprints or {}).items():
        if state.get(key, value) != value:
            raise ValueError(f"{path}: the {runs.INPUT_FINGERPRINTS[key]} changed since this state was written")
    return state


def provenance(config: TrainConfig, adapter: Adapter, base, step: int) -> dict[str, str]:
    """String metadata for every weights file: config hash, method, rank/alpha/scale, base, seed, step."""
    return provenance_metadata(config_hash=config.hash(), method=config.method, base_model=base.source,
                               seed=config.seed, step=step, config=config.to_json(),
                               **{k: v for k, v in adapter.describe().items() if k != "method"})


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


# ----------------------------------------------------------------------------------------------
# set-up: everything that can be wrong is checked before the first step


@dataclass
class Caches:
    """What set-up encodes once: VAE latents, and caption embeddings when the text encoder is frozen."""

    train_latents: torch.Tensor | None      # None: encoded per batch (cache_latents=False)
    val_latents: torch.Tensor | None
    class_latents: torch.Tensor | None      # prior preservation
    captions: list[str]                     # the training captions as the text encoder sees them
    val_captions: list[str]
    text: dict[str, torch.Tensor]           # caption -> embedding; empty when not cached


@dataclass
class Run:
    """What the stages of one run share: :func:`set_up` builds it, :func:`train_step` and
    :func:`end_of_step` advance it, :func:`finish` exports it."""

    config: TrainConfig
    run_dir: Path
    inputs: Inputs
    accelerator: Accelerator
    adapter: Adapter
    base: BaseModel                         # the run's own (copied) base, adapter attached
    unet: torch.nn.Module                   # what the forward passes call: accelerate's wrapper
    text_encoder: torch.nn.Module           # (DDP when distributed) where parameters train
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    noise_generator: torch.Generator        # timesteps, noise, caption dropout, uncached latents
    caches: Caches
    items: list[int]                        # training items with repeats (epoch_order shuffles them)
    micro_per_epoch: int
    total_steps: int
    start_step: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)


def start_accelerator(config: TrainConfig, run_dir: Path, force: bool) -> Accelerator:
    """A fresh Accelerator; the main process empties ``run_dir`` when ``force`` and otherwise
    removes what a killed run left there, while the others wait."""
    # AcceleratorState is a process-wide singleton that refuses a second mixed_precision: clear it
    # (keeping the distributed PartialState) so one notebook can train fp16 and bf16 runs in turn
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    if accelerator.is_main_process:
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
        runs.remove_debris(run_dir)
    accelerator.wait_for_everyone()  # no process reads the folder while the main one cleans it
    return accelerator


def prepare_base(config: TrainConfig, adapter: Adapter, base: BaseModel, device: torch.device,
                 run_dir: Path) -> tuple[list[dict], torch.Tensor | None]:
    """Seed, move the base to ``device``, generate the class images (prior preservation, from the
    base's own prior: before the adapter attaches), attach the adapter, cast the frozen weights
    to the mixed-precision dtype (trainables stay fp32). Returns the optimizer's parameter groups
    and the class images' pixels (None without prior preservation)."""
    # seeded after loading: load_base may draw from the global RNG (random weights), a given base not
    torch.manual_seed(config.seed), np.random.seed(config.seed), random.seed(config.seed)
    for module in (base.vae, base.text_encoder, base.unet):  # on the device before attach: adapters
        module.to(device)                                      # create their tensors beside the weights
    adapter.check(base)
    class_pixels = class_images(base, config, run_dir) if config.num_class_images else None
    adapter.attach(base)
    for module in (base.vae, base.text_encoder, base.unet):
        module.to(dtype=MIXED_PRECISION[config.mixed_precision])
    groups = adapter.param_groups(base)
    for param in trainable_parameters(groups):
        param.data = param.data.float()  # as the diffusers examples: frozen in half precision, trainables fp32
    _set_attention(base.unet, config.attention)
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if adapter.trains_text_encoder:
            base.text_encoder.gradient_checkpointing_enable()
    return groups, class_pixels


def build_caches(config: TrainConfig, adapter: Adapter, base: BaseModel, inputs: Inputs,
                 class_pixels: torch.Tensor | None) -> Caches:
    """Latents once (training ones only with ``cache_latents``), text embeddings once when the text
    encoder is frozen. Validation latents have their own generator, so the validation loss does
    not depend on whether the training latents were cached."""
    device, train_set, val_set = base.unet.device, inputs.train_set, inputs.val_set
    latent_generator = torch.Generator().manual_seed(config.seed + LATENT_SEED)
    train_latents = encode_latents(base.vae, train_set.pixel_values, latent_generator) if config.cache_latents else None
    class_latents = encode_latents(base.vae, class_pixels, latent_generator) if class_pixels is not None else None
    val_latents = (encode_latents(base.vae, val_set.pixel_values,
                                  torch.Generator().manual_seed(config.seed + VALIDATION_LATENT_SEED))
                   if val_set is not None else None)
    captions = [adapter.caption(c) for c in train_set.captions]
    val_captions = [adapter.caption(c) for c in val_set.captions] if val_set is not None else []
    text = {}
    if config.cache_text_embeddings and not adapter.trains_text_encoder:
        unique = sorted(set(captions) | set(val_captions) | {"", config.class_prompt})
        with torch.no_grad():
            text = dict(zip(unique, encode_text(base.tokenizer, base.text_encoder, unique, device)))
    return Caches(train_latents, val_latents, class_latents, captions, val_captions, text)


@phase("training: set-up")
def set_up(config: TrainConfig, run_dir: Path, inputs: Inputs, force: bool, resume_from: Path | None) -> Run:
    """Everything before the first step: checks, the adapter on a copy of the base, optimizer and
    schedule, caches, accelerate, and the resume state when there is one."""
    accelerator = start_accelerator(config, run_dir, force)
    state_path = resume_from or run_dir / runs.STATE_FILE
    state = load_state(state_path, config, inputs.fingerprints) if state_path.exists() else None
    if resume_from and state is None:
        raise FileNotFoundError(f"resume_from={resume_from}: no such training state")
    items, micro_per_epoch, total_steps = step_counts(config, inputs.train_set, accelerator.num_processes)
    adapter = get_adapter(config.method)(config)
    base = copy.deepcopy(inputs.base) if inputs.base_is_callers else inputs.base  # the caller's stays as it was
    groups, class_pixels = prepare_base(config, adapter, base, accelerator.device, run_dir)
    optimizer = build_optimizer(config.optimizer, groups, config.weight_decay, config.adam_betas, config.adam_epsilon)
    lr_scheduler = build_scheduler(config.lr_scheduler, optimizer, total_steps,
                                   warmup_steps_for(total_steps, config.lr_warmup_steps, config.lr_warmup_ratio),
                                   config.lr_num_cycles)
    caches = build_caches(config, adapter, base, inputs, class_pixels)
    # Every module with trainable parameters goes through accelerate (DDP when distributed, so its
    # gradients sync; unchanged on one process). DDP refuses a module without any (the UNet under
    # textual inversion, a frozen text encoder). The loop calls the wrappers, adapters use base.*.
    unet, text_encoder = (accelerator.prepare(module) if any(p.requires_grad for p in module.parameters())
                          else module for module in (base.unet, base.text_encoder))
    base.unet.train()
    if adapter.trains_text_encoder:
        base.text_encoder.train()
    run = Run(config, run_dir, inputs, accelerator, adapter, base, unet, text_encoder,
              trainable_parameters(groups), accelerator.prepare(optimizer), lr_scheduler,
              torch.Generator().manual_seed(config.seed + NOISE_SEED), caches, items, micro_per_epoch, total_steps)
    if state is not None:
        restore(run, state)
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        config.save_json(run_dir / "config.json")
        runs.write_metrics(run_dir, run.log)
    return run


def restore(run: Run, state: dict[str, Any]) -> None:
    """Continue from ``state``: trainables, optimizer, schedule, loss scale, noise generator, RNGs,
    step and log. The main process rewrites the state's checkpoint from the restored weights, so a
    checkpoint cut short by a kill (or written file by file by an older version) is whole again."""
    run.adapter.load_state_dict(run.base, state["adapter"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.lr_scheduler.load_state_dict(state["scheduler"])
    if run.accelerator.scaler is not None and "grad_scaler" in state:
        run.accelerator.scaler.load_state_dict(state["grad_scaler"])
    run.noise_generator.set_state(state["noise_generator"])
    set_rng_states(state["rng"])
    run.start_step, run.log = state["step"], state["log"]
    if run.accelerator.is_main_process:
        export_adapter(run, checkpoint_dir(run.run_dir, run.start_step), run.start_step)


def full_state(run: Run, step: int) -> dict[str, Any]:
    """Everything exact resume needs (see :func:`restore`), with the config and input fingerprints."""
    scaler = run.accelerator.scaler
    return {"config_hash": run.config.hash(), "config": run.config.to_dict(), "step": step, "log": run.log,
            "adapter": run.adapter.state_dict(run.base), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.lr_scheduler.state_dict(), "noise_generator": run.noise_generator.get_state(),
            "rng": rng_states(), **run.inputs.fingerprints,
            **({"grad_scaler": scaler.state_dict()} if scaler is not None else {})}


def export_adapter(run: Run, folder: Path, step: int) -> dict[str, Path]:
    """The adapter's files in ``folder``, written whole: into a temporary folder renamed onto
    ``folder`` once every file is there."""
    with atomic_folder(folder) as staging:
        files = run.adapter.export(run.base, staging, provenance(run.config, run.adapter, run.base, step))
    return {layout: folder / Path(path).relative_to(staging) for layout, path in files.items()}


def save_checkpoint(run: Run, step: int) -> None:
    """The adapter files of ``step``, then the full state: a state of step N means checkpoint N is whole."""
    export_adapter(run, checkpoint_dir(run.run_dir, step), step)
    with atomic_path(run.run_dir / runs.STATE_FILE) as tmp:
        torch.save(full_state(run, step), tmp)


# ----------------------------------------------------------------------------------------------
# the loop


@phase("training")
def train(config: TrainConfig, base=None, force: bool = False, runs_root: str | Path | None = None,
          resume_from: str | Path | None = None, progress: bool = True) -> runs.RunRecord:
    """Train ``config`` and return its record, or the record of the finished run with the same
    config when its training images, validation images and base weights are also the same (their
    fingerprints are in its summary) and its exported files are all there; otherwise the finished
    run is retrained in place, with one line on stderr naming why. ``force`` retrains in any case.

    ``base`` (a BaseModel whose ``source`` equals ``config.base_model``) saves loading it; it is
    copied, never modified. An unfinished run in the same folder resumes from its last state;
    ``resume_from`` names another state file (refused when written by another config, or on other
    training images or base weights). Relative folders (data, ``runs_root``, ``resume_from``) are
    under the project root (:func:`lora_core.paths.resolve`), whatever the working directory.
    Processes asked for the same run at once take turns (:func:`lora_core.runs.run_lock`): one
    trains, the others reuse its result.
    """
    run_dir = runs.run_dir_for(config.method, config.hash(), runs_root)
    inputs = load_inputs(config, base)
    with runs.run_lock(run_dir):  # another process training this run: wait for it, then reuse it
        finished, force = reusable_run(run_dir, inputs.fingerprints, force)
        if finished is not None:
            return finished
        return train_run(set_up(config, run_dir, inputs, force, resolve(resume_from) if resume_from else None),
                         progress)


def train_run(run: Run, progress: bool) -> runs.RunRecord:
    """The optimizer steps of a set-up run, from its start step to the end; returns its record."""
    bar = tqdm(total=run.total_steps, initial=run.start_step, desc=run.run_dir.name,
               disable=not (progress and run.accelerator.is_local_main_process))
    started = time.perf_counter()
    for step in range(run.start_step, run.total_steps):
        row = train_step(run, step)
        end_of_step(run, row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
    bar.close()
    return finish(run, wall=time.perf_counter() - started)


def reusable_run(run_dir: Path, fingerprints: dict[str, str | None], force: bool) -> tuple[runs.RunRecord | None, bool]:
    """(the finished run to reuse, or None; whether set-up must empty ``run_dir`` first)."""
    if force or not (run_dir / "summary.json").exists():
        return None, force
    blockers = runs.reuse_blockers(run_dir, fingerprints)
    if blockers:
        print(f"{run_dir}: retraining this finished run: {'; '.join(blockers)}", file=sys.stderr, flush=True)
        return None, True
    runs.remove_debris(run_dir)  # a kill after the summary can leave the resume state
    return runs.load_run(run_dir), False


def train_step(run: Run, step: int) -> dict[str, Any]:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns its metrics row."""
    config, accelerator = run.config, run.accelerator
    accum, started, step_loss = config.gradient_accumulation_steps, time.perf_counter(), 0.0
    for micro in range(accum):
        with gradient_sync(run, last_micro_batch=micro == accum - 1):
            loss = micro_batch_loss(run, step * accum + micro)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1} (micro-batch {micro + 1}); "
                                       f"training stopped, {last_good_state(run.run_dir)}")
            accelerator.backward(loss / accum)
        step_loss += loss.item() / accum
    if config.max_grad_norm:
        accelerator.clip_grad_norm_(run.params, config.max_grad_norm)
    step_lrs = {f"lr/{group['name']}": group["lr"] for group in run.optimizer.param_groups}  # used by this step
    run.optimizer.step()
    skipped = accelerator.optimizer_step_was_skipped  # fp16: the GradScaler found inf/nan gradients
    if not skipped:  # a step that changed nothing does not advance the schedule either
        run.lr_scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        run.adapter.after_optimizer_step(run.base)
    done = step + 1
    row = {"step": done, "epoch": done * accum // run.micro_per_epoch, "loss": step_loss,
           "lr": next(iter(step_lrs.values())), **step_lrs, "s_per_it": time.perf_counter() - started,
           **step_size_estimate(run.optimizer)}  # Prodigy: its d after this step
    return {**row, "optimizer_step_skipped": True} if skipped else row


def gradient_sync(run: Run, last_micro_batch: bool) -> contextlib.ExitStack:
    """DDP all-reduces the gradients in every backward it runs; accumulation needs that only in
    the last micro-batch of a step, so the others run under ``no_sync`` (a no-op on one process)."""
    stack = contextlib.ExitStack()
    if not last_micro_batch:
        for module in (run.unet, run.text_encoder):
            stack.enter_context(run.accelerator.no_sync(module))
    return stack


def micro_batch_loss(run: Run, micro_step: int) -> torch.Tensor:
    """The loss of one micro-batch: its latents and (dropped-out) captions, the diffusion loss,
    plus the weighted prior loss on as many class images."""
    config, base, caches, generator = run.config, run.base, run.caches, run.noise_generator
    indices = batch_indices(run.items, config, micro_step, run.accelerator.process_index,
                            run.accelerator.num_processes)
    if caches.train_latents is not None:
        latents = caches.train_latents[indices]
    else:
        latents = encode_latents(base.vae, run.inputs.train_set.pixel_values[indices], generator)
    drop = torch.rand(len(indices), generator=generator) < config.caption_dropout
    captions = ["" if dropped else caches.captions[i] for i, dropped in zip(indices, drop.tolist())]
    device = run.accelerator.device
    with run.accelerator.autocast():
        loss = diffusion_loss(run.unet, base.noise_scheduler, latents.to(device), embed(run, captions),
                              generator, config)
        if caches.class_latents is not None:
            drawn = torch.randint(0, len(caches.class_latents), (len(indices),), generator=generator)
            loss = loss + config.prior_loss_weight * diffusion_loss(
                run.unet, base.noise_scheduler, caches.class_latents[drawn].to(device),
                embed(run, [config.class_prompt] * len(indices)), generator, config)
    return loss


def embed(run: Run, captions: list[str]) -> torch.Tensor:
    """Text embeddings of ``captions``: from the cache, or through the (trained) text encoder."""
    if run.caches.text:
        return torch.stack([run.caches.text[c] for c in captions])
    return encode_text(run.base.tokenizer, run.text_encoder, captions, run.accelerator.device)


def last_good_state(run_dir: Path) -> str:
    if (run_dir / runs.STATE_FILE).exists():
        return f"the last good state is {run_dir / runs.STATE_FILE}"
    return "no state was saved yet (checkpoint_every_steps)"


def end_of_step(run: Run, row: dict[str, Any]) -> None:
    """Validation when due, the metrics row, and a checkpoint when due (main process)."""
    done, config = row["step"], run.config
    if run.inputs.val_set is not None and validation_due(config, done, run.micro_per_epoch, run.total_steps):
        with torch.no_grad():
            val_text = embed(run, run.caches.val_captions)
        row["val_loss"] = validation_loss(run.base, run.caches.val_latents.to(run.accelerator.device), val_text,
                                          config)
    run.log.append(row)
    if run.accelerator.is_main_process:
        runs.append_metrics(run.run_dir, row)
        every = config.checkpoint_every_steps
        if every and done % every == 0 and done < run.total_steps:
            save_checkpoint(run, done)


def validation_due(config: TrainConfig, done: int, micro_per_epoch: int, total_steps: int) -> bool:
    """Whether step ``done`` (1-based) computes val_loss: every ``validation_every_steps``, else at
    each epoch's end; always at the last step.

    >>> config = TrainConfig(data={"folder": "x"}, gradient_accumulation_steps=2)
    >>> [done for done in range(1, 9) if validation_due(config, done, micro_per_epoch=6, total_steps=8)]
    [3, 6, 8]
    """
    every, accum = config.validation_every_steps, config.gradient_accumulation_steps
    epoch_ended = done * accum // micro_per_epoch > (done - 1) * accum // micro_per_epoch
    return bool((every and done % every == 0) or (not every and epoch_ended) or done == total_steps)


# ----------------------------------------------------------------------------------------------
# finish


def finish(run: Run, wall: float) -> runs.RunRecord:
    """Exports (written whole), then the summary that marks the run finished, then the resume
    state goes. Other processes return an empty record."""
    run.accelerator.wait_for_everyone()
    if not run.accelerator.is_main_process:
        return runs.RunRecord(run.run_dir, {})
    exports = export_adapter(run, run.run_dir / "exports", run.total_steps)
    runs.write_summary(run.run_dir, run_summary(run, exports, wall))
    shutil.rmtree(run.run_dir / runs.STATE_FILE.parent, ignore_errors=True)  # with it any temporary a kill left
    return runs.load_run(run.run_dir)


def run_summary(run: Run, exports: dict[str, Path], wall: float) -> dict[str, Any]:
    """summary.json: what ran, how fast, on what, the final losses and the exported files."""
    config, base, adapter, device = run.config, run.base, run.adapter, run.accelerator.device
    trained = run.total_steps - run.start_step
    tail = [r["loss"] for r in run.log[-max(1, len(run.log) // 10):]]
    val_losses = [r["val_loss"] for r in run.log if "val_loss" in r]
    val_set = run.inputs.val_set
    return {
        "method": config.method, "config_hash": config.hash(), "base_model": base.source,
        "random_weights": base.random_weights, "seed": config.seed, "steps": run.total_steps,
        "resumed_from_step": run.start_step, "wall_time_s": wall, "steps_per_s": trained / wall if wall else None,
        "trainable_params": adapter.trained_parameter_count(base), "train_images": len(run.inputs.train_set),
        "validation_images": len(val_set) if val_set is not None else 0, **run.inputs.fingerprints,
        "final_loss": sum(tail) / len(tail), "final_val_loss": val_losses[-1] if val_losses else None,
        "adapter": adapter.describe(), "device": str(device), "mixed_precision": config.mixed_precision,
        **runs.peak_memory(device), "versions": environment_info(device),
        "exports": {layout: str(Path(path).relative_to(run.run_dir)) for layout, path in exports.items()},
        "file_sizes": runs.file_sizes(exports),
    }


def _set_attention(unet, attention: str) -> None:
    # imported here: diffusers takes seconds to import, and building a TrainConfig needs none of it
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


# ----------------------------------------------------------------------------------------------
# command line


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["options.rank=8", "learning_rate=1e-3"]`` -> nested dict (values parsed as YAML).

    >>> parse_overrides(["options.rank=8", "data.folder=imgs", "options.target_modules=[to_q,to_k]"])
    {'options': {'rank': 8, 'target_modules': ['to_q', 'to_k']}, 'data': {'folder': 'imgs'}}
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = load_yaml(raw)
    return values


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(merged.get(key) or {}, value) if isinstance(value, dict) else value
    return merged


# kohya sd-scripts (train_network.py) argument -> key here, for readers who know those names
KOHYA_NAMES = {
    "train_data_dir": "data.folder", "resolution": "data.resolution", "network_dim": "options.rank",
    "network_alpha": "options.alpha", "network_train_unet_only": "options.train_text_encoder (false)",
    "train_batch_size": "batch_size", "max_train_epochs": "epochs", "unet_lr": "learning_rate",
    "text_encoder_lr": "text_encoder_learning_rate", "optimizer_type": "optimizer",
    "lr_warmup_steps": "lr_warmup_steps / lr_warmup_ratio", "lr_scheduler_num_cycles": "lr_num_cycles",
    "caption_dropout_rate": "caption_dropout", "save_every_n_steps": "checkpoint_every_steps",
    "sdpa": "attention=sdpa",
}


def command_line_help() -> str:
    """Every key ``python -m lora_core.train`` accepts, from the config dataclasses (shown by --help)."""
    import textwrap

    from lora_core.adapters import available_methods
    from lora_core.config import config_help

    sections = ["TrainConfig keys (key=value on the command line or in --config; default, then help):",
                config_help(TrainConfig, skip=("options",))]
    for method in sorted(available_methods()):
        options_class = get_adapter(method).Options
        fields = config_help(options_class, prefix="options.")
        sections += [f"\noptions.* for method={method} ({options_class.__name__}):", fields or "  (none)"]
    kohya = ", ".join(f"{theirs} -> {ours}" for theirs, ours in KOHYA_NAMES.items())
    sections += ["", textwrap.fill(f"kohya sd-scripts arguments named differently here: {kohya}", 100,
                                   subsequent_indent="  ")]
    return "\n".join(sections)


def working_directory_paths(values: dict[str, Any]) -> dict[str, Any]:
    """Folders typed on the command line (or in its --config file) are relative to the working
    directory, as for any command; configs built in code keep project-relative folders.

    >>> import os
    >>> working_directory_paths({"data": {"folder": "imgs"}, "seed": 1})["data"]["folder"] == os.path.abspath("imgs")
    True
    """
    values = dict(values)
    if isinstance(values.get("data"), dict) and values["data"].get("folder"):
        values["data"] = {**values["data"], "folder": str(Path(values["data"]["folder"]).absolute())}
    if values.get("validation_folder"):
        values["validation_folder"] = str(Path(values["validation_folder"]).absolute())
    return values


def main(argv: list[str] | None = None) -> int:
    from lora_core.cli import command_parser, read_config_file, run_command

    parser = command_parser("python -m lora_core.train", __doc__.split("\n")[0], command_line_help)
    parser.add_argument("--config", help="YAML or JSON file with TrainConfig keys (overrides win over it)")
    parser.add_argument("--force", action="store_true", help="retrain even if a finished run exists")
    parser.add_argument("--runs-root", default=None, help=f"runs folder (default {runs.DEFAULT_RUNS_ROOT})")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="TrainConfig keys below, dotted for nested: options.rank=8 data.folder=x")

    def command(args) -> None:
        values = read_config_file(args.config) if args.config else {}
        config = TrainConfig.from_dict(working_directory_paths(_merge(values, parse_overrides(args.overrides))))
        runs_root = Path(args.runs_root).absolute() if args.runs_root else None
        record = train(config, force=args.force, runs_root=runs_root, progress=not args.no_progress)
        print(record.run_dir)

    return run_command(command, parser, argv, failures=(TrainingDiverged,))


if __name__ == "__main__":
    sys.exit(main())
