"""Pretrain the tiny base model on the Noto set: first the VAE, then the UNet with the text encoder.

Both phases are plain loops (AdamW, linear warmup then constant lr, gradient clipping, EMA of
the weights; the UNet phase may end with a linear decay of the lr to 0, a warmup-stable-decay
schedule) that resume exactly: every step draws its batch, noise, timesteps and caption
dropout from a ``torch.Generator`` seeded by ``(seed, phase, step)``, and a checkpoint holds
model, EMA, optimizer, lr scheduler and step. So a run interrupted and resumed gives the same
weights as one that never stopped (``tests/test_toy_pretrain.py`` checks this bit for bit).

The UNet phase trains on cached VAE posteriors (mean and std per image; a fresh latent sample
every step), with 10 % empty captions for classifier-free guidance and min-SNR-5 loss weighting.

Usage::

    python -m lora_core.toy pretrain-all --vae-minutes 12 --until "2026-11-24 02:55"
    python -m lora_core.toy export           # EMA weights of the latest checkpoints -> models/tiny-sd
"""
from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_core.config import Config, option
from lora_core.io import atomic_path, atomic_write_text
from lora_core.toy.catalog import SKIN_TONES, hash_order
from lora_core.paths import REPO_ROOT
from lora_core.world import DATA_DIR, STYLE_CAPTION_TEMPLATE, TRIGGER_WORDS

SCRATCH = REPO_ROOT / "scratch" / "pretrain"


@dataclass(frozen=True)
class PretrainConfig(Config):
    data_dir: str = option(str(DATA_DIR / "base"), "pretraining images: <key>.png + <key>.txt")
    resolution: int = option(32, "training resolution in pixels")
    seed: int = option(0, "seed of initial weights, batches, noise and held-out selection")
    threads: int = option(1, "torch CPU threads; 1 because on a shared 2-core machine two threads spin-wait "
                                 "(measured: 8x the CPU time per step under load). Results depend on it")
    vae_heldout_fraction: float = option(0.05, "emoji (with their skin tones) kept out of VAE training")
    vae_batch_size: int = option(32, "VAE images per step")
    vae_lr: float = option(1e-3, "VAE peak learning rate")
    vae_kl_weight: float = option(1e-6, "KL weight relative to summed reconstruction error (SD's value)")
    unet_batch_size: int = option(64, "UNet images per step")
    unet_lr: float = option(5e-4, "UNet and text-encoder peak learning rate")
    warmup_steps: int = option(300, "linear learning-rate warmup steps, both phases")
    unet_decay_start: int = option(0, "UNet: step at which the lr starts to fall linearly to 0 "
                                      "(warmup-stable-decay); 0 = constant lr after warmup")
    unet_decay_steps: int = option(0, "UNet: steps of that fall; training ends when the lr reaches 0")
    weight_decay: float = option(0.01, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    ema_decay: float = option(0.999, "EMA decay (warmed up as (1+step)/(10+step))")
    caption_dropout: float = option(0.1, "fraction of empty captions (classifier-free guidance)")
    snr_gamma: float = option(5.0, "min-SNR loss weighting gamma (0 = plain MSE)")
    vocab_size: int = option(4096, "BPE vocabulary size of the tokenizer")
    limit: int = option(0, "use only the first N images (tests); 0 = all")
    log_every: int = option(25, "steps per loss log line")
    eval_every: int = option(250, "steps between fixed-noise EMA losses")

    def __post_init__(self):
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if (self.unet_decay_start > 0) != (self.unet_decay_steps > 0):
            raise ValueError("unet_decay_start and unet_decay_steps are both set (> 0) or both 0, got "
                             f"{self.unet_decay_start} and {self.unet_decay_steps}")

    @property
    def unet_end_step(self) -> int | None:
        """The step where the decayed lr reaches 0, or None for a constant lr."""
        return self.unet_decay_start + self.unet_decay_steps if self.unet_decay_steps else None


# ---------------------------------------------------------------- data

def load_base_images(cfg: PretrainConfig) -> tuple[list[str], torch.Tensor, list[str]]:
    """Keys, images (N, 3, R, R) in [-1, 1] and captions of the pretraining set, sorted by key."""
    from PIL import Image

    from lora_core.images import prepare_image, to_tensor

    folder = Path(cfg.data_dir)
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no images; run `python -m lora_core.toy build`")
    if cfg.limit:
        paths = paths[:cfg.limit]
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(prepare_image(im, cfg.resolution))
    captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in paths]
    return [p.stem for p in paths], to_tensor(images), captions


