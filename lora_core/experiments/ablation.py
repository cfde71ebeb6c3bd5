"""Chapter 2: rank x learning rate, run twice: alpha fixed (S1's code) and alpha tied to the rank.

Study S1 (Exp. II) trained ranks {8, 16, 32} x learning rates {1e-4, 5e-4} with alpha held at 16,
so the LoRA scale ``alpha / r`` was 2, 1 and 0.5: a larger rank also meant a smaller scale, and
the table cannot tell the two apart. Here the grid runs in two arms:

* ``fixed``: alpha = ``fixed_alpha`` at every rank (S1's code; scale falls as the rank grows);
* ``tied``: alpha = ``alpha_per_rank x rank`` (the diffusers examples; the scale stays constant).

Where the arms coincide (rank x alpha_per_rank = fixed_alpha, e.g. rank 16 with alpha 16) the
configs are identical and the run is shared; the cell at the profile's own rank, alpha, learning
rate and steps is chapter 1's run. Every config comes from ``common.style_lora_config``.

    result = run_ablation("tiny", fid=True)
    result.cells                         # per run: parameters, file size, ||s B A||, loss
    result.facts["fid_agreement"]        # do FID and FD-EffNet rank the runs alike?

>>> from lora_core.profiles import get_profile
>>> configs = ablation_configs(get_profile("tiny"), ablation_settings(get_profile("tiny")))
>>> len(configs), len({c.hash() for c in configs.values()})
(12, 10)
>>> c = configs[("fixed", 32, 5e-4, 0)]
>>> c.options.rank, c.options.effective_alpha, c.options.scale, c.learning_rate
(32, 16.0, 0.5, 0.005)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import EvalSet, eval_set, lr_scale, style_lora_config
from lora_core.experiments.evaluate import (aggregate_seeds, format_results, measure_panels, reported_table,
                                            unavailable_text)
from lora_core.experiments.style_share import (BASE, FLOAT_SLACK, LORA, MAX_SUBJECT_LOSS, TARGET_SHARE, TRUE,
                                               gain_display, gain_table, judge_images, round_trips)
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

ALPHA_MODES = ("fixed", "tied")
ALPHA_MODE_NAMES = {"fixed": "alpha fixed (S1)", "tied": "alpha tied to rank"}
S1_STEPS = 3000  # S1 Exp. II trained 3000 steps (Exp. I: 1000)
# Our measures next to S1's columns: (our measure key, S1 metric name). Not the same networks.
S1_COUNTERPARTS = (("fd_effnet", "FID"), ("alignment", "CLIP"), ("is_effnet", "IS"), ("st_lpips_diversity", "LPIPS"))
MEASURES = ("fd_effnet", "kid_effnet", "is_effnet", "st_lpips_diversity", "alignment", "p_target_style",
            "feature_to_target", "st_lpips_to_target")
FIGURE_MEASURES = ("fd_effnet", "alignment", "is_effnet", "st_lpips_diversity", "p_target_style",
                   "feature_to_target")
Key = tuple[str, int, float, int]  # (alpha mode, rank, S1's learning rate, training seed)
CELL_COLUMNS = ("style", "alpha_mode", "rank", "study_lr", "alpha")  # a grid cell, over its training seeds
# what the trade-off figure's y axis shows: the share where the truth after the VAE was judged
STYLE_MEASURES = {"share": "share of the way from the base to the truth", "gain": "P(style) gained, P_LoRA - P_base"}
AGREEMENT_RHO = 0.8  # Spearman's rho from which two backbones are said to rank the runs alike


@dataclass(frozen=True)
class AblationSettings(Config):
    style: str = option("twemoji", "style set of every run (S1: Ghibli, its first style; here chapter 1's first)")
    ranks: tuple[int, ...] = option((8, 16, 32), "LoRA ranks r (S1 Exp. II)")
    study_learning_rates: tuple[float, ...] = option((1e-4, 5e-4), "S1's learning rates; runs use them times "
                                                     "the profile's lr scale (common.lr_scale)")
    fixed_alpha: float = option(16.0, "alpha of the fixed arm (S1's code: 16)")
    alpha_per_rank: float = option(1.0, "alpha / r of the tied arm (diffusers examples: 1)")
    train_steps: int = option(0, "optimizer steps per run; 0 = the profile's train_steps (shares chapter 1's run)")
    training_seeds: tuple[int, ...] = option((0,), "training seeds of every cell")
    n_prompts: int = option(32, "training captions regenerated per run (S1: each training image)")

    def __post_init__(self) -> None:
        if not self.ranks or any(not isinstance(r, int) or r < 1 for r in self.ranks):
            raise ValueError(f"AblationSettings: ranks must be positive integers, got {self.ranks}")
        if not self.study_learning_rates or any(lr <= 0 for lr in self.study_learning_rates):
            raise ValueError(f"AblationSettings: study_learning_rates must be positive, got {self.study_learning_rates}")
        if self.fixed_alpha <= 0 or self.alpha_per_rank <= 0:
            raise ValueError(f"AblationSettings: fixed_alpha and alpha_per_rank must be positive, got "
                             f"{self.fixed_alpha} and {self.alpha_per_rank}")
        if self.train_steps < 0 or not self.training_seeds or self.n_prompts < 2:
            raise ValueError("AblationSettings: need train_steps >= 0, at least one training seed and n_prompts >= 2")


# Per-profile sizes, one place. smoke: seconds; tiny: within chapter 2's 10 minutes (9 new runs
# per seed, the tenth is chapter 1's); sd15: S1's grid, steps and alpha.
ABLATION = {
    "smoke": AblationSettings(ranks=(2, 4), fixed_alpha=4.0, n_prompts=4),
    "tiny": AblationSettings(training_seeds=(0,), n_prompts=32),
    "sd15": AblationSettings(train_steps=S1_STEPS, training_seeds=(0, 1, 2), n_prompts=100),
}


def ablation_settings(profile: Profile, **overrides) -> AblationSettings:
    """The profile's ablation sizes with ``overrides`` (unknown keys raise, listing the valid ones)."""
    return ABLATION[profile.name].replace(**overrides) if overrides else ABLATION[profile.name]


