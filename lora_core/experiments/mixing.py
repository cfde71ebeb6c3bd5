"""Chapter 4: mixing two style LoRAs, in output space and in weight space, for a in [0, 1].

S1's Exp. IV mixed two style LoRAs as ``theta_mix = a theta_A + (1 - a) theta_B`` (weight-space
interpolation of the LoRA factors). The usual alternative is to activate both adapters at once
with weights ``a`` and ``1 - a`` (output-space blending, diffusers' ``set_adapters``, A1111's
``<lora:A:a> <lora:B:1-a>``). Both are materialised here as one LoRA file per ``(mode, a)``:

* ``blend``: ``merge_factors(..., "cat")``, a rank ``r_A + r_B`` LoRA whose delta is exactly
  ``a s_A B_A A_A + (1-a) s_B B_B A_B`` (the blend, no cross terms);
* ``interpolate``: ``interpolate_factors``, rank ``r``, with the cross terms that make it differ
  from the blend by ``-a(1-a) s (B_A - B_B)(A_A - A_B)`` per module (``blend.interpolation_gap``).

At ``a`` in {0, 1} both reduce to one of the trained LoRAs, so their own exported files are used.
Files and generated images are cached by content, so re-running the chapter costs seconds.

    result = run_mixing("tiny", style_a="twemoji", style_b="openmoji")
    result.gaps; result.aggregated; result.facts["shift_blend"]

>>> mixing_settings(get_profile("smoke")).weights
(1.0, 0.75, 0.5, 0.25, 0.0)
>>> mix_label("interpolate", 0.25)
'interpolate a=0.25'
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from lora_core import blend
from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import (EvalSet, data_dir, eval_set, quiet_libraries, style_lora_config,
                                          training_seeds)
from lora_core.experiments.evaluate import format_results, measure_panels, unavailable_text
from lora_core.plots import Sheet
from lora_core.profiles import Profile, get_profile  # noqa: F401  (get_profile: used by the doctest)
from lora_core.train import TrainConfig

MODES = ("blend", "interpolate")
MODE_NAMES = {"blend": "output-space blend", "interpolate": "weight-space interpolation"}
MIX_ADAPTER = "mix"
PROMPT_TEMPLATE = "{caption}, in the style of {trigger_a} and {trigger_b}"


@dataclass(frozen=True)
class MixingSettings(Config):
    styles: tuple[str, str] = option(("twemoji", "openmoji"), "the two style LoRAs mixed: A (a=1) and B (a=0)")
    weights: tuple[float, ...] = option((1.0, 0.75, 0.5, 0.25, 0.0), "mixing weights a of style A (S1 Exp. IV)")
    n_seeds: int = option(0, "LoRA pairs from training seeds 0..n_seeds-1 (seed s of A mixes with seed s of "
                             "B); 0 = all the profile's training seeds, i.e. chapter 1's runs")
    n_prompts: int = option(32, "held-out subjects generated at every (mode, a)")
    strip_prompts: int = option(4, "subjects shown in the picture strips")
    prompt_template: str = option(PROMPT_TEMPLATE, "prompt with both trigger words, as one mixes style LoRAs in A1111")

    def __post_init__(self) -> None:
        if len(self.styles) != 2 or self.styles[0] == self.styles[1]:
            raise ValueError(f"MixingSettings: styles must be two different style sets, got {self.styles}")
        bad = [a for a in self.weights if not 0.0 <= a <= 1.0]
        if bad or not self.weights:
            raise ValueError(f"MixingSettings: weights must be non-empty and in [0, 1], got {self.weights}")
        if self.n_seeds < 0:
            raise ValueError(f"MixingSettings: n_seeds must be >= 0, got {self.n_seeds}")
        if self.n_prompts < 2 or not 1 <= self.strip_prompts <= self.n_prompts:
            raise ValueError(f"MixingSettings: need n_prompts >= 2 and 1 <= strip_prompts <= n_prompts, "
                             f"got {self.n_prompts} and {self.strip_prompts}")

    def training_seeds(self, profile: Profile) -> tuple[int, ...]:
        """The seeds of the LoRA pairs: ``0..n_seeds-1``, or the profile's training seeds."""
        return tuple(range(self.n_seeds)) if self.n_seeds else tuple(training_seeds(profile))


