"""Generation on the tiny base: how fast each sampler setting is, and whether a better sampler at
fewer steps gives the images of the current setting (DDIM, 20 steps: the tiny profile's setting
until this benchmark's verdict of 2026-12-01 moved the profile to DDIM, 10 steps).

    .venv/bin/python benchmarks/bench_generate.py [--n 32] [--styles twemoji openmoji fluent3d] [--speed-only]

Speed: 16 prompts with classifier-free guidance per setting, settings interleaved over
``--rounds`` rounds in this one process (one torch thread); CPU seconds per image
(``time.process_time``, which other processes' load barely changes) and wall images/s with the
load beside them.

Agreement (:mod:`lora_core.experiments.samplers`): for the base and each style's chapter-1 LoRA
(seed 0, trained or reused under ``--runs-root``), ``--n`` held-out prompts of the style are
generated with every setting, the converged reference (DDIM, 50 steps) and the current setting at
other seeds; per-image P(style), subject hit and error to the converged image, pooled over the
sets, paired against the current setting, and FD/KID-EffNet to the current images. Generated
images go to the project's generation cache (``data/cache/generated``), so a book built with a
setting checked here reuses them.

Writes ``benchmarks/results/generate.json`` and ``generate.png``. Not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from _record import RESULTS_DIR, load_average, save_figure, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before any Hugging Face library reads it

CURRENT = ("DDIM", 20)   # the setting the candidates are held against (the tiny profile's until DDIM 10 passed)
REFERENCE = ("DDIM", 50)
CANDIDATES = (("DDIM", 10), ("DPM++ 2M", 10), ("DPM++ 2M Karras", 10), ("UniPC", 10), ("DPM++ 2M", 8))
OTHER_SEEDS = 500  # the seed-to-seed control: the current setting with every seed + 500


def speed(base, settings, rounds: int, n_images: int = 16) -> list[dict]:
    """CPU seconds per image and wall images/s of each (sampler, steps), interleaved over rounds."""
    from lora_core.experiments.common import quiet_libraries
    from lora_core.generate import generate_cells, grid_cells

    prompts = [f"a smiling face number {i}, in the style of opnmj" for i in range(n_images)]
    totals = {setting: [0.0, 0.0] for setting in settings}
    with quiet_libraries():
        generate_cells(base, grid_cells(prompts=prompts[:2], steps=2, guidance_scales=4.0), batch_size=16)
        for _ in range(rounds):
            for sampler, steps in settings:
                cells = grid_cells(prompts=prompts, samplers=sampler, steps=steps, guidance_scales=4.0)
                wall, cpu = time.perf_counter(), time.process_time()
                generate_cells(base, cells, batch_size=16)
                totals[(sampler, steps)][0] += time.perf_counter() - wall
                totals[(sampler, steps)][1] += time.process_time() - cpu
    images = rounds * n_images
    return [{"sampler": sampler, "steps": steps, "setting": f"{sampler} {steps}",
             "cpu_s_per_image": cpu / images, "wall_images_per_s": images / wall,
             "unet_evaluations_per_image": 2 * steps} for (sampler, steps), (wall, cpu) in totals.items()]


def generated_sets(profile, styles, n: int, runs_root: Path, settings) -> tuple[dict, list]:
    """{setting name: uint8 images of every (style, adapter) set, concatenated}, and the eval sets
    in the same order (each twice: base, then the style's LoRA)."""
    from lora_core.experiments.common import eval_set, generate_eval_images, style_lora_config
    from lora_core.experiments.samplers import setting_name
    from lora_core.models import load_base
    from lora_core.train import train

    base = load_base(profile.base_model)
    loras = {style: train(style_lora_config(profile, style, 0), base=base, runs_root=runs_root, progress=False)
             .exports["diffusers"] for style in styles}
    sets = [(eval_set(style, "heldout", n), adapter) for style in styles for adapter in (None, loras[style])]
    images = {}
    for sampler, steps, seed_offset in settings:
        setting = profile.replace(sampler=sampler, inference_steps=steps)
        name = setting_name(sampler, steps) + (" other seeds" if seed_offset else "")
        images[name] = torch.cat([generate_eval_images(base, held_out.prompts, [s + seed_offset for s in held_out.seeds],
                                                       setting, adapter) for held_out, adapter in sets])
        print(f"generated {name}", flush=True)
    return images, [held_out for held_out, _ in sets]


def agreement(profile, styles, n: int, runs_root: Path) -> dict:
    """Paired rows, distribution rows and the verdict of each candidate (see the module doc)."""
    import pandas as pd

    from lora_core.experiments.evaluate import Evaluator
    from lora_core.experiments.samplers import (distribution_rows, paired_rows, per_image_measures, replaces_current,
                                                rms_error, setting_name)
    from lora_core.metrics.backbones import get_backbone

    current, reference = setting_name(*CURRENT), setting_name(*REFERENCE)
    settings = [(*REFERENCE, 0), (*CURRENT, 0), *[(*c, 0) for c in CANDIDATES], (*CURRENT, OTHER_SEEDS)]
    images, sets = generated_sets(profile, styles, n, runs_root, settings)
    evaluator = Evaluator(profile)
    measures = {}
    for name in [current, *[setting_name(*c) for c in CANDIDATES]]:
        parts = [per_image_measures(images[name][i * n:(i + 1) * n], held_out, held_out.style, evaluator)
                 for i, held_out in enumerate(sets)]
        measures[name] = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        measures[name]["error_to_reference"] = rms_error(images[name], images[reference])
    net = get_backbone(profile.feature_backbone)
    features = {name: net.features(batch, cache=evaluator.cache).numpy() for name, batch in images.items()
                if name != reference}
    paired = paired_rows(measures, current)
    distributions = distribution_rows(features, current, f"{current} other seeds")
    rows = pd.concat([paired, distributions])
    verdicts = {setting_name(*c): replaces_current(rows, setting_name(*c), f"{current} other seeds")
                for c in CANDIDATES}
    return {"current": current, "reference": reference, "n_images": int(len(sets) * n), "styles": list(styles),
            "paired": paired.to_dict("records"), "distributions": distributions.to_dict("records"),
            "verdicts": {name: {"replaces": ok, "why": why} for name, (ok, why) in verdicts.items()}}


def figure(result: dict, path: Path) -> Path:
    """Left: CPU seconds per image per setting. Right: paired differences to the current setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if "agreement" in result else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.4), squeeze=False)
    rows = sorted(result["speed"], key=lambda r: r["cpu_s_per_image"])
    axes[0][0].barh([r["setting"] for r in rows], [r["cpu_s_per_image"] for r in rows], color="tab:blue")
    axes[0][0].set_xlabel("CPU seconds per image (one thread)")
    axes[0][0].set_title("generation cost, tiny base, CFG", fontsize=9)
    if panels == 2:
        paired = [r for r in result["agreement"]["paired"] if r["kind"] == "difference"]
        names = sorted({r["setting"] for r in paired})
        for offset, (measure, colour) in enumerate((("p_target_style", "tab:purple"), ("subject_hit", "tab:green"))):
            picked = {r["setting"]: r for r in paired if r["measure"] == measure}
            y = np.arange(len(names)) + 0.2 * offset
            values = np.array([picked[n]["value"] for n in names])
            errors = np.array([[picked[n]["value"] - picked[n]["ci_low"], picked[n]["ci_high"] - picked[n]["value"]]
                               for n in names]).T
            axes[0][1].errorbar(values, y, xerr=errors, fmt="o", color=colour, label=measure, capsize=3)
        axes[0][1].axvline(0, color="grey", lw=0.8)
        for margin in (-0.05, 0.05):
            axes[0][1].axvline(margin, color="grey", lw=0.6, ls=":")
        axes[0][1].set_yticks(np.arange(len(names)) + 0.1, names)
        axes[0][1].set_xlabel(f"paired difference to {result['agreement']['current']} (95% interval)")
        axes[0][1].legend(fontsize=7)
    return save_figure(fig, None, result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="held-out prompts per style and adapter")
    parser.add_argument("--styles", nargs="+", default=["twemoji", "openmoji", "fluent3d"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved speed rounds")
    parser.add_argument("--runs-root", default="runs", help="where the style LoRAs are trained or reused")
    parser.add_argument("--speed-only", action="store_true", help="skip the agreement check")
    args = parser.parse_args()
    from lora_core.models import load_base
    from lora_core.profiles import get_profile
    from lora_core.threads import apply_thread_policy

    apply_thread_policy()
    load_before, profile = load_average(), get_profile("tiny")
    result = {"speed": speed(load_base(profile.base_model), [REFERENCE, CURRENT, *CANDIDATES], args.rounds)}
    if not args.speed_only:
        result["agreement"] = agreement(profile, args.styles, args.n, Path(args.runs_root).absolute())
    path = write_result("generate", result, load_before)
    figure(json.loads(path.read_text()), RESULTS_DIR / "generate.png")
    for row in result["speed"]:
        print(f"{row['setting']:22s} {row['cpu_s_per_image']:.3f} CPU s/image  {row['wall_images_per_s']:.2f} images/s")
    for name, verdict in result.get("agreement", {}).get("verdicts", {}).items():
        print(f"{name:22s} replaces {CURRENT}: {verdict['replaces']} ({verdict['why']})")


if __name__ == "__main__":
    main()
