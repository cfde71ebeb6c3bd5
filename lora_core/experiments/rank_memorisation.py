"""Chapter 8: rank 16 against rank 64 on a large captioned set, prompt generalisation, and
memorisation (study S5).

S5 trained LoRA at rank 16 and 64 (alpha = 2 x rank) on 1,500 captioned cartoons, one seed, and
reported cost, CLIP scores on "normal" and "abstract" prompts, and (citing other work) that a
higher rank memorises more. Here the same recipe runs on the toy world's ``large_captioned`` set
(every emoji of one vendor with its caption: 1,500 training, the rest held out) with several
training seeds, a full fine-tune (DreamBooth) beside the LoRAs as the memorisation reference, the
stand-in alignment score on two prompt groups (:mod:`~lora_core.experiments.prompt_groups`) after
checking it on real images, and the memorisation measures of :mod:`~lora_core.experiments.copying`;
runs over seeds are read by :mod:`~lora_core.experiments.rank_costs`.

Settings per profile (:data:`RANK_SETTINGS`): ``sd15`` is S5's recipe (10 epochs, batch 4, lr 5e-4);
``tiny`` trains the profile's step budget (``train_steps`` steps of ``batch_size`` images, the
budget of every tiny run in the book) with lr 5e-4 x the profile's lr scale; S5's 10 epochs of
1,500 images at batch 4 are 3,750 steps, which the 8-minute budget of this chapter cannot hold
seven times over (:func:`predicted_cost` gives the chapter's cost from its counts).

    result = run_rank_memorisation("tiny")
    result.cost_summary; result.alignment_summary; result.memorisation.share_table; result.facts["rank_memorisation"]

>>> from lora_core.profiles import get_profile
>>> settings = rank_settings(get_profile("tiny"))
>>> settings.ranks, settings.epochs, settings.batch_size, model_label(64)
((16, 64), 0, 0, 'rank 64')
>>> steps_text(get_profile("tiny"), settings, n_train=1500)
'150 steps of 16 images (1.6 epochs of 1,500 images; S5: 10 epochs at batch 4)'
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from lora_core.adapters.lora import ATTENTION_TARGETS, FEED_FORWARD_TARGETS
from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import EvalSet, lr_scale, method_config, quiet_libraries, style_lora_config
from lora_core.experiments.copying import (Memorisation, measure_memorisation, pooled, reference_features_job,
                                           reference_images, reference_keys)
from lora_core.experiments.prompt_groups import (ABSTRACT, ALIGNMENT_COLUMNS, CONCRETE, TRAINING, TRUST_COLUMNS,
                                                 alignment_scores, alignment_summary, group_gap, s5_alignment_table,
                                                 seed_means)
from lora_core.experiments.rank_costs import (COST_MEASURES, NOT_MEASURED, S5_ALPHA_PER_RANK, diverged_text,
                                              loss_curves, model_label, over_seeds, paired_gap, result_text,
                                              run_costs, s5_cost_table)
from lora_core.plots import Sheet
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

S5_RANKS = (16, 64)
S5_TARGETS = ATTENTION_TARGETS + FEED_FORWARD_TARGETS   # to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2
S5_LEARNING_RATE = 5e-4
S5_BETAS = (0.9, 0.999)
S5_BATCH, S5_EPOCHS = 4, 10
BASE, FULL = "base", "full (DreamBooth)"


@dataclass(frozen=True)
class RankSettings(Config):
    subject_set: str = option("large_captioned", "the captioned set (lora_core.world.SUBJECT_SETS)")
    ranks: tuple[int, ...] = option(S5_RANKS, "LoRA ranks compared, alpha = 2 x rank (S5: 16 and 64)")
    epochs: int = option(0, "epochs over the training images (S5: 10); 0 = the profile's train_steps steps")
    batch_size: int = option(0, "images per step (S5: 4); 0 = the profile's batch")
    n_seeds: int = option(0, "training seeds per rank; 0 = the profile's n_seeds")
    full_seeds: int = option(1, "training seeds of the full fine-tune (DreamBooth), the memorisation reference")
    n_concrete: int = option(25, "held-out captions prompted (S5: 50 prompts in two groups)")
    n_abstract: int = option(25, "abstract ideas prompted (prompt_groups.ABSTRACT_IDEAS, at most 25)")
    n_memorisation: int = option(20, "training captions generated per model and seed for the copy measures")
    n_reference: int = option(0, "training and held-out real images behind the copy thresholds; 0 = all")
    n_cells: int = option(3, "k-means cells of the data-copying test (fewer when generations cannot fill 20 each)")
    validate: bool = option(True, "validation loss on the held-out images (all of them, 4 fixed timesteps)")

    def __post_init__(self) -> None:
        if len(self.ranks) < 2 or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ValueError(f"RankSettings: ranks must be two or more positive integers, got {self.ranks}")
        counts = {"n_concrete": self.n_concrete, "n_abstract": self.n_abstract,
                  "n_memorisation": self.n_memorisation, "full_seeds": self.full_seeds, "n_cells": self.n_cells}
        small = [f"{name}={value}" for name, value in counts.items() if value < 1]
        if small or min(self.epochs, self.batch_size, self.n_seeds, self.n_reference) < 0:
            raise ValueError(f"RankSettings: counts must be >= 1 ({', '.join(small)}) and epochs, batch_size, "
                             f"n_seeds, n_reference >= 0")


# smoke: seconds on the random model, a few real images behind the thresholds; tiny: within
# chapter 8's 8 minutes (see predicted_cost); sd15: S5's recipe, 50 prompts, more generations.
RANK_SETTINGS = {"smoke": RankSettings(n_concrete=3, n_abstract=3, n_memorisation=4, n_reference=32, n_cells=1,
                                       validate=False),
                 "tiny": RankSettings(),
                 "sd15": RankSettings(epochs=S5_EPOCHS, batch_size=S5_BATCH, n_memorisation=100)}


def rank_settings(profile: Profile, **overrides) -> RankSettings:
    """The profile's sizes with ``overrides`` (unknown keys raise, listing the valid ones)."""
    settings = RANK_SETTINGS[profile.name]
    return settings.replace(**overrides) if overrides else settings


