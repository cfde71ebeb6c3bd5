"""Phase 3: fine-tune the shipped VAE on every vendor's images, its Noto latents held in place.

The VAE of phase 1 saw only Noto emoji, for a few hundred steps: its round trip turns other
vendors' flat colours muddy (a red ticket comes back brown) and thin outlines into a blur, so a
style LoRA that learns OpenMoji's latents decodes them as mud. This phase trains encoder and
decoder on every vendor's images (held-out subjects excluded) with the phase 1 loss, plus an
*anchor*: on Noto images, the posterior mean and log-variance must stay those of the VAE being
fine-tuned (its frozen copy). The UNet was pretrained on Noto latents, so with the anchor it stays
valid, and the decoder learns to draw every vendor's colours and lines from the same latent space.

Resumable and exact like phases 1 and 2 (the shared loop of :mod:`lora_core.toy.pretrain`)::

    python -m lora_core.toy vae-finetune --steps 1500        # checkpoints in scratch/vae_finetune
    python -m lora_core.toy export-vae                       # EMA weights -> models/tiny-sd/vae

>>> VaeFinetuneConfig().anchor_vendor, VaeFinetuneConfig(anchor_weight=-1.0)
Traceback (most recent call last):
...
ValueError: VaeFinetuneConfig: anchor_weight must be >= 0, got -1.0
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_core.config import Config, option
from lora_core.io import atomic_write_json
from lora_core.paths import REPO_ROOT
from lora_core.toy.pretrain import Stopper, _log, _train, load_checkpoint, vae_heldout_keys
from lora_core.world import BASE_VENDOR, DATA_DIR, STYLE_SETS, SUBJECT_SETS, VENDORS, true_images_dir

SCRATCH = REPO_ROOT / "scratch" / "vae_finetune"
PHASE = "vae_finetune"
EVAL_PER_VENDOR = 64


@dataclass(frozen=True)
class VaeFinetuneConfig(Config):
    base_model: str = option("toy:base", "the base whose VAE is fine-tuned (its latent space is kept)")
    vendors: tuple[str, ...] = option(tuple(VENDORS), "vendors whose images train the VAE")
    anchor_vendor: str = option(BASE_VENDOR, "vendor of the UNet's pretraining images, whose latents are anchored")
    resolution: int = option(32, "training resolution in pixels")
    seed: int = option(0, "seed of the batches and latent samples")
    threads: int = option(1, "torch CPU threads (see PretrainConfig.threads)")
    batch_size: int = option(48, "images per step, drawn from every vendor")
    anchor_batch_size: int = option(24, "anchor-vendor images per step for the latent anchor")
    lr: float = option(3e-4, "AdamW peak learning rate")
    warmup_steps: int = option(200, "linear learning-rate warmup steps")
    weight_decay: float = option(0.0, "AdamW weight decay")
    grad_clip: float = option(1.0, "gradient norm clip")
    ema_decay: float = option(0.995, "EMA decay (the exported weights)")
    kl_weight: float = option(1e-6, "KL weight, as in phase 1")
    anchor_weight: float = option(1.0, "weight of the squared change of the anchor vendor's posterior mean")
    logvar_anchor_weight: float = option(0.1, "weight of the squared change of its posterior log-variance")
    log_every: int = option(25, "steps per loss log line")
    eval_every: int = option(250, "steps between held-out reconstruction errors of the EMA weights")

    def __post_init__(self):
        for name in ("anchor_weight", "logvar_anchor_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"VaeFinetuneConfig: {name} must be >= 0, got {getattr(self, name)}")
        unknown = [v for v in self.vendors if v not in VENDORS]
        if unknown or self.anchor_vendor not in VENDORS:
            raise ValueError(f"VaeFinetuneConfig: unknown vendors {unknown or [self.anchor_vendor]}. "
                             f"Valid: {', '.join(VENDORS)}")


def heldout_keys(base_keys: list[str], cfg: VaeFinetuneConfig) -> set[str]:
    """Subjects no VAE may train on: every held-out subject of the style and subject sets, and
    phase 1's held-out Noto emoji (check 1 measures on them)."""
    keys = set(vae_heldout_keys(base_keys, 0.05, 0))
    folders = [DATA_DIR / "styles" / name / "heldout" for name in STYLE_SETS]
    folders += [REPO_ROOT / subject_set.folder("heldout") for subject_set in SUBJECT_SETS.values()]
    for folder in folders:
        keys |= {path.stem for path in folder.glob("*.png")}
    return keys


