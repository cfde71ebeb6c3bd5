"""The search behind the tiny profile's style-LoRA settings (not a speed benchmark).

Each variant trains one LoRA (seed 0) on a style set with the tiny profile's settings changed as
named (``dreambooth*``: the whole UNet and the text encoder, with chapter 3's settings), generates
the held-out subjects of chapter 1 (50 prompts, their own seeds) and scores them with the style
judge (P(target style)) and the subject classifier; ``base`` is the base alone and ``truth_rt``
the VAE round trips of the true held-out images (the judge's ceiling).
Share of the way = (P_variant - P_base) / (P_truth_rt - P_base). One seed: a screen, not a
result; chapter 1 measures the chosen setting over 3 seeds with intervals.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_search.py openmoji attention c3lier

Appends one JSON line per variant to ``benchmarks/results/recipe_search.jsonl`` (with the load,
date and machine) and writes a sheet (rows: Noto truth, base, each variant, true image, its VAE
round trip) to ``benchmarks/results/recipe_<style>.png`` (``--sheet`` names another). Training
times depend on the load.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from _record import RESULTS_DIR, load_average, machine

from lora_core.profiles import ATTENTION, C3LIER, get_profile

VARIANTS = {   # name: (profile changes, LoraOptions changes, TrainConfig changes)
    "attention": ({"lora_targets": ATTENTION}, {}, {}),
    "attention_400": ({"lora_targets": ATTENTION}, {}, {"max_train_steps": 400}),
    "c3lier": ({"lora_targets": C3LIER}, {}, {}),
    "c3lier_400": ({"lora_targets": C3LIER}, {}, {"max_train_steps": 400}),
    "c3lier_400_lr2e-3": ({"lora_targets": C3LIER}, {}, {"max_train_steps": 400, "learning_rate": 2e-3}),
    "c3lier_lr3e-3": ({"lora_targets": C3LIER}, {}, {"learning_rate": 3e-3}),
    "c3lier_r32": ({"lora_targets": C3LIER}, {"rank": 32, "alpha": 32.0}, {}),
    "c3lier_text_encoder": ({"lora_targets": C3LIER}, {"train_text_encoder": True}, {}),
    "c3lier_min_snr5": ({"lora_targets": C3LIER}, {}, {"min_snr_gamma": 5.0}),
}
# Other methods with chapter 3's settings (lora_core.experiments.common.method_config): is the LoRA
# the cap? name: (method, TrainConfig changes)
METHOD_VARIANTS = {
    "dreambooth": ("dreambooth", {}),
    "dreambooth_400": ("dreambooth", {"max_train_steps": 400}),
    "dreambooth_lr3e-3": ("dreambooth", {"learning_rate": 3e-3}),
    "dreambooth_lr3e-4_400": ("dreambooth", {"learning_rate": 3e-4, "max_train_steps": 400}),
}
SHEET_COLUMNS = 12


def score(evaluator, images, eval_set, style) -> dict[str, float]:
    result = evaluator.evaluate(images, eval_set, style, {}, measures=("p_target_style", "subject_group_accuracy"))
    return dict(zip(result.measure, result.value))


def search(style: str, names: list[str], sheet_name: str) -> list[dict]:
    from lora_core.experiments.common import eval_set
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.experiments.style_share import round_trips
    from lora_core.models import load_base

    profile = get_profile("tiny")
    base, evaluator = load_base(profile.base_model), Evaluator(profile)
    held_out = eval_set(style, "heldout", profile.n_eval_images)
    true = evaluator.true_images(held_out.subject_keys, style, profile.resolution)
    sheet = [evaluator.true_images(held_out.subject_keys[:SHEET_COLUMNS], "noto", profile.resolution)]
    rows = [{"variant": "truth_rt", **score(evaluator, round_trips(base, true), held_out, style)}]
    for name in ["base", *names]:
        images, wall = variant_images(base, profile, style, name, held_out)
        sheet.append(images[:SHEET_COLUMNS])
        rows.append({"variant": name, "train_wall_s": round(wall, 1), **score(evaluator, images, held_out, style)})
    sheet += [true[:SHEET_COLUMNS], round_trips(base, true[:SHEET_COLUMNS])]
    save_sheet(sheet, RESULTS_DIR / sheet_name)
    p_base, p_truth = rows[1]["p_target_style"], rows[0]["p_target_style"]
    for row in rows:
        row.update(style=style, share_of_the_way=round((row["p_target_style"] - p_base) / (p_truth - p_base), 3))
    return rows


def variant_images(base, profile, style: str, name: str, held_out) -> tuple[torch.Tensor, float]:
    """The held-out images of one variant (``base``: none trained) and its training seconds."""
    from lora_core.experiments.common import generate_eval_images, method_config, quiet_libraries, style_lora_config
    from lora_core.experiments.methods import adapted
    from lora_core.train import train

    if name == "base":
        return generate_eval_images(base, held_out.prompts, held_out.seeds, profile), 0.0
    if name in METHOD_VARIANTS:
        method, fields = METHOD_VARIANTS[name]
        config = method_config(profile, method, style, 0, **fields)
    else:
        changes, lora, fields = VARIANTS[name]
        config = style_lora_config(replace(profile, **changes), style, 0, lora=lora, **fields)
    with quiet_libraries():
        record = train(config, base=base, progress=False)
    with adapted(base, config.method, record) as (model, lora_file, _):
        images = generate_eval_images(model, held_out.prompts, held_out.seeds, profile, lora_file)
    return images, record.summary["wall_time_s"]


def save_sheet(rows: list[torch.Tensor], path) -> None:
    from PIL import Image

    side = 96
    sheet = Image.new("RGB", (SHEET_COLUMNS * side, len(rows) * side), "white")
    for r, images in enumerate(rows):
        for c, image in enumerate(images[:SHEET_COLUMNS]):
            tile = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (c * side, r * side))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("style")
    parser.add_argument("variants", nargs="+", choices=sorted({*VARIANTS, *METHOD_VARIANTS}))
    parser.add_argument("--sheet", help="the sheet's file name in benchmarks/results (default recipe_<style>.png)")
    args = parser.parse_args()
    load_before, started = load_average(), time.time()
    rows = search(args.style, args.variants, args.sheet or f"recipe_{args.style}.png")
    record = {"machine": machine(), "load_before": load_before, "load_after": load_average(),
              "wall_s": round(time.time() - started, 1)}
    with open(RESULTS_DIR / "recipe_search.jsonl", "a") as log:
        for row in rows:
            log.write(json.dumps({**row, **record}) + "\n")
            print(json.dumps(row))


if __name__ == "__main__":
    main()