def seeds_of(profile: Profile, settings: RankSettings) -> tuple[int, ...]:
    return tuple(range(settings.n_seeds or profile.n_seeds))


def steps_text(profile: Profile, settings: RankSettings, n_train: int) -> str:
    """How long each run trains, against S5's 10 epochs at batch 4."""
    batch = settings.batch_size or profile.batch_size
    study = f"S5: {S5_EPOCHS} epochs at batch {S5_BATCH}"
    if settings.epochs:
        return f"{settings.epochs} epochs of {n_train:,} images at batch {batch} ({study})"
    epochs = profile.train_steps * batch / n_train
    return f"{profile.train_steps} steps of {batch} images ({epochs:.2g} epochs of {n_train:,} images; {study})"


# ---- configs -------------------------------------------------------------------------------------

def study_fields(profile: Profile, settings: RankSettings) -> dict[str, Any]:
    """The TrainConfig fields every run of the chapter shares: the set's training folder (its
    held-out folder for the validation loss), S5's betas, batch and length as the profile scales them.
    Validation runs once per epoch, or once at the end of a run shorter than its epoch budget."""
    from lora_core.data import DataConfig
    from lora_core.experiments.prompt_groups import set_folder

    fields = {"data": DataConfig(folder=set_folder(settings.subject_set, "train"), resolution=profile.resolution),
              "adam_betas": S5_BETAS, "batch_size": settings.batch_size or profile.batch_size}
    if settings.validate:
        fields["validation_folder"] = set_folder(settings.subject_set, "heldout")
    if settings.epochs:
        return {**fields, "epochs": settings.epochs, "validation_every_steps": 0}
    return {**fields, "max_train_steps": profile.train_steps, "validation_every_steps": profile.train_steps}


