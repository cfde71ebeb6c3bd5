"""Chapter 7: LoRA against textual inversion on equal terms, and a blind study kit (study S4).

S4 trained a LoRA (10 epochs, lora_dropout 0.1) and a textual inversion (15 epochs) on 115
landmark images with a trigger token, compared them by validation loss and speed (LoRA 9.3 s/it,
TI 7.3 s/it, but only TI had cached latents) and ran a blind study with 50 participants. Here:

1. **Equal terms.** Both methods train on the ``landmarks`` subject set (kohya captions with the
   set's trigger word; centre crop and Lanczos resize by ``lora_core.images.prepare_image``) with
   the same optimisations: cached latents, the same attention kernel (sdpa), the same batch and
   precision. A fixed validation folder (held-out images, never scored) gives the deterministic
   validation loss at every epoch end. Side-by-side timing runs measure what caching is worth.
2. **Measures with intervals** on held-out subjects: the style classifier, subject
   recognisability (the emoji-subcategory classifier: S4's third question, measured) and the
   prompt-alignment stand-in (not CLIP).
3. **The study kit** of ``lora_core.user_study`` built from this chapter's own images (the true
   held-out images of five subjects, LoRA's and TI's generations of them) into the folder the
   built book serves (``<executed_dir>/_extra/user-study``, see ``_config.yml``).
4. **What S4's numbers support** (``lora_core.user_study.s4``): its shares as 50 participants, a
   labelled SIMULATED panel, the power table, and which of its three claims its design could establish.

    result = run_lora_vs_ti("tiny")
    result.best; result.ratios; result.aggregated; result.facts["found_overfit"]

>>> scaled_batch_size(115, 10, 150)   # tiny: 10 epochs of 115 images in about 150 steps
8
>>> [chapter_settings(get_profile(name)).epochs("textual_inversion") for name in ("smoke", "tiny", "sd15")]
[2, 15, 15]
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import (S1_METHOD_LR, EvalSet, config_table, data_dir, lr_scale, quiet_libraries,
                                          repo_relative, training_seeds)
from lora_core.experiments.run_logs import best_epochs, epoch_table, median_seconds_per_step, speed_ratios
from lora_core.experiments.subject_sets import (HeldOutPlan, held_out_plan, set_folder, subject_eval_set,
                                                validation_folder)
from lora_core.plots import Sheet
from lora_core.profiles import Profile, get_profile
from lora_core.train import TrainConfig

METHODS = ("lora", "textual_inversion")
BASE, TRUTH = "base", "true image"
METHOD_NAMES = {"lora": "LoRA", "textual_inversion": "TI", BASE: "base (no adapter)", TRUTH: "true held-out image"}
KIT_ROLES = {"lora": "lora", "textual_inversion": "ti"}     # chapter method -> the kit's folder name
KIT_FOLDER = Path("_extra") / "user-study"   # under executed_dir; _config.yml serves <executed_dir>/_extra
KIT_LINK = "../../user-study/index.html"     # from a chapter page (book/notebooks/<name>.html) to the kit
# The three timing runs of one round: (method, cached latents). S4 compared the second with the third.
TIMING_VARIANTS = {"LoRA, cached latents": ("lora", True),
                   "LoRA, encoding every step (S4's LoRA)": ("lora", False),
                   "TI, cached latents (S4's TI)": ("textual_inversion", True)}
RATIOS = {"caching": ("LoRA, encoding every step (S4's LoRA)", "LoRA, cached latents"),
          "equal_terms": ("LoRA, cached latents", "TI, cached latents (S4's TI)"),
          "as_s4": ("LoRA, encoding every step (S4's LoRA)", "TI, cached latents (S4's TI)")}
RATIO_NAMES = {"caching": "LoRA without / with cached latents (what caching saves)",
               "equal_terms": "LoRA / TI, both with cached latents (equal terms)",
               "as_s4": "LoRA without cached latents / TI with them (S4's comparison)"}
MEASURES = ("p_target_style", "target_style_rate", "subject_group_p", "subject_group_accuracy", "alignment")
MEASURE_ROLES = {"p_target_style": "style", "target_style_rate": "style", "subject_group_p": "subject recognisable",
                 "subject_group_accuracy": "subject recognisable", "alignment": "prompt alignment (stand-in, not CLIP)"}


@dataclass(frozen=True)
class EqualTermsSettings(Config):
    subject_set: str = option("landmarks", "the subject set both methods train on (lora_core.world.SUBJECT_SETS)")
    lora_epochs: int = option(10, "LoRA epochs over the training set (S4: 10)")
    ti_epochs: int = option(15, "textual-inversion epochs over the training set (S4: 15)")
    lora_dropout: float = option(0.1, "LoRA dropout (S4: lora_dropout 0.1)")
    batch_size: int = option(0, "images per step, the same for both methods; 0: scaled_batch_size's rule")
    n_validation: int = option(16, "held-out images in the fixed validation folder (never scored; S4: about 14)")
    n_eval: int = option(0, "held-out subjects generated by every run and scored; 0: the profile's n_eval_images "
                            "(at most the held-out subjects the validation folder leaves)")
    n_seeds: int = option(0, "training seeds of each method, and rounds of timing runs; 0: the profile's n_seeds")
    n_kit_subjects: int = option(5, "subjects in the study kit (S4: 5 landmarks, 15 images)")
    n_attention: int = option(2, "attention-check sets added to the study kit")
    timing_steps: int = option(12, "optimizer steps of each side-by-side timing run")
    n_sheet_rows: int = option(5, "subjects in the sample sheet (the kit's subjects first)")

    def __post_init__(self) -> None:
        for name in ("lora_epochs", "ti_epochs", "n_validation", "n_kit_subjects", "timing_steps", "n_sheet_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"EqualTermsSettings: {name} must be >= 1, got {getattr(self, name)}")
        if self.timing_steps < 2:
            raise ValueError(f"EqualTermsSettings: timing_steps must be >= 2 (the first step is warm-up), "
                             f"got {self.timing_steps}")
        if min(self.batch_size, self.n_eval, self.n_seeds, self.n_attention) < 0:
            raise ValueError("EqualTermsSettings: batch_size, n_eval, n_seeds and n_attention must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"EqualTermsSettings: lora_dropout must be in [0, 1), got {self.lora_dropout}")

    def epochs(self, method: str) -> int:
        if method not in METHODS:
            raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
        return self.lora_epochs if method == "lora" else self.ti_epochs

    def seeds(self, profile: Profile) -> list[int]:
        """Training seeds ``0..n_seeds-1``, or the profile's."""
        return list(range(self.n_seeds)) if self.n_seeds else training_seeds(profile)


