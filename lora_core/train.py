"""The one training loop, for every method (LoRA, textual inversion, DreamBooth, LyCORIS).

Method specifics sit behind :class:`lora_core.adapters.Adapter`; this file holds the config,
the setup (data, caches, optimizer, accelerate), the loop, validation, checkpoints and exact
resume. Records and reuse live in :mod:`lora_core.runs`.

    record = train(TrainConfig(data=DataConfig(folder="data/styles/twemoji/train"),
                               options={"rank": 8}, max_train_steps=300))
    record.exports["diffusers"]      # runs/lora-<hash>/exports/pytorch_lora_weights.safetensors

or ``python -m lora_core.train --config run.yaml options.rank=8 learning_rate=1e-3 [--force]``.

Killing a run and calling ``train`` again with the same config resumes from the last full state
(``runs/<method>-<hash>/state/training_state.pt``) and ends bit-identical to an uninterrupted run:
the data order and the noise are functions of the seed and the step, and the state holds the
trainables, optimizer, scheduler, noise generator and the torch/numpy/python RNG states.

>>> cfg = TrainConfig(data={"folder": "x"}, options={"rank": 8, "alpha": 16})
>>> cfg.options.scale, cfg.lr_scheduler
(2.0, 'constant')
>>> TrainConfig(data={"folder": "x"}, learning_rate=0)
Traceback (most recent call last):
...
ValueError: TrainConfig: learning_rate must be positive, got 0
"""
from __future__ import annotations

import copy
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lora_core import losses, runs
from lora_core.adapters import Adapter, get_adapter, trainable_parameters
from lora_core.config import Config, load_yaml, option
from lora_core.data import DataConfig, ImageCaptionSet, load_image_caption_set, split_train_validation
from lora_core.environment import environment_info
from lora_core.optim import (OPTIMIZERS, SCHEDULERS, build_optimizer, build_scheduler, step_size_estimate,
                             warmup_steps_for)

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


# ----------------------------------------------------------------------------------------------
# data


def load_training_data(config: TrainConfig) -> tuple[ImageCaptionSet, ImageCaptionSet | None]:
    """(train, validation): the validation set from ``validation_folder`` or the split fraction."""
    data = load_image_caption_set(config.data)
    if config.validation_folder:
        return data, load_image_caption_set(config.data.replace(folder=config.validation_folder))
    if config.data.validation_fraction > 0:
        return split_train_validation(data, config.data.validation_fraction, config.data.split_seed)
    return data, None


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


def fingerprint(data: ImageCaptionSet) -> str:
    """sha256 (12 hex) of the images and captions: resume refuses changed data."""
    import hashlib

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
    from PIL import Image

    from lora_core.adapters.dreambooth import generate_class_images
    from lora_core.images import prepare_image, to_tensor

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


