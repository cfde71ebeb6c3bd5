"""Score any LoRA file over its weight: study S3's test 1 by metrics, on your own LoRA and images.

    python -m lora_core.score_lora LORA.safetensors --images FOLDER [--prompts FILE] [--base SOURCE]

generates the prompts (``--prompts``, one per line, or the images' ``<stem>.txt`` captions) at
every LoRA weight (0 = the base alone), each prompt with its own seeds, the same at every weight,
and scores each weight three ways, with 95% bootstrap intervals over images:

* ``fidelity_cosine``: how close the images come to yours (mean cosine between EfficientNet-Lite0
  features of generated and reference images, as the LyCORIS evaluation does; higher = closer);
* ``alignment``: prompt following, the profile's alignment model (tiny: a stand-in trained here,
  never called CLIP; sd15: CLIP ViT-L/14) between each image and its prompt (higher = better);
* ``st_lpips_to_base``: base preservation, the perceptual distance between the image of an
  unrelated prompt (no trigger word) at this weight and at weight 0, same seed (lower = the LoRA
  leaks less into what it was not trained for).

The best weight range is every weight > 0 whose fidelity is indistinguishable from the best
weight's (95% intervals overlap) and whose prompt following is indistinguishable from the best
(:func:`best_weight_range`). The report folder gets ``scores.png`` (each measure over the weights),
``strip.png`` (sample images per weight) and ``report.json`` (settings, the table, the range),
written last: a folder without ``report.json`` is not a finished report. A file of another
architecture, a folder without images or an empty prompt file is one line on stderr.

Offline on the tiny profile (``--profile tiny``, the shipped model); ``--profile sd15`` loads
SD v1.5 and CLIP from the hub. Kohya, diffusers and peft files load with their per-module alphas
(``blend.load_lora``). The sweep and its scores live in :mod:`lora_core.experiments.lora_sweep`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

from lora_core.experiments.common import EvalSet
from lora_core.experiments.lora_sweep import (CHARACTER, SWEEP_MEASURES, BestRange, ScoreSettings,
                                              best_weight_range, caption_of, check_lora_fits, on_device,
                                              read_prompts, reference_images, reference_paths, sweep_images,
                                              sweep_scores, sweep_sets)
from lora_core.profiles import Profile

REPORT_FILE, SCORES_FIGURE, STRIP_FIGURE = "report.json", "scores.png", "strip.png"

# ---- the command --------------------------------------------------------------------------------

@dataclass
class LoraScore:
    """What :func:`score_lora` measured and where it wrote the report."""

    table: pd.DataFrame
    best: BestRange | None
    layout: str
    files: dict[str, Path] = field(default_factory=dict)


def score_lora(lora: str | Path, images: str | Path, prompts: str | Path | None = None, profile: Profile | str = "tiny",
               base: str | None = None, config: str | None = None, settings: ScoreSettings | None = None,
               out: str | Path | None = None, cache_dir: str | Path | None = None) -> LoraScore:
    """Sweep ``lora``'s weight against the reference ``images`` and write the report to ``out``
    (default ``<lora stem>-scores`` in the working directory); ``cache_dir`` holds generated
    images and features (default ``data/cache``). Every input is checked before generation."""
    from lora_core.experiments.chapter import resolve_profile
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.metrics.cache import FeatureCache
    from lora_core.models import load_base

    profile, settings = resolve_profile(profile), settings or ScoreSettings()
    paths = reference_paths(images)
    texts = read_prompts(prompts) if prompts else [c for c in map(caption_of, paths) if c]
    if not texts:
        raise ValueError(f"{images}: the images have no captions (<stem>.txt); give --prompts FILE")
    model = on_device(load_base(base or profile.base_model, config=config), profile.device)
    layout = check_lora_fits(model, lora)
    references = reference_images(paths, model.resolution)
    sets = sweep_sets(texts, settings)
    caches = Path(cache_dir) if cache_dir is not None else None
    generated = sweep_images(model, {lora: 1.0}, sets, settings.weights, profile,
                             cache_dir=caches / "generated" if caches else None)
    evaluator = Evaluator(profile, cache=FeatureCache(caches / "features") if caches else None,
                          seed=settings.bootstrap_seed)
    table = sweep_scores(evaluator, generated, sets, references)
    result = LoraScore(table, best_weight_range(table, "fidelity_cosine"), layout)
    folder = Path(out) if out is not None else Path(f"{Path(lora).stem}-scores")
    result.files = write_report(folder, result, generated, sets, settings, {
        "lora": str(lora), "layout": layout, "images": str(images), "n_reference_images": len(paths),
        "base": model.source, "profile": profile.name, "left_out": dict(evaluator.unavailable)})
    return result


def write_report(folder: Path, result: LoraScore, images: Mapping[tuple[str, float], torch.Tensor],
                 sets: Mapping[str, EvalSet], settings: ScoreSettings, about: dict[str, Any]) -> dict[str, Path]:
    """``scores.png``, ``strip.png``, then ``report.json`` (each written atomically)."""
    from lora_core import plots
    from lora_core.experiments.evaluate import measure_panels
    from lora_core.io import atomic_path, atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    panels = measure_panels(result.table, list(SWEEP_MEASURES))
    title = f"{Path(about['lora']).name} on {about['base']}: 95% intervals over images"
    figures = {SCORES_FIGURE: plots.interval_panels(panels, "weight", xlabel="LoRA weight", title=title),
               STRIP_FIGURE: plots.sheet_figure(strip_sheet(images, sets[CHARACTER], settings))}
    files = {}
    for name, figure in figures.items():
        with atomic_path(folder / name) as tmp:
            figure.savefig(tmp, format="png", dpi=120)
        files[name] = folder / name
    rows = result.table.drop(columns=["eval_set", "target_style"]).to_dict("records")
    best = None if result.best is None else {"weights": list(result.best.values), "text": result.best.text}
    report = {**about, "settings": settings.to_dict(), "best_weight_range": best,
              "rule": "weights > 0 whose fidelity_cosine and alignment intervals overlap the best weight's",
              "measures": {m: text for m, (_, text) in SWEEP_MEASURES.items()}, "table": rows}
    files[REPORT_FILE] = atomic_write_json(folder / REPORT_FILE, report)
    return files


def strip_sheet(images: Mapping[tuple[str, float], torch.Tensor], evalset: EvalSet, settings: ScoreSettings):
    """The first seed of the first ``strip_prompts`` prompts (rows) at every weight (columns)."""
    from lora_core.plots import Sheet

    firsts = [i for i, prompt in enumerate(evalset.prompts) if prompt not in evalset.prompts[:i]]
    cells = [(images[(CHARACTER, w)][i], {"prompt": evalset.prompts[i][:40], "weight": w})
             for i in firsts[:settings.strip_prompts] for w in settings.weights]
    return Sheet.of(cells, rows="prompt", cols="weight", cell_inches=1.2)


def _help() -> str:
    from lora_core.config import config_help

    return f"ScoreSettings keys for --set KEY=VALUE (default, then help):\n{config_help(ScoreSettings)}"


def main(argv: list[str] | None = None) -> int:
    from lora_core.cli import command_parser, run_command
    from lora_core.profiles import PROFILES
    from lora_core.train import parse_overrides

    parser = command_parser("python -m lora_core.score_lora", __doc__.split("\n")[0], _help)
    parser.add_argument("lora", help="the LoRA file (.safetensors; kohya/A1111, diffusers or peft layout)")
    parser.add_argument("--images", required=True,
                        help="folder of your reference images (captions <stem>.txt optional)")
    parser.add_argument("--prompts", help="text file, one prompt per line (default: the images' captions)")
    parser.add_argument("--profile", default="tiny", choices=list(PROFILES), help="scale and metric backbones")
    parser.add_argument("--base", help="base model (default: the profile's; see lora_core.models.load_base)")
    parser.add_argument("--config", help="architecture of a single-file --base: a diffusers folder or hub id")
    parser.add_argument("--out", help="report folder (default: <LORA stem>-scores here)")
    parser.add_argument("--cache-dir", help="generated images and features (default: data/cache)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ScoreSettings overrides (below)")

    def command(args) -> None:
        settings = ScoreSettings.from_dict(parse_overrides(args.set))
        result = score_lora(args.lora, args.images, args.prompts, args.profile, args.base, args.config, settings,
                            args.out, args.cache_dir)
        best = result.best.text if result.best else "none (no weight kept both fidelity and prompt following)"
        print(f"best weight range: {best}\nreport: {result.files[REPORT_FILE]}")

    return run_command(command, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