def load_vendor_images(vendor: str, keys: set[str] | None, exclude: set[str], resolution: int,
                       limit: int | None = None) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1]: ``vendor``'s images of ``keys`` (all when None) not in ``exclude``."""
    from PIL import Image

    from lora_core.images import prepare_image, to_tensor

    paths = [p for p in sorted(true_images_dir(vendor).glob("*.png"))
             if p.stem not in exclude and (keys is None or p.stem in keys)][:limit]
    if not paths:
        raise FileNotFoundError(f"{true_images_dir(vendor)}: no images; run `python -m lora_core.toy build`")
    return to_tensor([prepare_image(Image.open(p), resolution) for p in paths])


def anchored_vae_loss(vae, frozen, images, anchor_images, cfg: VaeFinetuneConfig, gen) -> torch.Tensor:
    """Phase 1's L1 + MSE + KL on ``images``, plus the anchor on ``anchor_images``."""
    from lora_core.toy.pretrain import vae_loss

    posterior, kept = vae.encode(anchor_images).latent_dist, frozen.encode(anchor_images).latent_dist
    anchor = (cfg.anchor_weight * F.mse_loss(posterior.mean, kept.mean)
              + cfg.logvar_anchor_weight * F.mse_loss(posterior.logvar, kept.logvar))
    return vae_loss(vae, images, cfg.kl_weight, gen) + anchor


@torch.no_grad()
def round_trip_psnr(vae, images: torch.Tensor) -> float:
    """Mean PSNR (dB, [0, 1] pixels) of encode-mean-then-decode."""
    decoded = vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((decoded - images) / 2).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def reference_vae(cfg: VaeFinetuneConfig, out_dir: Path):
    """The VAE being fine-tuned, frozen: read from the base at the phase's first start and kept in
    ``out_dir/reference_vae.pt``, so a resume (or an export after the base's VAE was replaced)
    anchors to the same weights."""
    from lora_core.models import load_base
    from lora_core.toy.pretrain import save_checkpoint

    vae = load_base(cfg.base_model).vae.float()
    path = Path(out_dir) / "reference_vae.pt"
    if path.exists():
        vae.load_state_dict(load_checkpoint(path)["weights"])
    else:
        save_checkpoint(path, weights=vae.state_dict(), base_model=cfg.base_model)
    return vae.eval().requires_grad_(False)


