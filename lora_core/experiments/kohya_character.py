"""Chapter 6: a character LoRA the kohya way (study S3), and S3's four tests scored by metrics.

S3 trained a character LoRA with kohya sd-scripts (:mod:`~lora_core.experiments.kohya_recipe`)
and judged four tests by eye. Here each test is generated and scored, with 95% intervals over
images and over training seeds:

1. **weight x epoch**: every epoch checkpoint at LoRA weights 0-1 (0 = the base), scored for
   character fidelity (paired to the true images of held-out members of the character; the style
   and subject classifiers), prompt following on new prompts and base preservation on unrelated
   prompts (:func:`lora_sweep.sweep_scores`, the measures ``python -m lora_core.score_lora`` gives
   any user); the best weight range from the numbers (:func:`lora_sweep.best_weight_range`)
   against S3's "0.5-0.75". A second arm trains huber loss with the snr schedule instead of l2.
2. **merge with a foreign LoRA**: chapter 1's style LoRA of another vendor (its run is shared),
   exported in the kohya layout, copied without this project's metadata and loaded back like a
   community file, active 1:1 with the character at every weight (A1111's
   ``<lora:a:w> <lora:b:w>``), scored for both.
3. **other bases**: DreamBooth fine-tunes of the base on other vendors' images, saved as
   single-file (A1111/LDM) checkpoints and loaded through the single-file path, each prompted with
   its own convention (its style phrase, the other bases' as negative prompt), CFG 7 and clip skip
   2 scaled for the profile: does the character survive the change of base?
4. **inference steps** over S3's 30-70 scaled for the profile.

    result = run_kohya_character("tiny")
    result.grid; result.facts["found_weights"]

>>> character_settings(get_profile("smoke")).other_bases
('fluent3d',)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import UNSEEN_SUBJECTS, EvalSet, data_dir, quiet_libraries, repo_relative
from lora_core.experiments.kohya_recipe import (HUBER_ARM, S3_ARM, TWIN_ARM, KohyaRecipe,
                                                character_config, epoch_files, kohya_recipe, kohya_training_folder,
                                                recipe_table)
from lora_core.experiments.kohya_tests import (NEW_SCENES, ORIGINAL, S3_BEST_STEPS, S3_INFERENCE_STEPS, TESTS,
                                               Scorer, base_conventions, character_sets, foreign_copy,
                                               scaled_guidance, scaled_steps, score_bases, score_merge, score_steps,
                                               score_weight_epoch, single_file_base, with_suffix)
from lora_core.paths import resolve
from lora_core.profiles import Profile, get_profile
from lora_core.experiments.lora_sweep import (CHARACTER, WEIGHTS, BestRange, best_weight_range, compare_ranges,
                                  indistinguishable_from_best)
from lora_core.train import TrainConfig

S3_BEST_WEIGHTS = (0.5, 0.75)
CHARACTER_MEASURE = "feature_to_target"   # character fidelity: EffNet distance to the member's true image
# test 1's figures: character fidelity (paired, classifiers), the score_lora measures
GRID_MEASURES = ("feature_to_target", "p_target_style", "subject_group_p", "fidelity_cosine", "alignment",
                 "st_lpips_to_base")
ARM_MEASURES = ("feature_to_target", "p_target_style", "alignment", "st_lpips_to_base")
TWIN_PAIR = (f"{S3_ARM}, short", f"{TWIN_ARM}, short")   # the runs that show the huber settings do nothing


@dataclass(frozen=True)
class CharacterSettings(Config):
    subject_set: str = option("person_character", "the character (lora_core.world.SUBJECT_SETS)")
    class_word: str = option("woman", "kohya class word: repeat folder '<N>_<trigger> <class>', new prompts")
    weights: tuple[float, ...] = option(WEIGHTS, "LoRA weights of tests 1 and 2 (S3's test 1), 0 = the base")
    n_seeds: int = option(0, "training seeds 0..n-1 of each loss arm; 0 = the profile's")
    heldout_seeds: int = option(1, "generation seeds per held-out member (each paired to its true image)")
    n_new_prompts: int = option(2, "new prompts with the trigger word (prompt following)")
    n_unrelated: int = option(2, "unrelated prompts without the trigger word (base preservation)")
    foreign_style: str = option("twemoji", "style set of the foreign kohya LoRA of test 2 (chapter 1's style LoRA)")
    other_bases: tuple[str, ...] = option(("fluent3d", "openmoji_black"),
                                          "style sets the other bases of test 3 are fine-tuned on")
    base_steps_share: float = option(0.15, "each other base: DreamBooth for this share of the profile's train_steps")
    test_weight: float = option(0.75, "LoRA weight of tests 3 and 4 (the top of S3's best range)")
    strip_members: int = option(2, "held-out members in the picture strips")

    def __post_init__(self) -> None:
        if 0.0 not in self.weights or len(self.weights) < 2 or any(not 0.0 <= w <= 1.0 for w in self.weights):
            raise ValueError(f"CharacterSettings: weights must include 0 and another weight in [0, 1], "
                             f"got {self.weights}")
        if not 0.0 < self.test_weight <= 1.0 or not 0.0 < self.base_steps_share <= 1.0:
            raise ValueError(f"CharacterSettings: test_weight and base_steps_share must be in (0, 1], got "
                             f"{self.test_weight} and {self.base_steps_share}")
        counts = ("n_seeds", "heldout_seeds", "n_new_prompts", "n_unrelated", "strip_members")
        if any(getattr(self, name) < (0 if name == "n_seeds" else 1) for name in counts):
            raise ValueError(f"CharacterSettings: {', '.join(counts)} must be positive (n_seeds 0 = the profile's)")
        if self.n_new_prompts > len(NEW_SCENES) or self.n_unrelated > len(UNSEEN_SUBJECTS):
            raise ValueError(f"CharacterSettings: at most {len(NEW_SCENES)} new and {len(UNSEEN_SUBJECTS)} "
                             f"unrelated prompts, got {self.n_new_prompts} and {self.n_unrelated}")

    def seeds(self, profile: Profile) -> tuple[int, ...]:
        return tuple(range(self.n_seeds or profile.n_seeds))


# Per-profile sizes: smoke in seconds; tiny within the chapter's 8 minutes on two cores (plan_counts
# gives the counts its cost follows); sd15 with S3's three other bases and more images per set.
CHARACTER_SIZES = {"smoke": CharacterSettings(weights=(0.0, 0.5, 1.0), n_seeds=1, n_new_prompts=2, n_unrelated=2,
                                              other_bases=("fluent3d",), strip_members=1),
                   "tiny": CharacterSettings(),
                   "sd15": CharacterSettings(heldout_seeds=4, n_new_prompts=8, n_unrelated=8,
                                             other_bases=("fluent3d", "openmoji_black", "twemoji"))}


def character_settings(profile: Profile, **overrides) -> CharacterSettings:
    """The profile's sizes with ``overrides`` (unknown keys raise, listing the valid ones)."""
    return CHARACTER_SIZES[profile.name].replace(**overrides) if overrides else CHARACTER_SIZES[profile.name]