def rank_config(profile: Profile, settings: RankSettings, rank: int, seed: int) -> TrainConfig:
    """S5's LoRA: ``rank``, alpha = 2 x rank, S5's six target modules, lr 5e-4 x the lr scale."""
    from lora_core.experiments.prompt_groups import subject_set

    lora = {"rank": rank, "alpha": None, "alpha_per_rank": S5_ALPHA_PER_RANK, "target_modules": S5_TARGETS}
    # the builder's style names a default folder, which study_fields' data replaces
    return style_lora_config(profile, subject_set(settings.subject_set).vendor, seed, lora=lora,
                             learning_rate=S5_LEARNING_RATE * lr_scale(profile), **study_fields(profile, settings))


def full_config(profile: Profile, settings: RankSettings, seed: int) -> TrainConfig:
    """The full fine-tune: chapter 3's DreamBooth (UNet and text encoder, S1's learning rates x the
    lr scale) on the same images, batch and length as the LoRAs; no validation loss (it is compared
    between the ranks only, and costs a pass over every held-out image)."""
    from lora_core.experiments.prompt_groups import subject_set

    return method_config(profile, "dreambooth", subject_set(settings.subject_set).vendor, seed,
                         **study_fields(profile, settings.replace(validate=False)))


def chapter_configs(profile: Profile, settings: RankSettings) -> dict[tuple[str, int], TrainConfig]:
    """``{(model, seed): config}``: every rank at every training seed, then the full fine-tune."""
    configs = {(model_label(rank), seed): rank_config(profile, settings, rank, seed)
               for rank in settings.ranks for seed in seeds_of(profile, settings)}
    configs.update({(FULL, seed): full_config(profile, settings, seed) for seed in range(settings.full_seeds)})
    return configs


# ---- generations ------------------------------------------------------------------------------------

@contextlib.contextmanager
def generating_model(base, model: str, record) -> Iterator[tuple[Any, Path | None]]:
    """``(model, LoRA file)`` that generates as a run's user would: the base alone (no record), the
    base with the run's LoRA file, or the full fine-tune's saved model."""
    from lora_core.experiments.methods import adapted

    if record is None:
        yield base, None
        return
    with adapted(base, "dreambooth" if model == FULL else "lora", record) as (generating, lora_file, _):
        yield generating, lora_file


def train_and_generate(base, config: TrainConfig | None, runs_root, model: str, sets: dict[str, EvalSet],
                       profile: Profile) -> dict[str, torch.Tensor]:
    """One run trained (or reused; the base itself without a config) and every prompt set's
    uint8 images with it (cached by content on disk)."""
    from lora_core.experiments.common import generate_eval_images
    from lora_core.train_pool import trained

    with quiet_libraries(), generating_model(base, model, trained(base, config, runs_root)) as (generating, lora_file):
        return {name: generate_eval_images(generating, list(prompts.prompts), list(prompts.seeds), profile, lora_file)
                for name, prompts in sets.items()}


def train_and_generate_all(base, configs: dict[tuple[str, int], TrainConfig], sets: dict[str, EvalSet],
                           profile: Profile, settings: RankSettings, runs_root=None
                           ) -> dict[tuple[str, int | None, str], torch.Tensor]:
    """Every run trained and its prompt sets generated, and the base's; one job per model and the
    copy references' features, side by side where the cores allow (:mod:`lora_core.train_pool`):
    the full fine-tune and the highest rank first, as they take longest."""
    from lora_core.train_pool import map_side_by_side

    keys = list(reversed(configs)) + [(BASE, None)]
    jobs = [(train_and_generate, (configs.get(key), runs_root, key[0], sets, profile)) for key in keys]
    references = reference_features_job(settings.subject_set, settings.n_reference, profile.resolution,
                                        profile.feature_backbone)
    made = map_side_by_side(jobs[:-1] + [references, jobs[-1]], shared=(base,))   # the base's is the shortest
    del made[-2]                                                                    # the references' (no images)
    return {(model, seed, name): images for (model, seed), by_set in zip(keys, made) for name, images in by_set.items()}