def finetune_vae(cfg: VaeFinetuneConfig, out_dir: Path = SCRATCH, max_steps: int | None = None,
                 minutes: float | None = None, checkpoint_minutes: float = 5.0, log=_log) -> dict:
    """Train until ``max_steps`` in total or for ``minutes`` more; resumes from ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    base_keys = [p.stem for p in sorted(true_images_dir(cfg.anchor_vendor).glob("*.png"))]
    exclude = heldout_keys(base_keys, cfg)
    train_images = torch.cat([load_vendor_images(v, None, exclude, cfg.resolution) for v in cfg.vendors])
    anchor_images = load_vendor_images(cfg.anchor_vendor, None, exclude, cfg.resolution)
    frozen = reference_vae(cfg, out_dir)
    vae = copy.deepcopy(frozen).train().requires_grad_(True)
    eval_images = torch.cat([load_vendor_images(v, exclude, set(), cfg.resolution, EVAL_PER_VENDOR)
                             for v in cfg.vendors])
    log(f"[{PHASE}] {len(train_images)} training images of {len(cfg.vendors)} vendors, "
        f"{len(anchor_images)} anchor images, {len(eval_images)} held-out")

    def loss_fn(model, step, gen):
        drawn = train_images[torch.randint(len(train_images), (cfg.batch_size,), generator=gen)]
        anchors = anchor_images[torch.randint(len(anchor_images), (cfg.anchor_batch_size,), generator=gen)]
        return anchored_vae_loss(model, frozen, drawn, anchors, cfg, gen)

    @torch.no_grad()
    def eval_fn(ema):
        clone = copy.deepcopy(vae)
        clone.load_state_dict(ema)
        decoded = clone.eval().decode(clone.encode(eval_images).latent_dist.mean).sample
        return F.mse_loss(decoded.clamp(-1, 1), eval_images).item() / 4

    stopper = Stopper(max_steps, None, 60 * minutes if minutes else None)
    return _train(PHASE, cfg, out_dir, vae, loss_fn, eval_fn, cfg.lr, stopper, checkpoint_minutes, log)


def vendor_report(vae, frozen, cfg: VaeFinetuneConfig) -> dict[str, dict[str, float]]:
    """Per vendor: held-out round-trip PSNR before and after; for the anchor vendor also how far its
    latents moved (mean squared change over mean square of the old latents)."""
    base_keys = [p.stem for p in sorted(true_images_dir(cfg.anchor_vendor).glob("*.png"))]
    exclude = heldout_keys(base_keys, cfg)
    report = {}
    for vendor in cfg.vendors:
        images = load_vendor_images(vendor, exclude, set(), cfg.resolution, EVAL_PER_VENDOR)
        report[vendor] = {"n": len(images), "psnr_db_before": round(round_trip_psnr(frozen, images), 2),
                          "psnr_db_after": round(round_trip_psnr(vae, images), 2)}
    anchors = load_vendor_images(cfg.anchor_vendor, None, exclude, cfg.resolution, 512)
    with torch.no_grad():
        old, new = frozen.encode(anchors).latent_dist.mean, vae.encode(anchors).latent_dist.mean
    report[cfg.anchor_vendor]["latent_relative_change"] = round(float((new - old).pow(2).mean() / old.pow(2).mean()), 6)
    return report


def export_vae(cfg: VaeFinetuneConfig, out_dir: Path = SCRATCH, model_dir: str | Path | None = None,
               log=print) -> Path:
    """Write the EMA weights (float16, the scaling factor kept) into ``model_dir/vae`` and record the
    phase and its per-vendor report in ``export_info.json`` under ``vae_finetune``."""
    import os
    import shutil
    import tempfile

    from lora_core.models import TOY_BASE_DIR
    from lora_core.toy.card import write_vae_finetune_section

    model_dir = Path(model_dir) if model_dir else TOY_BASE_DIR
    state = load_checkpoint(Path(out_dir) / f"{PHASE}.pt")
    frozen = reference_vae(cfg, Path(out_dir))
    vae = copy.deepcopy(frozen)
    vae.load_state_dict(state["ema"])
    report = vendor_report(vae.eval(), frozen, cfg)
    staging = Path(tempfile.mkdtemp(prefix=".vae.", dir=model_dir))
    vae.to(torch.float16).save_pretrained(staging, safe_serialization=True)
    config_path = staging / "config.json"  # no machine path in a shipped config
    atomic_write_json(config_path, {k: v for k, v in json.loads(config_path.read_text()).items()
                                    if k != "_name_or_path"})
    retired = model_dir / ".vae.retired"
    shutil.rmtree(retired, ignore_errors=True)
    os.replace(model_dir / "vae", retired)
    os.replace(staging, model_dir / "vae")
    shutil.rmtree(retired)
    info_path = model_dir / "export_info.json"
    info = json.loads(info_path.read_text())
    info["vae_finetune"] = {"exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "steps": state["step"], "train_minutes": round(state["elapsed"] / 60, 1),
                            "config": json.loads(cfg.to_json()), "vendors": report}
    info["weights_bytes"] = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors"))
    atomic_write_json(info_path, info)
    write_vae_finetune_section(model_dir)
    log(f"exported the fine-tuned VAE into {model_dir / 'vae'} (step {state['step']})")
    return model_dir
