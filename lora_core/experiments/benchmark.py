"""Chapter 1: one style LoRA per style set, against the plain base, on three evaluation sets.

As study S1's Exp. I, each training caption is regenerated with the LoRA and with the base and
compared with the original; then the same on held-out subjects (true images exist in every
style, so distances are paired) and on unseen prompts. The toy world's "check 3" asks, on the
held-out subjects, whether the LoRA moves generations toward the target style by more than the
seed-to-seed spread while subjects stay recognisable, and whether each style's LoRA is closest
to its own style (cross-style control). The style judge then reads how far each LoRA got, as a
share of the way from the base to the true images after the VAE, and whether it can name the
LoRA's style blind (``style_share``).

    result = run_benchmark("tiny", fid=False)
    result.aggregated                        # one row per (style, adapter, eval set, measure)
    result.check3                            # effect vs seed spread on held-out subjects
    result.facts["style_verdicts"]           # the verdict per style, as the prose quotes it
    result.shares                            # share of the way base -> truth, the issue's targets
    result.blind                             # can the style judge name the LoRA's style blind?

>>> from lora_core.profiles import get_profile
>>> configs = benchmark_configs(get_profile("smoke"))
>>> sorted(configs)[:2], configs[("twemoji", 0)].seed
([('openmoji', 0), ('openmoji', 1)], 0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import EvalSet, eval_sets, quiet_libraries, style_lora_config, training_seeds
from lora_core.experiments.evaluate import DEFAULT_MEASURES, Evaluator, aggregate_seeds, generate_and_score
from lora_core.experiments.style_share import (BASE, LORA, SOURCE_NAMES, TRUE, blind_check_table, gain_display,
                                               gain_table, judge_images, round_trips, target_verdicts)
from lora_core.plots import Sheet
from lora_core.profiles import Profile
from lora_core.train import TrainConfig
from lora_core.world import STYLE_SETS

# check 3 on held-out subjects: measure -> the direction a style LoRA should move it
CHECK3_MEASURES = {"feature_to_target": "lower", "st_lpips_to_target": "lower", "p_target_style": "higher",
                   "target_style_rate": "higher"}
CHECK3_CONTEXT = ("feature_to_base", "subject_group_accuracy")
SPLITS = ("train", "heldout", "unseen")
LOSS_WINDOW = 20  # steps in the rolling mean of the loss curves


@dataclass(kw_only=True)
class BenchmarkResult(ChapterResult):
    """Everything chapter 1 shows: configs, run records, images, the tidy results table and the
    tables read from it (filled by :func:`read_benchmark`). Facts: see :func:`benchmark_facts`."""

    configs: dict[tuple[str, int], TrainConfig]
    records: dict[tuple[str, int], Any]
    eval_sets: dict[str, dict[str, EvalSet]]
    images: dict[tuple[str, str, int | None, str], torch.Tensor] = field(default_factory=dict)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    cross_style: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    check3: pd.DataFrame = field(default_factory=pd.DataFrame)
    verdicts: pd.DataFrame = field(default_factory=pd.DataFrame)
    recognisable: pd.DataFrame = field(default_factory=pd.DataFrame)
    controls: pd.DataFrame = field(default_factory=pd.DataFrame)
    directions: pd.DataFrame = field(default_factory=pd.DataFrame)
    sheets: dict[str, Sheet] = field(default_factory=dict)
    judged: pd.DataFrame = field(default_factory=pd.DataFrame)   # the style judge per held-out image
    judge_classes: tuple[str, ...] = ()                             # the styles the blind check names among
    shares: pd.DataFrame = field(default_factory=pd.DataFrame)
    blind: pd.DataFrame = field(default_factory=pd.DataFrame)

    def config_table(self) -> pd.DataFrame:
        """``common.config_table`` of every run, labelled ``<style> seed <seed>``."""
        from lora_core.experiments.common import config_table

        return config_table({f"{style} seed {seed}": config for (style, seed), config in self.configs.items()})

    def summaries(self) -> pd.DataFrame:
        """One row per run: style, seed, hash, steps, wall time, s/step, final loss, file size."""
        rows = []
        for (style, seed), record in self.records.items():
            s = record.summary
            rows.append({"style": style, "seed": seed, "config_hash": s["config_hash"], "steps": s["steps"],
                         "wall_time_s": s["wall_time_s"], "s_per_step": s["wall_time_s"] / max(1, s["steps"]),
                         "final_loss": s["final_loss"], "trainable_params": s["trainable_params"],
                         "lora_file_bytes": s["file_sizes"].get("diffusers")})
        return pd.DataFrame(rows)

    def loss_curves(self, window: int = LOSS_WINDOW) -> pd.DataFrame:
        """Training loss per step of every run (tidy: style, seed, step, loss) and its trailing
        rolling mean over ``window`` steps (``smoothed loss``)."""
        frames = []
        for (style, seed), record in self.records.items():
            curve = pd.DataFrame(record.metrics())[["step", "loss"]].assign(style=style, seed=seed)
            curve["smoothed loss"] = curve["loss"].rolling(window, min_periods=1).mean()
            frames.append(curve)
        return pd.concat(frames, ignore_index=True)

    def failing_checks(self) -> pd.DataFrame:
        """The directional check-3 rows that did not pass."""
        directional = self.check3[self.check3.expected != "context"]
        return directional[~directional.passes.astype(bool)][["style", "measure", "base", "lora_mean", "effect",
                                                             "seed_range"]]

    def share_table(self) -> pd.DataFrame:
        """Per style, the share of the way and its terms, the subject accuracies, the issue's target
        and the verdict, as ``value [95% interval]`` text (``style_share.gain_display``)."""
        return gain_display(self.shares, ["style"])

    def cross_style_matrix(self, measure: str = "feature_to_target") -> pd.DataFrame:
        """Adapter style x target style values of one cross-style measure (rows: the LoRA's style)."""
        rows = self.cross_style[self.cross_style.measure == measure]
        return rows.pivot(index="adapter_style", columns="target_style", values="value")


def benchmark_configs(profile: Profile) -> dict[tuple[str, int], TrainConfig]:
    """(style, seed) -> the style LoRA config (``common.style_lora_config``, shared with ch. 2 and 4)."""
    return {(style, seed): style_lora_config(profile, style, seed)
            for style in profile.benchmark_styles for seed in training_seeds(profile)}


def run_benchmark(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                  n_sheet_rows: int = 6, fid: bool = False) -> BenchmarkResult:
    """Chapter 1: train (or reuse) one LoRA per style and seed, generate the three evaluation sets
    with the base and each LoRA, score them, and read the tables and facts of the page.
    ``n_sheet_rows`` subjects per sample sheet; ``fid`` adds FID on the training captions."""
    settings = resolve_profile(profile)
    result = score_benchmark(settings, base, runs_root, fid_splits=("train",) if fid else ())
    return read_benchmark(result, n_sheet_rows)


def score_benchmark(profile: Profile, base=None, runs_root: str | Path | None = None,
                    evaluator: Evaluator | None = None, measures=DEFAULT_MEASURES,
                    splits=SPLITS, fid_splits=()) -> BenchmarkResult:
    """Train/reuse the LoRAs, generate every evaluation set with the base and each LoRA, score all:
    one job per run (:func:`score_style_run`), side by side where the cores allow
    (:mod:`lora_core.train_pool`), the LoRAs first and the base's sets last.

    Unseen prompts have no true images: their FD/KID compare with the target style's true images
    of the held-out subjects. FID (Inception 2015, 299 px: about 0.26 s per image on 2 CPU
    threads) is added only for ``fid_splits`` (e.g. ``("train",)``, S1's comparison) and only
    when the profile names an FID network.
    """
    from lora_core.models import load_base
    from lora_core.train_pool import map_side_by_side, train_many

    base = base if base is not None else load_base(profile.base_model)
    evaluator = evaluator or Evaluator(profile)
    configs = benchmark_configs(profile)
    result = BenchmarkResult(profile, configs=configs, records={},
                             eval_sets={style: {k: v for k, v in eval_sets(style, profile).items() if k in splits}
                                        for style in profile.benchmark_styles})
    held_out_truth = {style: evaluator.true_images(sets["heldout"].subject_keys, style, profile.resolution)
                      if "heldout" in sets else None for style, sets in result.eval_sets.items()}
    with_fid = tuple(measures) + (("fid",) if profile.fid_backbone != "none" else ())
    measures_by_split = {split: with_fid if split in fid_splits else tuple(measures) for split in splits}
    runs = [(style, LORA, seed) for style, seed in configs] + [(style, BASE, None) for style in result.eval_sets]
    jobs = [(score_style_run, (profile, configs.get((style, seed)), runs_root, result.eval_sets[style],
                               held_out_truth[style], measures_by_split, {"style": style, "adapter": adapter,
                                                                          "seed": seed}))
            for style, adapter, seed in runs]
    with quiet_libraries():
        scored = dict(zip(runs, map_side_by_side(jobs, shared=(base, evaluator))))
        result.records = train_many(configs, base=base, runs_root=runs_root)   # all finished: their records
    tables = []
    for style, sets in result.eval_sets.items():
        for split in sets:
            for adapter, seed in [(BASE, None)] + [(LORA, seed) for seed in training_seeds(profile)]:
                images, table, unavailable = scored[(style, adapter, seed)][split]
                result.images[(style, adapter, seed, split)] = images
                tables.append(table)
                evaluator.unavailable.update(unavailable)
    result.results = pd.concat(tables, ignore_index=True)
    if "heldout" in splits and len(profile.benchmark_styles) > 1:
        result.cross_style = cross_style_scores(result, evaluator)
    if "heldout" in splits:
        result.judge_classes = (evaluator.base_style, *result.eval_sets)
        result.judged = judge_heldout(result, evaluator, base)
    result.unavailable = dict(evaluator.unavailable)
    return result


def score_style_run(base, evaluator: Evaluator, profile: Profile, config: TrainConfig | None, runs_root,
                    sets: dict[str, EvalSet], held_out_truth: torch.Tensor | None,
                    measures_by_split: dict[str, tuple[str, ...]], labels: dict[str, Any]
                    ) -> dict[str, tuple[torch.Tensor, pd.DataFrame, dict[str, str]]]:
    """One run of chapter 1 trained (or reused; the base itself without a config), then each
    evaluation set of its style generated and scored with ``measures_by_split[split]`` against
    ``labels["style"]``: ``{split: (images, table, what the evaluator could not measure)}``. Sets
    without paired truth (unseen prompts) compare with ``held_out_truth``."""
    from lora_core.train_pool import trained

    record = trained(base, config, runs_root)
    return generate_and_score(evaluator, base, profile, sets, labels["style"], labels, measures_by_split,
                              lora_file=record.exports["diffusers"] if record else None, reference=held_out_truth)


def judge_heldout(result: BenchmarkResult, evaluator: Evaluator, base) -> pd.DataFrame:
    """The style judge on every held-out image of every style (``style_share.judge_images``,
    choosing among ``result.judge_classes``): the true target-style images after the base's VAE,
    the base's generations and each seed's LoRA generations. Empty without a judge."""
    if evaluator.style_classifier is None:
        return pd.DataFrame()
    frames = []
    for style, sets in result.eval_sets.items():
        held_out = sets["heldout"]
        truth = evaluator.true_images(held_out.subject_keys, style, result.profile.resolution)
        sources = [(TRUE, None, round_trips(base, truth, evaluator.cache)),
                   (BASE, None, result.images[(style, BASE, None, "heldout")])]
        sources += [(LORA, seed, result.images[(style, LORA, seed, "heldout")])
                    for seed in training_seeds(result.profile)]
        for source, seed, images in sources:
            frames.append(judge_images(evaluator, images, held_out.subject_keys, style, result.judge_classes,
                                       {"style": style, "source": source, "seed": seed}, subjects=source != TRUE))
    return pd.concat(frames, ignore_index=True)


def cross_style_scores(result: BenchmarkResult, evaluator: Evaluator,
                       measures=("feature_to_target", "p_target_style")) -> pd.DataFrame:
    """Every style's LoRA (held-out images) scored against every style's true images, mean over seeds:
    tidy rows (adapter_style, target_style, measure, value, ci_low, ci_high)."""
    tables = []
    for adapter_style in result.eval_sets:
        es = result.eval_sets[adapter_style]["heldout"]
        for target in result.eval_sets:
            for seed in training_seeds(result.profile):
                images = result.images[(adapter_style, LORA, seed, "heldout")]
                tables.append(evaluator.evaluate(images, es, target, {"adapter_style": adapter_style, "seed": seed},
                                                 measures=measures))
    table = aggregate_seeds(pd.concat(tables, ignore_index=True))
    return table.drop(columns=["eval_set"])


def cross_style_control_table(cross_style: pd.DataFrame, measure: str) -> pd.DataFrame:
    """``metrics.style.cross_style_control`` on the adapter x target matrix of one measure."""
    from lora_core.experiments.evaluate import MEASURES
    from lora_core.metrics.style import cross_style_control

    rows = cross_style[cross_style.measure == measure]
    if rows.empty:
        raise ValueError(f"measure: no cross-style rows for {measure!r} (have {sorted(set(cross_style.measure))})")
    matrix = rows.pivot(index="adapter_style", columns="target_style", values="value")
    return cross_style_control(matrix, higher_is_better=MEASURES[measure][0] == "higher").assign(measure=measure)


def check3_table(results: pd.DataFrame, split_name: str = "held-out captions") -> pd.DataFrame:
    """Per style and measure on held-out subjects: base value, LoRA mean over seeds, the effect
    (LoRA - base), the seed-to-seed range of the LoRA values, and ``passes``: the effect goes the
    expected way, by more than that range, and the LoRA mean lies outside the base's 95% interval
    over images (so neither seed noise nor image sampling explains it). Context measures have
    no direction and ``passes`` None."""
    rows = []
    held = results[results.eval_set == split_name]
    for (style, measure), group in held.groupby(["style", "measure"], sort=False):
        if measure not in CHECK3_MEASURES and measure not in CHECK3_CONTEXT:
            continue
        base = group[group.adapter == BASE]
        lora = group[group.adapter == LORA]
        if base.empty or lora.empty:
            continue
        base_value, lora_values = float(base.value.iloc[0]), lora.value.to_numpy(dtype=float)
        effect = float(lora_values.mean() - base_value)
        spread = float(lora_values.max() - lora_values.min())
        direction = CHECK3_MEASURES.get(measure, "")
        right_way = effect < 0 if direction == "lower" else effect > 0
        outside_base_ci = not float(base.ci_low.iloc[0]) <= float(lora_values.mean()) <= float(base.ci_high.iloc[0])
        rows.append({"style": style, "measure": measure, "metric": group.metric.iloc[0], "expected": direction or "context",
                     "base": base_value, "base_ci": f"[{base.ci_low.iloc[0]:.3g}, {base.ci_high.iloc[0]:.3g}]",
                     "lora_mean": float(lora_values.mean()), "effect": effect, "seed_range": spread,
                     "n_seeds": len(lora_values),
                     "passes": bool(right_way and abs(effect) > spread and outside_base_ci) if direction else None})
    return pd.DataFrame(rows)


def style_verdicts(check3: pd.DataFrame) -> pd.DataFrame:
    """One line per style from :func:`check3_table`: how many directional checks pass, and a
    verdict that separates "moved toward the target style" from "moved away from the base":

    * ``toward <style>``: at least half of the directional checks pass;
    * ``away from the base only``: fewer pass, but the distance to the base style's true images
      grew by more than the seed range (the LoRA changed the images, not toward its style);
    * ``no clear change``: neither.
    """
    rows = []
    for style, group in check3.groupby("style", sort=False):
        directional = group[group.expected != "context"]
        n_pass = int(directional.passes.astype(bool).sum())
        to_base = group[group.measure == "feature_to_base"]
        left_base = bool(len(to_base) and to_base.effect.iloc[0] > to_base.seed_range.iloc[0])
        verdict = (f"toward {style}" if n_pass * 2 >= len(directional) and len(directional) else
                   "away from the base only" if left_base else "no clear change")
        rows.append({"style": style, "checks_passed": f"{n_pass} of {len(directional)}", "verdict": verdict})
    return pd.DataFrame(rows)


def subject_recognisability(results: pd.DataFrame, split_name: str = "held-out captions") -> pd.DataFrame:
    """Subject classifier accuracy of base vs LoRA generations per style (mean over seeds), beside the
    classifier's majority-class baseline: the subject stays recognisable when the LoRA's accuracy is
    within or above the base's 95% interval."""
    rows = []
    held = results[(results.eval_set == split_name) & (results.measure == "subject_group_accuracy")]
    for style, group in held.groupby("style", sort=False):
        base, lora = group[group.adapter == BASE], group[group.adapter == LORA]
        lora_mean = float(lora.value.mean())
        rows.append({"style": style, "base_accuracy": float(base.value.iloc[0]),
                     "base_ci_low": float(base.ci_low.iloc[0]), "lora_accuracy": lora_mean,
                     "lora_seed_range": float(lora.value.max() - lora.value.min()),
                     "recognisable": bool(lora_mean >= float(base.ci_low.iloc[0]))})
    return pd.DataFrame(rows)


def s1_directions(aggregated: pd.DataFrame, split_name: str = "training captions") -> pd.DataFrame:
    """S1 Exp. I's reading (FID falls, CLIP/IS/LPIPS fall slightly) beside ours on the training
    captions: for each S1 metric and our counterpart, S1's direction base -> LoRA per style set
    and ours per style."""
    from lora_core.experiments.evaluate import reported_table

    counterpart = {"FID": "fd_effnet", "CLIP": "alignment", "IS": "is_effnet", "LPIPS": "st_lpips_diversity"}
    reported = reported_table("S1", "I").pivot_table(index=["metric", "setting"], columns="method", values="value")
    ours = aggregated[aggregated.eval_set == split_name]
    rows = []
    for s1_metric, measure in counterpart.items():
        s1 = reported.loc[s1_metric]
        s1_dirs = ["fell" if r["lora"] < r["baseline"] else "rose" for _, r in s1.iterrows()]
        mine = ours[ours.measure == measure].pivot_table(index="style", columns="adapter", values="value")
        our_dirs = {style: ("fell" if r[LORA] < r[BASE] else "rose") for style, r in mine.iterrows()
                    if BASE in r and LORA in r}
        rows.append({"S1 metric": s1_metric, "our measure": measure,
                     "S1 base -> LoRA": ", ".join(f"{setting}: {d}" for setting, d in zip(s1.index, s1_dirs)),
                     "ours base -> LoRA": ", ".join(f"{k}: {v}" for k, v in our_dirs.items()) or "not measured",
                     "agrees": all(v == s1_dirs[0] for v in our_dirs.values())
                     if our_dirs and len(set(s1_dirs)) == 1 else None})
    return pd.DataFrame(rows)


def sample_sheet(result: BenchmarkResult, split: str = "heldout", n: int = 6, seed: int = 0) -> Sheet:
    """One row per subject: the true base-style image, then per style the true target-style image
    ("true openmoji"), right beside it the LoRA's ("LoRA openmoji", training seed ``seed``) and then
    the base's from the same prompt ("base (openmoji prompt)"); unseen prompts have no true images."""
    from lora_core.metrics.style import load_true_images
    from lora_core.world import true_images_dir

    first = next(iter(result.eval_sets.values()))[split]
    resolution = result.profile.resolution
    cells = []
    for i in range(min(n, len(first))):
        subject = first.captions[i][:28]
        if first.paired:
            cells.append((load_true_images([first.subject_keys[i]], true_images_dir("noto"), resolution)[0],
                          {"subject": subject, "column": "true noto"}))
        for style, sets in result.eval_sets.items():
            if sets[split].paired:
                cells.append((load_true_images([sets[split].subject_keys[i]], true_images_dir(style), resolution)[0],
                              {"subject": subject, "column": f"true {style}"}))
            cells += [(result.images[(style, LORA, seed, split)][i], {"subject": subject, "column": f"LoRA {style}"}),
                      (result.images[(style, BASE, None, split)][i], {"subject": subject,
                                                                       "column": f"base ({style} prompt)"})]
    title = (f"{first.name}: true images, LoRA (seed {seed}) and base; {result.profile.name} profile, "
             f"{resolution} px")
    return Sheet.of(cells, rows="subject", cols="column", title=title, cell_inches=0.9)


# ---- the page: tables and facts read from the scores --------------------------------------------

def read_benchmark(result: BenchmarkResult, n_sheet_rows: int = 6) -> BenchmarkResult:
    """Fill the tables chapter 1 shows (aggregated results, check 3, verdicts, recognisability,
    cross-style control, S1's directions, sample sheets, the share of the way with the issue's
    targets, the blind check) and its facts; returns ``result``."""
    result.aggregated = aggregate_seeds(result.results)
    result.check3 = check3_table(result.results)
    result.verdicts = style_verdicts(result.check3)
    result.recognisable = subject_recognisability(result.results)
    if len(result.cross_style):
        result.controls = pd.concat([cross_style_control_table(result.cross_style, measure)
                                     for measure in sorted(set(result.cross_style.measure))], ignore_index=True)
    result.directions = s1_directions(result.aggregated)
    result.sheets = {split: sample_sheet(result, split, n_sheet_rows)
                     for split in next(iter(result.eval_sets.values()))}
    distances = {style: STYLE_SETS[style].distance for style in result.eval_sets}
    result.shares = target_verdicts(gain_table(result.judged, ("style",), result.profile.n_bootstrap), distances)
    result.blind = blind_check_table(result.judged, len(result.judge_classes))
    result.add_facts(**run_facts(result.profile, result.summaries()),
                     **benchmark_facts(result.check3, result.verdicts, result.recognisable, result.controls,
                                       result.directions),
                     **share_facts(result.shares), **blind_facts(result.blind, result.judge_classes))
    result.add_facts(check3_verdicts=result.verdicts)  # a table, pasted on the setup page
    return result


def run_facts(profile: Profile, summaries: pd.DataFrame) -> dict[str, Any]:
    """The runs in numbers: styles, seeds, evaluation-set size, training settings, mean time."""
    return {"n_styles": len(profile.benchmark_styles), "n_seeds": profile.n_seeds, "n_eval": profile.n_eval_images,
            "profile_training": f"{profile.resolution} px model with batch {profile.batch_size} for "
                                f"{profile.train_steps} steps at lr {profile.learning_rate:g}",
            "mean_s_per_step": f"{summaries.s_per_step.mean():.3f}", "mean_wall_s": f"{summaries.wall_time_s.mean():.0f}"}


def count_text(flags: pd.Series) -> str:
    """``"2 of 3"``: how many of ``flags`` are true.

    >>> count_text(pd.Series([True, False, True]))
    '2 of 3'
    """
    return f"{int(flags.astype(bool).sum())} of {len(flags)}"


def benchmark_facts(check3: pd.DataFrame, verdicts: pd.DataFrame, recognisable: pd.DataFrame,
                    controls: pd.DataFrame, directions: pd.DataFrame) -> dict[str, str]:
    """Chapter 1's sentences and counts: ``check3_pass``/``check3_verdict`` (directional checks that
    pass), ``style_verdicts``, ``n_recognisable``/``recognisable_reading``, ``cross_style_pass``,
    ``s1_agree``, ``feature_reading`` and the finding box's ``found_verdicts``, ``found_subjects``."""
    directional = check3[check3.expected != "context"]
    all_pass = len(directional) and bool(directional.passes.astype(bool).all())
    facts = {"check3_pass": count_text(directional.passes),
             "check3_verdict": "every one passes" if all_pass else "not all pass; the failing rows are listed below",
             "style_verdicts": "; ".join(f"{r.style}: {r.verdict} ({r.checks_passed} checks)"
                                         for r in verdicts.itertuples()),
             "cross_style_pass": count_text(controls.passes) if len(controls) else "not run (one style)",
             "feature_reading": feature_reading(check3), **recognisability_facts(recognisable)}
    agree = directions.agrees.dropna() if len(directions) else pd.Series(dtype=bool)
    facts["s1_agree"] = count_text(agree)
    facts["found_verdicts"] = (f"On subjects no LoRA trained on, per style: {facts['style_verdicts']} "
                               f"({facts['check3_pass']} directional checks pass).")
    facts["found_subjects"] = (f"Subjects stay recognisable for {facts['n_recognisable']} styles; the directions "
                               f"of S1's metrics agree with ours in {facts['s1_agree']} where S1's were consistent.")
    return facts


def recognisability_facts(recognisable: pd.DataFrame) -> dict[str, str]:
    """``n_recognisable`` ("2 of 3") and ``recognisable_reading``: which styles' LoRAs lost subjects.

    >>> recognisability_facts(pd.DataFrame({"style": ["a", "b"], "base_accuracy": [0.5, 0.5],
    ...                                     "lora_accuracy": [0.5, 0.2], "recognisable": [True, False]}))
    {'n_recognisable': '1 of 2', 'recognisable_reading': "For b (0.50 -> 0.20), the LoRA's accuracy fell below the base's interval: at this profile's settings, these adapters trade some of the subject for the style."}
    """
    if recognisable.empty:
        return {"n_recognisable": "none (no subject classifier)", "recognisable_reading": ""}
    lost = recognisable[~recognisable.recognisable.astype(bool)]
    reading = "No LoRA lost the subjects." if lost.empty else (
        "For " + ", ".join(f"{r.style} ({r.base_accuracy:.2f} -> {r.lora_accuracy:.2f})" for r in lost.itertuples())
        + ", the LoRA's accuracy fell below the base's interval: at this profile's settings, these adapters "
          "trade some of the subject for the style.")
    return {"n_recognisable": count_text(recognisable.recognisable), "recognisable_reading": reading}


def feature_reading(check3: pd.DataFrame) -> str:
    """Whether the EffNet feature distance to the true target-style image fell (for which styles)
    or rose for every style (with the effects).

    >>> feature_reading(pd.DataFrame({"style": ["a", "b"], "measure": ["feature_to_target"] * 2,
    ...                               "effect": [0.5, 0.25]}))
    'rose for every style (a +0.50, b +0.25)'
    """
    feature = check3[check3.measure == "feature_to_target"] if len(check3) else check3
    if feature.empty:
        return "was not measured in this build"
    closer = feature.loc[feature.effect < 0, "style"].tolist()
    if closer:
        return f"fell for {', '.join(closer)}"
    return f"rose for every style ({', '.join(f'{r.style} {r.effect:+.2f}' for r in feature.itertuples())})"


NOT_JUDGED = "not measured (no style judge in this build)"


def share_text(row) -> str:
    """One style's share of the way with its interval and its subject accuracy against the base's
    (a row of ``style_share.gain_table``); where the truth is judged no more in style than the
    base, the plain gain instead.

    >>> share_text(pd.Series({"share": 0.5, "share_low": 0.25, "share_high": 0.75, "subject_lora": 0.4,
    ...                       "subject_base": 0.45}))
    "0.50 [0.25, 0.75] of the way, subject accuracy 0.40 against the base's 0.45"
    """
    subjects = f", subject accuracy {row['subject_lora']:.2f} against the base's {row['subject_base']:.2f}"
    if math.isnan(row["share"]):
        return (f"no way to share (the truth is judged no more in style than the base), P(style) "
                f"{row['gain']:+.2f} against the base{subjects}")
    return f"{row['share']:.2f} [{row['share_low']:.2f}, {row['share_high']:.2f}] of the way{subjects}"


def share_facts(shares: pd.DataFrame) -> dict[str, str]:
    """``share_reading`` (per style: :func:`share_text`), ``share_targets_met`` ("1 of 3" styles
    meet issue #15's targets), ``share_verdicts`` (each style's verdict) and the finding box's
    ``found_share``."""
    if shares.empty:
        return {"share_reading": NOT_JUDGED, "share_targets_met": NOT_JUDGED, "share_verdicts": NOT_JUDGED,
                "found_share": f"The share of the way from the base to the true style was {NOT_JUDGED}."}
    reading = "; ".join(f"{row['style']} {share_text(row)}" for _, row in shares.iterrows())
    met = count_text(shares["meets_target"])
    return {"share_reading": reading, "share_targets_met": met,
            "share_verdicts": "; ".join(f"{r.style}: {r.verdict}" for r in shares.itertuples()),
            "found_share": (f"On held-out subjects, the share of the way from the base to the true style after the "
                            f"VAE (by the style judge's P(style)): {reading}. Issue #15's targets hold for {met} "
                            f"styles.")}


def blind_facts(blind: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, str]:
    """``blind_classes`` (the styles the judge names among), ``blind_chance``, ``blind_reading``
    (per style: how often the LoRA's images are named its style, beside the ceiling and the
    floor) and the finding box's ``found_blind``, from ``style_share.blind_check_table``.

    >>> blind = pd.DataFrame({"style": ["a"] * 3, "source": list(SOURCE_NAMES.values()), "value": [0.9, 0.5, 0.1],
    ...                       "ci_low": [0.8, 0.4, 0.0], "ci_high": [1.0, 0.6, 0.2]})
    >>> blind_facts(blind, ("noto", "a"))["blind_reading"]
    'a: LoRA 0.50 [0.40, 0.60] (ceiling 0.90, floor 0.10)'
    """
    if blind.empty:
        return {"blind_classes": ", ".join(classes), "blind_chance": NOT_JUDGED, "blind_reading": NOT_JUDGED,
                "found_blind": f"The blind check was {NOT_JUDGED}."}
    true, lora, base = SOURCE_NAMES[TRUE], SOURCE_NAMES[LORA], SOURCE_NAMES[BASE]
    rows = {(r.style, r.source): r for r in blind.itertuples()}
    reading = "; ".join(f"{style}: LoRA {rows[(style, lora)].value:.2f} [{rows[(style, lora)].ci_low:.2f}, "
                        f"{rows[(style, lora)].ci_high:.2f}] (ceiling {rows[(style, true)].value:.2f}, floor "
                        f"{rows[(style, base)].value:.2f})" for style in dict.fromkeys(blind["style"]))
    chance = f"{1 / len(classes):.2f}"
    return {"blind_classes": ", ".join(classes), "blind_chance": chance, "blind_reading": reading,
            "found_blind": (f"Asked blind which of {', '.join(classes)} an image is (chance {chance}), the style judge "
                            f"names the LoRA's style for this share of its held-out images: {reading}; the ceiling "
                            f"is the true images after the VAE, the floor the base's images.")}