# ---- the chapter ----------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class RankResult(ChapterResult):
    """Chapter 8's runs, generations and measures (filled by :func:`run_rank_memorisation`).
    Facts: see :func:`read_rank_memorisation`."""

    settings: RankSettings
    configs: dict[tuple[str, int], TrainConfig]
    records: dict[tuple[str, int], Any]
    sets: dict[str, EvalSet]
    images: dict[tuple[str, int | None, str], torch.Tensor] = field(default_factory=dict)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    cost_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    alignment: pd.DataFrame = field(default_factory=pd.DataFrame)
    alignment_summary: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ALIGNMENT_COLUMNS))
    trust: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TRUST_COLUMNS))
    memorisation: Memorisation = field(default_factory=Memorisation)
    s5_costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    s5_alignment: pd.DataFrame = field(default_factory=pd.DataFrame)
    prediction: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        """The trained models in order: every rank, then the full fine-tune."""
        return list(dict.fromkeys(model for model, _ in self.configs))

    def config_table(self) -> pd.DataFrame:
        """``common.config_table`` of every run (with its epochs), labelled ``<model> seed <seed>``."""
        from lora_core.experiments.common import config_table

        table = config_table({f"{model} seed {seed}": config for (model, seed), config in self.configs.items()})
        return table.assign(epochs=[config.epochs for config in self.configs.values()])

    def cost_panels(self, measures: Sequence[str] = ("final_loss", "final_val_loss", "train_time_s",
                                                     "state_memory_mb", "file_mb")) -> pd.DataFrame:
        """The cost summary's ``measures`` with a ``panel`` title each, for ``plots.interval_panels``."""
        rows = self.cost_summary[self.cost_summary["measure"].isin(measures)]
        return rows.assign(panel=rows["metric"].str.replace(" (", "\n(", regex=False))

    def alignment_panels(self) -> pd.DataFrame:
        """The alignment summary with a ``panel`` per prompt group, for ``plots.interval_panels``."""
        return self.alignment_summary.assign(panel=[f"{group} prompts" for group in self.alignment_summary["group"]])

    def share_panels(self) -> pd.DataFrame:
        """The copy shares with their Wilson intervals and a ``panel`` per measure (its short key:
        what was compared, for which generations)."""
        table = self.memorisation.share_table
        return table.assign(panel=table["measure"])

    def similarity_frame(self) -> pd.DataFrame:
        """Nearest-training cosine of every training-caption generation per model, and of every
        held-out real image (``model`` = "held-out real images"), for the histograms."""
        generated = self.memorisation.generations[["model", "nearest cosine"]]
        real = pd.DataFrame({"model": "held-out real images", "nearest cosine": self.memorisation.held_out_similarity})
        return pd.concat([generated, real], ignore_index=True)

    def copy_sheet(self, per_model: int = 3) -> Sheet:
        """For each trained model, its ``per_model`` training-caption generations closest to a
        training image: the generation, that nearest training image, and the caption's own image."""
        from lora_core.experiments.prompt_groups import absolute_folder, set_folder
        from lora_core.metrics.style import load_true_images

        folder = absolute_folder(set_folder(self.settings.subject_set, "train"))
        cells = []
        for model in self.models:
            rows = self.memorisation.generations.reset_index(drop=True)
            rows = rows[rows["model"] == model].reset_index(drop=True)
            generated = pooled(self.images, model, TRAINING)[0]
            for index, row in rows.nlargest(per_model, "nearest cosine").iterrows():
                seed = "" if pd.isna(row["seed"]) else f" seed {row['seed']}"
                label = f"{model}{seed}\n{row['key']}, cos {row['nearest cosine']:.3f}"
                truth = load_true_images([row["nearest key"], row["key"]], folder, self.profile.resolution)
                cells += [(generated[index], {"row": label, "column": "generation"}),
                          (truth[0], {"row": label, "column": "nearest training image"}),
                          (truth[1], {"row": label, "column": "own training image"})]
        return Sheet.of(cells, rows="row", cols="column", cell_inches=1.1,
                        title=f"closest training-caption generations ({self.profile.name} profile)")


# ---- predicted cost from counts ---------------------------------------------------------------------

