"""Study S3's four tests on a character LoRA: the prompt sets, the foreign LoRA as a community
file, other bases as single-file checkpoints, and the generation and scoring of each test.

Every test adds tidy rows (``evaluate.results_frame`` columns with the test's labels) to one
:class:`Scorer`; chapter 6 (:mod:`~lora_core.experiments.kohya_character`) aggregates them over
training seeds and reads them. Images are generated through ``lora_sweep.sweep_images`` (cached
by content), so a re-run generates nothing.

>>> from lora_core.profiles import get_profile
>>> scaled_steps(get_profile("tiny")), scaled_guidance(get_profile("tiny"))
((10, 13, 17, 20, 23), 3.733)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from lora_core.experiments.common import (GENERATION_SEED_START, UNSEEN_SUBJECTS, EvalRequest, EvalSet,
                                          captioned_eval_set, generate_eval_sets, quiet_libraries)
from lora_core.experiments.kohya_recipe import S3_ARM
from lora_core.paths import resolve
from lora_core.profiles import Profile, get_profile
from lora_core.experiments.lora_sweep import CHARACTER, UNRELATED, sweep_images, sweep_scores

NEW = "new prompts"
# Scenes no member of the character set shows: prompt following with the trigger word
NEW_SCENES = ("holding a flower", "with a dog", "riding a bicycle", "with an umbrella in the rain",
              "eating noodles", "playing a guitar", "wearing a crown", "on a sailboat")
S3_INFERENCE_STEPS, S3_BEST_STEPS = (30, 40, 50, 60, 70), (50, 60)
S3_GUIDANCE, S3_CLIP_SKIP = 7.0, 2
ORIGINAL = "original base"
PAIRED_MEASURES = ("feature_to_target", "p_target_style", "subject_group_p")
STYLE_MEASURES = ("feature_to_target", "p_target_style")
TESTS = ("weight x epoch", "merge", "other bases", "inference steps")


def scaled_steps(profile: Profile) -> tuple[int, ...]:
    """S3's inference steps 30-70 times the profile's steps over sd15's (tiny: 10 / 30)."""
    ratio = profile.inference_steps / get_profile("sd15").inference_steps
    return tuple(max(1, round(steps * ratio)) for steps in S3_INFERENCE_STEPS)


def scaled_guidance(profile: Profile) -> float:
    """S3's CFG 7 times the profile's guidance over sd15's (tiny: 4.0 / 7.5), to 3 decimals."""
    return round(S3_GUIDANCE * profile.guidance_scale / get_profile("sd15").guidance_scale, 3)


# ---- the character's prompts --------------------------------------------------------------------

def caption_files(spec, split: str) -> list[Path]:
    folder = resolve(spec.folder(split))
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(2, "no captions; build the toy world with `python -m lora_core.toy build`", str(folder))
    return files


def character_sets(spec, heldout_seeds: int, class_word: str, n_new: int, n_unrelated: int) -> dict[str, EvalSet]:
    """The three prompt sets of test 1: ``character`` (every held-out member's caption,
    ``heldout_seeds`` times, each image paired to the member's true image), ``new prompts``
    (``class_word`` in ``n_new`` scenes the set never shows, with the trigger) and ``unrelated``
    (``n_unrelated`` subjects, no trigger). ``spec`` is a ``lora_core.world.SubjectSet``."""
    files = [f for f in caption_files(spec, "heldout") for _ in range(heldout_seeds)]
    new = tuple(f"{class_word} {scene}" for scene in NEW_SCENES[:n_new])
    unrelated = UNSEEN_SUBJECTS[:n_unrelated]

    def seeds(n: int) -> tuple[int, ...]:
        return tuple(GENERATION_SEED_START + i for i in range(n))

    return {CHARACTER: captioned_eval_set("held-out members", spec.vendor, files, spec.caption("")),
            NEW: EvalSet(NEW, spec.vendor, tuple(spec.caption(c) for c in new), new, seeds(len(new))),
            UNRELATED: EvalSet(UNRELATED, "-", unrelated, unrelated, seeds(len(unrelated)))}


def with_suffix(evalset: EvalSet, suffix: str, name: str) -> EvalSet:
    """``evalset`` with ``suffix`` appended to every prompt (captions and pairing kept)."""
    return EvalSet(name, evalset.style, tuple(p + suffix for p in evalset.prompts), evalset.captions,
                   evalset.seeds, evalset.subject_keys)


# ---- test 2: the foreign LoRA, as a community file --------------------------------------------

