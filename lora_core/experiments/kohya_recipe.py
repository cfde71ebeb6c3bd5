"""Study S3's kohya recipe for a character LoRA: its settings, scaled for tiny, exact for sd15.

S3 trained with kohya sd-scripts on 20 images of one character in a ``100_<name>`` repeat folder
(20 x 100 images an epoch), batch 2, 4,000 steps, a checkpoint every epoch, UNet lr 1e-4 and
text-encoder lr 5e-5, AdamW8bit, cosine_with_restarts (4 cycles, 10% warmup), fp16, cached
latents, loss "l2" with ``huber_c`` 0.1 and ``huber_schedule`` snr, and a high network dim and
alpha (no numbers given). Its write-up also says "10 epochs", which these numbers cannot give:
an epoch is 20 x 100 / 2 = 1,000 steps, so 4,000 steps are **4 epochs** (10 would be 10,000).
We keep the 4,000 steps and the repeats, i.e. 4 epoch checkpoints.

**Scaling rule** (:func:`kohya_recipe`). ``sd15`` takes S3's numbers as they are. Other profiles
keep S3's batch 2, its 4 epochs and its 2:1 UNet / text-encoder lr ratio, multiply both learning
rates by the profile's lr scale (``common.lr_scale``: tiny 10x) and train the profile's own number
of optimizer steps (``profile.train_steps``, the budget the tiny recipe is tuned for), so the
repeats are ``round(train_steps x 2 / (4 x images))``, at least 1. "High dim and alpha": rank
4 x the profile's rank with alpha = rank (scale 1), as kohya guides set it for characters.

>>> from lora_core.profiles import get_profile
>>> tiny, sd15 = kohya_recipe(get_profile("tiny"), 20), kohya_recipe(get_profile("sd15"), 20)
>>> (tiny.repeats, tiny.steps_per_epoch, tiny.total_steps, tiny.unet_lr, tiny.text_encoder_lr, tiny.rank)
(4, 40, 160, 0.001, 0.0005, 64)
>>> (sd15.repeats, sd15.batch_size, sd15.epochs, sd15.total_steps, sd15.unet_lr, sd15.text_encoder_lr)
(100, 2, 4, 4000, 0.0001, 5e-05)
>>> repeat_folder_name(4, "wenja", "woman")
'4_wenja woman'
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_core.profiles import Profile
from lora_core.train import TrainConfig

# What S3 reports (study S3, book/reference/reported_tables.csv)
S3_IMAGES, S3_REPEATS, S3_BATCH, S3_STEPS = 20, 100, 2, 4000
S3_UNET_LR, S3_TEXT_ENCODER_LR = 1e-4, 5e-5
S3_OPTIMIZER, S3_SCHEDULER, S3_CYCLES, S3_WARMUP = "adamw8bit", "cosine_with_restarts", 4, 0.1
S3_HUBER_C, S3_HUBER_SCHEDULE = 0.1, "snr"
S3_EPOCHS = S3_STEPS * S3_BATCH // (S3_IMAGES * S3_REPEATS)   # 4 (see the module docstring)
HIGH_RANK_FACTOR = 4      # "high network dim": 4 x the profile's rank, alpha = rank
# kohya's networks.lora puts LoRA on every Linear of the UNet's transformer blocks and of the text
# encoder's attention and MLP (not only on attention, as the diffusers examples do)
KOHYA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
KOHYA_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
# The loss arms: S3's setting as written, the same with other huber settings (kohya ignores them
# under l2, so it must train identically), and huber loss with the snr schedule.
LOSS_ARMS: dict[str, dict[str, Any]] = {
    "l2 (S3)": {"loss_type": "l2", "huber_c": S3_HUBER_C, "huber_schedule": S3_HUBER_SCHEDULE},
    "l2, other huber settings": {"loss_type": "l2", "huber_c": 1.0, "huber_schedule": "constant"},
    "huber + snr": {"loss_type": "huber", "huber_c": S3_HUBER_C, "huber_schedule": S3_HUBER_SCHEDULE},
}
S3_ARM, TWIN_ARM, HUBER_ARM = LOSS_ARMS
STAMP_FILE = ".source-sha256"   # in the repeat folder; a dotfile, so kohya and lora_core.data skip it


@dataclass(frozen=True)
class KohyaRecipe:
    """S3's recipe at one profile's scale (see :func:`kohya_recipe`)."""

    images: int
    repeats: int
    batch_size: int
    epochs: int
    unet_lr: float
    text_encoder_lr: float
    rank: int
    alpha: float

    @property
    def steps_per_epoch(self) -> int:
        return self.images * self.repeats // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def kohya_recipe(profile: Profile, images: int) -> KohyaRecipe:
    """S3's recipe for a set of ``images`` training images at ``profile``'s scale (module docstring)."""
    from lora_core.experiments.common import lr_scale

    rank = HIGH_RANK_FACTOR * profile.lora_rank
    if profile.name == "sd15":
        return KohyaRecipe(images, S3_REPEATS, S3_BATCH, S3_EPOCHS, S3_UNET_LR, S3_TEXT_ENCODER_LR, rank, float(rank))
    repeats = max(1, round(profile.train_steps * S3_BATCH / (S3_EPOCHS * images)))
    scale = lr_scale(profile)
    return KohyaRecipe(images, repeats, S3_BATCH, S3_EPOCHS, S3_UNET_LR * scale, S3_TEXT_ENCODER_LR * scale,
                       rank, float(rank))


def recipe_table(recipe: KohyaRecipe, profile: Profile) -> "pd.DataFrame":
    """S3's settings beside this profile's, one row per setting."""
    import pandas as pd

    rows = [("training images", S3_IMAGES, recipe.images), ("repeats per epoch", S3_REPEATS, recipe.repeats),
            ("batch size", S3_BATCH, recipe.batch_size), ("epochs (checkpoints)", S3_EPOCHS, recipe.epochs),
            ("optimizer steps", S3_STEPS, recipe.total_steps), ("UNet lr", S3_UNET_LR, recipe.unet_lr),
            ("text encoder lr", S3_TEXT_ENCODER_LR, recipe.text_encoder_lr),
            ("network dim / alpha", "high (not given)", f"{recipe.rank} / {recipe.alpha:g}"),
            ("optimizer", S3_OPTIMIZER, S3_OPTIMIZER),
            ("lr schedule", f"{S3_SCHEDULER}, {S3_CYCLES} cycles, {S3_WARMUP:.0%} warmup",
             f"{S3_SCHEDULER}, {S3_CYCLES} cycles, {S3_WARMUP:.0%} warmup"),
            ("precision", "fp16", profile.mixed_precision), ("latents", "cached", "cached")]
    return pd.DataFrame([{"setting": name, "S3 (reported)": str(theirs), f"{profile.name} (here)": str(ours)}
                         for name, theirs, ours in rows])


# ---- the kohya repeat folder ----------------------------------------------------------------------

def repeat_folder_name(repeats: int, trigger: str, class_word: str) -> str:
    """kohya's ``<repeats>_<identifier> <class>`` subfolder name."""
    return f"{repeats}_{trigger} {class_word}".strip()