# smoke: seconds (one seed, the fewest epochs that still show a best epoch); tiny: S4's epochs,
# the batch from the profile's step budget, within 6 minutes on 2 cores; sd15: S4's own settings
# (batch 1, about 14 of 115 images for validation).
EQUAL_TERMS = {"smoke": EqualTermsSettings(lora_epochs=1, ti_epochs=2, n_validation=4, n_seeds=1, timing_steps=3,
                                            n_sheet_rows=3),
               "tiny": EqualTermsSettings(),
               "sd15": EqualTermsSettings(batch_size=1, n_validation=14, timing_steps=50)}


def chapter_settings(profile: Profile, **overrides) -> EqualTermsSettings:
    """The profile's settings with ``overrides`` whose value is not 0/None/empty."""
    given = {key: value for key, value in overrides.items() if value not in (0, None, "")}
    return EQUAL_TERMS[profile.name].replace(**given) if given else EQUAL_TERMS[profile.name]


def scaled_batch_size(n_train: int, epochs: int, train_steps: int) -> int:
    """The rule that scales S4's epochs to a profile: keep the epochs and take the smallest batch
    whose ``train_steps`` steps (what one style LoRA of the profile trains) see LoRA's ``epochs``
    over ``n_train`` images: ``ceil(n_train * epochs / train_steps)``, at most ``n_train``.

    >>> scaled_batch_size(115, 10, 1000), scaled_batch_size(115, 2, 4), scaled_batch_size(10, 1, 1)
    (2, 58, 10)
    """
    if min(n_train, epochs, train_steps) < 1:
        raise ValueError(f"scaled_batch_size: need positive counts, got n_train={n_train}, epochs={epochs}, "
                         f"train_steps={train_steps}")
    return min(n_train, max(1, math.ceil(n_train * epochs / train_steps)))


# ---- configs -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChapterPlan:
    """The chapter's runs and data for one profile, built without training anything."""

    profile: Profile
    settings: EqualTermsSettings
    n_train: int
    n_heldout: int
    batch_size: int
    held_out: HeldOutPlan
    validation: str
    configs: dict[tuple[str, int], TrainConfig]
    timing: dict[tuple[str, int], TrainConfig]

    @property
    def steps_per_epoch(self) -> int:
        return self.n_train // self.batch_size


def equal_terms_config(profile: Profile, settings: EqualTermsSettings, method: str, seed: int, batch_size: int,
                       validation: str) -> TrainConfig:
    """One run on equal terms: the subject set's training images with their trigger captions,
    cached latents, sdpa attention, the shared batch and precision, S4's epochs; LoRA at the
    profile's rank and alpha with S4's dropout, TI as one vector that replaces the trigger word.
    Learning rates as chapter 3 (S1's 1e-4 and 5e-3 times the profile's lr scale): S4 gives none."""
    from lora_core.data import DataConfig
    from lora_core.world import SUBJECT_SETS

    shared = {"method": method, "data": DataConfig(folder=repo_relative(set_folder(settings.subject_set, "train")),
                                                   resolution=profile.resolution),
              "validation_folder": validation, "base_model": profile.base_model, "seed": seed,
              "epochs": settings.epochs(method), "batch_size": batch_size, "mixed_precision": profile.mixed_precision,
              "cache_latents": True, "attention": "sdpa"}
    if method == "lora":
        options = {"rank": profile.lora_rank, "alpha": profile.lora_alpha, "dropout": settings.lora_dropout}
        return TrainConfig(options=options, learning_rate=profile.learning_rate, **shared)
    options = {"placeholder_token": f"<{settings.subject_set}-style>",
               "trigger_word": SUBJECT_SETS[settings.subject_set].trigger}
    return TrainConfig(options=options, learning_rate=S1_METHOD_LR[method] * lr_scale(profile), **shared)