# ---- the character's data and configs ---------------------------------------------------------

def subject_spec(settings: CharacterSettings):
    from lora_core.world import SUBJECT_SETS

    if settings.subject_set not in SUBJECT_SETS:
        raise ValueError(f"subject_set: unknown set {settings.subject_set!r}. Valid: {', '.join(SUBJECT_SETS)}")
    return SUBJECT_SETS[settings.subject_set]


def twin_steps(recipe: KohyaRecipe) -> int:
    """Steps of each run of :data:`TWIN_PAIR`: a quarter epoch (at least 2), enough to see every loss.

    >>> twin_steps(kohya_recipe(get_profile("tiny"), 20)), twin_steps(kohya_recipe(get_profile("sd15"), 20))
    (10, 250)
    """
    return max(2, recipe.steps_per_epoch // 4)


def chapter_configs(profile: Profile, settings: CharacterSettings, recipe: KohyaRecipe,
                    folder: str) -> dict[tuple[str, int], TrainConfig]:
    """``{(run, seed): config}``: both loss arms at every seed; a quarter epoch of S3's l2 and of its
    twin with other huber settings (:data:`TWIN_PAIR`), which must train identically; the foreign LoRA
    (chapter 1's style LoRA of that set, ``common.style_lora_config``, so the run is shared) and a
    DreamBooth fine-tune per other base (chapter 3's DreamBooth, ``common.method_config``, shortened)."""
    from lora_core.experiments.common import method_config, style_lora_config

    seeds = settings.seeds(profile)
    configs = {(arm, seed): character_config(profile, recipe, folder, seed, arm)
               for arm in (S3_ARM, HUBER_ARM) for seed in seeds}
    for label, arm in zip(TWIN_PAIR, (S3_ARM, TWIN_ARM)):
        configs[(label, seeds[0])] = character_config(profile, recipe, folder, seeds[0], arm).replace(
            epochs=0, max_train_steps=twin_steps(recipe))
    configs[("foreign " + settings.foreign_style, 0)] = style_lora_config(profile, settings.foreign_style, 0)
    steps = max(2, round(profile.train_steps * settings.base_steps_share))
    for style in settings.other_bases:
        configs[("base " + style, 0)] = method_config(profile, "dreambooth", style, 0, max_train_steps=steps)
    return configs


# ---- decisions ------------------------------------------------------------------------------------

def clearly_better(row: Mapping[str, Any], than: Mapping[str, Any]) -> bool:
    """Whether ``row``'s 95% interval lies entirely on the better side of ``than``'s.

    >>> clearly_better({"value": 1.0, "ci_low": 0.8, "ci_high": 1.2, "better": "lower"},
    ...                {"value": 2.0, "ci_low": 1.5, "ci_high": 2.5})
    True
    """
    if row["better"] == "lower":
        return row["ci_high"] < than["ci_low"]
    return row["ci_low"] > than["ci_high"]


def epoch_ranges(grid: pd.DataFrame, character: str = CHARACTER_MEASURE) -> dict[int, BestRange | None]:
    """The best weight range at every epoch of test 1's grid (:meth:`KohyaCharacterResult.grid`,
    base rows at weight 0 in every epoch): character fidelity and prompt following both at their best."""
    return {int(epoch): best_weight_range(rows, character) for epoch, rows in grid.groupby("epoch")}


# ---- the chapter ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class KohyaCharacterResult(ChapterResult):
    """Chapter 6's recipe, runs, scores and pictures (filled by :func:`run_kohya_character`).
    Facts: see :func:`read_kohya_character`."""

    settings: CharacterSettings
    recipe: KohyaRecipe
    configs: dict[tuple[str, int], Any]
    records: dict[tuple[str, int], Any]
    sets: dict[str, EvalSet]
    per_seed: pd.DataFrame = field(default_factory=pd.DataFrame)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    images: dict[tuple, torch.Tensor] = field(default_factory=dict)
    same_training: dict[str, Any] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)

    def test(self, name: str) -> pd.DataFrame:
        """The aggregated rows of one of :data:`TESTS`."""
        return self.aggregated[self.aggregated["test"] == name]

    def grid(self, arm: str = S3_ARM) -> pd.DataFrame:
        """Test 1's rows of ``arm`` with the base's rows (weight 0) repeated in every epoch."""
        rows = self.test(TESTS[0])
        lora = rows[rows["arm"] == arm]
        base = rows[rows["arm"] == "base"]
        epochs = sorted(lora["epoch"].dropna().unique())
        return pd.concat([lora] + [base.assign(epoch=epoch) for epoch in epochs], ignore_index=True)

    def config_table(self) -> pd.DataFrame:
        from lora_core.experiments.common import config_table

        return config_table({f"{run} seed {seed}": config for (run, seed), config in self.configs.items()})

    def recipe_table(self) -> pd.DataFrame:
        return recipe_table(self.recipe, self.profile)

    def curves(self) -> pd.DataFrame:
        """Every step of the character runs: loss and both learning rates (``panel``), by arm and seed."""
        panels = {"loss": "loss", "UNet lr": "lr/unet", "text encoder lr": "lr/text_encoder"}
        return pd.DataFrame([{"step": row["step"], "value": row[key], "panel": panel, "arm": arm, "seed": seed}
                             for (arm, seed), record in self.records.items() if arm in (S3_ARM, HUBER_ARM)
                             for row in record.metrics() for panel, key in panels.items()])

    def panels(self, test: str, measures: Sequence[str], line: str) -> pd.DataFrame:
        """Rows of ``test`` (test 1: the S3 arm's grid) for ``plots.interval_panels``: a panel per
        measure, one line per value of the column ``line`` (``"epoch 2"``, ``"weight 0.75"``)."""
        from lora_core.experiments.evaluate import measure_panels

        rows = measure_panels(self.grid() if test == TESTS[0] else self.test(test), measures)
        labels = [f"{line} {value:g}" if isinstance(value, float) else str(value) for value in rows[line]]
        return rows.assign(line=labels)

    def arm_panels(self, measures: Sequence[str] = ARM_MEASURES) -> pd.DataFrame:
        """Test 1 at the last epoch for both loss arms (the base at weight 0 in each)."""
        from lora_core.experiments.evaluate import measure_panels

        grids = [self.grid(arm).assign(line=arm) for arm in (S3_ARM, HUBER_ARM)]
        last = [grid[grid["epoch"] == self.recipe.epochs] for grid in grids]
        return measure_panels(pd.concat(last, ignore_index=True), measures)

    def results_table(self, test: str, index: Sequence[str], columns: str) -> pd.DataFrame:
        """``value [95% interval]`` of ``test`` (test 1: the S3 arm's grid), rows ``index``."""
        from lora_core.experiments.evaluate import format_results

        return format_results(self.grid() if test == TESTS[0] else self.test(test), index=list(index), columns=columns)

    def sheet(self, test: str):
        """Picture strips of a test, first training seed: held-out members (or bases) in rows, the
        swept setting in columns; test 1 shows every epoch of the first member."""
        from lora_core.plots import Sheet

        per_member = self.settings.heldout_seeds
        members = [c.split(",")[0] for c in self.sets[CHARACTER].captions[::per_member]][:self.settings.strip_members]
        keyed = [(key[1:], image) for key, image in self.images.items() if key[0] == test]
        if test == TESTS[0]:
            base = self.images[(TESTS[0], 0, 0.0)][0]
            cells = [(image[0], {"row": f"epoch {epoch}", "weight": w}) for (epoch, w), image in keyed if epoch]
            cells += [(base, {"row": f"epoch {epoch}", "weight": 0.0}) for epoch in range(1, self.recipe.epochs + 1)]
            cells.sort(key=lambda cell: (cell[1]["row"], cell[1]["weight"]))
            return Sheet.of(cells, rows="row", cols="weight", title=f"{members[0]}, {self.profile.name} profile")
        column = {TESTS[1]: "weight", TESTS[2]: "weight", TESTS[3]: "steps"}[test]
        cells = [(image[i * per_member], {"row": f"{key[0]}\n{member}" if test == TESTS[2] else member,
                                          column: key[-1]})
                 for key, image in keyed for i, member in enumerate(members)]
        return Sheet.of(cells, rows="row", cols=column, title=f"{test}, {self.profile.name} profile")