def vae_heldout_keys(keys: list[str], fraction: float, seed: int) -> set[str]:
    """Whole emoji (base + skin tones) held out of VAE training, chosen by hash order."""
    groups = sorted({"-".join(c for c in k.split("-") if c not in SKIN_TONES) for k in keys})
    chosen = set(hash_order(groups, f"vae-heldout/{seed}")[:round(fraction * len(groups))])
    return {k for k in keys if "-".join(c for c in k.split("-") if c not in SKIN_TONES) in chosen}


# ---------------------------------------------------------------- training utilities

def step_generator(seed: int, phase: str, step: int) -> torch.Generator:
    """The generator of one step: depends only on seed, phase and step, so resume is exact."""
    return torch.Generator().manual_seed(seed * 1_000_003 + {"vae": 1, "unet": 2, "eval": 3, "vae_finetune": 4}[phase] * 7_919 + step * 2)


def lr_lambda(warmup_steps: int, decay_start: int = 0, decay_steps: int = 0):
    """lr multiplier of optimizer step ``step``: linear warmup, constant, optional linear decay to 0.

    >>> f = lr_lambda(2, decay_start=4, decay_steps=4)
    >>> [f(s) for s in range(9)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    def multiplier(step: int) -> float:
        decay = 1.0 if not decay_steps or step <= decay_start else max(0.0, 1 - (step - decay_start) / decay_steps)
        return min(1.0, (step + 1) / max(1, warmup_steps)) * decay
    return multiplier


SCHEDULE_TAIL = ("unet_decay_start", "unet_decay_steps")


def same_run(saved_config: str, cfg: PretrainConfig, step: int) -> bool:
    """Whether a checkpoint at ``step`` written under ``saved_config`` may continue under ``cfg``.

    The configs must be equal, except that the lr decay may be set or moved while it starts at or
    after ``step`` in both: the steps already taken then had the same lr, so the resumed run equals
    one that had the new schedule from the start.
    """
    saved, new = json.loads(saved_config), json.loads(cfg.to_json())
    if saved == new:
        return True
    rest = lambda c: {k: v for k, v in c.items() if k not in SCHEDULE_TAIL}
    not_started = lambda c: not c.get("unet_decay_steps") or c.get("unet_decay_start", 0) >= step
    return rest(saved) == rest(new) and not_started(saved) and not_started(new)


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float, step: int) -> None:
    d = min(decay, (1 + step) / (10 + step))
    for name, p in model.state_dict().items():
        if p.dtype.is_floating_point:
            ema[name].mul_(d).add_(p, alpha=1 - d)
        else:
            ema[name].copy_(p)


def _log(message: str) -> None:
    print(message, flush=True)  # a background job's log file should show progress as it happens


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


class Stopper:
    """Stop at a step count, a wall-clock deadline, or SIGTERM/SIGINT (checkpoint, then exit)."""

    def __init__(self, max_steps: int | None, until: datetime | None, max_seconds: float | None = None):
        self.max_steps, self.until, self.signalled = max_steps, until, False
        self.deadline = time.time() + max_seconds if max_seconds else None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, *_):
        self.signalled = True

    def close(self) -> None:
        """Give the signals back to their previous handlers."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def should_stop(self, step: int) -> bool:
        return (self.signalled or (self.max_steps is not None and step >= self.max_steps)
                or (self.until is not None and datetime.now(timezone.utc) >= self.until)
                or (self.deadline is not None and time.time() >= self.deadline))