# Seconds per unit on one idle core of this machine kind: each unit was timed in one process beside
# the tiny UNet's forward and backward pass of 16 images (one thread), and scaled by that pass's
# idle time, 0.20 s (/work/shared/ENVIRONMENT.md), so machine load cancels out. Units: an optimizer
# step of LoRA on S5's six modules (rank 16 and 64 alike) and of the full fine-tune (UNet and text
# encoder), one validation sample at one timestep, one generated image per denoising step (CFG),
# one image through EfficientNet-Lite0 at 224 px, one training image loaded and encoded for a run.
UNIT_SECONDS = {"lora_step": 0.20, "full_step": 0.30, "validation_sample": 0.0037, "generated_image_per_step": 0.0084,
                "featured_image": 0.033, "cached_image": 0.0035}


def predicted_cost(profile: Profile, settings: RankSettings, n_train: int, n_held_out: int,
                   units: dict[str, float] = UNIT_SECONDS) -> pd.DataFrame:
    """The chapter's cost on a fresh build (nothing cached) from its counts: runs x steps x s/step,
    validation samples, images generated and scored, latent caching.

    >>> from lora_core.profiles import get_profile
    >>> table = predicted_cost(get_profile("tiny"), rank_settings(get_profile("tiny")), 1500, 411)
    >>> table[["item", "count"]].values.tolist()[:2], round(float(table["seconds"].sum()))
    ([['LoRA steps', 900], ['full fine-tune steps', 150]], 430)
    """
    from lora_core.experiments.prompt_groups import ABSTRACT_IDEAS

    batch = settings.batch_size or profile.batch_size
    n_depicting = sum(len(idea.depicted_by) for idea in ABSTRACT_IDEAS[:settings.n_abstract])
    steps = settings.epochs * math.ceil(n_train / batch) if settings.epochs else profile.train_steps
    validations = (settings.epochs if settings.epochs else 1) if settings.validate else 0
    lora_runs = len(settings.ranks) * len(seeds_of(profile, settings))
    runs = lora_runs + settings.full_seeds
    generated = (1 + runs) * (settings.n_concrete + settings.n_abstract + settings.n_memorisation)
    references = (settings.n_reference * 2 if settings.n_reference else n_train + n_held_out)
    counts = [("LoRA steps", lora_runs * steps, units["lora_step"]),
              ("full fine-tune steps", settings.full_seeds * steps, units["full_step"]),
              ("validation samples (4 timesteps each)", lora_runs * validations * n_held_out * 4,
               units["validation_sample"]),
              ("training images cached", runs * n_train, units["cached_image"]),
              ("images generated", generated, units["generated_image_per_step"] * profile.inference_steps),
              ("images through the feature network", generated + references + settings.n_concrete + n_depicting,
               units["featured_image"])]
    return pd.DataFrame([{"item": item, "count": count, "seconds each": each, "seconds": count * each}
                         for item, count, each in counts])


# ---- running and reading ------------------------------------------------------------------------

def run_rank_memorisation(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                          ranks: Sequence[int] = S5_RANKS, n_seeds: int = 0, n_concrete: int = 0,
                          n_abstract: int = 0, n_memorisation: int = 0) -> RankResult:
    """Chapter 8: train (or reuse) every rank at every seed and the full fine-tune on the set,
    generate both prompt groups and training captions with each (and the base), score alignment
    after checking the stand-in on real images, measure copying, and read the page's facts."""
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.models import load_base
    from lora_core.train_pool import train_many

    settings = resolve_profile(profile)
    given = {"ranks": tuple(ranks), "n_seeds": n_seeds, "n_concrete": n_concrete, "n_abstract": n_abstract,
             "n_memorisation": n_memorisation}
    chapter = rank_settings(settings, **{key: value for key, value in given.items() if value})
    base = base if base is not None else load_base(settings.base_model)
    configs = chapter_configs(settings, chapter)
    sets = prompt_sets(chapter)
    images = train_and_generate_all(base, configs, sets, settings, chapter, runs_root)
    with quiet_libraries():
        records = train_many(configs, base=base, runs_root=runs_root)   # all finished: their records
    result = RankResult(settings, settings=chapter, configs=configs, records=records, sets=sets)
    result.images = {key: images[key] for key in [(BASE, None, name) for name in sets] + [
        (model, seed, name) for model, seed in records for name in sets]}
    return read_rank_memorisation(score_chapter(result, Evaluator(settings)))


