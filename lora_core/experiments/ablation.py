"""Chapter 2: rank x learning rate, run twice: alpha fixed (S1's code) and alpha tied to the rank.

Study S1 (Exp. II) trained ranks {8, 16, 32} x learning rates {1e-4, 5e-4} with alpha held at 16,
so the LoRA scale ``alpha / r`` was 2, 1 and 0.5: a larger rank also meant a smaller scale, and
the table cannot tell the two apart. Here the grid runs in two arms:

* ``fixed``: alpha = ``fixed_alpha`` at every rank (S1's code; scale falls as the rank grows);
* ``tied``: alpha = ``alpha_per_rank x rank`` (the diffusers examples; the scale stays constant).

Where the arms coincide (rank x alpha_per_rank = fixed_alpha, e.g. rank 16 with alpha 16) the
configs are identical and the run is shared; the cell at the profile's own rank, alpha, learning
rate and steps is chapter 1's run. Every config comes from ``common.style_lora_config``.

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
from lora_core.experiments.common import eval_set, lr_scale, style_lora_config
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

ALPHA_MODES = ("fixed", "tied")
ALPHA_MODE_NAMES = {"fixed": "alpha fixed (S1)", "tied": "alpha tied to rank"}
S1_STEPS = 3000  # S1 Exp. II trained 3000 steps (Exp. I: 1000)
# Our measures next to S1's columns: (our measure key, S1 metric name). Not the same networks.
S1_COUNTERPARTS = (("fd_effnet", "FID"), ("alignment", "CLIP"), ("is_effnet", "IS"), ("st_lpips_diversity", "LPIPS"))
MEASURES = ("fd_effnet", "kid_effnet", "is_effnet", "st_lpips_diversity", "alignment", "p_target_style",
            "feature_to_target", "st_lpips_to_target")
Key = tuple[str, int, float, int]  # (alpha mode, rank, S1's learning rate, training seed)


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

@dataclass
class AblationResult:
    """Configs, run records (one per unique hash), per-run facts and the tidy results table."""

    profile: Profile
    settings: AblationSettings
    configs: dict[Key, TrainConfig]
    records: dict[str, Any]                  # config hash -> RunRecord
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)

    def record(self, key: Key):
        return self.records[self.configs[key].hash()]

    def backbone_agreement(self, measure_a: str = "fid", measure_b: str = "fd_effnet"):
        """``evaluate.rank_agreement`` over the distinct runs (a run both arms share counts once)."""
        from lora_core.experiments.evaluate import rank_agreement

        distinct = self.results.drop_duplicates(subset=["measure", "rank", "study_lr", "seed", "alpha"])
        return rank_agreement(distinct.drop(columns=["alpha_mode"]), measure_a, measure_b)

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
        """Training loss per step of every cell (tidy), with a trailing rolling mean ``loss_smooth``."""
        frames = []
        for key in self.configs:
            metrics = pd.DataFrame(self.record(key).metrics())[["step", "loss"]]
            metrics["loss_smooth"] = metrics["loss"].rolling(window, min_periods=1).mean()
            frames.append(metrics.assign(**_key_labels(key)))
        return pd.concat(frames, ignore_index=True)


def _key_labels(key: Key) -> dict[str, Any]:
    mode, rank, study_lr, seed = key
    return {"alpha_mode": mode, "rank": rank, "study_lr": study_lr, "seed": seed}


def train_grid(configs: dict[Key, TrainConfig], base=None, runs_root: str | Path | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Train (or reuse, by config hash) every distinct config once; ``{hash: RunRecord}``."""
    from lora_core.train import train

    unique = {config.hash(): config for config in configs.values()}
    return {h: train(config, base=base, runs_root=runs_root, progress=progress) for h, config in unique.items()}


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


