"""Export the latest pretraining checkpoints (EMA weights) as ``models/tiny-sd`` with its model card.

The shipped folder is an ordinary diffusers ``StableDiffusionPipeline`` layout in safetensors,
stored in float16 to fit the 20 MB budget; ``load_base("toy:base")`` upcasts to float32.
"""
from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch

from lora_core.environment import cpu_model
from lora_core.io import atomic_write_json
from lora_core.models import TOY_BASE_DIR, BaseModel
from lora_core.toy.pretrain import (SCRATCH, PretrainConfig, build_text_to_image, load_checkpoint,
                                    load_trained_vae, noise_scheduler)

EXPORT_INFO = "export_info.json"
MAX_SHIPPED_BYTES = 20_000_000


def assemble_base(cfg: PretrainConfig, out_dir: Path = SCRATCH) -> tuple[BaseModel, dict]:
    """The BaseModel from the EMA weights of ``out_dir``'s checkpoints, and what went into it."""
    from lora_core.tokenizer import load_clip_tokenizer

    tokenizer = load_clip_tokenizer(out_dir / "tokenizer")
    vae = load_trained_vae(cfg, out_dir)
    latents = load_checkpoint(out_dir / "latents.pt")
    vae.register_to_config(scaling_factor=round(float(latents["scaling_factor"]), 5))
    unet_state = load_checkpoint(out_dir / "unet.pt")
    vae_state = load_checkpoint(out_dir / "vae.pt")
    model = build_text_to_image(cfg.seed, len(tokenizer), tokenizer)
    model.load_state_dict(unet_state["ema"])
    base = BaseModel(tokenizer, model.text_encoder.eval(), vae, model.unet.eval(), noise_scheduler(),
                     source="toy:base")
    info = {
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": json.loads(unet_state["config"]),  # what trained the UNet, lr decay included
        "vae_steps": vae_state["step"], "vae_train_minutes": round(vae_state["elapsed"] / 60, 1),
        "unet_steps": unet_state["step"], "unet_train_minutes": round(unet_state["elapsed"] / 60, 1),
        "unet_finished": bool(unet_state.get("done")),
        "scaling_factor": vae.config.scaling_factor,
        "n_images": int(latents["mean"].shape[0]),
        "parameters": {name: sum(p.numel() for p in getattr(base, name).parameters())
                       for name in ("unet", "text_encoder", "vae")},
        "tokenizer_size": len(tokenizer),
        "hardware": f"{platform.processor() or platform.machine()}, {cpu_model()}, "
                    f"{cfg.threads} torch threads, shared with other jobs",
        "torch": torch.__version__,
    }
    return base, info


def export(cfg: PretrainConfig, out_dir: Path = SCRATCH, model_dir: str | Path | None = None, log=print) -> Path:
    """Write the diffusers folder (float16 safetensors), ``export_info.json`` and ``MODEL_CARD.md``."""
    from lora_core.toy.card import write_model_card

    model_dir = Path(model_dir) if model_dir else TOY_BASE_DIR
    base, info = assemble_base(cfg, Path(out_dir))
    for module in (base.unet, base.text_encoder, base.vae):
        module.to(torch.float16)
    base.save(model_dir)
    size = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors"))
    if size > MAX_SHIPPED_BYTES:
        raise RuntimeError(f"{model_dir}: weights take {size / 1e6:.1f} MB, over the "
                           f"{MAX_SHIPPED_BYTES / 1e6:.0f} MB budget")
    info["weights_bytes"] = size
    atomic_write_json(model_dir / EXPORT_INFO, info)
    write_model_card(model_dir, Path(out_dir))
    log(f"exported {model_dir} (UNet step {info['unet_steps']}, {size / 1e6:.1f} MB)")
    return model_dir