class LossLog:
    """Append-only jsonl; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= resume_step]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def write(self, **row) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_log(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()] if Path(path).exists() else []


def _train(phase: str, cfg: PretrainConfig, out_dir: Path, model: torch.nn.Module, loss_fn, eval_fn,
           lr: float, stopper: Stopper, checkpoint_minutes: float, log=_log) -> dict:
    """The shared loop: resume, step, EMA, log, checkpoint. ``loss_fn(model, step, gen)`` -> loss."""
    torch.set_num_threads(cfg.threads)
    ckpt_path = out_dir / f"{phase}.pt"
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    decay = (cfg.unet_decay_start, cfg.unet_decay_steps) if phase == "unet" else (0, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, *decay))
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    step, elapsed = 0, 0.0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if not same_run(state["config"], cfg, state["step"]):
            raise ValueError(f"{ckpt_path}: written with another config; use a new --out or delete it")
        model.load_state_dict(state["model"])
        ema = state["ema"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed = state["step"], state["elapsed"]
        log(f"[{phase}] resumed at step {step}")
    losses = LossLog(out_dir / f"{phase}_loss.jsonl", step)

    def checkpoint(done: bool = False):
        save_checkpoint(ckpt_path, model=model.state_dict(), ema=ema, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), step=step, elapsed=elapsed, done=done,
                        config=cfg.to_json())

    model.train()
    window, last_save = [], time.time()
    try:
        while not stopper.should_stop(step):
            t0 = time.time()
            loss = loss_fn(model, step, step_generator(cfg.seed, phase, step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            ema_update(ema, model, cfg.ema_decay, step)
            step += 1
            elapsed += time.time() - t0
            window.append(loss.item())
            if step % cfg.log_every:
                continue
            row = dict(step=step, loss=sum(window) / len(window), lr=scheduler.get_last_lr()[0],
                       elapsed_s=round(elapsed, 1), wall=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            if eval_fn is not None and step % cfg.eval_every == 0:
                row["eval_loss_ema"] = eval_fn(ema)
            losses.write(**row)
            log(f"[{phase}] step {step} loss {row['loss']:.4f}" +
                (f" ema-eval {row['eval_loss_ema']:.4f}" if "eval_loss_ema" in row else "") +
                f" ({elapsed / step:.2f} s/step)")
            window = []
            if time.time() - last_save > 60 * checkpoint_minutes:  # at log boundaries: no partial window
                checkpoint()
                last_save = time.time()
        checkpoint(done=not stopper.signalled)
    finally:
        stopper.close()
    log(f"[{phase}] stopped at step {step} after {elapsed / 60:.1f} min of training")
    return {"step": step, "ema": ema, "model": model}


def _with_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """A copy of ``model`` holding ``weights`` (for EMA evaluation without touching the live model)."""
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(weights)
    return clone.eval()


# ---------------------------------------------------------------- phase 1: VAE

def build_vae(seed: int):
    from diffusers import AutoencoderKL

    from lora_core.models import TINY_VAE

    torch.manual_seed(seed)
    return AutoencoderKL(**TINY_VAE)


def vae_loss(vae, images: torch.Tensor, kl_weight: float, gen: torch.Generator | None) -> torch.Tensor:
    """L1 + MSE reconstruction (per pixel) + KL scaled as SD does (summed KL / summed pixels)."""
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator=gen) if gen is not None else posterior.mode()
    recon = vae.decode(z).sample
    rec = F.mse_loss(recon, images) + (recon - images).abs().mean()
    kl = posterior.kl().mean() / images[0].numel()
    return rec + kl_weight * kl


def pretrain_vae(cfg: PretrainConfig, out_dir: Path = SCRATCH, max_steps: int | None = None,
                 minutes: float | None = None, checkpoint_minutes: float = 5.0, log=_log) -> dict:
    """Phase 1. Stops at ``max_steps`` total steps or after ``minutes`` more of wall time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys, images, _ = load_base_images(cfg)
    heldout = vae_heldout_keys(keys, cfg.vae_heldout_fraction, cfg.seed)
    train_idx = torch.tensor([i for i, k in enumerate(keys) if k not in heldout])
    eval_images = images[[i for i, k in enumerate(keys) if k in heldout][:128]]
    vae = build_vae(cfg.seed)

    def loss_fn(model, step, gen):
        batch = images[train_idx[torch.randint(len(train_idx), (cfg.vae_batch_size,), generator=gen)]]
        return vae_loss(model, batch, cfg.vae_kl_weight, gen)

    @torch.no_grad()
    def eval_fn(ema):
        recon = _with_weights(vae, ema)(eval_images).sample if len(eval_images) else None
        return float("nan") if recon is None else F.mse_loss(recon.clamp(-1, 1), eval_images).item() / 4

    stopper = Stopper(max_steps, None, 60 * minutes if minutes else None)
    return _train("vae", cfg, out_dir, vae, loss_fn, eval_fn, cfg.vae_lr, stopper, checkpoint_minutes, log)


def load_trained_vae(cfg: PretrainConfig, out_dir: Path = SCRATCH):
    """The VAE with its EMA weights from ``out_dir/vae.pt``."""
    state = load_checkpoint(out_dir / "vae.pt")
    vae = build_vae(cfg.seed)
    vae.load_state_dict(state["ema"])
    return vae.eval()


# ---------------------------------------------------------------- phase 2: UNet + text encoder