def alpha_for(mode: str, rank: int, settings: AblationSettings) -> float:
    """The explicit alpha of an arm (explicit in both, so equal settings hash equally).

    >>> alpha_for("fixed", 8, AblationSettings()), alpha_for("tied", 8, AblationSettings())
    (16.0, 8.0)
    """
    if mode == "fixed":
        return float(settings.fixed_alpha)
    if mode == "tied":
        return float(settings.alpha_per_rank * rank)
    raise ValueError(f"mode: {mode!r} is not one of {', '.join(ALPHA_MODES)}")


def run_learning_rate(profile: Profile, study_lr: float) -> float:
    """S1's learning rate scaled to the profile, rounded to 6 significant digits (no float dust
    in configs: 5e-4 x 10 is 0.005, not 0.005000000000000001)."""
    return float(f"{study_lr * lr_scale(profile):.6g}")


def ablation_configs(profile: Profile, settings: AblationSettings) -> dict[Key, TrainConfig]:
    """``{(alpha mode, rank, S1 lr, seed): TrainConfig}`` for both arms of the grid."""
    steps = settings.train_steps or profile.train_steps
    return {(mode, rank, lr, seed): style_lora_config(
                profile, settings.style, seed, lora={"rank": rank, "alpha": alpha_for(mode, rank, settings)},
                learning_rate=run_learning_rate(profile, lr), max_train_steps=steps)
            for mode in ALPHA_MODES for rank in settings.ranks for lr in settings.study_learning_rates
            for seed in settings.training_seeds}


def grid_table(configs: dict[Key, TrainConfig]) -> pd.DataFrame:
    """One row per grid cell: arm, rank, alpha, scale, S1's lr, the run's lr, seed, config hash, and
    whether the run is shared with the other arm."""
    hashes = [c.hash() for c in configs.values()]
    rows = [{"alpha mode": mode, "rank": rank, "alpha": config.options.effective_alpha, "scale": config.options.scale,
             "S1 lr": study_lr, "lr": config.learning_rate, "steps": config.max_train_steps, "seed": seed,
             "config_hash": config.hash(), "shared by both arms": hashes.count(config.hash()) > 1}
            for (mode, rank, study_lr, seed), config in configs.items()]
    return pd.DataFrame(rows)


# ---- training and evaluation -------------------------------------------------------------------