def plan_counts(profile: Profile, settings: CharacterSettings, recipe: KohyaRecipe, n_heldout: int) -> dict[str, int]:
    """What the chapter trains and generates, counted from its settings and the number of held-out
    members (its cost is about ``lora_steps x s/step (batch 2) + style_steps x s/step (the profile's
    batch) + dreambooth_steps x s/step + images x s/image``, each image at the profile's steps, and
    ``step_images`` at test 4's).

    >>> plan = plan_counts(get_profile("tiny"), CHARACTER_SIZES["tiny"], kohya_recipe(get_profile("tiny"), 20), 4)
    >>> plan["lora_steps"], plan["style_steps"], plan["dreambooth_steps"], plan["images"], plan["step_images"]
    (980, 150, 44, 588, 60)
    """
    seeds, weights = len(settings.seeds(profile)), len([w for w in settings.weights if w > 0])
    heldout = n_heldout * settings.heldout_seeds
    per_sweep = heldout + settings.n_new_prompts + settings.n_unrelated
    dreambooth = max(2, round(profile.train_steps * settings.base_steps_share))
    test1 = per_sweep * (1 + weights * seeds * (recipe.epochs + 1))
    test2 = heldout * (1 + weights * seeds)
    test3 = heldout * (1 + len(settings.other_bases)) * (1 + seeds)
    return {"lora_steps": recipe.total_steps * 2 * seeds + 2 * twin_steps(recipe), "style_steps": profile.train_steps,
            "dreambooth_steps": dreambooth * len(settings.other_bases), "images": test1 + test2 + test3,
            "step_images": heldout * seeds * len(S3_INFERENCE_STEPS)}


