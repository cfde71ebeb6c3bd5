"""DreamBooth: full fine-tune of the UNet (optionally the text encoder, at its own learning rate).

As in diffusers' ``examples/dreambooth/train_dreambooth.py``: every UNet weight trains, the VAE
never does, the text encoder only with ``train_text_encoder`` (kohya's ``learning_rate_te``
is our ``TrainConfig.text_encoder_learning_rate``). The export is a complete diffusers folder
(``BaseModel.save``) whose safetensors files also carry the run's provenance metadata.

Prior preservation (Ruiz et al. 2023) is configured on ``TrainConfig`` (``class_prompt``,
``num_class_images``, ``prior_loss_weight``) and run by the loop (``lora_core.train``), for any
method; :func:`generate_class_images` here makes the base model's own samples of the class
prompt, seeded per image and cached by their settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lora_core.adapters import Adapter, freeze, load_trainable_state, register, trainable_state
from lora_core.config import Config, option
from lora_core.formats.safetensors_file import save_safetensors
from lora_core.io import atomic_path, atomic_write_json, read_safetensors

if TYPE_CHECKING:
    from PIL import Image

    from lora_core.models import BaseModel

EXPORT_FOLDER = "model"
CLASS_IMAGES_MANIFEST = "class_images.json"


@dataclasses.dataclass(frozen=True)
class DreamBoothOptions(Config):
    train_text_encoder: bool = option(False, "also fine-tune the whole CLIP text encoder "
                                             "(lr: TrainConfig.text_encoder_learning_rate)")


@register
class DreamBoothAdapter(Adapter):
    method = "dreambooth"
    Options = DreamBoothOptions

    @property
    def trains_text_encoder(self) -> bool:
        return self.options.train_text_encoder

    def _modules(self, base: "BaseModel") -> dict[str, torch.nn.Module]:
        modules = {"unet": base.unet}
        if self.options.train_text_encoder:
            modules["text_encoder"] = base.text_encoder
        return modules

    def attach(self, base: "BaseModel") -> None:
        freeze(base)
        for module in self._modules(base).values():
            module.to(torch.float32).requires_grad_(True)

    def param_groups(self, base: "BaseModel") -> list[dict]:
        te_lr = self.config.text_encoder_learning_rate
        lrs = {"unet": self.config.learning_rate,
               "text_encoder": self.config.learning_rate if te_lr is None else te_lr}
        return [{"name": name, "params": [p for p in module.parameters() if p.requires_grad], "lr": lrs[name]}
                for name, module in self._modules(base).items()]

    def state_dict(self, base: "BaseModel") -> dict[str, torch.Tensor]:
        return trainable_state(self._modules(base))

    def load_state_dict(self, base: "BaseModel", state: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self._modules(base), state)

    def export(self, base: "BaseModel", folder: Path, metadata: dict[str, str]) -> dict[str, Path]:
        """``<folder>/model``: a diffusers folder that ``load_base`` reads back."""
        target = Path(folder) / EXPORT_FOLDER
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".dreambooth-export.", dir=target.parent))
        try:
            saved = base.save(staging / EXPORT_FOLDER)
            add_safetensors_metadata(saved, {**metadata, "lsl_method": self.method,
                                             "lsl_train_text_encoder": str(self.options.train_text_encoder)})
            if target.exists():
                shutil.rmtree(target)
            os.replace(saved, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"diffusers": target}


def add_safetensors_metadata(folder: Path, metadata: dict[str, str]) -> None:
    """Rewrite every ``*.safetensors`` under ``folder`` with ``metadata`` added (``format`` kept:
    diffusers and transformers check it)."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        tensors, existing = read_safetensors(path)
        save_safetensors(path, tensors, {**{k: str(v) for k, v in metadata.items()}, **existing})


def class_images_settings(base: "BaseModel", class_prompt: str, seed: int, steps: int,
                          guidance_scale: float, resolution: int) -> dict[str, Any]:
    """What determines the class images (the cache key)."""
    return {"base": base.source, "class_prompt": class_prompt, "seed": seed, "steps": steps,
            "guidance_scale": guidance_scale, "resolution": resolution}


def generate_class_images(base: "BaseModel", class_prompt: str, num_images: int, folder: str | Path,
                          *, seed: int = 0, steps: int = 25, guidance_scale: float = 7.5,
                          resolution: int | None = None) -> list[Path]:
    """``num_images`` PNGs of ``class_prompt`` from the base model, cached in ``folder``.

    Image ``i`` comes from its own ``torch.Generator`` seeded ``seed + i``, so asking for more
    images later keeps the earlier ones. A folder made with other settings is regenerated.
    Generation runs under ``no_grad`` and leaves the modules' train/eval modes as they were.
    """
    folder = Path(folder)
    resolution = resolution or base.resolution
    settings = class_images_settings(base, class_prompt, seed, steps, guidance_scale, resolution)
    manifest_path = folder / CLASS_IMAGES_MANIFEST
    cached = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    files = cached.get("files", {}) if cached.get("settings") == settings else {}
    paths = []
    for index in range(num_images):
        path = folder / f"class_{index:05d}.png"
        digest = _sha256(path)
        if digest is None or files.get(path.name) != digest:
            image = _generate_one(base, class_prompt, seed + index, steps, guidance_scale, resolution)
            with atomic_path(path) as tmp:
                image.save(tmp, format="PNG")
            files[path.name] = _sha256(path)
        paths.append(path)
    atomic_write_json(manifest_path, {"settings": settings, "files": files})
    return paths


def _generate_one(base: "BaseModel", prompt: str, seed: int, steps: int, guidance_scale: float,
                  resolution: int) -> "Image.Image":
    modules = (base.unet, base.text_encoder, base.vae)
    modes = [module.training for module in modules]
    try:
        for module in modules:
            module.eval()
        with torch.no_grad():
            generator = torch.Generator(device=base.unet.device).manual_seed(seed)
            return base.pipeline()(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                                   height=resolution, width=resolution, generator=generator).images[0]
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