def foreign_copy(kohya_file: str | Path, folder: str | Path) -> Path:
    """A copy of a kohya-layout LoRA with only kohya's own ``ss_*`` metadata (this project's
    ``lsl_*`` provenance removed), named by its tensors' digest: how a LoRA downloaded from a
    model site arrives. ``blend.load_lora`` reads it from its tensors and ``.alpha`` keys alone."""
    from lora_core.formats import content_digest, save_safetensors
    from lora_core.io import read_safetensors

    tensors, metadata = read_safetensors(kohya_file)
    kept = {key: value for key, value in metadata.items() if key.startswith("ss_") or key == "format"}
    path = Path(folder) / f"community-{content_digest(kohya_file)[:16]}.safetensors"
    return path if path.is_file() else save_safetensors(path, tensors, kept)


# ---- test 3: other bases as single files -------------------------------------------------------

@dataclass(frozen=True)
class BaseConvention:
    """How one base is prompted: its style phrase after every prompt and a negative prompt."""

    name: str
    style: str | None      # the style set it was fine-tuned on; None for the original base
    suffix: str
    negative: str


def base_conventions(other_bases: Sequence[str]) -> list[BaseConvention]:
    """The original base (plain prompts) and one convention per fine-tune: its own style phrase
    appended (as anime checkpoints want their quality tags) and the other fine-tunes' phrases as
    negative prompt (as they want "3d, realistic" in the negative).

    >>> [(c.name, c.suffix, c.negative) for c in base_conventions(["twemoji", "fluent3d"])][1]
    ('twemoji fine-tune', ', in the style of twmj', 'in the style of flntd')
    """
    from lora_core.experiments.common import style_prompt

    phrase = {style: style_prompt(style, "").removeprefix(", ") for style in other_bases}
    return [BaseConvention(ORIGINAL, None, "", "")] + [
        BaseConvention(f"{style} fine-tune", style, f", {phrase[style]}",
                       ", ".join(phrase[other] for other in other_bases if other != style))
        for style in other_bases]


def single_file_base(record, profile: Profile, cache_dir: Path):
    """The fine-tune of ``record`` written as one LDM-layout ``.safetensors`` file (once, named by
    its weights' fingerprint) and loaded back through ``load_base``'s single-file path with the
    original base's architecture as ``config``."""
    from lora_core.formats import save_single_file
    from lora_core.models import TOY_BASE_DIR, base_fingerprint, load_base

    folder = Path(record.exports["diffusers"])
    with quiet_libraries():
        fine_tuned = load_base(str(folder))
    path = cache_dir / f"{record.run_dir.name}-{base_fingerprint(fine_tuned)[:16]}.safetensors"
    if not path.is_file():
        save_single_file(fine_tuned, path, {"lsl_fine_tuned_from": profile.base_model})
    architecture = {"toy:base": TOY_BASE_DIR, "tiny-random": folder}.get(profile.base_model, profile.base_model)
    with quiet_libraries():
        return load_base(str(path), config=architecture)


# ---- generating and scoring the four tests ------------------------------------------------------

@dataclass
class Scorer:
    """What every test's scoring shares: the base, the profile, the evaluator, the character's
    vendor (the paired truth's style) and the training images (for fidelity); ``rows`` collects
    one tidy table per call, ``images`` the pictures the strips show."""

    base: Any
    profile: Profile
    evaluator: Any
    vendor: str
    references: torch.Tensor
    rows: list[pd.DataFrame] = field(default_factory=list)
    images: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def paired(self, images: torch.Tensor, evalset: EvalSet, labels: dict[str, Any], target: str | None = None,
               measures: Sequence[str] = STYLE_MEASURES) -> None:
        """Measures against the true images of ``evalset``'s members in ``target`` (default: the character's vendor)."""
        self.rows.append(self.evaluator.evaluate(images, evalset, target or self.vendor, labels, measures=measures))

    def sweep(self, lora_files: Mapping[Path, float], sets: Mapping[str, EvalSet], labels: dict[str, Any],
              weights: Sequence[float]) -> dict[tuple[str, float], torch.Tensor]:
        """Test 1 at one checkpoint: the sweep measures and the paired ones at ``weights``."""
        images = sweep_images(self.base, lora_files, sets, sorted({0.0, *weights}), self.profile)
        self.rows.append(sweep_scores(self.evaluator, images, sets, self.references, labels, NEW, weights))
        for w in weights:
            self.paired(images[(CHARACTER, w)], sets[CHARACTER], {**labels, "weight": w}, measures=PAIRED_MEASURES)
        return images

    def table(self) -> pd.DataFrame:
        return pd.concat(self.rows, ignore_index=True)