# Per-profile sizes: smoke in seconds (one seed); tiny within chapter 4's 3 minutes, all of
# chapter 1's seeds (their LoRAs come from its cache, only generation and scoring cost time);
# sd15 with S1's prompts-per-weight scale.
MIXING = {"smoke": MixingSettings(n_prompts=4, strip_prompts=2, n_seeds=1),
          "tiny": MixingSettings(n_prompts=24, strip_prompts=4),
          "sd15": MixingSettings(n_prompts=50, strip_prompts=4)}


def mixing_settings(profile: Profile, **overrides) -> MixingSettings:
    """The profile's mixing sizes with ``overrides`` (unknown keys raise, listing the valid ones)."""
    return MIXING[profile.name].replace(**overrides) if overrides else MIXING[profile.name]


def mix_label(mode: str, a: float) -> str:
    return f"{mode} a={a:g}"


def middle_weight(weights: Sequence[float]) -> float:
    """The middle of the sorted weights (S1's a = 0.5).

    >>> middle_weight((1.0, 0.75, 0.5, 0.25, 0.0)), middle_weight((1.0, 0.0))
    (0.5, 1.0)
    """
    ordered = sorted(weights)
    return ordered[len(ordered) // 2]


def lora_configs(profile: Profile, settings: MixingSettings) -> dict[tuple[str, int], TrainConfig]:
    """``{(style, seed): config}`` of both style LoRAs at every training seed, built by the book's
    one config builder (so chapter 1's runs are reused)."""
    return {(style, seed): style_lora_config(profile, style, seed)
            for seed in settings.training_seeds(profile) for style in settings.styles}


def mixing_eval_set(settings: MixingSettings) -> EvalSet:
    """Held-out subjects (the same subjects in every style set) prompted with both trigger words.

    Subject keys are kept, so every image pairs with the true image of its subject in either style.
    """
    from lora_core.world import STYLE_SETS

    style_a, style_b = settings.styles
    held_out = eval_set(style_a, "heldout", settings.n_prompts)
    prompts = tuple(settings.prompt_template.format(caption=c, trigger_a=STYLE_SETS[style_a].trigger,
                                                    trigger_b=STYLE_SETS[style_b].trigger)
                    for c in held_out.captions)
    return EvalSet("held-out subjects, both triggers", f"{style_a}+{style_b}", prompts, held_out.captions,
                   held_out.seeds, held_out.subject_keys)


# ---- mixed adapters ---------------------------------------------------------------------------

def mixed_factors(factors_a: Mapping[str, blend.LoraFactors], factors_b: Mapping[str, blend.LoraFactors],
                  a: float, mode: str) -> dict[str, blend.LoraFactors]:
    """The factors of the ``mode`` mix at weight ``a`` of adapter A (see the module docstring)."""
    if mode == "blend":
        return blend.merge_factors([factors_a, factors_b], [a, 1.0 - a], "cat")
    if mode == "interpolate":
        return blend.interpolate_factors(factors_a, factors_b, a)
    raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")


def save_factors(base, factors: Mapping[str, blend.LoraFactors], path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``factors`` as a diffusers-layout LoRA file (reloads exactly, alpha = scale x rank);
    ``base`` is left as it was."""
    from lora_core.formats import save_lora_diffusers

    name = blend.unique_adapter_name(base, MIX_ADAPTER)
    blend.add_adapter_from_factors(base, name, factors)
    try:
        has_text_encoder = any(key.startswith("text_encoder.") for key in factors)
        return save_lora_diffusers(path, base.unet, base.text_encoder if has_text_encoder else None, name, metadata)
    finally:
        blend.remove_adapters(base, [name])


def mix_files(base, lora_a: str | Path, lora_b: str | Path, weights: Sequence[float],
              cache_dir: str | Path | None = None) -> dict[tuple[str, float], Path]:
    """``{(mode, a): LoRA file}`` for every mode and weight; a in {0, 1} maps to the input files.

    Interior mixes are written once to ``cache_dir`` (default ``data/cache/mixing``) under a name
    made of both input files' content digests (``formats.content_digest``: tensors and metadata,
    whatever their header order), the mode and ``a``.
    """
    from lora_core.formats import content_digest

    folder = Path(cache_dir) if cache_dir is not None else data_dir() / "cache" / "mixing"
    digests = f"{content_digest(lora_a)}:{content_digest(lora_b)}"
    loaded = None
    files = {}
    for mode in MODES:
        for a in weights:
            if a in (0.0, 1.0):
                files[(mode, a)] = Path(lora_a if a == 1.0 else lora_b)
                continue
            key = hashlib.sha256(f"{digests}:{mode}:{a!r}".encode()).hexdigest()[:24]
            path = folder / f"{mode}-{key}.safetensors"
            if not path.is_file():
                loaded = loaded or load_factors(base, lora_a, lora_b)
                save_factors(base, mixed_factors(*loaded, a, mode), path,
                             {"lsl_mix_mode": mode, "lsl_mix_a": repr(a), "lsl_mix_inputs": digests})
            files[(mode, a)] = path
    return files


def load_factors(base, lora_a: str | Path, lora_b: str | Path) -> tuple[dict, dict]:
    """Both LoRA files' factors (``blend.lora_factors``), read through a temporary load into
    ``base`` (removed afterwards)."""
    names = [blend.unique_adapter_name(base, "mix_input_a")]
    with quiet_libraries():
        blend.load_lora(base, lora_a, names[0])
    names.append(blend.unique_adapter_name(base, "mix_input_b"))
    try:
        with quiet_libraries():
            blend.load_lora(base, lora_b, names[1])
        return blend.lora_factors(base, names[0]), blend.lora_factors(base, names[1])
    finally:
        blend.remove_adapters(base, [n for n in names if n in blend.adapter_names(base)])


# ---- the per-layer difference between the two mixes -------------------------------------------

def module_block(module: str) -> str:
    """A short group name for a LoRA module: where in the network, and which attention.

    >>> module_block("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k")
    'down_blocks.1 attn2'
    >>> module_block("unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0")
    'mid_block attn1'
    """
    parts = module.split(".")
    if parts[0] != "unet":
        return parts[0].replace("_", " ")
    where = "mid_block" if parts[1] == "mid_block" else ".".join(parts[1:3])
    attention = next((p for p in parts if p.startswith("attn")), "")
    return f"{where} {attention}".strip()


def layer_gaps(factors_a: Mapping[str, blend.LoraFactors], factors_b: Mapping[str, blend.LoraFactors],
               weights: Sequence[float]) -> pd.DataFrame:
    """``blend.interpolation_gap_sweep`` (one row per module and ``a``) with a ``block`` column:
    ``gap_norm = ||delta_interp - delta_blend||_F``, ``relative_gap`` divides it by ``||delta_blend||_F``."""
    table = blend.interpolation_gap_sweep(factors_a, factors_b, list(weights))
    return table.assign(block=[module_block(m) for m in table["module"]])


def factor_divergence(factors_a: Mapping[str, blend.LoraFactors],
                      factors_b: Mapping[str, blend.LoraFactors]) -> pd.DataFrame:
    """Per module, how far apart the two LoRAs' factors are: ``||A_A - A_B|| / ||A_A||`` (``down``)
    and ``||B_A - B_B|| / ||B_A||`` (``up``). The interpolation gap is their product's doing: two
    LoRAs trained from the same seed start from the same random ``A`` (and ``B = 0``), so ``down``
    holds only what training moved apart."""
    def relative(x: torch.Tensor, y: torch.Tensor) -> float:
        norm = float(torch.linalg.norm(x))
        return float(torch.linalg.norm(x - y)) / norm if norm else float("nan")

    rows = [{"module": key, "block": module_block(key), "down": relative(fa.down, factors_b[key].down),
             "up": relative(fa.up, factors_b[key].up)} for key, fa in factors_a.items()]
    return pd.DataFrame(rows)


# ---- images and measures ------------------------------------------------------------------------

def mixing_images(base, files: Mapping[tuple[str, float], Path], evalset: EvalSet,
                  profile: Profile) -> dict[tuple[str, float], torch.Tensor]:
    """uint8 images of ``evalset`` for every ``(mode, a)``; a file shared by two keys (the pure
    LoRAs at a in {0, 1}) is generated once. Cached on disk by ``common.generate_eval_images``."""
    from lora_core.experiments.common import generate_eval_images

    by_file: dict[Path, torch.Tensor] = {}
    with quiet_libraries():
        for path in dict.fromkeys(files.values()):
            by_file[path] = generate_eval_images(base, list(evalset.prompts), list(evalset.seeds), profile,
                                                 adapter=path)
    return {key: by_file[path] for key, path in files.items()}


STYLE_MEASURES = ("p_target_style", "target_style_rate", "feature_to_target")
SET_MEASURES = ("alignment", "st_lpips_diversity")
ENDPOINT_MEASURE = "st_lpips_to_pure"      # paired ST-LPIPS to the same prompt's image from one pure LoRA
MODE_GAP_MEASURE = "st_lpips_interp_vs_blend"  # paired ST-LPIPS between the two mixes at the same a
NO_TARGET = "-"


def mixing_measures(evaluator, images: Mapping[tuple[str, float], torch.Tensor], evalset: EvalSet,
                    settings: MixingSettings, labels: dict | None = None) -> pd.DataFrame:
    """One tidy row per ``(mode, a, target_style, measure)`` (``evaluate.results_frame`` columns).

    Style measures are computed towards each of the two styles (``target_style``); alignment and
    diversity do not depend on a target (``target_style = "-"``). ``st_lpips_to_pure`` compares each
    image with the same prompt and seed from the pure LoRA of ``target_style`` (needs a in {0, 1});
    ``st_lpips_interp_vs_blend`` compares the two mixes at the same ``a``.
    """
    from lora_core.experiments.evaluate import results_frame
    from lora_core.metrics.lpips import paired_distance

    style_a, style_b = settings.styles
    lpips_name, n_resamples = evaluator.profile.lpips_backbone, evaluator.n_resamples

    def paired(generated, reference):
        return paired_distance(generated, reference, lpips_name, n_resamples,
                               torch.Generator().manual_seed(evaluator.seed))

    pure = {style_a: images.get(("blend", 1.0)), style_b: images.get(("blend", 0.0))}
    frames = []
    for (mode, a), generated in images.items():
        row_labels = {**(labels or {}), "mode": mode, "a": a}
        for style in settings.styles:
            frames.append(evaluator.evaluate(generated, evalset, style, row_labels, measures=STYLE_MEASURES))
        common = evaluator.evaluate(generated, evalset, style_a, row_labels, measures=SET_MEASURES)
        frames.append(common.assign(target_style=NO_TARGET))
        extra = {}
        for style, reference in pure.items():
            if reference is not None:
                extra[style] = {ENDPOINT_MEASURE: paired(generated, reference)}
        if mode == "interpolate" and ("blend", a) in images:
            extra[NO_TARGET] = {MODE_GAP_MEASURE: paired(generated, images[("blend", a)])}
        for target, results in extra.items():
            frames.append(results_frame(results, {"eval_set": evalset.name, "target_style": target, **row_labels}))
    return pd.concat(frames, ignore_index=True)


def is_monotone(values: Sequence[float]) -> bool:
    """True when ``values`` never rise or never fall (a gradual shift, in S1's words).

    >>> is_monotone([0.9, 0.7, 0.7, 0.2]), is_monotone([0.1, 0.5, 0.3])
    (True, False)
    """
    steps = [b - a for a, b in zip(values, values[1:])]
    return all(s >= 0 for s in steps) or all(s <= 0 for s in steps)


def mixing_summary(aggregated: pd.DataFrame, settings: MixingSettings) -> dict[str, object]:
    """Numbers and words for the chapter's prose, from the seed-aggregated table.

    ``shift_<mode>``: whether P(style A) changes monotonically with ``a``; ``mid_alignment_<mode>``:
    "is lower"/"is higher": alignment at the middle weight against the mean of the two ends (S1 saw
    artefacts at mid-range a); ``mode_gap_mid``: ST-LPIPS between the two mixes at the middle weight.
    Keys whose measure is missing (no heads, no alignment model) are left out.
    """
    style_a = settings.styles[0]
    weights = sorted(settings.weights)
    middle = middle_weight(weights)
    summary: dict[str, object] = {"middle_a": middle}

    def series(measure: str, mode: str, target: str) -> pd.Series:
        rows = aggregated[(aggregated["measure"] == measure) & (aggregated["mode"] == mode)
                          & (aggregated["target_style"] == target)]
        return rows.set_index("a")["value"].sort_index()

    for mode in MODES:
        style_share = series("p_target_style", mode, style_a)
        if len(style_share) == len(weights):
            summary[f"shift_{mode}"] = ("changes monotonically with a" if is_monotone(list(style_share))
                                        else "does not change monotonically with a")
        alignment = series("alignment", mode, NO_TARGET)
        if len(alignment) == len(weights) and len(weights) >= 3:
            ends = (alignment.iloc[0] + alignment.iloc[-1]) / 2
            summary[f"mid_alignment_{mode}"] = "is lower" if alignment.loc[middle] < ends else "is higher"
    gap = series(MODE_GAP_MEASURE, "interpolate", NO_TARGET)
    if middle in gap.index:
        summary["mode_gap_mid"] = float(gap.loc[middle])
    return summary


# ---- the chapter ------------------------------------------------------------------------------

FIGURE_MEASURES = ("p_target_style", "feature_to_target", "alignment", ENDPOINT_MEASURE, MODE_GAP_MEASURE,
                   "st_lpips_diversity")


@dataclass(kw_only=True)
class MixingResult(ChapterResult):
    """Chapter 4's LoRA pairs, per-layer gaps, images and scores (filled by :func:`run_mixing`).
    Facts: see :func:`read_mixing`."""

    settings: MixingSettings
    configs: dict[tuple[str, int], TrainConfig]
    records: dict[tuple[str, int], Any]
    evalset: EvalSet
    gaps: pd.DataFrame = field(default_factory=pd.DataFrame)          # per layer and a, first seed
    divergence: pd.DataFrame = field(default_factory=pd.DataFrame)    # per layer, first seed
    images: dict[int, dict[tuple[str, float], torch.Tensor]] = field(default_factory=dict)  # seed -> (mode, a)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.settings.training_seeds(self.profile)

    def config_table(self) -> pd.DataFrame:
        """``common.config_table`` of both LoRAs at every seed, labelled ``<style> seed <seed>``."""
        from lora_core.experiments.common import config_table

        return config_table({f"{style} seed {seed}": config for (style, seed), config in self.configs.items()})

    def lora_table(self) -> pd.DataFrame:
        """One row per trained LoRA: its run folder, rank, alpha, scale and final loss."""
        return pd.DataFrame([{"LoRA": f"{style} seed {seed}", "run": record.run_dir.name,
                              "rank": record.summary["adapter"]["rank"], "alpha": record.summary["adapter"]["alpha"],
                              "scale": record.summary["adapter"]["scale"], "final loss": record.summary["final_loss"]}
                             for (style, seed), record in self.records.items()])

    def block_table(self) -> pd.DataFrame:
        """Per block at the middle weight: mean gap, blend size, relative gap and factor distances."""
        at_middle = self.gaps[self.gaps["a"] == middle_weight(self.settings.weights)]
        by_block = at_middle.groupby("block")[["gap_norm", "blend_norm", "relative_gap"]].mean()
        return by_block.join(self.divergence.groupby("block")[["down", "up"]].mean())

    def results_table(self) -> pd.DataFrame:
        """``value [95% interval]`` per (measure, target style, mode) row and ``a`` column."""
        return format_results(self.aggregated, index=["measure", "metric", "target_style", "mode"], columns="a")

    def measure_panels(self, measures: Sequence[str] = FIGURE_MEASURES) -> pd.DataFrame:
        """The aggregated ``measures`` with ``panel`` and ``line`` (mode, and target style where the
        measure has one) for ``plots.interval_panels``."""
        rows = measure_panels(self.aggregated, measures)
        return rows.assign(line=[MODE_NAMES[mode] if target == NO_TARGET else f"{MODE_NAMES[mode]}, to {target}"
                                 for mode, target in zip(rows["mode"], rows["target_style"])])

    def strip_sheet(self, seed: int | None = None) -> Sheet:
        """Picture strips of training seed ``seed`` (default the first): one row per (subject, mode),
        one column per ``a``."""
        seed = self.seeds[0] if seed is None else seed
        subjects = [caption.split(",")[0] for caption in self.evalset.captions[:self.settings.strip_prompts]]
        cells = [(self.images[seed][(mode, a)][i], {"row": f"{subject}\n{mode}", "a": a})
                 for i, subject in enumerate(subjects) for mode in MODES for a in self.settings.weights]
        style_a, style_b = self.settings.styles
        return Sheet.of(cells, rows="row", cols="a", cell_inches=1.3,
                        title=f"{style_a} (a=1) to {style_b} (a=0), {self.profile.name} profile, training seed {seed}")


def run_mixing(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
               style_a: str = "twemoji", style_b: str = "openmoji",
               weights: Sequence[float] = (1.0, 0.75, 0.5, 0.25, 0.0), n_prompts: int = 0,
               n_seeds: int = 0) -> MixingResult:
    """Chapter 4: train (or reuse) chapter 1's LoRAs of ``style_a`` and ``style_b``, mix each
    seed's pair at every weight ``a`` in both modes, generate ``n_prompts`` held-out subjects
    (0: the profile's :data:`MIXING` size) and score them; the per-layer gaps of the first pair."""
    from lora_core.experiments.evaluate import Evaluator, aggregate_seeds
    from lora_core.models import load_base
    from lora_core.train_pool import train_many

    settings = resolve_profile(profile)
    mix = mixing_settings(settings, styles=(style_a, style_b), weights=tuple(weights),
                          **{key: value for key, value in (("n_prompts", n_prompts), ("n_seeds", n_seeds)) if value})
    base = base if base is not None else load_base(settings.base_model)
    configs = lora_configs(settings, mix)
    with quiet_libraries():
        records = train_many(configs, base=base, runs_root=runs_root)
    result = MixingResult(settings, settings=mix, configs=configs, records=records, evalset=mixing_eval_set(mix))
    lora_files = {key: record.exports["diffusers"] for key, record in records.items()}
    pair = {seed: (lora_files[(style_a, seed)], lora_files[(style_b, seed)]) for seed in result.seeds}
    factors = load_factors(base, *pair[result.seeds[0]])
    result.gaps, result.divergence = layer_gaps(*factors, mix.weights), factor_divergence(*factors)
    evaluator, per_seed = Evaluator(settings), []
    for seed, (lora_a, lora_b) in pair.items():
        result.images[seed] = mixing_images(base, mix_files(base, lora_a, lora_b, mix.weights), result.evalset, settings)
        per_seed.append(mixing_measures(evaluator, result.images[seed], result.evalset, mix, {"seed": seed}))
    result.aggregated = aggregate_seeds(pd.concat(per_seed, ignore_index=True))
    result.unavailable = dict(evaluator.unavailable)
    return read_mixing(result)


def read_mixing(result: MixingResult) -> MixingResult:
    """Chapter 4's facts: the set-up (``style_a``, ``style_b``, ``n_prompts``, ``n_seeds``,
    ``example_prompt``, ``missing_measures``), the per-layer gap of :func:`gap_facts`, the reading
    of :func:`mixing_summary` (a missing measure "cannot be judged") and the finding box's ``found_*``."""
    mix = result.settings
    summary = mixing_summary(result.aggregated, mix)
    judged = {key: summary.get(key, "cannot be judged in this build (its measure is missing)")
              for key in ("shift_blend", "shift_interpolate", "mid_alignment_blend", "mid_alignment_interpolate")}
    result.add_facts(style_a=mix.styles[0], style_b=mix.styles[1], n_prompts=len(result.evalset),
                     n_seeds=len(result.seeds), example_prompt=result.evalset.prompts[0],
                     missing_measures=unavailable_text(result.unavailable), **judged,
                     mode_gap_mid=summary.get("mode_gap_mid", float("nan")),
                     **gap_facts(result.gaps, result.divergence, mix.weights))
    result.add_facts(found_shift=(f"P({mix.styles[0]}) {judged['shift_blend']} under the output-space blend and "
                                  f"{judged['shift_interpolate']} under weight-space interpolation."))
    return result


def gap_facts(gaps: pd.DataFrame, divergence: pd.DataFrame, weights: Sequence[float]) -> dict[str, Any]:
    """At the middle weight: the median and largest relative gap between interpolation and blend
    over the layers (and the block of the largest), the median relative distance between the two
    LoRAs' down (A) and up (B) factors, and the sentence ``found_gap``."""
    middle = middle_weight(weights)
    at_middle = gaps[gaps["a"] == middle]
    facts = {"middle_a": middle, "gap_median": float(at_middle["relative_gap"].median()),
             "gap_max": float(at_middle["relative_gap"].max()),
             "gap_max_block": at_middle.loc[at_middle["relative_gap"].idxmax(), "block"],
             "down_divergence": float(divergence["down"].median()), "up_divergence": float(divergence["up"].median())}
    facts["found_gap"] = (f"At a = {middle:g}, weight-space interpolation differs from the blend by a median "
                          f"{facts['gap_median']:.3f} of the blend's size per layer (largest {facts['gap_max']:.3f}, "
                          f"in {facts['gap_max_block']}).")
    return facts