@dataclass(kw_only=True)
class AblationResult(ChapterResult):
    """Configs, run records (one per unique hash), the tidy results table and what chapter 2 reads
    from them (filled by :func:`read_ablation`). Facts: see :func:`read_ablation`."""

    settings: AblationSettings
    configs: dict[Key, TrainConfig]
    records: dict[str, Any]                  # config hash -> RunRecord
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)     # run_facts of every cell
    ranking: pd.DataFrame = field(default_factory=pd.DataFrame)   # FID vs FD-EffNet per distinct run
    s1_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    judged: pd.DataFrame = field(default_factory=pd.DataFrame)    # the style judge per held-out image
    gains: pd.DataFrame = field(default_factory=pd.DataFrame)     # per cell: style gained, subject lost
    tradeoff: pd.DataFrame = field(default_factory=pd.DataFrame)  # per distinct run: the figure's points

    def record(self, key: Key):
        return self.records[self.configs[key].hash()]

    def backbone_agreement(self, measure_a: str = "fid", measure_b: str = "fd_effnet"):
        """``evaluate.rank_agreement`` over the distinct runs (a run both arms share counts once)."""
        from lora_core.experiments.evaluate import rank_agreement

        distinct = self.results.drop_duplicates(subset=["measure", "rank", "study_lr", "seed", "alpha"])
        return rank_agreement(distinct.drop(columns=["alpha_mode"]), measure_a, measure_b)

    def ranking_keys(self) -> list[str]:
        """The columns a reader finds a run of :attr:`ranking` by (those that vary across runs)."""
        return [column for column in ("rank", "study_lr", "alpha") if column in self.ranking]

    def run_facts(self, base=None) -> pd.DataFrame:
        """Per cell: trainable parameters, LoRA file bytes, wall time, s/step, final loss and, with
        ``base``, the mean Frobenius norm of the learned update ``s B A`` per module."""
        rows = []
        for key, config in self.configs.items():
            summary = self.record(key).summary
            row = {**_key_labels(key), "alpha": config.options.effective_alpha, "scale": config.options.scale,
                   "trainable_params": summary["trainable_params"],
                   "file_bytes": summary["file_sizes"].get("diffusers"), "wall_time_s": summary["wall_time_s"],
                   "s_per_step": summary["wall_time_s"] / max(1, summary["steps"]), "final_loss": summary["final_loss"]}
            if base is not None:
                row["delta_norm"] = lora_delta_norm(base, self.record(key).exports["diffusers"])
            rows.append(row)
        return pd.DataFrame(rows)

    def loss_curves(self, window: int = 25) -> pd.DataFrame:
        """Training loss per step of every cell (tidy), with a trailing rolling mean ``loss_smooth``
        and, for ``plots.line_panels``, a ``panel`` per (arm, S1 lr) and a ``line`` per rank."""
        frames = []
        for key in self.configs:
            metrics = pd.DataFrame(self.record(key).metrics())[["step", "loss"]]
            metrics["loss_smooth"] = metrics["loss"].rolling(window, min_periods=1).mean()
            mode, rank, study_lr, _ = key
            frames.append(metrics.assign(**_key_labels(key), panel=f"{ALPHA_MODE_NAMES[mode]}, S1 lr {study_lr:g}",
                                         line=f"r={rank}"))
        return pd.concat(frames, ignore_index=True)

    def grid_table(self) -> pd.DataFrame:
        """:func:`grid_table` of this result's configs."""
        return grid_table(self.configs)

    def cost_table(self) -> pd.DataFrame:
        """Per (rank, arm, alpha, scale), first seed: the learned update's size and the final loss
        at each S1 learning rate."""
        first = self.cells[self.cells["seed"] == self.cells["seed"].min()]
        return first.pivot_table(index=["rank", "alpha_mode", "alpha", "scale"], columns="study_lr",
                                 values=["delta_norm", "final_loss"], aggfunc="first")

    def size_table(self) -> pd.DataFrame:
        """Mean trainable parameters, file bytes and s/step per rank (first seed)."""
        first = self.cells[self.cells["seed"] == self.cells["seed"].min()]
        return first.groupby("rank")[["trainable_params", "file_bytes", "s_per_step"]].mean()

    def cost_panels(self) -> pd.DataFrame:
        """Trainable parameters, file size and ``||s B A||`` against rank (first seed), tidy for
        ``plots.line_panels``: ``panel`` per quantity, ``line`` and ``dashed`` per arm and lr."""
        first = self.cells[self.cells["seed"] == self.cells["seed"].min()]
        names = {"trainable_params": "trainable parameters", "file_bytes": "LoRA file (bytes)",
                 "delta_norm": "mean ||s B A||_F per module"}
        long = first.melt(id_vars=["alpha_mode", "rank", "study_lr"], value_vars=[c for c in names if c in first],
                          var_name="quantity", value_name="value")
        return arm_lines(long.assign(panel=long["quantity"].map(names)))

    def results_table(self) -> pd.DataFrame:
        """``value [95% interval]`` per (measure, arm, S1 lr) row and rank column."""
        return format_results(self.aggregated, index=["measure", "metric", "alpha_mode", "study_lr"], columns="rank")

    def rank_panels(self, measures: Sequence[str] = FIGURE_MEASURES) -> pd.DataFrame:
        """The aggregated ``measures`` with ``panel``, ``line`` and ``dashed`` for ``plots.interval_panels``."""
        return arm_lines(measure_panels(self.aggregated, measures))

    def tradeoff_guides(self) -> dict[str, tuple[float, str] | None]:
        """``plots.tradeoff_figure``'s guide lines: issue #15's bound on the subject accuracy lost and,
        where the figure shows the share of the way, its 0.75 target for a far style."""
        share = len(self.tradeoff) and self.tradeoff["style_measure"].iloc[0] == STYLE_MEASURES["share"]
        return {"x_guide": (MAX_SUBJECT_LOSS, f"at most {MAX_SUBJECT_LOSS * 100:.0f} points lost"),
                "y_guide": (TARGET_SHARE, f"{TARGET_SHARE:g} of the way (far styles)") if share else None}

    def gains_table(self) -> pd.DataFrame:
        """Per cell on held-out subjects: P(style) of base, LoRA and truth, the share of the way,
        the subject accuracies, as ``value [95% interval]`` text (``style_share.gain_display``)."""
        return gain_display(self.gains, list(CELL_COLUMNS[1:]))