def run_kohya_character(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                        weights: Sequence[float] = (), n_seeds: int = 0, test_weight: float = 0.75,
                        foreign_style: str = "twemoji", other_bases: Sequence[str] = ()) -> KohyaCharacterResult:
    """Chapter 6: lay the character set out as a kohya repeat folder, train S3's recipe (both loss
    arms at every seed, the short l2 pair, the foreign LoRA, the other bases) or reuse the runs, and
    run the four tests (module docstring). ``weights`` (), ``n_seeds`` 0 and ``other_bases`` () are
    the profile's (:data:`CHARACTER_SIZES`)."""
    from lora_core.experiments.evaluate import Evaluator, aggregate_seeds
    from lora_core.experiments.kohya_recipe import same_training
    from lora_core.models import load_base
    from lora_core.experiments.lora_sweep import reference_images, reference_paths
    from lora_core.train_pool import train_many

    settings = resolve_profile(profile)
    given = {key: value for key, value in (("weights", tuple(weights)), ("n_seeds", n_seeds),
                                          ("other_bases", tuple(other_bases))) if value}
    chosen = character_settings(settings, test_weight=test_weight, foreign_style=foreign_style, **given)
    spec = subject_spec(chosen)
    train_folder = resolve(spec.folder("train"))
    recipe = kohya_recipe(settings, len(list(train_folder.glob("*.png"))))
    folder = kohya_training_folder(train_folder, recipe.repeats, spec.trigger, chosen.class_word,
                                   data_dir() / "cache" / "kohya" / chosen.subject_set)
    configs = chapter_configs(settings, chosen, recipe, repo_relative(folder))
    base = base if base is not None else load_base(settings.base_model)
    with quiet_libraries():
        records = train_many(configs, base=base, runs_root=runs_root)
    sets = character_sets(spec, chosen.heldout_seeds, chosen.class_word, chosen.n_new_prompts, chosen.n_unrelated)
    result = KohyaCharacterResult(settings, settings=chosen, recipe=recipe, configs=configs, records=records, sets=sets)
    result.same_training = same_training(*(records[(label, chosen.seeds(settings)[0])] for label in TWIN_PAIR))
    scorer = Scorer(base, settings, Evaluator(settings), spec.vendor,
                    reference_images(reference_paths(train_folder), base.resolution))
    run_tests(scorer, result, spec)
    result.per_seed = scorer.table()
    result.aggregated = aggregate_seeds(result.per_seed)
    result.images, result.unavailable = scorer.images, dict(scorer.evaluator.unavailable)
    return read_kohya_character(result)