def prompt_sets(settings: RankSettings) -> dict[str, EvalSet]:
    """Concrete prompts (held-out captions), abstract prompts, and the training captions of the
    copy measures (chosen among the reference training images)."""
    from lora_core.experiments.prompt_groups import abstract_eval_set, caption_eval_set

    name = settings.subject_set
    training_keys = reference_keys(name, "train", settings.n_reference)
    return {CONCRETE: caption_eval_set(name, "heldout", settings.n_concrete),
            ABSTRACT: abstract_eval_set(name, settings.n_abstract),
            TRAINING: caption_eval_set(name, "train", settings.n_memorisation, keys=training_keys)}


def score_chapter(result: RankResult, evaluator) -> RankResult:
    """Costs and loss curves from the records; alignment and the stand-in's trust check where the
    profile has an alignment model; every copy measure with the profile's feature network."""
    from lora_core.experiments.common import data_dir
    from lora_core.experiments.prompt_groups import ABSTRACT_IDEAS, subject_set, trust_check
    from lora_core.metrics.backbones import get_backbone
    from lora_core.toy.heads import heldout_keys

    profile, settings = result.profile, result.settings
    result.costs = run_costs(result.records)
    result.cost_summary = over_seeds(result.costs, ["model"], COST_MEASURES)
    result.curves = loss_curves(result.records)
    scorer = evaluator.alignment_scorer
    if scorer is not None:
        result.alignment = alignment_scores(scorer, result.images, result.sets)
        result.alignment_summary = alignment_summary(result.alignment, scorer.metric, scorer.backbone,
                                                     evaluator.n_resamples)
        result.trust = trust_check(scorer, result.sets[CONCRETE], ABSTRACT_IDEAS[:settings.n_abstract],
                                   subject_set(settings.subject_set).vendor, profile.resolution,
                                   set(heldout_keys(data_dir())))
    backbone = get_backbone(profile.feature_backbone)
    refs = reference_images(settings.subject_set, settings.n_reference, profile.resolution, backbone, evaluator.cache)
    result.memorisation = measure_memorisation(result.images, result.sets, [BASE, *result.models], refs, backbone,
                                               evaluator.cache, settings.n_cells)
    result.unavailable = dict(evaluator.unavailable)
    return result


def read_rank_memorisation(result: RankResult) -> RankResult:
    """Chapter 8's facts: the set-up (:func:`setup_facts`), costs (:func:`cost_facts`), prompts
    (:func:`prompt_facts`), copying (:func:`memorisation_facts`) and the finding box's ``found_*``.
    The facts chapter 9 reads are ``value [low, high]`` texts for rank ``rank_low`` against
    ``rank_high``: ``final_loss_gap``, ``val_loss_gap`` (low minus high), ``train_time_ratio``,
    ``file_size_ratio`` (high over low), ``alignment_gap_concrete`` (low minus high),
    ``alignment_gap_groups`` (concrete minus abstract at the low rank), ``copy_share_gap_rank``
    (high minus low), ``copy_share_gap_full`` (full fine-tune minus the low rank); and the trust
    verdicts ``standin_concrete_trust``, ``standin_abstract_trust``."""
    from lora_core.experiments.evaluate import reported_table, unavailable_text

    low, high = min(result.settings.ranks), max(result.settings.ranks)
    result.add_facts(rank_low=low, rank_high=high, missing_measures=unavailable_text(result.unavailable),
                     **setup_facts(result), **cost_facts(result.costs, low, high),
                     **prompt_facts(result.alignment, result.trust, low, high),
                     **memorisation_facts(result.memorisation, low, high))
    reported = reported_table("S5")
    result.add_facts(**reported_facts(reported))
    result.s5_costs = s5_cost_table(result.cost_summary, result.settings.ranks, reported)
    result.s5_alignment = s5_alignment_table(result.alignment_summary, result.settings.ranks, reported)
    result.prediction = predicted_cost(result.profile, result.settings, result.facts["n_train"],
                                       result.facts["n_held_out"])
    result.add_facts(predicted_seconds=f"{result.prediction['seconds'].sum():.0f}")
    result.add_facts(**found_facts(result.facts))
    return result