def timing_configs(configs: Mapping[tuple[str, int], TrainConfig], steps: int,
                   rounds: Sequence[int]) -> dict[tuple[str, int], TrainConfig]:
    """``{(variant, round): config}``: per round, the three :data:`TIMING_VARIANTS` one after the
    other (so they share the machine's state), each ``steps`` steps without validation, seeded by the round."""
    first_seed = min(seed for _, seed in configs)
    return {(variant, r): configs[(method, first_seed)].replace(epochs=0, max_train_steps=steps, validation_folder="",
                                                               seed=r, cache_latents=cached)
            for r in rounds for variant, (method, cached) in TIMING_VARIANTS.items()}


def plan_chapter(profile: Profile, settings: EqualTermsSettings, write: bool = True) -> ChapterPlan:
    """Every run of the chapter for ``profile``; ``write=False`` names the validation folder
    without writing it (to show another profile's configs)."""
    train, heldout = set_folder(settings.subject_set, "train"), set_folder(settings.subject_set, "heldout")
    n_train = len(list(train.glob("*.png")))
    keys = [path.stem for path in heldout.glob("*.png")]
    # the profile's n_eval_images, or every held-out subject the validation folder leaves (sd15: 89, not 100)
    n_eval = settings.n_eval or min(profile.n_eval_images, len(keys) - settings.n_validation)
    held_out = held_out_plan(keys, n_eval, settings.n_validation, settings.n_kit_subjects)
    validation = repo_relative(validation_folder(heldout, held_out.validation_keys,
                                                 data_dir() / "cache" / "lora_vs_ti", write))
    batch = settings.batch_size or scaled_batch_size(n_train, settings.lora_epochs, profile.train_steps)
    configs = {(method, seed): equal_terms_config(profile, settings, method, seed, batch, validation)
               for seed in settings.seeds(profile) for method in METHODS}
    return ChapterPlan(profile, settings, n_train, len(keys), batch, held_out, validation, configs,
                       timing_configs(configs, settings.timing_steps, settings.seeds(profile)))


# ---- reading the logs: the best epoch, the timing runs -------------------------------------------

def overfit_facts(best: pd.DataFrame) -> dict[str, str]:
    """For each method: its best epochs over seeds (``<method>_best_epochs``) and in how many
    seeds the validation loss rose after the best (``<method>_rises``); ``val_loss_gap``
    (:func:`best_val_loss_gap`); ``found_overfit`` reads
    them against S4 (TI best at epoch 8 of 15 and rising after it; LoRA best at its last epoch).

    >>> best = pd.DataFrame({"method": ["lora", "lora", "textual_inversion", "textual_inversion"], "seed": [0, 1, 0, 1],
    ...                      "epochs": [10, 10, 15, 15], "best_epoch": [10, 9, 8, 15],
    ...                      "rises_after_best": [False, True, True, False], "best_val_loss": [0.06, 0.05, 0.07, 0.08]})
    >>> facts = overfit_facts(best)
    >>> facts["textual_inversion_best_epochs"], facts["textual_inversion_rises"]
    ('8, 15 of 15', '1 of 2')
    """
    facts = {}
    for method in METHODS:
        runs = best[best["method"] == method]
        epochs = ", ".join(str(e) for e in runs["best_epoch"])
        facts[f"{method}_best_epochs"] = f"{epochs} of {runs['epochs'].max()}" if len(runs) else "not trained"
        facts[f"{method}_rises"] = f"{int(runs['rises_after_best'].sum())} of {len(runs)}"
    facts["val_loss_gap"] = best_val_loss_gap(best)
    facts["found_overfit"] = (f"TI's validation loss rose after its best epoch in {facts['textual_inversion_rises']} "
                              f"seeds (best at epoch {facts['textual_inversion_best_epochs']}; S4: 8 of 15, then "
                              f"rising); LoRA's in {facts['lora_rises']} (best at epoch {facts['lora_best_epochs']}; "
                              "S4: 10 of 10).")
    return facts


def best_val_loss_gap(best: pd.DataFrame) -> str:
    """LoRA's best validation loss minus TI's, paired by seed, as ``value [low, high]`` (a 95%
    t-interval over seeds; the value alone for one seed), the form chapter 9 reads.

    >>> best = pd.DataFrame({"method": ["lora", "lora", "textual_inversion", "textual_inversion"], "seed": [0, 1, 0, 1],
    ...                      "best_val_loss": [0.05, 0.06, 0.07, 0.07]})
    >>> best_val_loss_gap(best)
    '-0.015 [-0.0785, 0.0485]'
    """
    from lora_core.experiments.rank_costs import paired_gap, result_text

    if set(best["method"]) < set(METHODS):
        return "not measured"
    return result_text(paired_gap(best.rename(columns={"method": "model"}), "best_val_loss", *METHODS))