def score_weight_epoch(scorer: Scorer, files: Mapping[tuple[str, int], Mapping[int, Path]],
                       sets: Mapping[str, EvalSet], weights: Sequence[float]) -> None:
    """Test 1: the base once (weight 0, no seed), then every epoch of the S3 arm and the last epoch
    of the huber arm, at every weight > 0, for every seed."""
    test = {"test": TESTS[0]}
    base_images = scorer.sweep({}, sets, {**test, "arm": "base"}, [0.0])
    scorer.images[(TESTS[0], 0, 0.0)] = base_images[(CHARACTER, 0.0)]
    lora_weights = [w for w in weights if w > 0]
    first_seed = min(seed for _, seed in files)
    for (arm, seed), by_epoch in files.items():
        epochs = sorted(by_epoch) if arm == S3_ARM else [max(by_epoch)]
        for epoch in epochs:
            images = scorer.sweep({by_epoch[epoch]: 1.0}, sets, {**test, "arm": arm, "seed": seed, "epoch": epoch},
                                  lora_weights)
            if arm == S3_ARM and seed == first_seed:
                scorer.images.update({(TESTS[0], epoch, w): images[(CHARACTER, w)] for w in lora_weights})


def score_merge(scorer: Scorer, character_files: Mapping[int, Path], foreign_file: Path, evalset: EvalSet,
                foreign_vendor: str, weights: Sequence[float]) -> None:
    """Test 2: the character's last epoch and the foreign LoRA both at weight ``w``, scored
    against the members' true images in the character's vendor and in the foreign style."""
    test, sets = {"test": TESTS[1]}, {CHARACTER: evalset}
    for seed, character_file in character_files.items():
        images = sweep_images(scorer.base, {character_file: 1.0, foreign_file: 1.0}, sets, weights, scorer.profile)
        for w in weights:
            labels = {**test, "weight": w, "seed": None if w == 0 else seed}
            if w == 0 and seed != min(character_files):
                continue   # the base: once
            for target in (scorer.vendor, foreign_vendor):
                scorer.paired(images[(CHARACTER, w)], evalset, labels, target)
            if seed == min(character_files):
                scorer.images[(TESTS[1], w)] = images[(CHARACTER, w)]


def score_bases(scorer: Scorer, bases: Mapping[str, Any], conventions: Sequence[BaseConvention],
                character_files: Mapping[int, Path], evalset: EvalSet, weight: float) -> None:
    """Test 3: on every base with its convention, CFG 7 and clip skip 2 (scaled), the base alone
    (once) and with the character's last epoch at ``weight`` (every seed)."""
    cell = {"guidance_scale": scaled_guidance(scorer.profile), "clip_skip": S3_CLIP_SKIP}
    for convention in conventions:
        prompts = {CHARACTER: with_suffix(evalset, convention.suffix, f"held-out members, {convention.name}")}
        for seed, character_file in character_files.items():
            images = sweep_images(bases[convention.name], {character_file: 1.0}, prompts, (0.0, weight),
                                  scorer.profile, negative_prompt=convention.negative, **cell)
            first = seed == min(character_files)
            for w in (0.0, weight) if first else (weight,):
                labels = {"test": TESTS[2], "base": convention.name, "weight": w, "seed": None if w == 0 else seed}
                scorer.paired(images[(CHARACTER, w)], prompts[CHARACTER], labels)
                if first:
                    scorer.images[(TESTS[2], convention.name, w)] = images[(CHARACTER, w)]


def score_steps(scorer: Scorer, character_files: Mapping[int, Path], evalset: EvalSet, weight: float,
                steps: Sequence[int]) -> None:
    """Test 4: the character's last epoch at ``weight`` generated with each number of steps (all
    step counts of a seed in one generation, so its file is loaded once)."""
    for seed, character_file in character_files.items():
        requests = [EvalRequest(evalset.prompts, evalset.seeds, {str(character_file): weight}, {"steps": n})
                    for n in steps]
        for n, images in zip(steps, generate_eval_sets(scorer.base, requests, scorer.profile)):
            scorer.paired(images, evalset, {"test": TESTS[3], "steps": n, "seed": seed})
            if seed == min(character_files):
                scorer.images[(TESTS[3], n)] = images