def run_tests(scorer: Scorer, result: KohyaCharacterResult, spec) -> None:
    """The four tests on the trained runs of ``result`` (scores and pictures go to ``scorer``)."""
    from lora_core.experiments.common import style_prompt
    from lora_core.world import style_vendor

    chosen, recipe, records = result.settings, result.recipe, result.records
    seeds = chosen.seeds(result.profile)
    files = {(arm, seed): epoch_files(records[(arm, seed)], recipe) for arm in (S3_ARM, HUBER_ARM) for seed in seeds}
    score_weight_epoch(scorer, files, result.sets, chosen.weights)
    last = {seed: files[(S3_ARM, seed)][recipe.epochs] for seed in seeds}
    cache = data_dir() / "cache" / "kohya_character"
    foreign = foreign_copy(records[("foreign " + chosen.foreign_style, 0)].exports["kohya"], cache / "foreign")
    merged = with_suffix(result.sets[CHARACTER], style_prompt(chosen.foreign_style, ""), "held-out members, merged")
    score_merge(scorer, last, foreign, merged, style_vendor(chosen.foreign_style), chosen.weights)
    conventions = base_conventions(chosen.other_bases)
    bases = {ORIGINAL: scorer.base, **{c.name: single_file_base(records[("base " + c.style, 0)], result.profile,
                                                                 cache / "bases") for c in conventions[1:]}}
    score_bases(scorer, bases, conventions, last, result.sets[CHARACTER], chosen.test_weight)
    score_steps(scorer, last, result.sets[CHARACTER], chosen.test_weight, scaled_steps(result.profile))


# ---- reading the results ------------------------------------------------------------------------

def measured(table: pd.DataFrame, measure: str, target: str | None = None, **labels: Any) -> pd.DataFrame:
    """The rows of ``measure`` (towards ``target``) whose label columns equal ``labels``."""
    rows = table[table["measure"] == measure]
    if target is not None:
        rows = rows[rows["target_style"] == target]
    for column, value in labels.items():
        rows = rows[rows[column] == value]
    return rows


def interval_text(row: Mapping[str, Any]) -> str:
    from lora_core.experiments.evaluate import ci_text

    return ci_text(row["value"], row["ci_low"], row["ci_high"])


def range_text(found: BestRange | None) -> str:
    return found.text if found is not None else "none"