def cost_facts(ratios: pd.DataFrame, s4_ratio: float) -> dict[str, Any]:
    """How much of the LoRA/TI gap of S4's comparison (LoRA without cached latents against TI
    with them) is the caching, here: ``log(caching) / log(as_s4)`` (the gap is their product
    with the equal-terms ratio); and ``found_cost``.

    >>> ratios = pd.DataFrame({"ratio": ["caching", "equal_terms", "as_s4"], "value": [1.2, 0.9, 1.08],
    ...                        "ci_low": [1.1, 0.8, 1.0], "ci_high": [1.3, 1.0, 1.2]})
    >>> cost_facts(ratios, 9.3 / 7.3)["caching_share"]
    'all of it: with both cached, LoRA takes 0.9x the time per step of TI'
    """
    value = ratios.set_index("ratio")["value"]
    caching, equal, as_s4, s4_ratio = (float(v) for v in (value["caching"], value["equal_terms"], value["as_s4"],
                                                          s4_ratio))
    if as_s4 <= 1.0:
        share = f"none: there is no gap to explain, LoRA without caching took {as_s4:.2f}x TI's time per step"
    elif equal <= 1.0:
        share = f"all of it: with both cached, LoRA takes {equal:.2g}x the time per step of TI"
    elif caching <= 1.0:
        share = f"none of it: caching did not make LoRA faster ({caching:.2f}x)"
    else:
        share = f"{math.log(caching) / math.log(as_s4):.0%} of it (on a log scale)"
    facts = {"ratio_caching": caching, "ratio_equal_terms": equal, "ratio_as_s4": as_s4, "s4_ratio": s4_ratio,
             "caching_share": share}
    facts["found_cost"] = (f"Timed side by side, LoRA without cached latents against TI with them (S4's comparison, "
                           f"S4: {s4_ratio:.2f}x) takes {as_s4:.2f}x the time per step; caching explains {share}.")
    return facts


def timing_table(records: Mapping[tuple[str, int], Any]) -> pd.DataFrame:
    """One row per timing run (``{(variant, round): record}``): its method, whether latents were
    cached, steps, and the median s/it after the first step (``run_logs.median_seconds_per_step``)."""
    rows = []
    for (variant, round_), record in records.items():
        method, cached = TIMING_VARIANTS[variant]
        rows.append({"variant": variant, "round": round_, "method": method, "cached_latents": cached,
                     "steps": record.summary["steps"], "s_per_it": median_seconds_per_step(record.metrics())})
    return pd.DataFrame(rows)


def cost_ratios(timing: pd.DataFrame) -> pd.DataFrame:
    """The :data:`RATIOS` of median s/it within each round, mean over rounds with a 95% t-interval.

    >>> timing = pd.DataFrame({"variant": list(TIMING_VARIANTS) * 2, "round": [0, 0, 0, 1, 1, 1],
    ...                        "s_per_it": [1.0, 1.5, 0.8, 1.0, 1.5, 0.8]})
    >>> cost_ratios(timing).set_index("ratio")["value"].round(4).to_dict()
    {'caching': 1.5, 'equal_terms': 1.25, 'as_s4': 1.875}
    """
    ratios = speed_ratios(timing, RATIOS)
    return ratios.assign(what=ratios["ratio"].map(RATIO_NAMES))


# ---- images and measures ------------------------------------------------------------------------

def subcategory_evaluator(profile: Profile):
    """The shared Evaluator with the emoji-subcategory head as its subject classifier (every
    landmark shares one category, Travel & Places; subcategories tell a building from a bus)."""
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.metrics.style import SUBJECT_GROUP_PATHS, SubjectGroupClassifier

    evaluator = Evaluator(profile)
    path = SUBJECT_GROUP_PATHS["subcategory"]
    if path.is_file():
        evaluator.subject_classifier = SubjectGroupClassifier(path, cache=evaluator.cache)
    else:
        evaluator.subject_classifier = None
        evaluator.unavailable["subject"] = f"{path} is missing (python -m lora_core.toy train-heads)"
    return evaluator


def generate_runs(base, records: Mapping[tuple[str, int], Any], eval_set: EvalSet,
                  profile: Profile) -> dict[tuple[str, int | None], torch.Tensor]:
    """uint8 images of ``eval_set`` by the base and by every run, loaded as a user loads its file;
    cached by content (``common.generate_eval_images``)."""
    import contextlib

    from lora_core.experiments.common import generate_eval_images
    from lora_core.experiments.methods import adapted

    images = {}
    runs = [(BASE, None, None)] + [(method, seed, record) for (method, seed), record in records.items()]
    for method, seed, record in runs:
        context = adapted(base, method, record) if record else contextlib.nullcontext((base, None, None))
        with quiet_libraries(), context as (model, lora_file, prompt_fn):
            prompts = [prompt_fn(p) for p in eval_set.prompts] if prompt_fn else list(eval_set.prompts)
            images[(method, seed)] = generate_eval_images(model, prompts, eval_set.seeds, profile, lora_file)
    return images


def score_images(evaluator, images: Mapping[tuple[str, int | None], torch.Tensor], eval_set: EvalSet,
                 vendor: str) -> pd.DataFrame:
    """:data:`MEASURES` of every image set (``(method, seed)`` keys; seed None for the base and
    the true images) against the set's vendor style: one tidy table."""
    tables = [evaluator.evaluate(generated, eval_set, vendor, {"method": method, "seed": seed}, measures=MEASURES)
              for (method, seed), generated in images.items()]
    return pd.concat(tables, ignore_index=True)


def compare_methods(aggregated: pd.DataFrame, measure: str) -> str:
    """Which method scores higher on ``measure`` by non-overlapping 95% intervals over seeds.

    >>> rows = pd.DataFrame({"method": ["lora", "textual_inversion"], "measure": ["m", "m"], "value": [0.6, 0.3],
    ...                      "ci_low": [0.5, 0.2], "ci_high": [0.7, 0.45]})
    >>> compare_methods(rows, "m"), compare_methods(rows, "other")
    ('LoRA higher', 'not measured in this build')
    """
    rows = aggregated[aggregated["measure"] == measure].set_index("method")
    if not set(METHODS) <= set(rows.index):
        return "not measured in this build"
    lora, ti = rows.loc["lora"], rows.loc["textual_inversion"]
    if lora["ci_low"] > ti["ci_high"]:
        return "LoRA higher"
    if ti["ci_low"] > lora["ci_high"]:
        return "TI higher"
    return "no clear difference (the intervals overlap)"


def measure_facts(aggregated: pd.DataFrame) -> dict[str, str]:
    """``<method>_<measure>`` as ``value [low, high]``, ``compare_<measure>`` and ``found_measures``."""
    from lora_core.experiments.evaluate import ci_text

    facts = {}
    for measure in MEASURES:
        rows = aggregated[aggregated["measure"] == measure].set_index("method")
        for method in (*METHODS, BASE, TRUTH):
            facts[f"{method}_{measure}"] = (ci_text(*rows.loc[method, ["value", "ci_low", "ci_high"]])
                                            if method in rows.index else "not measured")
        facts[f"compare_{measure}"] = compare_methods(aggregated, measure)
    facts["found_measures"] = (f"On held-out subjects, P(target style): {facts['compare_p_target_style']}; "
                               f"subject recognised (subcategory): {facts['compare_subject_group_accuracy']}; "
                               f"prompt alignment (stand-in): {facts['compare_alignment']}.")
    return facts


# ---- the study kit and what S4's numbers support -----------------------------------------------

def write_kit(images: Mapping[str, torch.Tensor], keys: Sequence[str], out: Path, n_attention: int) -> Path:
    """``lora_core.user_study.build_kit`` of ``images`` (kit role -> uint8 images, one per key)
    staged as ``<role>/<key>.png`` in a temporary folder; the kit goes to ``out``."""
    from PIL import Image

    from lora_core.user_study.kit import build_kit

    with tempfile.TemporaryDirectory(prefix="lora-vs-ti-kit-") as staging:
        for role, role_images in images.items():
            (Path(staging) / role).mkdir()
            for key, image in zip(keys, role_images):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(Path(staging) / role / f"{key}.png")
        return build_kit(staging, out, n_attention=n_attention)


def study_facts(study) -> dict[str, Any]:
    """From a ``user_study.s4.S4Reading``: ``n_established``, ``established_claims``, the claims
    not established with what they would need (``unestablished``), the SIMULATED panel's summary
    and ``found_s4``."""
    verdicts = study.verdicts
    established = verdicts[verdicts["established"]]
    names = "; ".join(established["S4's claim"]) or "none"
    missing = verdicts[~verdicts["established"]]
    unestablished = "; ".join(f"{claim} ({'needs ' + need if need != '-' else 'not above chance in both readings'})"
                              for claim, need in zip(missing["S4's claim"], missing["what the claim would need"]))
    return {"n_established": len(established), "established_claims": names, "unestablished": unestablished,
            "simulated_summary": study.simulated.summary(),
            "found_s4": (f"Read as 50 participants, S4's study could establish {len(established)} of its "
                         f"{len(verdicts)} claims ({names})" + (f"; not: {unestablished}." if unestablished else "."))}


# ---- the chapter ---------------------------------------------------------------------------------

@dataclass(kw_only=True)
class LoraVsTiResult(ChapterResult):
    """Runs, logs, images, scores, the kit and S4's study of chapter 7 (facts: :func:`read_lora_vs_ti`)."""

    plan: ChapterPlan
    eval_set: EvalSet
    records: dict[tuple[str, int], Any]
    timing_records: dict[tuple[str, int], Any]
    images: dict[tuple[str, int | None], torch.Tensor] = field(default_factory=dict)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: pd.DataFrame = field(default_factory=pd.DataFrame)
    timing: pd.DataFrame = field(default_factory=pd.DataFrame)
    ratios: pd.DataFrame = field(default_factory=pd.DataFrame)
    kit: Path | None = None
    study: Any = None  # user_study.s4.S4Reading
    seconds: dict[str, float] = field(default_factory=dict)

    def config_table(self, profile_name: str | None = None) -> pd.DataFrame:
        """``common.config_table`` of this build's runs, or of the runs ``profile_name`` would train
        (built, not trained), labelled ``<method> seed <seed>``."""
        plan = self.plan
        if profile_name is not None:
            other = get_profile(profile_name)
            plan = plan_chapter(other, chapter_settings(other, subject_set=plan.settings.subject_set), write=False)
        table = config_table({f"{method} seed {seed}": config for (method, seed), config in plan.configs.items()})
        epochs = [config.epochs for config in plan.configs.values()]
        return table.assign(steps=[e * plan.steps_per_epoch for e in epochs], epochs=epochs)

    def equal_terms_table(self) -> pd.DataFrame:
        """What each method trains with (from the configs of the first seed): the equal terms."""
        from lora_core.adapters import get_adapter

        rows = []
        for (method, seed), config in self.plan.configs.items():
            if seed == min(s for _, s in self.plan.configs):
                trains_text = get_adapter(method)(config).trains_text_encoder
                rows.append({"method": METHOD_NAMES[method], "epochs": config.epochs, "batch": config.batch_size,
                             "steps": config.epochs * self.plan.steps_per_epoch, "lr": config.learning_rate,
                             "cached latents": config.cache_latents, "attention": config.attention,
                             "precision": config.mixed_precision,
                             "cached text embeddings": "no: the embedding trains" if trains_text else "yes",
                             "validation": f"{len(self.plan.held_out.validation_keys)} held-out images, every epoch"})
        return pd.DataFrame(rows)

    def epoch_curves(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(curves, marks) for ``plots.marked_line_panels``: training and validation loss per epoch
        and run in long form (``panel``, ``method``, ``seed``, ``epoch``, ``loss``), and each run's
        best validation epoch."""
        panels = {"train_loss": "training loss (mean over the epoch)",
                  "val_loss": "validation loss (fixed images, noise, timesteps)"}
        curves = self.epochs.melt(id_vars=["method", "seed", "epoch"], value_vars=list(panels), var_name="panel",
                                  value_name="loss")
        curves = curves.assign(panel=curves["panel"].map(panels), method=curves["method"].map(METHOD_NAMES))
        marks = pd.DataFrame({"panel": panels["val_loss"], "method": self.best["method"].map(METHOD_NAMES),
                              "epoch": self.best["best_epoch"], "loss": self.best["best_val_loss"]})
        return curves, marks

    def study_panel(self) -> pd.DataFrame:
        """S4's shares as 50 participants and the SIMULATED panel, per question, for ``plots.proportion_panels``."""
        reported = self.study.reported.assign(analysis="S4's shares as 50 participants")
        simulated = self.study.simulated.table.assign(analysis="SIMULATED panel (not data)")
        return pd.concat([reported, simulated], ignore_index=True)

    def best_table(self) -> pd.DataFrame:
        """:func:`run_logs.best_epochs` per run, methods by their names."""
        return self.best.assign(method=self.best["method"].map(METHOD_NAMES))

    def costs_per_run(self) -> pd.DataFrame:
        """Per run: steps, median s/it, seconds in training steps and the run's wall time (with validation)."""
        rows = [{"method": METHOD_NAMES[method], "seed": seed, "steps": record.summary["steps"],
                 "s_per_it": float(np.median([r["s_per_it"] for r in record.metrics()])),
                 "train_s": float(sum(r["s_per_it"] for r in record.metrics())),
                 "wall_time_s": record.summary["wall_time_s"]} for (method, seed), record in self.records.items()]
        return pd.DataFrame(rows)

    def timing_panel(self) -> pd.DataFrame:
        """Median s/it per timing variant, mean over rounds with a t-interval, for ``plots.interval_panels``."""
        from lora_core.metrics.stats import MetricResult, aggregate_over_seeds

        rows = []
        for variant, runs in self.timing.groupby("variant", sort=False):
            merged = aggregate_over_seeds([MetricResult("s/it", "wall clock", 1, v, v, v) for v in runs["s_per_it"]])
            rows.append({"variant": variant.replace(", ", "\n").replace(" (", "\n("), "panel": "seconds per step",
                         "value": merged.value,
                         "ci_low": merged.ci_low, "ci_high": merged.ci_high})
        return pd.DataFrame(rows)

    def measure_panels(self) -> pd.DataFrame:
        """The aggregated measures with a ``panel`` per measure, for ``plots.interval_panels``."""
        from lora_core.experiments.evaluate import measure_panels

        rows = measure_panels(self.aggregated, MEASURES)
        return rows.assign(method=rows["method"].map(METHOD_NAMES))

    def results_table(self) -> pd.DataFrame:
        """``value [95% interval]`` per measure (rows) and method (columns)."""
        from lora_core.experiments.evaluate import format_results

        table = self.aggregated.assign(method=self.aggregated["method"].map(METHOD_NAMES),
                                       asks=self.aggregated["measure"].map(MEASURE_ROLES))
        wide = format_results(table, index=["asks", "measure", "metric"], columns="method")
        return wide[[METHOD_NAMES[m] for m in (*METHODS, BASE, TRUTH) if METHOD_NAMES[m] in wide.columns]]

    def sample_sheet(self) -> Sheet:
        """The kit's subjects (then more scored ones): the true image, the base, LoRA and TI of the first seed."""
        seed = min(seed for _, seed in self.records)
        columns = [(TRUTH, None), (BASE, None)] + [(method, seed) for method in METHODS]
        cells = [(self.images[key][i], {"subject": caption.split(",")[0], "column": METHOD_NAMES[key[0]]})
                 for i, caption in enumerate(self.eval_set.captions[:self.plan.settings.n_sheet_rows])
                 for key in columns]
        return Sheet.of(cells, rows="subject", cols="column", cell_inches=1.2,
                        title=f"held-out subjects, {self.profile.name} profile, training seed {seed}")

    def beside_s4(self) -> pd.DataFrame:
        """S4's reported numbers (their data, their hardware) beside ours, per quantity and method."""
        from lora_core.experiments.evaluate import reported_table

        reported = reported_table("S4").set_index(["method", "metric"])["value"]
        mean = self.epochs.groupby(["method", "epoch"])[["train_loss", "val_loss"]].mean()
        rows = []
        for method in METHODS:
            best, last = self.best[self.best["method"] == method], mean.loc[method].index.max()
            rows += [("epochs", method, f"{reported[(method, 'epochs')]:g}", self.plan.settings.epochs(method)),
                     ("best validation epoch", method, f"{reported[(method, 'best_epoch')]:g}",
                      ", ".join(map(str, best["best_epoch"]))),
                     ("validation loss rises after the best", method, "yes" if method == "textual_inversion" else "no",
                      f"{int(best['rises_after_best'].sum())} of {len(best)} seeds"),
                     ("validation loss, epoch 1 -> 2 -> best", method,
                      " -> ".join(f"{reported[(method, m)]:g}" for m in ("val_loss_epoch_1", "val_loss_epoch_2",
                                                                        "val_loss_best") if (method, m) in reported),
                      " -> ".join([f"{mean.loc[(method, e), 'val_loss']:.4g}" for e in (1, 2) if e <= last]
                                  + [f"{best['best_val_loss'].mean():.4g}"])),
                     ("training loss, first -> last epoch", method,
                      f"{reported[(method, 'train_loss_first')]} -> {reported[(method, 'train_loss_last')]}"
                      if (method, "train_loss_first") in reported else "not reported",
                      f"{mean.loc[(method, 1), 'train_loss']:.4g} -> {mean.loc[(method, last), 'train_loss']:.4g}")]
        rows += [("s/it, LoRA without cached latents / TI with them", "both",
                  f"{self.facts['s4_ratio']:.3g}", f"{self.facts['ratio_as_s4']:.3g}"),
                 ("s/it, LoRA / TI, both with cached latents", "both", "not measured",
                  f"{self.facts['ratio_equal_terms']:.3g}")]
        table = pd.DataFrame(rows, columns=["quantity", "method", "S4 (reported: their data, their hardware)",
                                            f"ours ({self.profile.name}, mean over seeds)"])
        return table.assign(method=table["method"].map(lambda m: METHOD_NAMES.get(m, m))).astype(str)

    def cost_counts(self) -> pd.DataFrame:
        """What this build did, counted, and the seconds each part took: the tiny cost is predictable
        from these counts (steps x s/step + images x s/image)."""
        validations = len(self.epochs.dropna(subset=["val_loss"]))
        counts = {"training": f"{sum(r.summary['steps'] for r in self.records.values())} steps, {validations} "
                              f"validations of {len(self.plan.held_out.validation_keys)} images",
                  "timing runs": f"{len(self.timing_records)} runs of {self.plan.settings.timing_steps} steps",
                  "generation": f"{sum(len(v) for k, v in self.images.items() if k[0] != TRUTH)} images of "
                                f"{self.profile.inference_steps} steps",
                  "measures": f"{len(self.images)} image sets of {len(self.eval_set)}",
                  "study": f"kit of {len(self.plan.held_out.kit_keys)} subjects; S4 analyses"}
        return pd.DataFrame([{"part": part, "work": work, "seconds": self.seconds.get(part, float("nan"))}
                             for part, work in counts.items()])


def run_lora_vs_ti(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                   subject_set: str = "landmarks", n_eval: int = 0, n_seeds: int = 0,
                   executed_dir: str = "book/notebooks") -> LoraVsTiResult:
    """Chapter 7: train (or reuse) LoRA and TI on ``subject_set`` on equal terms for the profile's
    seeds (``n_seeds``, 0: the profile's), time them side by side, generate and score ``n_eval``
    held-out subjects (0: the profile's), build the study kit into ``<executed_dir>/_extra/user-study``
    (the book serves it) and read S4's study."""
    from lora_core.models import load_base
    from lora_core.paths import resolve
    from lora_core.train_pool import train_many
    from lora_core.user_study.s4 import read_s4

    settings = resolve_profile(profile)
    plan = plan_chapter(settings, chapter_settings(settings, subject_set=subject_set, n_eval=n_eval, n_seeds=n_seeds))
    base = base if base is not None else load_base(settings.base_model)
    clock = Stopwatch()
    with quiet_libraries():
        records = train_many(plan.configs, base=base, runs_root=runs_root)
        clock.lap("training")
        # one at a time: a timing run measures s/step, which a second run beside it would slow
        timing_records = train_many(plan.timing, base=base, runs_root=runs_root, processes=1)
    clock.lap("timing runs")
    result = LoraVsTiResult(settings, plan=plan, eval_set=chapter_eval_set(plan), records=records,
                            timing_records=timing_records, seconds=clock.seconds)
    result.images = generate_runs(base, records, result.eval_set, settings)
    clock.lap("generation")
    score_chapter(result)
    clock.lap("measures")
    result.kit = write_kit(kit_images(result), plan.held_out.kit_keys, resolve(executed_dir) / KIT_FOLDER,
                           plan.settings.n_attention)
    result.study = read_s4(settings.n_bootstrap)
    clock.lap("study")
    return read_lora_vs_ti(result)


@dataclass
class Stopwatch:
    """Seconds per named part of a computation, each lap from the end of the previous one."""

    seconds: dict[str, float] = field(default_factory=dict)
    last: float = field(default_factory=time.perf_counter)

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.seconds[part], self.last = now - self.last, now


def chapter_eval_set(plan: ChapterPlan) -> EvalSet:
    """The scored held-out subjects, prompted with their captions (the set's trigger phrase included)."""
    from lora_core.world import STYLE_CAPTION_TEMPLATE, SUBJECT_SETS

    subjects = SUBJECT_SETS[plan.settings.subject_set]
    suffix = STYLE_CAPTION_TEMPLATE.format(caption="", trigger=subjects.trigger)
    return subject_eval_set(set_folder(plan.settings.subject_set, "heldout"), plan.held_out.eval_keys, suffix,
                            subjects.vendor)


def score_chapter(result: LoraVsTiResult) -> None:
    """The true held-out images join the generated ones; all are scored and averaged over seeds."""
    from lora_core.experiments.evaluate import aggregate_seeds
    from lora_core.metrics.style import load_true_images

    truth = load_true_images(result.eval_set.subject_keys, set_folder(result.plan.settings.subject_set, "heldout"),
                             result.profile.resolution)
    result.images[(TRUTH, None)] = truth
    evaluator = subcategory_evaluator(result.profile)
    result.results = score_images(evaluator, result.images, result.eval_set, result.eval_set.style)
    result.aggregated = aggregate_seeds(result.results)
    result.unavailable = dict(evaluator.unavailable)


def kit_images(result: LoraVsTiResult) -> dict[str, torch.Tensor]:
    """The kit's originals (true held-out images at the profile's resolution, as the models saw
    their training images) and the first seed's LoRA and TI images of the kit's subjects."""
    n_kit, seed = len(result.plan.held_out.kit_keys), min(seed for _, seed in result.records)
    images = {"original": result.images[(TRUTH, None)][:n_kit]}
    images.update({KIT_ROLES[method]: result.images[(method, seed)][:n_kit] for method in METHODS})
    return images


def read_lora_vs_ti(result: LoraVsTiResult) -> LoraVsTiResult:
    """Chapter 7's tables and facts: the set-up, :func:`overfit_facts`, :func:`cost_facts`,
    :func:`measure_facts`, :func:`study_facts`, the kit's and the finding box's ``found_*``."""
    from lora_core.experiments.evaluate import reported_table, unavailable_text
    from lora_core.user_study.kit import load_manifest
    from lora_core.world import SUBJECT_SETS

    plan = result.plan
    result.epochs = pd.concat([epoch_table(record.metrics(), plan.steps_per_epoch).assign(method=method, seed=seed)
                               for (method, seed), record in result.records.items()], ignore_index=True)
    result.best = best_epochs(result.epochs)
    result.timing = timing_table(result.timing_records)
    result.ratios = cost_ratios(result.timing)
    s4 = reported_table("S4").set_index(["method", "metric"])["value"]
    subjects = SUBJECT_SETS[plan.settings.subject_set]
    manifest = load_manifest(result.kit)
    result.add_facts(subject_set=plan.settings.subject_set, vendor=subjects.vendor, trigger=subjects.trigger,
                     n_train=plan.n_train, n_heldout=plan.n_heldout, n_eval=len(result.eval_set),
                     n_validation=len(plan.held_out.validation_keys), n_seeds=len({s for _, s in result.records}),
                     batch_size=plan.batch_size, steps_per_epoch=plan.steps_per_epoch,
                     lora_epochs=plan.settings.lora_epochs, ti_epochs=plan.settings.ti_epochs,
                     lora_steps=plan.settings.lora_epochs * plan.steps_per_epoch,
                     ti_steps=plan.settings.ti_epochs * plan.steps_per_epoch, train_steps=result.profile.train_steps,
                     lora_dropout=plan.settings.lora_dropout, timing_steps=plan.settings.timing_steps,
                     n_rounds=len({r for _, r in result.timing_records}),
                     missing_measures=unavailable_text(result.unavailable),
                     kit_id=manifest["kit_id"], n_kit_subjects=len(plan.held_out.kit_keys),
                     n_kit_images=3 * len(plan.held_out.kit_keys), n_kit_sets=len(manifest["page"]["trials"]),
                     n_attention=plan.settings.n_attention, example_prompt=result.eval_set.prompts[0],
                     **overfit_facts(result.best),
                     **cost_facts(result.ratios, s4[("lora", "s_per_it")] / s4[("textual_inversion", "s_per_it")]),
                     **measure_facts(result.aggregated), **study_facts(result.study))
    return result