def load_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    """A full training state (weights_only load), refused when written by another config."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["config_hash"] != config.hash():
        theirs, ours = state["config"], config.to_dict()
        differing = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ValueError(f"{path}: this resume state was written by config {state['config_hash']}, not by "
                         f"this config {config.hash()}; differing keys: {', '.join(differing)}")
    return state


def provenance(config: TrainConfig, adapter: Adapter, base, step: int) -> dict[str, str]:
    """String metadata for every weights file: config hash, method, rank/alpha/scale, base, seed, step."""
    from lora_core.formats import provenance_metadata

    return provenance_metadata(config_hash=config.hash(), method=config.method, base_model=base.source,
                               seed=config.seed, step=step, config=config.to_json(),
                               **{k: v for k, v in adapter.describe().items() if k != "method"})


# ----------------------------------------------------------------------------------------------
# the loop


def train(config: TrainConfig, base=None, force: bool = False, runs_root: str | Path | None = None,
          resume_from: str | Path | None = None, progress: bool = True) -> runs.RunRecord:
    """Train ``config`` and return its record, or the record of the finished run with the same
    config when its training images, validation images and base weights are also the same (their
    fingerprints are in its summary); a finished run whose inputs changed is retrained in place, with
    one line on stderr naming what changed. ``force`` retrains in any case.

    ``base`` (a BaseModel whose ``source`` equals ``config.base_model``) saves loading it; it is
    copied, never modified. An unfinished run in the same folder resumes from its last state;
    ``resume_from`` names another state file (refused when written by another config, or on other
    training images or base weights).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm

    from lora_core.models import base_fingerprint, load_base

    run_dir = runs.run_dir_for(config.method, config.hash(), runs_root)
    if base is not None and base.source != config.base_model:
        raise ValueError(f"base.source={base.source!r} but config.base_model={config.base_model!r}")
    train_set, val_set = load_training_data(config)
    given_base = base is not None
    if not given_base:
        base = load_base(config.base_model, seed=config.seed)
    inputs = {"data_fingerprint": fingerprint(train_set),
              "validation_fingerprint": fingerprint(val_set) if val_set else None,
              "base_fingerprint": base_fingerprint(base)}
    if (run_dir / "summary.json").exists() and not force:
        finished = runs.load_run(run_dir)
        changed = runs.changed_inputs(finished.summary, inputs)
        if not changed:
            return finished
        print(f"{run_dir}: retraining this finished run: {'; '.join(changed)}", file=sys.stderr, flush=True)
        force = True

    # AcceleratorState is a process-wide singleton that refuses a second mixed_precision: clear it
    # (keeping the distributed PartialState) so one notebook can train fp16 and bf16 runs in turn
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    if force and run_dir.exists() and accelerator.is_main_process:
        shutil.rmtree(run_dir)
    accelerator.wait_for_everyone()  # no process reads the folder while the main one removes it
    state_path = Path(resume_from) if resume_from else run_dir / runs.STATE_FILE
    state = load_state(state_path, config) if state_path.exists() else None
    if resume_from and state is None:
        raise FileNotFoundError(f"resume_from={resume_from}: no such training state")

    # -- everything that can be wrong is checked before the first step ----------------------------
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
    for key in runs.INPUT_FINGERPRINTS:  # a state without the key predates it: not checked
        if state is not None and state.get(key, inputs[key]) != inputs[key]:
            raise ValueError(f"{state_path}: the {runs.INPUT_FINGERPRINTS[key]} changed since this state was written")
    adapter = get_adapter(config.method)(config)

    if given_base:
        base = copy.deepcopy(base)  # the caller's model stays as it was
    # seeded after loading: load_base may draw from the global RNG (random weights), a given base not
    torch.manual_seed(config.seed), np.random.seed(config.seed), random.seed(config.seed)
    device, weight_dtype = accelerator.device, MIXED_PRECISION[config.mixed_precision]
    for module in (base.vae, base.text_encoder, base.unet):  # on the device before attach: adapters
        module.to(device)                                      # create their tensors beside the weights
    adapter.check(base)
    class_pixels = class_images(base, config, run_dir) if config.num_class_images else None  # before attach:
    adapter.attach(base)                                                                     # the base's own prior
    for module in (base.vae, base.text_encoder, base.unet):
        module.to(dtype=weight_dtype)
    groups = adapter.param_groups(base)
    params = trainable_parameters(groups)
    for param in params:  # frozen weights in half precision, trainables in fp32 (as the diffusers examples)
        param.data = param.data.float()
    optimizer = build_optimizer(config.optimizer, groups, config.weight_decay, config.adam_betas, config.adam_epsilon)
    lr_scheduler = build_scheduler(config.lr_scheduler, optimizer, total_steps,
                                   warmup_steps_for(total_steps, config.lr_warmup_steps, config.lr_warmup_ratio),
                                   config.lr_num_cycles)
    _set_attention(base.unet, config.attention)
    if config.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if adapter.trains_text_encoder:
            base.text_encoder.gradient_checkpointing_enable()

    # -- caches: latents once, text embeddings once when the text encoder is frozen ---------------
    latent_generator = torch.Generator().manual_seed(config.seed + 1)
    train_latents = encode_latents(base.vae, train_set.pixel_values, latent_generator) if config.cache_latents else None
    val_latents = encode_latents(base.vae, val_set.pixel_values, latent_generator) if val_set else None
    class_latents = encode_latents(base.vae, class_pixels, latent_generator) if class_pixels is not None else None
    cache_text = config.cache_text_embeddings and not adapter.trains_text_encoder
    captions = [adapter.caption(c) for c in train_set.captions]
    val_captions = [adapter.caption(c) for c in val_set.captions] if val_set else []
    text_cache = {}
    if cache_text:
        unique = sorted(set(captions) | set(val_captions) | {"", config.class_prompt})
        with torch.no_grad():
            text_cache = dict(zip(unique, encode_text(base.tokenizer, base.text_encoder, unique, device)))

    # Every module with trainable parameters goes through accelerate (DDP when distributed, so its
    # gradients sync; unchanged on one process). DDP refuses a module without any (the UNet under
    # textual inversion, a frozen text encoder). The loop calls the wrappers, adapters use base.*.
    unet, text_encoder = (accelerator.prepare(module) if any(p.requires_grad for p in module.parameters())
                          else module for module in (base.unet, base.text_encoder))
    optimizer = accelerator.prepare(optimizer)

    def embed(batch_captions: list[str]) -> torch.Tensor:
        if cache_text:
            return torch.stack([text_cache[c] for c in batch_captions])
        return encode_text(base.tokenizer, text_encoder, batch_captions, device)

    base.unet.train()
    if adapter.trains_text_encoder:
        base.text_encoder.train()
    noise_generator = torch.Generator().manual_seed(config.seed + 2)

    # -- resume -----------------------------------------------------------------------------------
    start_step, log = 0, []
    if state is not None:
        adapter.load_state_dict(base, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["scheduler"])
        noise_generator.set_state(state["noise_generator"])
        set_rng_states(state["rng"])
        start_step, log = state["step"], state["log"]
    run_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        config.save_json(run_dir / "config.json")
        runs.write_metrics(run_dir, log)

    def save_state(step: int) -> None:
        full = {"config_hash": config.hash(), "config": config.to_dict(), "step": step, "log": log,
                "adapter": adapter.state_dict(base), "optimizer": optimizer.state_dict(),
                "scheduler": lr_scheduler.state_dict(), "noise_generator": noise_generator.get_state(),
                "rng": rng_states(), **inputs}
        from lora_core.io import atomic_path
        with atomic_path(run_dir / runs.STATE_FILE) as tmp:
            torch.save(full, tmp)
        adapter.export(base, run_dir / "checkpoints" / f"step-{step:06d}", provenance(config, adapter, base, step))

    # -- the loop ---------------------------------------------------------------------------------
    accum = config.gradient_accumulation_steps
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_step, desc=f"{config.method}-{config.hash()}",
               disable=not (progress and accelerator.is_local_main_process))
    for step in range(start_step, total_steps):
        step_started = time.perf_counter()
        step_loss = 0.0
        for micro in range(accum):
            indices = batch_indices(items, config, step * accum + micro, rank, world)
            if train_latents is not None:
                latents = train_latents[indices]
            else:
                latents = encode_latents(base.vae, train_set.pixel_values[indices], noise_generator)
            drop = torch.rand(len(indices), generator=noise_generator) < config.caption_dropout
            batch_captions = ["" if dropped else captions[i] for i, dropped in zip(indices, drop.tolist())]
            with accelerator.autocast():
                loss = diffusion_loss(unet, base.noise_scheduler, latents.to(device), embed(batch_captions),
                                      noise_generator, config)
                if class_latents is not None:  # prior preservation: as many class images as instances
                    drawn = torch.randint(0, len(class_latents), (len(indices),), generator=noise_generator)
                    loss = loss + config.prior_loss_weight * diffusion_loss(
                        unet, base.noise_scheduler, class_latents[drawn].to(device),
                        embed([config.class_prompt] * len(indices)), noise_generator, config)
            if not torch.isfinite(loss):
                last = f"the last good state is {run_dir / runs.STATE_FILE}" if (run_dir / runs.STATE_FILE).exists() \
                    else "no state was saved yet (checkpoint_every_steps)"
                raise TrainingDiverged(f"loss is {loss.item()} at step {step + 1} (micro-batch {micro + 1}); "
                                       f"training stopped, {last}")
            accelerator.backward(loss / accum)
            step_loss += loss.item() / accum
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        step_lrs = {f"lr/{group['name']}": group["lr"] for group in optimizer.param_groups}  # used by this step
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            adapter.after_optimizer_step(base)

        done = step + 1
        row = {"step": done, "epoch": done * accum // micro_per_epoch, "loss": step_loss,
               "lr": next(iter(step_lrs.values())), **step_lrs, "s_per_it": time.perf_counter() - step_started,
               **step_size_estimate(optimizer)}  # Prodigy: its d after this step
        every = config.validation_every_steps
        epoch_ended = done * accum // micro_per_epoch > step * accum // micro_per_epoch
        if val_set is not None and ((every and done % every == 0) or (not every and epoch_ended) or done == total_steps):
            with torch.no_grad():
                val_text = embed(val_captions)
            row["val_loss"] = validation_loss(base, val_latents.to(device), val_text, config)
        log.append(row)
        if accelerator.is_main_process:
            runs.append_metrics(run_dir, row)
            if config.checkpoint_every_steps and done % config.checkpoint_every_steps == 0 and done < total_steps:
                save_state(done)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{row['lr']:.2e}")
    bar.close()
    wall = time.perf_counter() - started

    # -- exports and summary ----------------------------------------------------------------------
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return runs.RunRecord(run_dir, {})
    exports = adapter.export(base, run_dir / "exports", provenance(config, adapter, base, total_steps))
    trained = total_steps - start_step
    tail = [r["loss"] for r in log[-max(1, len(log) // 10):]]
    val_losses = [r["val_loss"] for r in log if "val_loss" in r]
    summary = {
        "method": config.method, "config_hash": config.hash(), "base_model": base.source,
        "random_weights": base.random_weights, "seed": config.seed, "steps": total_steps,
        "resumed_from_step": start_step, "wall_time_s": wall, "steps_per_s": trained / wall if wall else None,
        "trainable_params": adapter.trained_parameter_count(base), "train_images": len(train_set),
        "validation_images": len(val_set) if val_set else 0, **inputs,
        "final_loss": sum(tail) / len(tail), "final_val_loss": val_losses[-1] if val_losses else None,
        "adapter": adapter.describe(), "device": str(device), "mixed_precision": config.mixed_precision,
        **runs.peak_memory(device), "versions": environment_info(device),
        "exports": {layout: str(Path(path).relative_to(run_dir)) for layout, path in exports.items()},
        "file_sizes": runs.file_sizes(exports),
    }
    runs.write_summary(run_dir, summary)
    (run_dir / runs.STATE_FILE).unlink(missing_ok=True)
    return runs.load_run(run_dir)


def _set_attention(unet, attention: str) -> None:
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
        config = TrainConfig.from_dict(_merge(values, parse_overrides(args.overrides)))
        record = train(config, force=args.force, runs_root=args.runs_root, progress=not args.no_progress)
        print(record.run_dir)

    return run_command(command, parser, argv, failures=(TrainingDiverged,))


if __name__ == "__main__":
    sys.exit(main())