def read_kohya_character(result: KohyaCharacterResult) -> KohyaCharacterResult:
    """Chapter 6's facts: the set-up and recipe, the short l2 pair, the loss arms and each test's
    reading, with the ``found_*`` sentences of the finding box. A measure that is missing (no
    heads, no alignment model) makes its sentence say it cannot be judged."""
    from lora_core.experiments.kohya_recipe import eight_bit_share, repeat_folder_name

    chosen, recipe, spec = result.settings, result.recipe, subject_spec(result.settings)
    twin = result.same_training
    last_file = epoch_files(result.records[(S3_ARM, 0)], recipe)[recipe.epochs]
    result.add_facts(subject_set=chosen.subject_set, trigger=spec.trigger, vendor=spec.vendor,
                     n_train_images=recipe.images, n_heldout=len(set(result.sets[CHARACTER].subject_keys)),
                     repeat_folder=repeat_folder_name(recipe.repeats, spec.trigger, chosen.class_word),
                     repeats=recipe.repeats, steps_per_epoch=recipe.steps_per_epoch, total_steps=recipe.total_steps,
                     epochs=recipe.epochs, unet_lr=recipe.unet_lr, text_encoder_lr=recipe.text_encoder_lr,
                     rank=recipe.rank, alpha=recipe.alpha, n_seeds=len(chosen.seeds(result.profile)),
                     eight_bit_share=eight_bit_share(last_file), test_weight=chosen.test_weight,
                     guidance=scaled_guidance(result.profile),
                     steps_scaled=", ".join(map(str, scaled_steps(result.profile))),
                     missing_measures=_missing(result.unavailable), foreign_style=chosen.foreign_style,
                     **{f"planned_{key}": value for key, value in plan_counts(
                         result.profile, chosen, recipe, len(set(result.sets[CHARACTER].subject_keys))).items()},
                     weights_text="the same" if twin["same_weights"] else "different", **twin)
    identical = twin["same_length"] and twin["max_loss_difference"] == 0.0 and twin["same_weights"]
    result.add_facts(found_l2=(f"S3's loss setting (l2 with huber_c 0.1, snr) and l2 with other huber settings "
                               f"trained {'identically' if identical else 'differently'}: {twin['steps_compared']} "
                               f"step losses compared, largest difference {twin['max_loss_difference']:.3g}, "
                               f"{'the same' if twin['same_weights'] else 'different'} exported weights."))
    for reader in (weight_facts, arm_facts, merge_facts, base_facts, step_facts):
        result.add_facts(**reader(result))
    return result


def _missing(unavailable: Mapping[str, str]) -> str:
    from lora_core.experiments.evaluate import unavailable_text

    return unavailable_text(dict(unavailable))


def weight_facts(result: KohyaCharacterResult) -> dict[str, Any]:
    """Test 1: the best weight range at every epoch and the last, by paired truth and by the
    score_lora measures alone, each against S3's 0.5-0.75."""
    grid, last = result.grid(), result.recipe.epochs
    ranges = epoch_ranges(grid)
    by_sweep = best_weight_range(grid[grid["epoch"] == last], "fidelity_cosine")
    found = ranges[last]
    words = compare_ranges(found, S3_BEST_WEIGHTS)
    return {"best_range": range_text(found), "best_range_vs_s3": words, "best_range_sweep": range_text(by_sweep),
            "epoch_ranges": "; ".join(f"epoch {epoch}: {range_text(r)}" for epoch, r in ranges.items()),
            "found_weights": (f"At the last epoch, the weights whose character fidelity and prompt following are both "
                              f"indistinguishable from their best are {range_text(found)}, {words} S3's 0.5-0.75 "
                              f"(score_lora's measures alone: {range_text(by_sweep)}).")}