def evaluate_grid(profile: Profile, settings: AblationSettings, configs: dict[Key, TrainConfig],
                  records: dict[str, Any], base, evaluator, measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """Regenerate ``n_prompts`` training captions with every distinct run (S1's protocol) and score
    them; a run shared by both arms is generated and scored once and reported in both."""
    from lora_core.experiments.common import generate_eval_images, quiet_libraries

    evalset = eval_set(settings.style, "train", settings.n_prompts)
    by_hash: dict[str, pd.DataFrame] = {}
    frames = []
    for key, config in configs.items():
        if config.hash() not in by_hash:
            with quiet_libraries():
                images = generate_eval_images(base, list(evalset.prompts), list(evalset.seeds), profile,
                                              adapter=records[config.hash()].exports["diffusers"])
            by_hash[config.hash()] = evaluator.evaluate(images, evalset, settings.style, measures=measures)
        labels = {**_key_labels(key), "alpha": config.options.effective_alpha, "scale": config.options.scale}
        frames.append(by_hash[config.hash()].assign(**labels))
    return pd.concat(frames, ignore_index=True)


def run_ablation(profile: Profile, settings: AblationSettings, base, evaluator,
                 runs_root: str | Path | None = None, fid: bool = False) -> AblationResult:
    """Train (or reuse) the grid, generate and score; ``AblationResult`` for the chapter. ``fid``
    adds FID (Inception 2015) when the profile names an FID network."""
    configs = ablation_configs(profile, settings)
    records = train_grid(configs, base, runs_root)
    measures = MEASURES + (("fid",) if fid and profile.fid_backbone != "none" else ())
    results = evaluate_grid(profile, settings, configs, records, base, evaluator, measures)
    return AblationResult(profile, settings, configs, records, results, dict(evaluator.unavailable))


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


# ---- figures ----------------------------------------------------------------------------------

def _panels(n: int, width: float = 3.2, height: float = 2.8, sharey: bool = False):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, sharey=sharey)
    return figure, axes[0]


def loss_figure(curves: pd.DataFrame, title: str):
    """Smoothed training loss against step: one panel per (alpha mode, S1 lr), a line per rank
    (first seed)."""
    curves = curves[curves["seed"] == curves["seed"].min()]
    groups = list(curves.groupby(["alpha_mode", "study_lr"], sort=False))
    figure, axes = _panels(len(groups), sharey=True)
    for ax, ((mode, study_lr), group) in zip(axes, groups):
        for rank, line in group.groupby("rank"):
            ax.plot(line["step"], line["loss_smooth"], label=f"r={rank}")
        ax.set_title(f"{ALPHA_MODE_NAMES[mode]}, S1 lr {study_lr:g}", fontsize=8)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("training loss (rolling mean)")
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def rank_figure(aggregated: pd.DataFrame, measures: Sequence[str], title: str):
    """Each measure against rank (log scale) with 95% intervals: a line per (alpha mode, S1 lr)."""
    present = [m for m in measures if m in set(aggregated["measure"])]
    figure, axes = _panels(max(1, len(present)))
    for ax, measure in zip(axes, present):
        rows = aggregated[aggregated["measure"] == measure]
        for (mode, study_lr), line in rows.groupby(["alpha_mode", "study_lr"], sort=False):
            line = line.sort_values("rank")
            error = [(line["value"] - line["ci_low"]).clip(lower=0), (line["ci_high"] - line["value"]).clip(lower=0)]
            ax.errorbar(line["rank"], line["value"], yerr=error, marker="o", capsize=2,
                        linestyle="-" if mode == "fixed" else "--", label=f"{ALPHA_MODE_NAMES[mode]}, lr {study_lr:g}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(rows["rank"])), labels=[str(r) for r in sorted(set(rows["rank"]))])
        ax.set_title(f"{measure}\n({rows['metric'].iloc[0]})", fontsize=8)
        ax.set_xlabel("rank r")
        ax.legend(fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def cost_figure(facts: pd.DataFrame, title: str):
    """Trainable parameters and file size against rank (identical in both arms), and the learned
    update's size per arm: where the fixed-alpha confound shows directly."""
    first = facts[facts["seed"] == facts["seed"].min()]
    columns = [c for c in ("trainable_params", "file_bytes", "delta_norm") if c in first.columns]
    figure, axes = _panels(len(columns))
    for ax, column in zip(axes, columns):
        for (mode, study_lr), line in first.groupby(["alpha_mode", "study_lr"], sort=False):
            line = line.sort_values("rank")
            ax.plot(line["rank"], line[column], marker="o", linestyle="-" if mode == "fixed" else "--",
                    label=f"{ALPHA_MODE_NAMES[mode]}, lr {study_lr:g}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(set(first["rank"])), labels=[str(r) for r in sorted(set(first["rank"]))])
        ax.set_xlabel("rank r")
        ax.set_title({"trainable_params": "trainable parameters", "file_bytes": "LoRA file (bytes)",
                      "delta_norm": "mean ||s B A||_F per module"}[column], fontsize=8)
        ax.legend(fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure
