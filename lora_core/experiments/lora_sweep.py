"""A LoRA file swept over its weight and scored: study S3's test 1 by metrics, shared by chapter 6
and the ``python -m lora_core.score_lora`` command.

Every prompt is generated at every LoRA weight (0 = the base alone) with its own seeds, the same at
every weight, and scored three ways with 95% bootstrap intervals over images (``SWEEP_MEASURES``):
fidelity to reference images, prompt following, and base preservation on unrelated prompts. The
best weight range is every weight > 0 whose fidelity and prompt following are indistinguishable
from the best weight's (:func:`best_weight_range`).

>>> best_weight_range(pd.DataFrame({
...     "weight": [0.0, 0.5, 1.0] * 2, "measure": ["fidelity_cosine"] * 3 + ["alignment"] * 3,
...     "value": [0.2, 0.6, 0.7, 0.5, 0.45, 0.2], "ci_low": [0.1, 0.5, 0.6, 0.4, 0.35, 0.1],
...     "ci_high": [0.3, 0.7, 0.8, 0.6, 0.55, 0.3], "better": ["higher"] * 6}), "fidelity_cosine").text
'0.5'
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.experiments.common import GENERATION_SEED_START, UNSEEN_SUBJECTS, EvalSet
from lora_core.profiles import Profile

WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)   # S3's test 1
CHARACTER, UNRELATED = "character", "unrelated"
# measure -> (better, what it asks); the measures of evaluate.MEASURES keep their own entries
SWEEP_MEASURES: dict[str, tuple[str, str]] = {
    "fidelity_cosine": ("higher", "mean cosine of EffNet features, generated vs reference images"),
    "alignment": ("higher", "prompt following: the alignment model's image-text score"),
    "st_lpips_to_base": ("lower", "ST-LPIPS to the base's image of the same unrelated prompt and seed"),
}
PRESERVATION_NOTE = "paired: the same unrelated prompt and seed at weight 0 (the base)"


@dataclass(frozen=True)
class ScoreSettings(Config):
    weights: tuple[float, ...] = option(WEIGHTS, "LoRA weights swept (S3's test 1); must include 0, the base")
    images_per_prompt: int = option(2, "generation seeds per prompt (the same seeds at every weight)")
    max_prompts: int = option(8, "prompts used, the first ones of --prompts or of the captions")
    n_unrelated: int = option(8, "unrelated prompts (no trigger word) for base preservation")
    strip_prompts: int = option(3, "prompts shown in the sample strip")
    bootstrap_seed: int = option(0, "seed of every bootstrap interval")

    def __post_init__(self) -> None:
        if 0.0 not in self.weights or any(not 0.0 <= w <= 2.0 for w in self.weights) or len(self.weights) < 2:
            raise ValueError(f"ScoreSettings: weights must include 0 (the base) and another weight, all in "
                             f"[0, 2], got {list(self.weights)}")
        for name in ("images_per_prompt", "max_prompts", "n_unrelated", "strip_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"ScoreSettings: {name} must be >= 1, got {getattr(self, name)}")
        if self.n_unrelated > len(UNSEEN_SUBJECTS):
            raise ValueError(f"ScoreSettings: n_unrelated must be <= {len(UNSEEN_SUBJECTS)}, got {self.n_unrelated}")


# ---- inputs -------------------------------------------------------------------------------------

def reference_paths(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` and its subfolders (a kohya ``N_name`` layout works as it is),
    sorted, hidden files left out; one error naming the folder when there are none."""
    from lora_core.data import IMAGE_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, "no such folder of reference images", str(folder))
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not paths:
        raise ValueError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)}, subfolders included)")
    return paths


def reference_images(paths: Sequence[Path], resolution: int) -> torch.Tensor:
    """uint8 images prepared as training images are (transparency on white, centre crop, Lanczos)."""
    from lora_core.images import prepare_image, read_image
    from lora_core.metrics.preprocess import as_uint8_images

    return as_uint8_images([prepare_image(read_image(p, upright=True), resolution) for p in paths], "reference images")


def caption_of(image: Path) -> str | None:
    """The first non-empty line of the image's ``<stem>.txt``, or None."""
    path = image.with_suffix(".txt")
    if not path.is_file():
        return None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[0] if lines else None


def read_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a prompt file."""
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line)")
    return prompts


def sweep_sets(prompts: Sequence[str], settings: ScoreSettings) -> dict[str, EvalSet]:
    """``character``: the first ``max_prompts`` prompts, each with ``images_per_prompt`` seeds;
    ``unrelated``: ``n_unrelated`` subjects no trigger word names, one seed each.

    >>> sets = sweep_sets(["sks woman", "sks man"], ScoreSettings(images_per_prompt=2, n_unrelated=2))
    >>> sets["character"].prompts, sets["character"].seeds, sets["unrelated"].prompts
    (('sks woman', 'sks woman', 'sks man', 'sks man'), (1000, 1001, 1002, 1003), ('a blue cat', 'a red car on a road'))
    """
    chosen = [p for p in prompts[:settings.max_prompts] for _ in range(settings.images_per_prompt)]
    seeds = tuple(GENERATION_SEED_START + i for i in range(len(chosen)))
    unrelated = UNSEEN_SUBJECTS[:settings.n_unrelated]
    return {CHARACTER: EvalSet("your prompts", "-", tuple(chosen), tuple(chosen), seeds),
            UNRELATED: EvalSet("unrelated prompts", "-", unrelated, unrelated,
                               tuple(GENERATION_SEED_START + i for i in range(len(unrelated))))}


def on_device(base, device: str):
    """``base`` with its modules on ``device`` when that is an available GPU (sd15), else as it is."""
    if device.startswith("cuda") and torch.cuda.is_available():
        for module in (base.unet, base.text_encoder, base.vae):
            module.to(device)
    return base


def check_lora_fits(base, lora: str | Path) -> str:
    """The file's layout (kohya, diffusers or peft); ``LoraKeyError`` naming the file when its
    modules do not fit ``base`` (a LoRA for another architecture), before anything is generated."""
    from lora_core.formats import check_lora_keys, load_lora_file
    from lora_core.formats.lora_keys import LoraKeyError

    lora_file = load_lora_file(lora)
    try:
        check_lora_keys(lora_file.state_dict, base.unet, base.text_encoder)
    except LoraKeyError as error:
        raise LoraKeyError(f"{lora}: {error}") from None
    return lora_file.layout


# ---- generating and scoring a sweep -------------------------------------------------------------

def sweep_images(base, adapters: Mapping[str | Path, float], sets: Mapping[str, EvalSet], weights: Sequence[float],
                 profile: Profile, cache_dir: str | Path | None = None,
                 **cell_settings) -> dict[tuple[str, float], torch.Tensor]:
    """uint8 images of every set at every weight ``w``: the ``adapters`` (LoRA files, each at its
    own weight) all scaled by ``w``; ``w = 0`` is the base. All weights are generated together, so
    each file is loaded once (cached on disk by ``common.generate_eval_sets``, one entry per weight)."""
    from lora_core.experiments.common import EvalRequest, generate_eval_sets

    prompts = tuple(p for evalset in sets.values() for p in evalset.prompts)
    seeds = tuple(s for evalset in sets.values() for s in evalset.seeds)
    requests = [EvalRequest(prompts, seeds, {str(path): w * own for path, own in adapters.items()} if w else None,
                            cell_settings) for w in weights]
    images = {}
    for w, generated in zip(weights, generate_eval_sets(base, requests, profile, cache_dir=cache_dir)):
        start = 0
        for name, evalset in sets.items():
            images[(name, w)] = generated[start:start + len(evalset)]
            start += len(evalset)
    return images


def sweep_scores(evaluator, images: Mapping[tuple[str, float], torch.Tensor], sets: Mapping[str, EvalSet],
                 references: torch.Tensor, labels: Mapping[str, Any] | None = None, prompt_set: str = CHARACTER,
                 weights: Sequence[float] | None = None) -> pd.DataFrame:
    """The three measures of the module docstring at ``weights`` (default: every weight of
    ``images``, which must hold weight 0), one tidy row each (``evaluate.results_frame`` columns, plus
    ``weight``): fidelity of the ``character`` set to ``references``, alignment of ``prompt_set`` to
    its captions, ST-LPIPS of ``unrelated`` to the base's images."""
    from lora_core.experiments.evaluate import results_frame
    from lora_core.metrics.lpips import paired_distance
    from lora_core.metrics.style import fidelity

    profile = evaluator.profile
    frames = []
    for w in sorted(weights if weights is not None else {w for _, w in images}):
        row_labels = {**(labels or {}), "weight": w}
        generator = torch.Generator().manual_seed(evaluator.seed)
        preservation = paired_distance(images[(UNRELATED, w)], images[(UNRELATED, 0.0)], profile.lpips_backbone,
                                       evaluator.n_resamples, generator)
        results = {"fidelity_cosine": fidelity(images[(CHARACTER, w)], references, profile.feature_backbone,
                                               evaluator.cache, generator, evaluator.n_resamples)["cosine"],
                   "st_lpips_to_base": dataclasses.replace(preservation, note=PRESERVATION_NOTE)}
        frames.append(results_frame(results, {"eval_set": "-", "target_style": "-", **row_labels}))
        frames.append(evaluator.evaluate(images[(prompt_set, w)], sets[prompt_set], "-", row_labels,
                                         measures=("alignment",)))
    return with_directions(pd.concat(frames, ignore_index=True))


def with_directions(table: pd.DataFrame) -> pd.DataFrame:
    """``better`` filled in for the measures of :data:`SWEEP_MEASURES`."""
    better = table["measure"].map({m: b for m, (b, _) in SWEEP_MEASURES.items()})
    return table.assign(better=better.fillna(table["better"]))


# ---- reading a sweep: the best range ------------------------------------------------------------

@dataclass(frozen=True)
class BestRange:
    """The values (weights, inference steps) a decision kept, sorted; ``text`` is ``"0.5-0.75"``
    or ``"0.5"``."""

    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return self.values[0]

    @property
    def high(self) -> float:
        return self.values[-1]

    @property
    def text(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}-{self.high:g}"


def indistinguishable_from_best(rows: pd.DataFrame, x: str = "weight") -> list[float]:
    """The ``x`` values whose 95% interval overlaps the interval of the best value (rows of one
    measure; ``better`` says which way is best).

    >>> rows = pd.DataFrame({"weight": [0.0, 0.5, 1.0], "value": [1.0, 3.0, 3.2], "ci_low": [0.8, 2.5, 3.0],
    ...                      "ci_high": [1.2, 3.1, 3.4], "better": ["higher"] * 3})
    >>> indistinguishable_from_best(rows)
    [0.5, 1.0]
    """
    if rows.empty:
        return []
    higher = rows["better"].iloc[0] == "higher"
    best = rows.loc[rows["value"].idxmax() if higher else rows["value"].idxmin()]
    overlap = (rows["ci_high"] >= best["ci_low"]) & (rows["ci_low"] <= best["ci_high"])
    return sorted(rows.loc[overlap, x].tolist())


def best_weight_range(table: pd.DataFrame, character: str, keep: Sequence[str] = ("alignment",),
                      x: str = "weight") -> BestRange | None:
    """Every ``x > 0`` whose ``character`` measure is indistinguishable from the best (the LoRA's
    full effect) and whose ``keep`` measures (prompt following) are too; None when no value is
    both. A ``keep`` measure missing from ``table`` (no alignment model) is left out of the rule.
    ``table`` holds one row per (``x``, measure): filter other labels (epoch, base) first."""
    chosen = {w for w in indistinguishable_from_best(table[table["measure"] == character], x) if w > 0}
    for measure in keep:
        rows = table[table["measure"] == measure]
        if not rows.empty:
            chosen &= set(indistinguishable_from_best(rows, x))
    return BestRange(tuple(sorted(chosen))) if chosen else None


def compare_ranges(found: BestRange | None, reported: tuple[float, float]) -> str:
    """How a measured range relates to a study's reported one, in words.

    >>> [compare_ranges(BestRange(w), (0.5, 0.75)) for w in ((0.5, 0.75), (0.25, 0.5, 0.75, 1.0), (0.75,),
    ...                                                         (0.25, 0.5), (1.0,))]
    ['the same as', 'wider than, and containing,', 'inside', 'overlapping', 'outside (above)']
    >>> compare_ranges(None, (0.5, 0.75))
    'not comparable with (no weight kept both)'
    """
    if found is None:
        return "not comparable with (no weight kept both)"
    low, high = reported
    if (found.low, found.high) == (low, high):
        return "the same as"
    if found.low <= low and found.high >= high:
        return "wider than, and containing,"
    if found.low >= low and found.high <= high:
        return "inside"
    if found.high < low or found.low > high:
        return f"outside ({'below' if found.high < low else 'above'})"
    return "overlapping"