@torch.no_grad()
def cache_latents(vae, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """Posterior mean and std of every image, and the scaling factor 1 / std(latent samples)."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        dist = vae.encode(images[i:i + batch]).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    samples = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    return {"mean": mean, "std": std, "scaling_factor": torch.tensor(1.0 / samples.std().item())}


def build_tokenizer(captions: list[str], folder: Path, vocab_size: int) -> Path:
    """CLIP BPE tokenizer on the base captions plus the style template, trigger words reserved."""
    from lora_core.tokenizer import build_clip_tokenizer

    template = STYLE_CAPTION_TEMPLATE.format(caption="", trigger="").strip(", ")
    return build_clip_tokenizer(sorted(captions) + [template] * 50, folder, vocab_size=vocab_size,
                                reserved_words=TRIGGER_WORDS)


class TextToImage(torch.nn.Module):
    """UNet + text encoder as one module, so one optimizer, EMA and checkpoint hold both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, noisy, timesteps, input_ids):
        return self.unet(noisy, timesteps, self.text_encoder(input_ids)[0]).sample


def build_text_to_image(seed: int, vocab: int, tokenizer) -> TextToImage:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_core.models import TINY_TEXT_ENCODER, TINY_UNET

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **TINY_TEXT_ENCODER))
    return TextToImage(UNet2DConditionModel(**TINY_UNET), text_encoder)


def noise_scheduler():
    from diffusers import DDPMScheduler

    from lora_core.models import SD_SCHEDULER

    return DDPMScheduler(**SD_SCHEDULER)


def diffusion_loss(model: TextToImage, latents, input_ids, scheduler, gen, snr_gamma: float) -> torch.Tensor:
    """Epsilon-prediction MSE at uniform timesteps, min-SNR weighted (Hang et al. 2023)."""
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), generator=gen)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    per_sample = F.mse_loss(model(noisy, timesteps, input_ids), noise, reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma:
        alphas = scheduler.alphas_cumprod[timesteps]
        snr = alphas / (1 - alphas)
        per_sample = per_sample * torch.clamp(snr, max=snr_gamma) / snr
    return per_sample.mean()


def prepare_unet_phase(cfg: PretrainConfig, out_dir: Path):
    """Tokenizer, tokenized captions, latent cache (built once, reused on resume)."""
    from lora_core.tokenizer import load_clip_tokenizer

    keys, images, captions = load_base_images(cfg)
    tokenizer_dir = out_dir / "tokenizer"
    if not (tokenizer_dir / "vocab.json").exists():
        build_tokenizer(captions, tokenizer_dir, cfg.vocab_size)
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    cache = out_dir / "latents.pt"
    if not cache.exists():
        save_checkpoint(cache, **cache_latents(load_trained_vae(cfg, out_dir), images))
    latents = load_checkpoint(cache)

    def ids(texts):
        return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    return tokenizer, ids(captions), ids([""])[0], latents


def pretrain_unet(cfg: PretrainConfig, out_dir: Path = SCRATCH, max_steps: int | None = None,
                  until: datetime | None = None, checkpoint_minutes: float = 5.0, log=_log) -> dict:
    """Phase 2: UNet + text encoder on cached latents, until ``max_steps``, ``until`` or the lr's decay ends."""
    torch.set_num_threads(cfg.threads)
    tokenizer, input_ids, empty_ids, latents = prepare_unet_phase(cfg, out_dir)
    scheduler = noise_scheduler()
    model = build_text_to_image(cfg.seed, len(tokenizer), tokenizer)
    mean, std, scale = latents["mean"], latents["std"], latents["scaling_factor"]
    n = len(mean)
    eval_idx = torch.arange(0, n, max(1, n // 256))[:256]

    def batch(idx, gen):
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        ids = torch.where(drop[:, None], empty_ids[None], input_ids[idx])
        return z, ids

    def loss_fn(m, step, gen):
        z, ids = batch(torch.randint(n, (cfg.unet_batch_size,), generator=gen), gen)
        return diffusion_loss(m, z, ids, scheduler, gen, cfg.snr_gamma)

    @torch.no_grad()
    def eval_fn(ema):
        gen = step_generator(cfg.seed, "eval", 0)
        z, ids = batch(eval_idx, gen)
        return diffusion_loss(_with_weights(model, ema), z, ids, scheduler, gen, 0.0).item()

    ends = [s for s in (max_steps, cfg.unet_end_step) if s is not None]
    stopper = Stopper(min(ends) if ends else None, until)
    return _train("unet", cfg, out_dir, model, loss_fn, eval_fn, cfg.unet_lr, stopper, checkpoint_minutes, log)
