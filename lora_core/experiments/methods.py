"""Chapter 3: LoRA vs textual inversion vs DreamBooth (and LyCORIS LoHa/LoKr) on one style set.

Same data, prompts, steps, batch and seeds for every method (S1 Exp. III's settings through
``common.method_config``); each finished run is loaded the way a user would load its exported
file (LoRA and LyCORIS files onto the base, the textual-inversion embedding into the tokenizer,
DreamBooth's whole model folder), generates the evaluation sets, and is scored by the shared
:class:`~lora_core.experiments.evaluate.Evaluator`. Costs come from the run summaries.

    result = run_methods("tiny", style="openmoji")
    result.aggregated; result.costs; result.facts["best_method"]

>>> from lora_core.profiles import get_profile
>>> sorted({key[0] for key in methods_configs(get_profile("smoke"), "openmoji")})
['dreambooth', 'loha', 'lokr', 'lora', 'textual_inversion']
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import (METHODS, EvalSet, eval_set, lr_scale, method_config,
                                          quiet_libraries, training_seeds)
from lora_core.experiments.evaluate import (DEFAULT_MEASURES, Evaluator, aggregate_seeds, generate_and_score,
                                            measure_panels)
from lora_core.plots import Sheet
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

BASE = "base"
CONTEXT_METHODS = ("loha", "lokr")  # LyCORIS, run for context beside S1's three methods
HELD_OUT = "held-out captions"
# cost figure: column -> axis label; parameter counts and file sizes span orders of magnitude
COST_COLUMNS = {"trainable_params": "trainable parameters", "s_per_step": "seconds per step",
                "export_mb": "export size (MB)"}
LOG_COST_COLUMNS = ("trainable_params", "export_mb")
# the order jobs start in: training seconds per run in a tiny build were about 85 (DreamBooth),
# 75 (LoRA, rank 32), 65 (LyCORIS) and 53 (textual inversion)
LONGEST_FIRST = ("dreambooth", "lora", "loha", "lokr", "textual_inversion")


@dataclass(kw_only=True)
class MethodsResult(ChapterResult):
    """Configs, run records, images and scores of every method, and what chapter 3 reads from
    them (filled by :func:`read_methods`). Facts: see :func:`read_methods`."""

    style: str
    configs: dict[tuple[str, int], TrainConfig]
    records: dict[tuple[str, int], Any]
    eval_sets: dict[str, EvalSet]
    images: dict[tuple[str, int | None, str], torch.Tensor] = field(default_factory=dict)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    ranks: pd.DataFrame = field(default_factory=pd.DataFrame)
    sheet: Sheet | None = None

    def config_table(self) -> pd.DataFrame:
        """``common.config_table`` of every run, labelled ``<method> seed <seed>``."""
        from lora_core.experiments.common import config_table

        return config_table({f"{method} seed {seed}": config for (method, seed), config in self.configs.items()})

    def style_panel(self) -> pd.DataFrame:
        """P(target style) on held-out subjects per method (base included), for ``plots.interval_panels``."""
        held = self.aggregated[self.aggregated.eval_set == HELD_OUT] if len(self.aggregated) else self.aggregated
        return measure_panels(held, ["p_target_style"]) if len(held) else held


def methods_configs(profile: Profile, style: str, methods: Sequence[str] = METHODS,
                    seeds: Sequence[int] | None = None,
                    context_seeds: int | None = None) -> dict[tuple[str, int], TrainConfig]:
    """(method, seed) -> config, every method on the same data, steps and batch. S1's three
    methods train with every seed; the LyCORIS context runs (:data:`CONTEXT_METHODS`) with the
    first ``context_seeds`` of them (all when None).

    >>> from lora_core.profiles import get_profile
    >>> configs = methods_configs(get_profile("tiny"), "openmoji", context_seeds=1)
    >>> sorted(seed for method, seed in configs if method == "loha"), len(configs)
    ([0], 11)
    """
    seeds = training_seeds(profile) if seeds is None else list(seeds)
    return {(method, seed): method_config(profile, method, style, seed) for method in methods
            for seed in (seeds[:context_seeds] if method in CONTEXT_METHODS else seeds)}


def export_bytes(path: str | Path) -> int:
    """Size of an exported file, or of every file in an exported folder (DreamBooth's model)."""
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def primary_export(record) -> Path:
    """The file or folder a user loads: diffusers layout when written, else the only export."""
    exports = record.exports
    return exports.get("diffusers") or next(iter(exports.values()))


def cost_table(records: dict[tuple[str, int], Any]) -> pd.DataFrame:
    """One row per run: trainable parameters, wall time, s/step, peak memory, export size, losses."""
    rows = []
    for (method, seed), record in records.items():
        s = record.summary
        rows.append({"method": method, "seed": seed, "config_hash": s["config_hash"],
                     "trainable_params": s["trainable_params"], "steps": s["steps"],
                     "wall_time_s": s["wall_time_s"], "s_per_step": s["wall_time_s"] / max(1, s["steps"]),
                     "peak_memory_mb": s["peak_memory_bytes"] / 2**20, "peak_memory_kind": s["peak_memory_kind"],
                     "export_mb": export_bytes(primary_export(record)) / 2**20, "final_loss": s["final_loss"]})
    return pd.DataFrame(rows)


def cost_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per method (parameters and file size do not vary with the seed)."""
    numeric = ["trainable_params", "wall_time_s", "s_per_step", "peak_memory_mb", "export_mb", "final_loss"]
    return costs.groupby("method", sort=False)[numeric].mean()


@contextlib.contextmanager
def adapted(base, method: str, record) -> Iterator[tuple[Any, Path | None, Any]]:
    """``(model, lora_file, prompt_fn)`` for generating with a finished run: the base plus the LoRA
    file, a copy of the base with the TI embedding or the LyCORIS network, or DreamBooth's model."""
    from lora_core.adapters.textual_inversion import TextualInversionAdapter, TextualInversionOptions

    export = primary_export(record)
    config = record.config
    if method == "lora":
        yield base, export, None
    elif method == "textual_inversion":
        from lora_core.blend import load_embedding

        options = TextualInversionOptions.from_dict(config["options"])
        model = copy.deepcopy(base)
        load_embedding(model, export, options.placeholder_token)
        yield model, None, lambda prompt: TextualInversionAdapter.caption_for(options, prompt)
    elif method == "dreambooth":
        from lora_core.models import load_base

        yield load_base(str(export)), None, None
    elif method in ("loha", "lokr"):
        from lora_core.adapters.lycoris import load_lycoris

        model = copy.deepcopy(base)
        load_lycoris(model, export)
        yield model, None, None
    else:
        raise ValueError(f"method: unknown method {method!r}. Valid: {', '.join(METHODS)}")


def run_methods(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                style: str = "openmoji", n_sheet_rows: int = 6, lycoris_seeds: int = 1) -> MethodsResult:
    """Chapter 3: every method of :data:`METHODS` on ``style`` (S1's three with the profile's seeds,
    LyCORIS with the first ``lycoris_seeds``), trained or reused, scored, and read for the page;
    ``n_sheet_rows`` subjects in the sample sheet."""
    settings = resolve_profile(profile)
    result = score_methods(settings, style, base=base, runs_root=runs_root, context_seeds=lycoris_seeds)
    return read_methods(result, n_sheet_rows)


def score_methods(profile: Profile, style: str, methods: Sequence[str] = METHODS, seeds: Sequence[int] | None = None,
                  splits: Sequence[str] = ("train", "heldout"), base=None, runs_root: str | Path | None = None,
                  evaluator: Evaluator | None = None, measures=DEFAULT_MEASURES,
                  context_seeds: int | None = None) -> MethodsResult:
    """Train/reuse every (method, seed) of :func:`methods_configs`, generate each split with it
    and with the base, score all: one job per run (:func:`score_method_run`), side by side where
    the cores allow (:mod:`lora_core.train_pool`), the longest runs first and the base last."""
    from lora_core.models import load_base
    from lora_core.train_pool import map_side_by_side, train_many

    base = base if base is not None else load_base(profile.base_model)
    evaluator = evaluator or Evaluator(profile)
    configs = methods_configs(profile, style, methods, seeds, context_seeds)
    result = MethodsResult(profile, style=style, configs=configs, records={},
                           eval_sets={split: eval_set(style, split, profile.n_eval_images) for split in splits})
    runs = sorted(configs, key=lambda run: LONGEST_FIRST.index(run[0])) + [(BASE, None)]
    jobs = [(score_method_run, (profile, configs.get(run), runs_root, style, result.eval_sets,
                                {"method": run[0], "seed": run[1]}, tuple(measures))) for run in runs]
    with quiet_libraries():
        scored = dict(zip(runs, map_side_by_side(jobs, shared=(base, evaluator))))
        result.records = train_many(configs, base=base, runs_root=runs_root)   # all finished: their records
    tables = []
    for run in [(BASE, None), *configs]:
        for split in splits:
            images, table, unavailable = scored[run][split]
            result.images[(*run, split)] = images
            tables.append(table)
            evaluator.unavailable.update(unavailable)
    result.results = pd.concat(tables, ignore_index=True)
    result.unavailable = dict(evaluator.unavailable)
    return result


def score_method_run(base, evaluator: Evaluator, profile: Profile, config: TrainConfig | None, runs_root,
                     style: str, sets: dict[str, EvalSet], labels: dict[str, Any], measures: tuple[str, ...]
                     ) -> dict[str, tuple[torch.Tensor, pd.DataFrame, dict[str, str]]]:
    """One run of chapter 3 trained (or reused; the base itself without a config), then each
    evaluation set generated with it (:func:`adapted`) and scored against ``style``:
    ``{split: (images, table, what the evaluator could not measure)}``."""
    from lora_core.train_pool import trained

    record = trained(base, config, runs_root)
    with quiet_libraries(), (adapted(base, labels["method"], record) if record else
                             contextlib.nullcontext((base, None, None))) as (model, lora_file, prompt_fn):
        return generate_and_score(evaluator, model, profile, sets, style, labels,
                                  {split: measures for split in sets}, lora_file, prompt_fn)


def s1_methods_table(aggregated: pd.DataFrame, split_name: str = "training captions") -> pd.DataFrame:
    """S1 Exp. III (reported) beside ours: per method, S1's FID/CLIP/IS/LPIPS and our counterparts,
    and the method ranking by each (1 = lowest FD, highest alignment, IS and LPIPS diversity)."""
    from lora_core.experiments.evaluate import MEASURES, reported_table

    counterpart = {"FID": "fd_effnet", "CLIP": "alignment", "IS": "is_effnet", "LPIPS": "st_lpips_diversity"}
    reported = reported_table("S1", "III").pivot_table(index="method", columns="metric", values="value")
    reported.index = reported.index.str.replace(" ", "_").str.lower()
    ours = aggregated[aggregated.eval_set == split_name]
    rows = []
    for s1_metric, measure in counterpart.items():
        mine = ours[ours.measure == measure].set_index("method")["value"]
        higher = MEASURES[measure][0] == "higher"   # S1's metric ranks the same way as ours
        s1_col = reported[s1_metric] if s1_metric in reported else pd.Series(dtype=float)
        s1_rank = s1_col.rank(ascending=not higher)
        our_rank = mine.drop(BASE, errors="ignore").rank(ascending=not higher)
        for method in ("lora", "textual_inversion", "dreambooth"):
            rows.append({"S1 metric": s1_metric, "method": method, "S1 value": s1_col.get(method),
                         "S1 rank": s1_rank.get(method), "our measure": measure, "our value": mine.get(method),
                         "our rank (of all methods)": our_rank.get(method)})
    return pd.DataFrame(rows)


# ---- the page: tables and facts read from the scores --------------------------------------------

def read_methods(result: MethodsResult, n_sheet_rows: int = 6) -> MethodsResult:
    """Fill what chapter 3 shows (aggregated scores, costs, S1's ranking beside ours, the sample
    sheet) and its facts: ``style``, ``lr_scale``, ``n_seeds``, ``lycoris_seeds``, the cost ratios
    of :func:`cost_facts`, the style winner of :func:`style_facts`, ``rank_agree`` and the finding
    box's ``found_*``."""
    result.aggregated = aggregate_seeds(result.results)
    result.costs = cost_table(result.records)
    result.ranks = s1_methods_table(result.aggregated)
    result.sheet = sample_sheet(result, "heldout", n_sheet_rows)
    context = {seed for method, seed in result.configs if method in CONTEXT_METHODS}
    matched = result.ranks.dropna(subset=["S1 rank", "our rank (of all methods)"])
    agree = int((matched["S1 rank"] == matched["our rank (of all methods)"]).sum())
    result.add_facts(style=result.style, lr_scale=f"{lr_scale(result.profile):g}",
                     n_seeds=len({seed for method, seed in result.configs if method not in CONTEXT_METHODS}),
                     lycoris_seeds=len(context),
                     **cost_facts(cost_summary(result.costs)), **style_facts(result.aggregated, result.style),
                     rank_agree=f"{agree} of {len(matched)}")
    result.add_facts(found_ranks=f"Our ranking of the methods matches S1's in {result.facts['rank_agree']} "
                                 "(method, metric) cells.")
    return result


def cost_facts(summary: pd.DataFrame) -> dict[str, str]:
    """How many times DreamBooth's trainable parameters and export size are the LoRA's
    (``params_ratio``, ``size_ratio``) and the sentence ``found_cost``.

    >>> summary = pd.DataFrame({"trainable_params": [100, 5000], "export_mb": [0.5, 20.0]},
    ...                        index=pd.Index(["lora", "dreambooth"], name="method"))
    >>> cost_facts(summary)["found_cost"]
    'DreamBooth trains 50x the parameters of the rank-32 LoRA and its export is 40x as large.'
    """
    if not {"lora", "dreambooth"} <= set(summary.index):
        missing = "not measured (LoRA or DreamBooth did not run)"
        return {"params_ratio": missing, "size_ratio": missing, "found_cost": f"Costs: {missing}."}
    params = summary.loc["dreambooth", "trainable_params"] / summary.loc["lora", "trainable_params"]
    size = summary.loc["dreambooth", "export_mb"] / summary.loc["lora", "export_mb"]
    return {"params_ratio": f"{params:.0f}", "size_ratio": f"{size:.0f}",
            "found_cost": f"DreamBooth trains {params:.0f}x the parameters of the rank-32 LoRA and its export is "
                          f"{size:.0f}x as large."}


def most_in_style(aggregated: pd.DataFrame, split_name: str = HELD_OUT) -> tuple[pd.Series, pd.Series] | None:
    """The adapted method whose images the style classifier finds most in the target style on
    ``split_name`` (highest mean P(target style)), and the base's row; None without a classifier."""
    held = aggregated[(aggregated.eval_set == split_name) & (aggregated.measure == "p_target_style")]
    adapted = held[held.method != BASE]
    if adapted.empty or (held.method == BASE).sum() == 0:
        return None
    return adapted.sort_values("value", ascending=False, kind="stable").iloc[0], held[held.method == BASE].iloc[0]


def style_facts(aggregated: pd.DataFrame, style: str) -> dict[str, str]:
    """``best_method``, ``best_value``, ``base_value`` (value [95% interval]) of :func:`most_in_style`
    and the sentence ``found_best``."""
    from lora_core.experiments.evaluate import ci_text

    found = most_in_style(aggregated)
    if found is None:
        missing = "not measured (no style classifier)"
        return {"best_method": missing, "best_value": missing, "base_value": missing,
                "found_best": f"Which method moves furthest toward {style}: {missing}."}
    best, base = found
    values = {name: ci_text(row.value, row.ci_low, row.ci_high, 2) for name, row in (("best", best), ("base", base))}
    return {"best_method": str(best.method), "best_value": values["best"], "base_value": values["base"],
            "found_best": f"On held-out subjects, the style classifier finds the most {style} in the images of "
                          f"{best.method}: P(style) {values['best']}, against {values['base']} for the plain base."}


def sample_sheet(result: MethodsResult, split: str = "heldout", n: int = 6) -> Sheet:
    """One row per subject: the true image in the style, the base's image, and each method's
    (training seed 0) from the same prompt and generation seed."""
    from lora_core.metrics.style import load_true_images
    from lora_core.world import true_images_dir

    es = result.eval_sets[split]
    n = min(n, len(es))
    truth = load_true_images(es.subject_keys[:n], true_images_dir(result.style), result.profile.resolution)
    columns = [(BASE, None)] + [(method, 0) for method in dict.fromkeys(m for m, _ in result.configs)]
    cells = []
    for i in range(n):
        subject = es.captions[i][:28]
        cells.append((truth[i], {"subject": subject, "column": f"true {result.style}"}))
        cells += [(result.images[(method, seed, split)][i], {"subject": subject, "column": method})
                  for method, seed in columns]
    title = f"{es.name}, seed 0 of each method ({result.profile.name} profile)"
    return Sheet.of(cells, rows="subject", cols="column", title=title, cell_inches=0.9)