def arm_facts(result: KohyaCharacterResult) -> dict[str, Any]:
    """The loss arms at the last epoch and the largest weight: l2 (S3) against huber + snr."""
    top = max(result.settings.weights)
    rows = measured(result.test(TESTS[0]), CHARACTER_MEASURE, result.facts["vendor"], epoch=result.recipe.epochs,
                    weight=top)
    by_arm = {arm: rows[rows["arm"] == arm] for arm in (S3_ARM, HUBER_ARM)}
    if any(r.empty for r in by_arm.values()):
        missing = "cannot be judged in this build (its measure is missing)"
        return {"arm_l2": missing, "arm_huber": missing, "arm_verdict": missing,
                "found_arms": "The loss arms cannot be compared in this build (a measure is missing)."}
    l2, huber = (r.iloc[0] for r in by_arm.values())
    verdict = ("huber clearly closer" if clearly_better(huber, l2) else "huber clearly farther"
               if clearly_better(l2, huber) else "no clear difference")
    return {"arm_l2": interval_text(l2), "arm_huber": interval_text(huber), "arm_verdict": verdict,
            "found_arms": (f"Huber loss with the snr schedule against S3's l2, at the last epoch and weight {top:g}: "
                           f"the held-out members' distance to their true images is {huber['value']:.3g} against "
                           f"{l2['value']:.3g}, {verdict}.")}


def weights_text(weights: Sequence[float]) -> str:
    """The weights a sentence names after "at".

    >>> weights_text([0.25, 0.75]), weights_text([1.0]), weights_text([])
    ('weights 0.25 and 0.75', 'weight 1', 'no weight')
    """
    if not weights:
        return "no weight"
    names = [f"{w:g}" for w in weights]
    return f"weight {names[0]}" if len(names) == 1 else f"weights {', '.join(names[:-1])} and {names[-1]}"


def merge_facts(result: KohyaCharacterResult) -> dict[str, Any]:
    """Test 2: at which weights the merged pair is clearly closer to the character than the base,
    and clearly more in the foreign style (style classifier) than the base."""
    from lora_core.world import style_vendor

    rows, foreign = result.test(TESTS[1]), style_vendor(result.settings.foreign_style)
    kept = {}
    for name, measure, target in (("character", CHARACTER_MEASURE, result.facts["vendor"]),
                                  ("style", "p_target_style", foreign)):
        at = measured(rows, measure, target).set_index("weight")
        kept[name] = [w for w in at.index if w > 0 and 0.0 in at.index and clearly_better(at.loc[w], at.loc[0.0])]
    text = {name: weights_text(weights) for name, weights in kept.items()}
    return {"merge_character": text["character"], "merge_style": text["style"],
            "found_merge": (f"Merged 1:1 with a foreign {result.settings.foreign_style} style LoRA, the character is "
                            f"clearly closer to its true images than the base's at {text['character']} and the foreign "
                            f"style clearly more likely by the style classifier at {text['style']}.")}


def base_facts(result: KohyaCharacterResult) -> dict[str, Any]:
    """Test 3: on which bases the character at the test weight is clearly closer to the members'
    true images than that base alone."""
    rows = measured(result.test(TESTS[2]), CHARACTER_MEASURE, result.facts["vendor"])
    survives = []
    for name, at in rows.groupby("base", sort=False):
        at = at.set_index("weight")
        if {0.0, result.settings.test_weight} <= set(at.index):
            survives.append((name, clearly_better(at.loc[result.settings.test_weight], at.loc[0.0])))
    kept = [name for name, ok in survives if ok]
    return {"bases_kept": ", ".join(kept) or "none", "n_bases_kept": len(kept), "n_bases": len(survives),
            "found_bases": (f"With each base's own prompt convention, CFG {scaled_guidance(result.profile):g} and clip "
                            f"skip 2, the character at weight {result.settings.test_weight:g} is clearly closer to its "
                            f"true images than the base alone on {len(kept)} of {len(survives)} bases "
                            f"({', '.join(kept) or 'none'}).")}


def step_facts(result: KohyaCharacterResult) -> dict[str, Any]:
    """Test 4: the inference steps whose character fidelity is indistinguishable from the best."""
    rows = measured(result.test(TESTS[3]), CHARACTER_MEASURE, result.facts["vendor"])
    kept = indistinguishable_from_best(rows, "steps")
    ratio = result.profile.inference_steps / get_profile("sd15").inference_steps
    s3_scaled = tuple(round(s * ratio) for s in S3_BEST_STEPS)
    found = BestRange(tuple(kept)) if kept else None
    words = compare_ranges(found, s3_scaled) if found else "not comparable with"
    return {"steps_range": range_text(found), "steps_s3_scaled": f"{s3_scaled[0]}-{s3_scaled[1]}",
            "steps_vs_s3": words,
            "found_steps": (f"Character fidelity is indistinguishable from its best at {range_text(found)} inference "
                            f"steps, {words} S3's best 50-60 scaled to {s3_scaled[0]}-{s3_scaled[1]}.")}
