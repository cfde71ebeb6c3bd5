"""The two quality checks of the shipped tiny base, measured on the exported folder as users load it.

1. VAE reconstruction on Noto emoji held out of VAE training: PSNR and ST-LPIPS of the uint8
   round trip.
2. The base draws its subjects: for its own captions, generations (the ``tiny`` profile's
   sampler, steps and guidance, one seed per caption) against the real images, as pixel MSE in
   [0, 1] units, divided by the VAE round-trip MSE of the same images. Target: ratio <= ~2.5.
   For scale, the same generations against the real images of *other* captions. And the subject
   classifier of ``models/metrics`` (trained on real images of every vendor) names the emoji
   category of the generations, beside its accuracy on the real images and the majority baseline.

>>> psnr(torch.tensor([0.01, 0.001]))
tensor([20., 30.])
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lora_core.io import atomic_write_json
from lora_core.metrics.lpips import paired_distance
from lora_core.models import TOY_BASE_DIR
from lora_core.toy.catalog import SKIN_TONES, hash_order

CHECKS_FILE = "checks.json"
GRID_FILE = "samples.png"
TARGET_RATIO = 2.5


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of per-image MSEs measured on [0, 1] pixels."""
    return 10 * torch.log10(1.0 / mse)


def per_image_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image of two uint8 batches, on [0, 1] pixels."""
    return (a.double() / 255 - b.double() / 255).pow(2).flatten(1).mean(1)


@torch.no_grad()
def vae_round_trip(vae, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """uint8 reconstructions (posterior mode, decoded, quantised) of images in [-1, 1]."""
    from lora_core.images import to_uint8

    out = [to_uint8(vae.decode(vae.encode(images[i:i + batch]).latent_dist.mode()).sample)
           for i in range(0, len(images), batch)]
    return torch.cat(out)


@torch.no_grad()
def generate(base, captions: list[str], steps: int, guidance: float, seed: int = 0, batch: int = 50) -> torch.Tensor:
    """uint8 generations, one per caption, caption i seeded with ``seed + i``."""
    from lora_core.images import to_uint8

    pipe = base.pipeline()
    out = []
    for start in range(0, len(captions), batch):
        prompts = captions[start:start + batch]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(prompts))]
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=generators,
                      output_type="pt").images
        out.append(to_uint8(images * 2 - 1))
    return torch.cat(out)


def run_checks(model_dir: str | Path | None = None, n_generate: int = 200, out_dir: Path | None = None,
               log=print) -> dict:
    """Measure both checks on ``model_dir`` (default ``models/tiny-sd``); writes ``checks.json``."""
    from lora_core.models import load_base
    from lora_core.profiles import get_profile
    from lora_core.toy.card import write_checks_section, write_model_card
    from lora_core.toy.export import EXPORT_INFO
    from lora_core.toy.pretrain import PretrainConfig, load_base_images, vae_heldout_keys

    torch.set_num_threads(1)  # a shared 2-core machine: two threads spin-wait (see PretrainConfig.threads)
    model_dir = Path(model_dir) if model_dir else TOY_BASE_DIR
    info = json.loads((model_dir / EXPORT_INFO).read_text())
    cfg = PretrainConfig.from_dict(info["config"])
    base = load_base(str(model_dir))
    keys, images, captions = load_base_images(cfg)
    real = ((images + 1) * 127.5).round().to(torch.uint8)

    heldout = sorted(vae_heldout_keys(keys, cfg.vae_heldout_fraction, cfg.seed))
    idx = torch.tensor([keys.index(k) for k in heldout])
    vae_heldout = vae_round_trip(base.vae, images[idx])
    vae_mse_heldout = per_image_mse(vae_heldout, real[idx])
    vae_st_lpips = paired_distance(vae_heldout, real[idx], "st-lpips-alex")

    profile = get_profile("tiny")
    base_keys = [k for k in keys if not any(c in SKIN_TONES for c in k.split("-"))]
    chosen = hash_order(base_keys, "check-generation")[:n_generate]  # mixed categories, also in the grid
    gidx = torch.tensor([keys.index(k) for k in chosen])
    log(f"generating {len(chosen)} images ({profile.inference_steps} steps, guidance {profile.guidance_scale})")
    generated = generate(base, [captions[i] for i in gidx], profile.inference_steps, profile.guidance_scale)
    gen_mse = per_image_mse(generated, real[gidx])
    vae_same = vae_round_trip(base.vae, images[gidx])
    vae_mse_same = per_image_mse(vae_same, real[gidx])
    mismatched = per_image_mse(generated, real[gidx.roll(1)])
    subjects = subject_accuracy(generated, real[gidx], chosen)
    results = {
        "unet_steps": info["unet_steps"], "vae_steps": info["vae_steps"],
        "vae_finetune_steps": info.get("vae_finetune", {}).get("steps", 0),
        "check1_vae_heldout_images": len(heldout),
        "check1_vae_psnr_db_mean": psnr(vae_mse_heldout).mean().item(),
        "check1_vae_psnr_db_of_mean_mse": psnr(vae_mse_heldout.mean()).item(),
        "check1_vae_mse_mean": vae_mse_heldout.mean().item(),
        "check1_vae_st_lpips_mean": vae_st_lpips.value,
        "check2_captions": len(chosen),
        "check2_sampler": f"DDIM, {profile.inference_steps} steps, guidance {profile.guidance_scale}",
        "check2_generation_mse_mean": gen_mse.mean().item(),
        "check2_vae_round_trip_mse_mean": vae_mse_same.mean().item(),
        "check2_ratio": (gen_mse.mean() / vae_mse_same.mean()).item(),
        "check2_target_ratio": TARGET_RATIO,
        "check2_mismatched_caption_mse_mean": mismatched.mean().item(),
        **{f"check2_{name}": value for name, value in subjects.items()},
    }
    _save_grid(model_dir / GRID_FILE, real[gidx[:16]], vae_same[:16], generated[:16])
    atomic_write_json(model_dir / CHECKS_FILE, results)
    if out_dir is not None and (Path(out_dir) / "vae_loss.jsonl").exists():
        write_model_card(model_dir, Path(out_dir))
    elif (model_dir / "MODEL_CARD.md").exists():
        write_checks_section(model_dir)
    log(json.dumps(results, indent=2))
    return results


def toy_base_checks(model_dir: str | Path | None = None) -> dict:
    """The shipped base's ``checks.json`` (empty when it has not been measured)."""
    path = Path(model_dir or TOY_BASE_DIR) / CHECKS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