def kohya_training_folder(train_folder: str | Path, repeats: int, trigger: str, class_word: str,
                          root: str | Path) -> Path:
    """``root/<repeats>_repeats/`` holding one kohya repeat subfolder ``<repeats>_<trigger> <class>``
    with a copy of ``train_folder``'s images and captions: the folder a kohya user trains on, read
    by ``lora_core.data`` with the same repeats. Built once and rebuilt (whole, by a rename) only
    when the source files changed; a second call with the same inputs touches nothing.
    """
    source = Path(train_folder)
    files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(2, "no training images to lay out as a kohya folder", str(source))
    parent = Path(root) / f"{repeats}_repeats"
    target = parent / repeat_folder_name(repeats, trigger, class_word)
    stamp = _content_stamp(files)
    if (target / STAMP_FILE).is_file() and (target / STAMP_FILE).read_text() == stamp:
        return parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".kohya-", dir=parent))
    for path in files:
        shutil.copy2(path, staging / path.name)
    (staging / STAMP_FILE).write_text(stamp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(staging, target)
    return parent


def _content_stamp(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


# ---- run configs --------------------------------------------------------------------------------

def character_config(profile: Profile, recipe: KohyaRecipe, folder: str, seed: int, arm: str = S3_ARM) -> TrainConfig:
    """The LoRA of S3's recipe on the kohya ``folder`` (a path string, relative to the repository
    where possible), with the loss settings of ``arm`` (:data:`LOSS_ARMS`); a checkpoint every epoch."""
    from lora_core.data import DataConfig

    if arm not in LOSS_ARMS:
        raise ValueError(f"arm: {arm!r} is not one of {', '.join(LOSS_ARMS)}")
    options = {"rank": recipe.rank, "alpha": recipe.alpha, "target_modules": KOHYA_UNET_TARGETS,
               "train_text_encoder": True, "text_encoder_target_modules": KOHYA_TEXT_ENCODER_TARGETS,
               "init": "default"}
    return TrainConfig(method="lora", options=options, data=DataConfig(folder=folder, resolution=profile.resolution),
                       base_model=profile.base_model, seed=seed, epochs=recipe.epochs, batch_size=recipe.batch_size,
                       learning_rate=recipe.unet_lr, text_encoder_learning_rate=recipe.text_encoder_lr,
                       optimizer=S3_OPTIMIZER, lr_scheduler=S3_SCHEDULER, lr_num_cycles=S3_CYCLES,
                       lr_warmup_ratio=S3_WARMUP, mixed_precision=profile.mixed_precision, cache_latents=True,
                       checkpoint_every_steps=recipe.steps_per_epoch, **LOSS_ARMS[arm])


def epoch_files(record, recipe: KohyaRecipe, layout: str = "diffusers") -> dict[int, Path]:
    """``{epoch: LoRA file}`` of a finished run: the checkpoint saved at the end of each epoch
    (``checkpoints/step-<N>``) and, for the last epoch, the exported file."""
    from lora_core.adapters.lora import DIFFUSERS_FILE, KOHYA_FILE
    from lora_core.train import checkpoint_dir

    name = {"diffusers": DIFFUSERS_FILE, "kohya": KOHYA_FILE}[layout]
    files = {epoch: checkpoint_dir(record.run_dir, epoch * recipe.steps_per_epoch) / name
             for epoch in range(1, recipe.epochs)}
    files[recipe.epochs] = Path(record.exports[layout])
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(2, "an epoch checkpoint of this run is missing", missing[0])
    return files


def same_training(record_a, record_b) -> dict[str, Any]:
    """Whether two finished runs trained alike: steps compared, the largest loss difference at any
    step, and whether their exported tensors are equal (file metadata, which names the config,
    left out)."""
    import torch

    from lora_core.io import read_safetensors

    losses_a = [row["loss"] for row in record_a.metrics()]
    losses_b = [row["loss"] for row in record_b.metrics()]
    tensors_a, tensors_b = (read_safetensors(record.exports["diffusers"])[0] for record in (record_a, record_b))
    same_weights = tensors_a.keys() == tensors_b.keys() and all(torch.equal(tensors_a[k], tensors_b[k])
                                                                 for k in tensors_a)
    difference = max((abs(a - b) for a, b in zip(losses_a, losses_b)), default=float("nan"))
    return {"steps_compared": min(len(losses_a), len(losses_b)), "same_length": len(losses_a) == len(losses_b),
            "max_loss_difference": difference, "same_weights": same_weights}


def eight_bit_share(lora_file: str | Path, min_8bit_size: int = 4096) -> float:
    """The share of a LoRA file's trained tensors (lora_A/lora_B) that AdamW8bit keeps in 8-bit
    state: bitsandbytes quantises the state of tensors of ``min_8bit_size`` elements or more
    (its default) and keeps smaller ones in fp32."""
    from lora_core.io import read_safetensors

    tensors = [t for key, t in read_safetensors(lora_file)[0].items() if ".lora_A." in key or ".lora_B." in key]
    if not tensors:
        raise ValueError(f"{lora_file}: no lora_A/lora_B tensors (a diffusers-layout LoRA file is expected)")
    return sum(t.numel() >= min_8bit_size for t in tensors) / len(tensors)