def _key_labels(key: Key) -> dict[str, Any]:
    mode, rank, study_lr, seed = key
    return {"alpha_mode": mode, "rank": rank, "study_lr": study_lr, "seed": seed}


def arm_lines(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a legend text per (arm, S1 lr) in ``line``, and ``dashed`` for the tied arm.

    >>> arm_lines(pd.DataFrame({"alpha_mode": ["tied"], "study_lr": [5e-4]}))[["line", "dashed"]].values.tolist()
    [['alpha tied to rank, lr 0.0005', True]]
    """
    return table.assign(line=[f"{ALPHA_MODE_NAMES[mode]}, lr {lr:g}" for mode, lr in
                              zip(table["alpha_mode"], table["study_lr"])],
                        dashed=table["alpha_mode"] == "tied")


def train_grid(configs: dict[Key, TrainConfig], base=None, runs_root: str | Path | None = None) -> dict[str, Any]:
    """Train (or reuse, by config hash) every distinct config once; ``{hash: RunRecord}``."""
    from lora_core.train_pool import train_many

    unique = {config.hash(): config for config in configs.values()}
    return train_many(unique, base=base, runs_root=runs_root)


def lora_delta_norm(base, lora_file: str | Path) -> float:
    """Mean over modules of ``||s B A||_F`` of a LoRA file: how far training moved the weights."""
    from lora_core import blend
    from lora_core.experiments.common import quiet_libraries

    name = blend.unique_adapter_name(base, "ablation_probe")
    with quiet_libraries():
        blend.load_lora(base, lora_file, name)
    try:
        norms = [float(torch.linalg.norm(f.delta())) for f in blend.lora_factors(base, name).values()]
    finally:
        blend.remove_adapters(base, [name])
    return sum(norms) / len(norms)


def train_grid_run(base, evaluator, config: TrainConfig, runs_root) -> None:
    """A job of :func:`score_grid`: one distinct run of the grid trained (or reused)."""
    from lora_core.train_pool import trained

    trained(base, config, runs_root)


def score_grid_run(base, evaluator, profile: Profile, config: TrainConfig | None, runs_root, captions: EvalSet,
                   held_out: EvalSet, style: str, measures: Sequence[str]
                   ) -> tuple[pd.DataFrame | None, dict[str, str], pd.DataFrame]:
    """A job of :func:`score_grid`: one distinct run of the grid (its :func:`train_grid_run` job
    trained it; the base itself without a config) with its ``captions`` (S1's protocol: training
    captions regenerated) generated and scored, and its ``held_out`` set generated and judged by
    :func:`judge_run`: the scores (None for the base), what the evaluator could not measure, and
    the judged rows."""
    from lora_core.experiments.common import generate_eval_images
    from lora_core.train_pool import trained

    record = trained(base, config, runs_root)
    adapter = record.exports["diffusers"] if record else None
    judged = judge_run(base, evaluator, profile, held_out, style, adapter)
    if record is None:
        return None, {}, judged
    images = generate_eval_images(base, list(captions.prompts), list(captions.seeds), profile, adapter=adapter)
    return evaluator.evaluate(images, captions, style, measures=measures), dict(evaluator.unavailable), judged


def judge_run(base, evaluator, profile: Profile, held_out: EvalSet, style: str, adapter: str | Path | None
              ) -> pd.DataFrame:
    """The style judge (``style_share.judge_images``) on a run's generations of the ``held_out``
    subjects (the LoRA file ``adapter``; None: the base's), generated into the cache, choosing
    among the base style, the profile's benchmark styles and ``style``. Empty without a judge."""
    from lora_core.experiments.common import generate_eval_images, quiet_libraries

    if evaluator.style_classifier is None:
        return pd.DataFrame()
    with quiet_libraries():
        images = generate_eval_images(base, held_out.prompts, held_out.seeds, profile, adapter=adapter)
    return judge_images(evaluator, images, held_out.subject_keys, style, judged_styles_among(evaluator, profile, style),
                        {"style": style, "source": LORA if adapter is not None else BASE})


def judged_styles_among(evaluator, profile: Profile, style: str) -> tuple[str, ...]:
    """The styles the judge chooses among: the base style, the profile's benchmark styles and ``style``."""
    return tuple(dict.fromkeys((evaluator.base_style, *profile.benchmark_styles, style)))


def grid_results(configs: dict[Key, TrainConfig], by_hash: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Every cell's rows: its run's scores (``by_hash``: a run shared by both arms is scored once
    and reported in both) labelled with the cell, its alpha and its scale."""
    frames = []
    for key, config in configs.items():
        labels = {**_key_labels(key), "alpha": config.options.effective_alpha, "scale": config.options.scale}
        frames.append(by_hash[config.hash()].assign(**labels))
    return pd.concat(frames, ignore_index=True)


def judge_grid(profile: Profile, settings: AblationSettings, configs: dict[Key, TrainConfig],
               judged_runs: dict[str, pd.DataFrame], base, evaluator) -> pd.DataFrame:
    """The style judge on held-out subjects: the true images of the grid's style after the base's
    VAE, then ``judged_runs`` (:func:`judge_run` of the base, under ``style_share.BASE``, and of
    every distinct run, by config hash), whose rows repeat, labelled, for each cell that shares
    the run. The set is chapter 1's held-out set at the profile's size, so the base's images and
    chapter 1's cell come from the generation cache. Empty without a judge."""
    if evaluator.style_classifier is None:
        return pd.DataFrame()
    held_out, style = eval_set(settings.style, "heldout", profile.n_eval_images), settings.style
    truth = round_trips(base, evaluator.true_images(held_out.subject_keys, style, profile.resolution), evaluator.cache)
    frames = [judge_images(evaluator, truth, held_out.subject_keys, style, judged_styles_among(evaluator, profile, style),
                           {"style": style, "source": TRUE}, subjects=False), judged_runs[BASE]]
    frames += [judged_runs[config.hash()].assign(**_key_labels(key), alpha=config.options.effective_alpha)
               for key, config in configs.items()]
    return pd.concat(frames, ignore_index=True)


def score_grid(profile: Profile, settings: AblationSettings, base, evaluator,
               runs_root: str | Path | None = None, fid: bool = False) -> AblationResult:
    """Train (or reuse) the grid, generate, score and judge, side by side where the cores allow
    (:mod:`lora_core.train_pool`): first one job per distinct run that trains it
    (:func:`train_grid_run`), then one per run and one for the base that generate, score and
    judge (:func:`score_grid_run`), so the last jobs are short ones; then the style judge's table
    (:func:`judge_grid`). ``fid`` adds FID (Inception 2015) when the profile names an FID network."""
    from lora_core.experiments.common import quiet_libraries
    from lora_core.train_pool import map_side_by_side

    configs = ablation_configs(profile, settings)
    measures = MEASURES + (("fid",) if fid and profile.fid_backbone != "none" else ())
    unique = {config.hash(): config for config in configs.values()}
    captions = eval_set(settings.style, "train", settings.n_prompts)
    held_out = eval_set(settings.style, "heldout", profile.n_eval_images)   # judge_grid's
    training = [(train_grid_run, (config, runs_root)) for config in unique.values()]
    scoring = [(score_grid_run, (profile, config, runs_root, captions, held_out, settings.style, measures))
               for config in [None, *unique.values()]]   # the base's first: runs still training meanwhile
    with quiet_libraries():
        outcomes = map_side_by_side(training + scoring, shared=(base, evaluator))[len(training):]
    base_outcome, run_outcomes = outcomes[0], dict(zip(unique, outcomes[1:]))
    for _, unavailable, _ in run_outcomes.values():
        evaluator.unavailable.update(unavailable)
    records = train_grid(configs, base, runs_root)   # all finished: their records
    results = grid_results(configs, {run: table for run, (table, _, _) in run_outcomes.items()})
    judged_runs = {BASE: base_outcome[2], **{run: judged for run, (_, _, judged) in run_outcomes.items()}}
    judged = judge_grid(profile, settings, configs, judged_runs, base, evaluator)
    return AblationResult(profile, settings=settings, configs=configs, records=records, results=results,
                          judged=judged, unavailable=dict(evaluator.unavailable))


def run_ablation(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                 n_seeds: int = 0, n_prompts: int = 0, fid: bool = True) -> AblationResult:
    """Chapter 2: the grid of the profile's :data:`ABLATION` sizes (``n_seeds`` training seeds per
    cell and ``n_prompts`` regenerated captions per run when given), trained or reused, scored,
    and read for the page. ``fid`` adds FID beside FD-EffNet."""
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.models import load_base

    settings = resolve_profile(profile)
    overrides = {"training_seeds": tuple(range(n_seeds)) if n_seeds else None, "n_prompts": n_prompts or None}
    grid = ablation_settings(settings, **{key: value for key, value in overrides.items() if value is not None})
    base = base if base is not None else load_base(settings.base_model)
    result = score_grid(settings, grid, base, Evaluator(settings), runs_root, fid)
    return read_ablation(result, base)


def read_ablation(result: AblationResult, base=None) -> AblationResult:
    """Fill what chapter 2 shows from the scores (``base`` measures each update's size) and its
    facts: the grid's sizes (``style``, ``lr_scale``, ``steps``, ``n_runs``, ...), the scale facts
    of :func:`scale_facts`, the backbone agreement of :func:`agreement_facts`, the learning-rate
    sentences ``fd_fixed``, ``fd_tied``, ``alignment_fixed``, and the finding box's ``found_*``."""
    result.aggregated = aggregate_seeds(result.results)
    result.cells = result.run_facts(base)
    result.s1_table = s1_comparison(result.aggregated, reported_table("S1", "II"))
    grid, profile = result.settings, result.profile
    result.add_facts(style=grid.style, lr_scale=lr_scale(profile), steps=next(iter(result.configs.values())).max_train_steps,
                     s1_steps=S1_STEPS, n_runs=len(result.records), n_cells=len(result.configs),
                     n_seeds=len(grid.training_seeds), n_prompts=grid.n_prompts, fixed_alpha=grid.fixed_alpha,
                     seed_note=seed_note(len(grid.training_seeds)), missing_measures=unavailable_text(result.unavailable))
    if "delta_norm" in result.cells:
        result.add_facts(**scale_facts(result.cells, min(grid.study_learning_rates)))
    if (result.results.measure == "fid").any():
        result.ranking, agreement = result.backbone_agreement("fid", "fd_effnet")
        result.ranking = result.ranking.loc[:, result.ranking.nunique() > 1]  # leaves out what every run shares
        result.add_facts(**agreement_facts(agreement))
    else:
        result.add_facts(**agreement_facts(None, f"profile {profile.name} names no FID network, or fid=false"))
    effects = {measure: lr_effects(result.aggregated, measure) for measure in ("fd_effnet", "alignment")}
    result.add_facts(fd_fixed=direction_sentence(effects["fd_effnet"], "fixed"),
                     fd_tied=direction_sentence(effects["fd_effnet"], "tied"),
                     alignment_fixed=direction_sentence(effects["alignment"], "fixed"))
    result.add_facts(found_lr=(f"Raising S1's learning rate five-fold, FD-EffNet {result.facts['fd_fixed']} with alpha "
                               f"fixed ({result.facts['fd_tied']} with alpha tied)."))
    result.gains = gain_table(result.judged, CELL_COLUMNS, profile.n_bootstrap)
    result.tradeoff = tradeoff_points(result.gains)
    result.add_facts(**tradeoff_facts(result.tradeoff))
    return result


def seed_note(n_seeds: int) -> str:
    """What the intervals of the grid are over.

    >>> seed_note(3)
    'Intervals are over seeds (t-interval on the per-seed means).'
    """
    if n_seeds > 1:
        return "Intervals are over seeds (t-interval on the per-seed means)."
    return ("With one training seed per cell, intervals are 95% bootstrap intervals over images only; they do not "
            "include the seed-to-seed spread, which chapter 1 measures for its rank-16 runs.")


def scale_facts(cells: pd.DataFrame, study_lr: float) -> dict[str, Any]:
    """From the first seed's cells: how much the trainable parameters grow from the lowest to the
    highest rank (``params_ratio``, against ``rank_ratio``), and at S1 learning rate ``study_lr``
    how much the learned update ``||s B A||`` grows, alpha fixed (``fixed_norm_ratio``) and alpha
    tied (``tied_norm_ratio``); plus the sentence ``found_scale``."""
    first = cells[cells["seed"] == cells["seed"].min()]
    params = first.groupby("rank")["trainable_params"].mean()
    low, high = int(params.index.min()), int(params.index.max())
    norms = first[first["study_lr"] == study_lr].set_index(["alpha_mode", "rank"])["delta_norm"]
    ratios = {mode: float(norms[(mode, high)] / norms[(mode, low)]) for mode in ALPHA_MODES}
    return {"rank_low": low, "rank_high": high, "rank_ratio": high / low,
            "params_ratio": float(params[high] / params[low]),
            "fixed_norm_ratio": ratios["fixed"], "tied_norm_ratio": ratios["tied"],
            "found_scale": (f"From rank {low} to {high}, the learned update grows {ratios['fixed']:.2f}x with alpha fixed "
                            f"(S1's code) and {ratios['tied']:.2f}x with alpha tied to the rank: the difference "
                            f"is the part of S1's rank effect that came from the scale alpha/r.")}


def backbones_agree(agreement: dict[str, float], threshold: float = AGREEMENT_RHO) -> bool:
    """Whether two backbones rank the runs alike: Spearman's rho of :meth:`AblationResult.backbone_agreement`
    at least ``threshold``.

    >>> backbones_agree({"spearman_rho": 0.8}), backbones_agree({"spearman_rho": 0.79})
    (True, False)
    """
    return agreement["spearman_rho"] >= threshold


def agreement_facts(agreement: dict[str, float] | None, why_missing: str = "") -> dict[str, str]:
    """``fid_agreement``, ``fid_reading`` and ``found_fid``: whether FID and FD-EffNet rank the
    distinct runs alike (:func:`backbones_agree`), or why that was not measured."""
    if agreement is None:
        return {"fid_agreement": f"FID was not computed ({why_missing})",
                "fid_reading": "There is nothing to compare in this build",
                "found_fid": f"FID was not computed in this build ({why_missing})."}
    measured = (f"over the {agreement['n_sets']} distinct runs, Spearman's rho between the two rankings is "
                f"{agreement['spearman_rho']:.2f} and Kendall's tau {agreement['kendall_tau']:.2f}")
    if backbones_agree(agreement):
        reading = ("The two backbones order the runs alike, so FD-EffNet can stand in for FID when comparing runs "
                   "here")
        found = f"FID and FD-EffNet rank the runs alike (rho {agreement['spearman_rho']:.2f})."
    else:
        reading = ("The two backbones agree only partly. The runs differ by less than either distance's own sampling "
                   "spread at this number of images (the intervals in the metrics table overlap), so neither ranking "
                   "is stable: what disagrees is mostly noise, and a Fréchet distance between such close runs should "
                   "not be read as a ranking with either network")
        found = (f"FID and FD-EffNet agree only partly on the order of the runs (rho {agreement['spearman_rho']:.2f}, "
                 f"below {AGREEMENT_RHO}): the runs lie closer than either distance can resolve at this sample size.")
    return {"fid_agreement": measured, "fid_reading": reading, "found_fid": found}


# ---- reading the grid ---------------------------------------------------------------------------

def s1_setting(rank: int, study_lr: float) -> str:
    """S1's row name in ``reported_tables.csv``.

    >>> s1_setting(16, 5e-4)
    'r16_lr5e-4'
    """
    mantissa, exponent = f"{study_lr:.0e}".split("e")
    return f"r{rank}_lr{mantissa}e{int(exponent)}"


def s1_comparison(aggregated: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """S1's Exp. II numbers beside ours (fixed arm, as S1's code) per (rank, lr): for each S1
    column its value and our counterpart's ``value [95% CI]``; cells S1 did not run read '-'."""
    from lora_core.experiments.evaluate import ci_text

    fixed = aggregated[aggregated["alpha_mode"] == "fixed"]
    rows = []
    for (rank, study_lr), cell in fixed.groupby(["rank", "study_lr"], sort=True):
        theirs = reported[reported["setting"] == s1_setting(rank, study_lr)].set_index("metric")["value"]
        row: dict[str, Any] = {"rank": rank, "S1 lr": study_lr}
        for measure, s1_metric in S1_COUNTERPARTS:
            ours = cell[cell["measure"] == measure]
            row[f"S1 {s1_metric}"] = theirs.get(s1_metric, "-")
            row[f"ours: {_short_metric(fixed, measure)}"] = (ci_text(*ours[["value", "ci_low", "ci_high"]].iloc[0])
                                                             if len(ours) else "-")
        rows.append(row)
    return pd.DataFrame(rows)


def _short_metric(table: pd.DataFrame, measure: str) -> str:
    """The reported name of ``measure`` without its parenthesised details ("FD-EffNet"), or the key."""
    names = table.loc[table["measure"] == measure, "metric"]
    return names.iloc[0].split(" (")[0] if len(names) else measure


def lr_effects(aggregated: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Per (alpha mode, rank): ``measure`` at the highest S1 lr minus at the lowest, and whether
    the two 95% intervals overlap (if they do, the difference is within the noise)."""
    rows = []
    for (mode, rank), cell in aggregated[aggregated["measure"] == measure].groupby(["alpha_mode", "rank"], sort=False):
        cell = cell.sort_values("study_lr")
        low, high = cell.iloc[0], cell.iloc[-1]
        overlap = not (high["ci_low"] > low["ci_high"] or high["ci_high"] < low["ci_low"])
        rows.append({"alpha_mode": mode, "rank": rank, "measure": measure, "low_lr": low["value"],
                     "high_lr": high["value"], "difference": high["value"] - low["value"], "intervals_overlap": overlap})
    return pd.DataFrame(rows, columns=["alpha_mode", "rank", "measure", "low_lr", "high_lr", "difference",
                                       "intervals_overlap"])


def direction_sentence(effects: pd.DataFrame, mode: str = "fixed") -> str:
    """``"fell at 2 of 3 ranks (1 beyond the intervals)"`` for one arm of :func:`lr_effects`.

    >>> effects = pd.DataFrame({"alpha_mode": ["fixed"] * 3, "difference": [-1.0, -2.0, 0.5],
    ...                         "intervals_overlap": [True, False, True]})
    >>> direction_sentence(effects)
    'fell at 2 of 3 ranks (1 of them beyond overlapping 95% intervals)'
    """
    arm = effects[effects["alpha_mode"] == mode]
    if arm.empty:
        return "could not be measured in this build"
    falls = arm[arm["difference"] < 0]
    word, group = ("fell", falls) if len(falls) * 2 >= len(arm) else ("rose", arm[arm["difference"] >= 0])
    clear = int((~group["intervals_overlap"]).sum())
    return f"{word} at {len(group)} of {len(arm)} ranks ({clear} of them beyond overlapping 95% intervals)"


# ---- the trade-off: style gained against subject lost -----------------------------------------

def tradeoff_points(gains: pd.DataFrame) -> pd.DataFrame:
    """The points of ``plots.tradeoff_figure`` from :attr:`AblationResult.gains`: one per distinct
    run (a cell both arms share, where rank x alpha_per_rank = fixed_alpha, is one point with arm
    "both arms"), with ``subject_lost`` (base minus LoRA subject accuracy) and ``style_gained``
    and their ``_low``/``_high`` ends; the style gained is the share of the way where the truth was
    judged (every cell has a share), else P_LoRA - P_base, as ``style_measure`` says. ``label``
    names the run ("r8 alpha 16, lr 0.0005"), ``arm`` its alpha arm. Empty when nothing was judged."""
    if gains.empty:
        return pd.DataFrame()
    measure = "share" if gains["share"].notna().all() else "gain"
    points: dict[tuple, dict[str, Any]] = {}
    for row in gains.itertuples():
        rank = int(row.rank)   # a float where the judged table's base rows left it empty
        run = (rank, row.study_lr, row.alpha)
        if run in points:
            points[run]["arm"] = "both arms"
            continue
        points[run] = {"label": f"r{rank} alpha {row.alpha:g}, lr {row.study_lr:g}",
                       "arm": ALPHA_MODE_NAMES[row.alpha_mode],
                       "rank": rank, "study_lr": row.study_lr, "alpha": row.alpha, "n_seeds": row.n_seeds,
                       **{f"subject_lost{end}": getattr(row, f"subject_lost{end}") for end in ("", "_low", "_high")},
                       **{f"style_gained{end}": getattr(row, f"{measure}{end}") for end in ("", "_low", "_high")},
                       "style_measure": STYLE_MEASURES[measure]}
    return pd.DataFrame(list(points.values()))


def subject_change_text(subject_lost: float) -> str:
    """How a run's subject accuracy moved against the base's, in words.

    >>> subject_change_text(0.2), subject_change_text(-0.1), subject_change_text(0.0)
    ('loses 0.20 of subject accuracy', 'gains 0.10 of subject accuracy', 'keeps the subject accuracy')
    """
    if abs(subject_lost) < FLOAT_SLACK:
        return "keeps the subject accuracy"
    return f"{'loses' if subject_lost > 0 else 'gains'} {abs(subject_lost):.2f} of subject accuracy"


def tradeoff_facts(points: pd.DataFrame, max_lost: float = MAX_SUBJECT_LOSS) -> dict[str, str]:
    """``tradeoff_measure`` (what the y axis shows) and ``found_tradeoff``: the run that gains most
    style, what it costs in subject accuracy, and the most style among the runs that lose at most
    ``max_lost`` of it (issue #15's bound).

    >>> points = pd.DataFrame({"label": ["r8, lr 0.0005", "r16, lr 0.0001"], "arm": ["alpha fixed (S1)", "both arms"],
    ...                        "style_gained": [0.8, 0.4], "subject_lost": [0.2, 0.05], "style_measure": ["share"] * 2})
    >>> print(tradeoff_facts(points)["found_tradeoff"])  # doctest: +NORMALIZE_WHITESPACE
    On held-out subjects, the run that gains most style (r8, lr 0.0005, alpha fixed (S1)) reaches 0.80
    (share) and loses 0.20 of subject accuracy; among the runs that lose at most 0.10, the best (r16, lr 0.0001,
    both arms) reaches 0.40.
    """
    if points.empty or points["subject_lost"].isna().all():
        missing = "not measured (no style judge or no subject classifier in this build)"
        return {"tradeoff_measure": missing, "found_tradeoff": f"The trade-off of style against subject was {missing}."}
    measure = points["style_measure"].iloc[0]
    best = points.loc[points["style_gained"].idxmax()]
    kept = points[points["subject_lost"] <= max_lost + FLOAT_SLACK]
    text = (f"On held-out subjects, the run that gains most style ({best['label']}, {best['arm']}) reaches "
            f"{best['style_gained']:.2f} ({measure}) and {subject_change_text(best['subject_lost'])}; ")
    if kept.empty:
        text += f"no run loses at most {max_lost:.2f} of it."
    else:
        top = kept.loc[kept["style_gained"].idxmax()]
        text += (f"among the runs that lose at most {max_lost:.2f}, the best ({top['label']}, {top['arm']}) reaches "
                 f"{top['style_gained']:.2f}.")
    return {"tradeoff_measure": measure, "found_tradeoff": text}