CHECK_ROWS = (  # checks.json key, what it measures
    ("check1_vae_psnr_db_mean", "1. VAE round trip, held-out Noto images: PSNR (dB)"),
    ("check1_vae_st_lpips_mean", "1. VAE round trip, held-out Noto images: ST-LPIPS"),
    ("check2_generation_mse_mean", "2. generation vs real image of its caption: pixel MSE"),
    ("check2_vae_round_trip_mse_mean", "2. VAE round trip of the same images: pixel MSE"),
    ("check2_ratio", f"2. ratio of the two (target <= {TARGET_RATIO})"),
    ("check2_mismatched_caption_mse_mean", "2. generation vs real image of another caption: pixel MSE"),
    ("check2_subject_category_accuracy_generated", "2. subject classifier: category accuracy, generations"),
    ("check2_subject_category_accuracy_real", "2. subject classifier: category accuracy, real images"),
    ("check2_subject_category_majority_baseline", "2. most common category's share (chance level)"),
)


def checks_table(checks: dict) -> "pd.DataFrame":
    """The measured checks as a (check, value) table, in :data:`CHECK_ROWS` order.

    >>> checks_table({"check2_ratio": 6.31, "unet_steps": 2507}).values.tolist()
    [['2. ratio of the two (target <= 2.5)', 6.31]]
    """
    import pandas as pd

    return pd.DataFrame([(label, round(checks[key], 4)) for key, label in CHECK_ROWS if key in checks],
                        columns=["check", "value"])


def subject_accuracy(generated: torch.Tensor, real: torch.Tensor, subject_keys: list[str]) -> dict:
    """Share of generations and of the real images whose emoji category the shipped subject
    classifier names correctly, and the share of the most common category among these subjects
    (what always guessing it would score); empty when the classifier is missing."""
    from lora_core.metrics.style import SUBJECT_GROUP_PATHS, SubjectGroupClassifier

    if not SUBJECT_GROUP_PATHS["category"].is_file():
        return {}
    classifier = SubjectGroupClassifier()
    truth = torch.tensor([classifier.classes.index(classifier.group_of[k]) for k in subject_keys])
    accuracy = {name: (classifier.predict_proba(batch).argmax(dim=1) == truth).double().mean().item()
                for name, batch in (("generated", generated), ("real", real))}
    return {"subject_category_accuracy_generated": accuracy["generated"],
            "subject_category_accuracy_real": accuracy["real"],
            "subject_category_majority_baseline": truth.bincount().max().item() / len(truth)}


def _save_grid(path: Path, *rows: torch.Tensor) -> None:
    """Rows of uint8 images (real, VAE round trip, generated), 2x nearest upscaled."""
    from PIL import Image

    from lora_core.io import atomic_path

    strip = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)   # (3, rows*H, n*W)
    image = Image.fromarray(strip.permute(1, 2, 0).numpy())
    image = image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