def found_facts(facts: dict[str, Any]) -> dict[str, str]:
    """The finding box's sentences ``found_cost``, ``found_prompts``, ``found_memorisation``."""
    low, high = facts["rank_low"], facts["rank_high"]
    prompts = (f"AlignScore (stand-in), rank {low} minus {high} on concrete prompts {facts['alignment_gap_concrete']}; "
               f"concrete minus abstract at rank {low} {facts['alignment_gap_groups']} (the stand-in is "
               f"{facts['standin_abstract_trust']} on abstract prompts, by its choices on real images).")
    if facts["alignment_gap_concrete"] == NOT_MEASURED:
        prompts = f"Prompt alignment was not measured in this build ({facts['missing_measures']})."
    return {"found_cost": (f"Rank {low} against rank {high}, over {facts['n_seeds']} seeds: final training loss, "
                           f"{low} minus {high}, {facts['final_loss_gap']}; training time, {high} over {low}, "
                           f"{facts['train_time_ratio']}; file size {facts['file_size_ratio']}x. Runs whose loss ended "
                           f"at least twice where it started: {facts['diverged_runs']}."),
            "found_prompts": prompts,
            "found_memorisation": (f"Memorisation: {facts['rank_memorisation']}; the full fine-tune minus rank {low}: "
                                   f"{facts['copy_share_gap_full']} of generations.")}


def setup_facts(result: RankResult) -> dict[str, Any]:
    """The set, the recipe as the profile scales it, and the prompt sets' sizes."""
    from lora_core.experiments.prompt_groups import set_keys, subject_set

    profile, settings = result.profile, result.settings
    first = next(iter(result.records.values())).summary
    scale = lr_scale(profile)
    return {"set_name": settings.subject_set, "vendor": subject_set(settings.subject_set).vendor,
            "n_train": first["train_images"], "n_held_out": len(set_keys(settings.subject_set, "heldout")),
            "ranks": " and ".join(str(r) for r in settings.ranks), "n_seeds": len(seeds_of(profile, settings)),
            "full_seeds": settings.full_seeds, "steps": steps_text(profile, settings, first["train_images"]),
            "learning_rate": f"{S5_LEARNING_RATE * scale:g}", "lr_scale": f"{scale:g}",
            "batch": settings.batch_size or profile.batch_size, "targets": ", ".join(S5_TARGETS),
            "n_concrete": len(result.sets[CONCRETE]), "n_abstract": len(result.sets[ABSTRACT]),
            "n_memorisation": len(result.sets[TRAINING]), "feature_backbone": profile.feature_backbone,
            "example_concrete": result.sets[CONCRETE].prompts[0],
            "example_abstract": result.sets[ABSTRACT].prompts[0]}


def cost_facts(costs: pd.DataFrame, low: int, high: int) -> dict[str, Any]:
    """Paired-by-seed gaps between the two ranks (``value [95% interval]``) and the exact ratios."""
    low_label, high_label = model_label(low), model_label(high)
    measured = costs.dropna(subset=["final_val_loss"])
    per_rank = costs.groupby("model")[["trainable_params", "state_memory_mb"]].mean()
    params = per_rank["trainable_params"]
    return {"final_loss_gap": result_text(paired_gap(costs, "final_loss", low_label, high_label)),
            "diverged_runs": diverged_text(costs),
            "val_loss_gap": (result_text(paired_gap(measured, "final_val_loss", low_label, high_label))
                             if {low_label, high_label} <= set(measured["model"]) else NOT_MEASURED),
            "train_time_ratio": result_text(paired_gap(costs, "train_time_s", high_label, low_label, ratio=True)),
            "file_size_ratio": result_text(paired_gap(costs, "file_mb", high_label, low_label, ratio=True)),
            "params_ratio": f"{params[high_label] / params[low_label]:.2f}",
            "state_memory_low": f"{per_rank.loc[low_label, 'state_memory_mb']:.1f}",
            "state_memory_high": f"{per_rank.loc[high_label, 'state_memory_mb']:.1f}"}


