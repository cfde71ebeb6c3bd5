"""A screen (not a speed benchmark): does training a style LoRA on part of the timesteps keep subjects?

kohya's ``--min_timestep``/``--max_timestep`` draw the training timesteps from ``[min, max)``
instead of ``[0, 1000)``; the idea is that the style lives in the low-noise steps and the subject
in the high-noise ones. ``lora_core.train`` has no such option, so this screen wraps the timestep
draw of :func:`lora_core.train.diffusion_loss` (only draws over ``[0, 1000)``: nothing else in a
LoRA run draws that range) and keeps each range's runs in its own runs folder under ``--work``
(the config hash cannot see the range). Each range trains the tiny profile's OpenMoji LoRA of
chapter 1 (seed given), generates chapter 1's 50 held-out subjects and scores them with
``recipe_search.score`` (the style judge's P(target style), the subject classifier).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/screen_timestep_range.py --seed 0 truth base 0-1000 0-600
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/screen_timestep_range.py --seed 1 0-1000 0-600

Appends one JSON line per variant to ``benchmarks/results/timestep_range_screen.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from _record import RESULTS_DIR, load_average
from recipe_search import score

import lora_core.train as training

STYLE = "openmoji"
TIMESTEP_RANGE = [0, 1000]


class _RangedTimesteps:
    """``torch`` as :mod:`lora_core.train` sees it, with ``randint(0, 1000, ...)`` drawn from TIMESTEP_RANGE."""

    def __getattr__(self, name):
        return getattr(torch, name)

    def randint(self, low, high, *args, **kwargs):
        if (low, high) == (0, 1000):
            low, high = TIMESTEP_RANGE
        return torch.randint(low, high, *args, **kwargs)


def variant_images(name: str, seed: int, base, evaluator, held_out, profile, work: str) -> torch.Tensor:
    from lora_core.experiments.common import generate_eval_images, quiet_libraries, style_lora_config
    from lora_core.experiments.methods import adapted
    from lora_core.experiments.style_share import round_trips

    if name == "truth":
        return round_trips(base, evaluator.true_images(held_out.subject_keys, STYLE, profile.resolution))
    if name == "base":
        return generate_eval_images(base, held_out.prompts, held_out.seeds, profile)
    TIMESTEP_RANGE[:] = [int(bound) for bound in name.split("-")]
    config = style_lora_config(profile, STYLE, seed)
    with quiet_libraries():
        record = training.train(config, base=base, progress=False, runs_root=f"{work}/runs_{name}")
    with adapted(base, config.method, record) as (model, lora_file, _):
        return generate_eval_images(model, held_out.prompts, held_out.seeds, profile, lora_file)


def main() -> None:
    from lora_core.experiments.common import eval_set
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.models import load_base
    from lora_core.profiles import get_profile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", help="truth, base, or a timestep range such as 0-600")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/timestep-range-screen", help="runs folders of the ranges")
    args = parser.parse_args()
    training.torch = _RangedTimesteps()
    profile = get_profile("tiny")
    base, evaluator = load_base(profile.base_model), Evaluator(profile)
    held_out = eval_set(STYLE, "heldout", profile.n_eval_images)
    for name in args.variants:
        load_before, started = load_average(), time.time()
        images = variant_images(name, args.seed, base, evaluator, held_out, profile, args.work)
        scores = score(evaluator, images, held_out, STYLE)
        row = {"style": STYLE, "seed": args.seed, "variant": name, "wall_s": round(time.time() - started, 1),
               **{measure: round(float(value), 4) for measure, value in scores.items()},
               "load_before": load_before, "load_after": load_average(), "date_utc": time.strftime("%Y-%m-%d")}
        with open(RESULTS_DIR / "timestep_range_screen.jsonl", "a") as log:
            log.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