def prompt_facts(alignment: pd.DataFrame, trust: pd.DataFrame, low: int, high: int) -> dict[str, str]:
    """Alignment gaps (``value [95% interval]``, paired by seed) and the stand-in's trust verdicts
    and top-1 accuracies on its held-out subjects, or :data:`NOT_MEASURED`."""
    keys = ("alignment_gap_concrete", "alignment_gap_groups", "standin_concrete_trust", "standin_abstract_trust",
            "standin_concrete_top1", "standin_abstract_top1")
    if alignment.empty:
        return dict.fromkeys(keys, NOT_MEASURED)
    facts = {"alignment_gap_concrete": result_text(paired_gap(seed_means(alignment, CONCRETE), "value",
                                                              model_label(low), model_label(high))),
             "alignment_gap_groups": result_text(group_gap(alignment, model_label(low)))}
    held = trust[trust["real images"] == "stand-in held-out subjects"].set_index("group")
    for group in (CONCRETE, ABSTRACT):
        row = held.loc[group]
        facts[f"standin_{group}_trust"] = row["verdict"]
        facts[f"standin_{group}_top1"] = (f"{row['top-1 hits']} of {row['n']} (chance {row['chance']:.2f})"
                                          if row["n"] else NOT_MEASURED)
    return facts


def share_text(share) -> str:
    """``"3.3% [1.1%, 9.3%] (2 of 60)"``."""
    return f"{share.share:.1%} [{share.ci_low:.1%}, {share.ci_high:.1%}] ({share.count} of {share.n})"


def memorisation_facts(found: Memorisation, low: int, high: int) -> dict[str, str]:
    """Copy shares per model (training captions, features), the gaps chapter 9 reads (Newcombe
    intervals), the rank verdict, C_T per model and how the pixel check agrees with the features."""
    from lora_core.experiments.copying import memorisation_verdict, share_difference
    from lora_core.experiments.evaluate import ci_text

    measure = "features, training captions"
    shares = {model: by_measure[measure] for model, by_measure in found.shares.items()}
    low_share, high_share = shares[model_label(low)], shares[model_label(high)]
    flags = found.generations[found.generations["model"] != BASE]
    both = int((flags["feature copy"] & flags["pixel copy"]).sum())
    features_only, pixels_only = int(flags["feature copy"].sum()) - both, int(flags["pixel copy"].sum()) - both
    return {"copy_threshold": f"{found.threshold:.4f}",
            **{f"share_{key}": share_text(shares[model]) for key, model in
               (("low", model_label(low)), ("high", model_label(high)), ("full", FULL), ("base", BASE))},
            "copy_share_gap_rank": ci_text(*share_difference(high_share, low_share)),
            "copy_share_gap_full": ci_text(*share_difference(shares[FULL], low_share)),
            "rank_memorisation": memorisation_verdict(low_share, high_share, low, high),
            "c_t": "; ".join(f"{row.model} {row.C_T:.2f}" for row in found.tests.itertuples()),
            "pixel_agreement": (f"{both} generations are copies by both measures, {features_only} by the features only "
                                f"and {pixels_only} by the pixels only "
                                f"(of {len(flags)} training-caption generations of the trained models)")}


def reported_facts(reported: pd.DataFrame) -> dict[str, str]:
    """S5's numbers the prose quotes, from ``reported_tables.csv``: CLIP means per rank and prompt
    group, and the cited memorised shares.

    >>> from lora_core.experiments.evaluate import reported_table
    >>> facts = reported_facts(reported_table("S5"))
    >>> facts["s5_clip_16_normal"], facts["s5_memorised_full"]
    ('29.26', '46.89%')
    """
    value = reported.set_index(["setting", "metric"])["value"]
    facts = {f"s5_clip_{rank}_{group}": f"{value[(f'rank{rank}_{group}', 'CLIP_mean')]:.2f}"
             for rank in S5_RANKS for group in ("normal", "abstract")}
    facts.update({f"s5_memorised_{who}": f"{value[(setting, 'memorised_share')]:.2%}".replace(".00%", "%")
                  for who, setting in (("high", "rank_high"), ("low", "rank_low"), ("full", "full_finetune"))})
    return facts
