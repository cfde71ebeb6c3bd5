"""Chapter 5: one character from 28 images with LyCORIS (IA)^3 and Prodigy, against LoRA + AdamW (study S2).

S2 trained LyCORIS (IA)^3 with the Prodigy optimizer for 10,000 steps on 28 stickers of one anime
character, captioned with booru-style tags, and reported FID 77.29 between 100 generated and the
28 real images. Here the character is Fluent 3D's yellow face (the subject set
``face_character``: 28 expressions to train on, the others held out, each with its true image),
and every run is one recipe on one caption style:

* ``ia3_prodigy``, S2's recipe: (IA)^3 rescales the UNet's ``to_k``, ``to_v`` and ``ff.net.2``
  and the text encoder's ``k_proj``, ``v_proj`` and ``fc2``; Prodigy at lr 1.0 with
  ``optim.PRODIGY_SETTINGS`` (d_coef 1.0, safeguard warmup, bias correction), weight decay 0.01,
  betas (0.9, 0.99) and a cosine schedule without restarts: prodigyopt's advice for diffusion.
* ``lora_adamw``, a plain LoRA: the profile's rank, alpha and learning rate on the UNet's attention
  (the diffusers examples' targets, not the profile's ``lora_targets``), AdamW, constant.

:data:`ARMS` pair them with captions: both recipes on tags (the method comparison at S2's
captions) and S2's recipe on sentence captions too (the caption comparison at S2's method); the
same steps, batch and seeds everywhere. Held-out expressions are generated in the run's own
caption style and scored against their true images. The FD section lives in
:mod:`lora_core.experiments.character_fd`.

    result = run_character("tiny")
    result.aggregated; result.costs; result.step_sizes; result.fd.same_style

>>> from lora_core.profiles import get_profile
>>> configs = character_configs(get_profile("sd15"), character_settings(get_profile("sd15")), folder="x")
>>> config = configs[("ia3_prodigy", "tags", 0)]
>>> config.max_train_steps, config.optimizer, config.learning_rate, config.lr_scheduler, config.data.caption_extension
(10000, 'prodigy', 1.0, 'cosine', '.tags')
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import pandas as pd
import torch

from lora_core.config import Config, option
from lora_core.experiments.chapter import ChapterResult, resolve_profile
from lora_core.experiments.common import EvalSet, GENERATION_SEED_START, features_cache, quiet_libraries
from lora_core.plots import Sheet
from lora_core.profiles import Profile
from lora_core.train import TrainConfig

RECIPES = {"ia3_prodigy": "iA3 + Prodigy", "lora_adamw": "LoRA + AdamW", "base": "base"}
CAPTIONS = {"tags": ".tags", "sentences": ".txt"}   # caption style -> caption file of the set
ARMS = (("ia3_prodigy", "tags"), ("lora_adamw", "tags"), ("ia3_prodigy", "sentences"))
S2_ARM, LORA_ARM, SENTENCE_ARM = ARMS
BASE = "base"
S2_STEPS = 10_000
PRODIGY_BETAS = (0.9, 0.99)      # prodigyopt's README: optionally (0.9, 0.99) for diffusion models
PRODIGY_WEIGHT_DECAY = 0.01      # the same README's advice
# what the (IA)^3 adapter should wrap: module-name suffixes per network (LyCORIS' ia3 preset)
IA3_TARGETS = {"unet": ("to_k", "to_v", "ff.net.2"), "text_encoder": ("k_proj", "v_proj", "fc2")}
FIDELITY_MEASURES = ("feature_to_target", "st_lpips_to_target", "p_target_style", "kid_effnet", "alignment")
EXPRESSION = "expression_p"      # the subject classifier at subcategory level: P(true face-* group)
HELD_OUT = "held-out expressions"


@dataclass(frozen=True)
class CharacterSettings(Config):
    subject_set: str = option("face_character", "the character's subject set (lora_core.world.SUBJECT_SETS)")
    train_steps: int = option(0, "optimizer steps of every run; 0 = the profile's train_steps (S2: 10,000)")
    n_seeds: int = option(0, "training seeds 0..n_seeds-1 of every arm; 0 = the profile's n_seeds")
    n_heldout: int = option(0, "held-out expressions generated per run (at most all); 0 = profile.n_eval_images")
    real_pool: int = option(0, "the vendor's images in the FD section's real pool; 0 = all of them")
    real_sizes: tuple[int, ...] = option((10, 28, 100, 300), "numbers n of real images drawn from the pool "
                                                             "(the training set's size and the whole pool are added)")
    same_style_m: int = option(100, "size of the second sample in the same-style FD (S2: 100 generated images)")
    n_draws: int = option(20, "draws per (n, m) behind every band of the FD section")
    sheet_rows: int = option(6, "held-out expressions in the sample sheet")

    def __post_init__(self) -> None:
        for name in ("train_steps", "n_seeds", "n_heldout", "real_pool"):
            if getattr(self, name) < 0:
                raise ValueError(f"CharacterSettings: {name} must be >= 0 (0: the default), got {getattr(self, name)}")
        if any(n < 2 for n in self.real_sizes) or self.same_style_m < 2 or self.n_draws < 2:
            raise ValueError(f"CharacterSettings: real_sizes and same_style_m need >= 2 images and n_draws >= 2, got "
                             f"{self.real_sizes}, {self.same_style_m}, {self.n_draws}")
        if self.sheet_rows < 1:
            raise ValueError(f"CharacterSettings: sheet_rows must be >= 1, got {self.sheet_rows}")


# Per-profile sizes. smoke: seconds. tiny: the cost is counted in :func:`work_counts` (runs x
# steps, generated images, images through the FID network, which costs ~0.1-0.26 s per image on
# 2 CPU cores: hence a pool of 400 of the vendor's 1,570 images). sd15: S2's 10,000 steps and
# every image of the vendor.
CHARACTER = {"smoke": CharacterSettings(real_pool=60, real_sizes=(10,), same_style_m=20, n_draws=4, sheet_rows=3),
             "tiny": CharacterSettings(real_pool=400, real_sizes=(10, 100, 200)),
             "sd15": CharacterSettings(train_steps=S2_STEPS, real_sizes=(10, 100, 300, 700))}


def character_settings(profile: Profile, **overrides) -> CharacterSettings:
    """The profile's chapter-5 sizes with ``overrides`` whose value is not 0 (unknown keys raise)."""
    given = {key: value for key, value in overrides.items() if value}
    return CHARACTER[profile.name].replace(**given) if given else CHARACTER[profile.name]


def training_seeds(profile: Profile, settings: CharacterSettings) -> tuple[int, ...]:
    return tuple(range(settings.n_seeds or profile.n_seeds))


def arm_label(recipe: str, captions: str) -> str:
    """``"iA3 + Prodigy, tags"``: how tables and figures name a run's recipe and captions."""
    return f"{RECIPES[recipe]}, {captions}"


# ---- the subject set --------------------------------------------------------------------------

def subject_set(name: str):
    """``lora_core.world.SUBJECT_SETS[name]`` (fields ``vendor``, ``trigger``, ``folder(split)``)."""
    from lora_core import world

    sets = getattr(world, "SUBJECT_SETS", {})
    if name not in sets:
        raise ValueError(f"subject_set: unknown subject set {name!r}. Valid: {', '.join(sets) or 'none defined'}")
    return sets[name]


def character_folder(name: str, split: str) -> str:
    """The set's ``split`` folder, relative to the repository when it lies inside it (run hashes
    then do not depend on where the repository is checked out)."""
    from lora_core.models import REPO_ROOT

    if split not in ("train", "heldout"):
        raise ValueError(f"split: {split!r} is not one of train, heldout")
    folder = Path(subject_set(name).folder(split))
    try:  # not resolved: data/ may be a link, and the hash must not follow it to a machine path
        return folder.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return folder.as_posix()


def _absolute(folder: str) -> Path:
    from lora_core.models import REPO_ROOT

    return Path(folder) if Path(folder).is_absolute() else REPO_ROOT / folder


def _first_line(path: Path) -> str:
    return path.read_text(encoding="utf-8").splitlines()[0].strip()


def character_eval_set(name: str, split: str, n: int, captions: str) -> EvalSet:
    """``n`` expressions of the set's ``split`` (all when n is larger), prompted with their own
    ``captions`` file (tags or sentences); ``captions`` of the EvalSet are the sentence captions
    without the trigger word (what prompt alignment compares with), subject keys the file stems."""
    from lora_core.experiments.common import _selection

    if captions not in CAPTIONS:
        raise ValueError(f"captions: {captions!r} is not one of {', '.join(CAPTIONS)}")
    folder = _absolute(character_folder(name, split))
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"{folder}: no captions; build the toy world with `python -m lora_core.toy build`")
    files = [files[i] for i in _selection(len(files), n)]
    prompts = [_first_line(f.with_suffix(CAPTIONS[captions])) for f in files]
    trigger = subject_set(name).trigger
    plain = [_first_line(f).removesuffix(f", {trigger}") for f in files]
    return EvalSet(HELD_OUT if split == "heldout" else "training expressions", subject_set(name).vendor,
                   tuple(prompts), tuple(plain), tuple(GENERATION_SEED_START + i for i in range(len(files))),
                   tuple(f.stem for f in files))


# ---- run configs ------------------------------------------------------------------------------

def character_config(profile: Profile, recipe: str, captions: str, seed: int, settings: CharacterSettings,
                     folder: str | None = None) -> TrainConfig:
    """One run: ``recipe`` (see the module docstring) on the set's training images with its
    ``captions`` file, at the chapter's steps and the profile's batch; ``folder`` overrides the
    set's training folder (tests)."""
    from lora_core.data import DataConfig

    data = DataConfig(folder=folder or character_folder(settings.subject_set, "train"),
                      resolution=profile.resolution, caption_extension=CAPTIONS[captions])
    fields = {"data": data, "base_model": profile.base_model, "seed": seed, "batch_size": profile.batch_size,
              "max_train_steps": settings.train_steps or profile.train_steps,
              "mixed_precision": profile.mixed_precision}
    if recipe == "lora_adamw":
        return TrainConfig(method="lora", options={"rank": profile.lora_rank, "alpha": profile.lora_alpha},
                           learning_rate=profile.learning_rate, **fields)
    if recipe == "ia3_prodigy":   # bypass: scales applied to layers' outputs, no merged weights (step 10% faster)
        return TrainConfig(method="lycoris", options={"algo": "ia3", "train_text_encoder": True, "bypass": True},
                           optimizer="prodigy", learning_rate=1.0, weight_decay=PRODIGY_WEIGHT_DECAY,
                           adam_betas=PRODIGY_BETAS, lr_scheduler="cosine", **fields)
    raise ValueError(f"recipe: unknown recipe {recipe!r}. Valid: ia3_prodigy, lora_adamw")


def character_configs(profile: Profile, settings: CharacterSettings, folder: str | None = None
                      ) -> dict[tuple[str, str, int], TrainConfig]:
    """``{(recipe, captions, seed): config}`` for every arm of :data:`ARMS` and training seed."""
    return {(recipe, captions, seed): character_config(profile, recipe, captions, seed, settings, folder)
            for recipe, captions in ARMS for seed in training_seeds(profile, settings)}


# ---- generation and scores ----------------------------------------------------------------------

@contextlib.contextmanager
def adapted_model(base, record) -> Iterator[tuple[Any, Path | None]]:
    """``(model, lora_file)`` to generate with a finished run (None: the base itself): a LoRA file
    loads onto ``base`` at generation, a LyCORIS file onto a copy of it."""
    if record is None:
        yield base, None
    elif record.summary["method"] == "lycoris":
        from lora_core.adapters.lycoris import load_lycoris

        model = copy.deepcopy(base)
        load_lycoris(model, record.exports["kohya"])
        yield model, None
    else:
        yield base, record.exports["diffusers"]


def expression_head(evaluator):
    """The subject classifier at subcategory level (the face-* groups are the expressions), or
    None, noted in ``evaluator.unavailable``, when its file is missing."""
    from lora_core.metrics.style import SUBJECT_GROUP_PATHS, SubjectGroupClassifier

    path = SUBJECT_GROUP_PATHS["subcategory"]
    if not path.is_file():
        evaluator.unavailable["expression"] = f"{path} is missing (python -m lora_core.toy train-heads)"
        return None
    return SubjectGroupClassifier(path, cache=evaluator.cache)


def score_images(evaluator, head, images: torch.Tensor, evalset: EvalSet, labels: dict[str, Any]) -> pd.DataFrame:
    """The fidelity measures of one run (or the base) on held-out expressions, plus P(true
    expression group) from ``head``."""
    from lora_core.experiments.evaluate import _at_resolution, results_frame

    rows = evaluator.evaluate(images, evalset, evalset.style, labels, measures=FIDELITY_MEASURES)
    if head is None:
        return rows
    result = head.p_true_group(_at_resolution(images, head.resolution), list(evalset.subject_keys),
                               torch.Generator().manual_seed(evaluator.seed))
    extra = results_frame({EXPRESSION: result}, {"eval_set": evalset.name, "target_style": evalset.style, **labels})
    return pd.concat([rows, extra.assign(better="higher")], ignore_index=True)


# ---- what the runs show --------------------------------------------------------------------------

def ia3_check(base, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per network and expected target (:data:`IA3_TARGETS`): how many modules of that name the
    model has, how many the adapter wraps, and the parameters it trains there; a row ``other``
    counts wrapped modules that match no expected target (there should be none)."""
    models = {"unet": base.unet, "text_encoder": base.text_encoder}
    table, matched = [], set()
    for network, targets in IA3_TARGETS.items():
        present = [path for path, _ in models[network].named_modules()]
        for target in targets:
            wrapped = [r for r in rows if r["network"] == network and r["module"].endswith(f".{target}")]
            matched.update(r["module"] for r in wrapped)
            table.append({"network": network, "target": target,
                          "in model": sum(p.endswith(f".{target}") for p in present),
                          "wrapped": len(wrapped), "parameters": sum(r["parameters"] for r in wrapped)})
    others = [r for r in rows if r["module"] not in matched]
    table.append({"network": "any", "target": "other", "in model": 0, "wrapped": len(others),
                  "parameters": sum(r["parameters"] for r in others)})
    return pd.DataFrame(table)


def step_size_curves(records: Mapping[tuple[str, str, int], Any]) -> pd.DataFrame:
    """Per run and step: the scheduled ``lr``, Prodigy's estimate ``d`` (NaN for AdamW) and the
    per-coordinate step size both Adam-type optimizers take, ``d * lr`` (AdamW: ``lr``)."""
    frames = []
    for (recipe, captions, seed), record in records.items():
        rows = pd.DataFrame(record.metrics())
        d = rows["d"] if "d" in rows else pd.Series(float("nan"), index=rows.index)
        frames.append(pd.DataFrame({"arm": arm_label(recipe, captions), "seed": seed, "step": rows["step"],
                                    "lr": rows["lr"], "d": d, "step_size": rows["lr"] * d.fillna(1.0)}))
    return pd.concat(frames, ignore_index=True)


def compare(first: pd.Series, second: pd.Series, better: str) -> str:
    """How ``first`` fares against ``second`` on a measure where ``better`` (``"higher"`` or
    ``"lower"``) is better: ``"better"`` or ``"worse"`` when their 95% intervals do not overlap,
    else ``"no clear difference"``.

    >>> row = lambda value, low, high: pd.Series({"value": value, "ci_low": low, "ci_high": high})
    >>> high, low = row(0.8, 0.7, 0.9), row(0.5, 0.4, 0.6)
    >>> compare(high, low, "higher"), compare(high, low, "lower")
    ('better', 'worse')
    >>> compare(row(0.8, 0.5, 0.9), row(0.6, 0.4, 0.7), "higher")
    'no clear difference'
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better: must be 'higher' or 'lower', got {better!r}")
    if first.ci_low > second.ci_high:
        return "better" if better == "higher" else "worse"
    if first.ci_high < second.ci_low:
        return "worse" if better == "higher" else "better"
    return "no clear difference"


def comparison_table(aggregated: pd.DataFrame, first: tuple[str, str], second: tuple[str, str]) -> pd.DataFrame:
    """Per measure both arms measured: their value [95% interval] over seeds and how ``first``
    fares against ``second`` (:func:`compare`)."""
    from lora_core.experiments.evaluate import ci_text

    def rows_of(arm: tuple[str, str]) -> pd.DataFrame:
        return aggregated[(aggregated.recipe == RECIPES[arm[0]]) & (aggregated.captions == arm[1])].set_index("measure")

    a, b = rows_of(first), rows_of(second)
    table = []
    for measure in [m for m in a.index if m in b.index]:
        table.append({"measure": measure, "metric": a.loc[measure, "metric"],
                      arm_label(*first): ci_text(*a.loc[measure, ["value", "ci_low", "ci_high"]]),
                      arm_label(*second): ci_text(*b.loc[measure, ["value", "ci_low", "ci_high"]]),
                      "better": a.loc[measure, "better"],
                      "reading": compare(a.loc[measure], b.loc[measure], a.loc[measure, "better"])})
    return pd.DataFrame(table)


def tally(comparison: pd.DataFrame) -> str:
    """The readings of a :func:`comparison_table` in words.

    >>> tally(pd.DataFrame({"reading": ["better", "no clear difference", "better"]}))
    'better on 2, worse on 0 and not clearly different on 1 of 3 measures'
    """
    counts = comparison["reading"].value_counts()
    return (f"better on {counts.get('better', 0)}, worse on {counts.get('worse', 0)} and not clearly different on "
            f"{counts.get('no clear difference', 0)} of {len(comparison)} measures")


def optimizer_columns(configs: Sequence[TrainConfig]) -> dict[str, list]:
    """Per config: optimizer, weight decay, betas, schedule and caption file (config_table's extra columns)."""
    return {"optimizer": [c.optimizer for c in configs], "weight_decay": [c.weight_decay for c in configs],
            "betas": [str(c.adam_betas) for c in configs], "schedule": [c.lr_scheduler for c in configs],
            "captions": [c.data.caption_extension for c in configs]}


# ---- the chapter ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class CharacterResult(ChapterResult):
    """Chapter 5's runs, images, scores and FD study (filled by :func:`run_character`). Facts:
    see :func:`read_character` and :func:`lora_core.experiments.character_fd.fd_facts`."""

    settings: CharacterSettings
    configs: dict[tuple[str, str, int], TrainConfig]
    records: dict[tuple[str, str, int], Any]
    eval_sets: dict[str, EvalSet]
    images: dict[tuple[str, str, int | None], torch.Tensor] = field(default_factory=dict)
    results: pd.DataFrame = field(default_factory=pd.DataFrame)
    unavailable: dict[str, str] = field(default_factory=dict)
    aggregated: pd.DataFrame = field(default_factory=pd.DataFrame)
    costs: pd.DataFrame = field(default_factory=pd.DataFrame)
    step_sizes: pd.DataFrame = field(default_factory=pd.DataFrame)
    ia3_modules: pd.DataFrame = field(default_factory=pd.DataFrame)
    ia3_targets: pd.DataFrame = field(default_factory=pd.DataFrame)
    fd: Any = None     # character_fd.FDStudy

    @property
    def seeds(self) -> tuple[int, ...]:
        return training_seeds(self.profile, self.settings)

    def config_table(self) -> pd.DataFrame:
        """``common.config_table`` of every run, labelled ``<recipe>, <captions> seed <seed>``, with
        the optimizer settings the two recipes differ in."""
        from lora_core.experiments.common import config_table

        table = config_table({f"{arm_label(r, c)} seed {s}": config for (r, c, s), config in self.configs.items()})
        return table.assign(**optimizer_columns(list(self.configs.values())))

    def study_settings_table(self) -> pd.DataFrame:
        """The ``sd15`` profile's run of S2's recipe: the study's own steps, optimizer and captions."""
        from lora_core.experiments.common import config_table
        from lora_core.profiles import get_profile

        sd15 = get_profile("sd15")
        config = character_config(sd15, *S2_ARM, 0, character_settings(sd15))
        return config_table({f"sd15: {arm_label(*S2_ARM)} seed 0": config}).assign(**optimizer_columns([config]))

    def cost_summary(self) -> pd.DataFrame:
        """Mean over seeds per arm of :func:`methods.cost_table`'s columns."""
        from lora_core.experiments.methods import cost_summary

        return cost_summary(self.costs.rename(columns={"arm": "method"})).rename_axis("arm")

    def method_comparison(self) -> pd.DataFrame:
        return comparison_table(self.aggregated, S2_ARM, LORA_ARM)

    def caption_comparison(self) -> pd.DataFrame:
        return comparison_table(self.aggregated, S2_ARM, SENTENCE_ARM)

    def results_table(self) -> pd.DataFrame:
        """``value [95% interval]`` per measure (rows) and arm (columns), base included."""
        from lora_core.experiments.evaluate import format_results

        return format_results(self.aggregated, index=["measure", "metric"], columns="arm")

    def fidelity_panels(self) -> pd.DataFrame:
        """The aggregated measures, one panel each, for ``plots.interval_panels`` (x: ``arm``)."""
        from lora_core.experiments.evaluate import measure_panels

        return measure_panels(self.aggregated, FIDELITY_MEASURES + (EXPRESSION,))

    def sample_sheet(self, seed: int | None = None) -> Sheet:
        """One row per held-out expression: its true image, the base's and each arm's (training
        seed ``seed``, default the first) from the same prompt and generation seed."""
        from lora_core.metrics.style import load_true_images
        from lora_core.world import true_images_dir

        seed = self.seeds[0] if seed is None else seed
        tags = self.eval_sets["tags"]
        n = min(self.settings.sheet_rows, len(tags))
        truth = load_true_images(tags.subject_keys[:n], true_images_dir(tags.style), self.profile.resolution)
        columns = [(BASE, "tags", None)] + [(recipe, captions, seed) for recipe, captions in ARMS]
        cells = []
        for i, subject in enumerate(sheet_row_labels(tags.captions[:n])):
            cells.append((truth[i], {"expression": subject, "column": f"true {tags.style}"}))
            cells += [(self.images[key][i], {"expression": subject, "column": arm_label(key[0], key[1])})
                      for key in columns]
        title = f"{HELD_OUT}, training seed {seed} ({self.profile.name} profile)"
        return Sheet.of(cells, rows="expression", cols="column", title=title, cell_inches=0.9)


def sheet_row_labels(captions: Sequence[str], width: int = 24) -> list[str]:
    """A short label per caption for the sample sheet: its first tag cut to ``width`` characters,
    numbered so that two expressions with the same beginning keep their own rows.

    >>> sheet_row_labels(["smiling face with open mouth, 1face", "smiling face with open mouth and cold sweat"])
    ['1. smiling face with open m', '2. smiling face with open m']
    """
    return [f"{i}. {caption.split(',')[0][:width]}" for i, caption in enumerate(captions, start=1)]


def run_character(profile: Profile | str = "tiny", *, base=None, runs_root: str | Path | None = None,
                  n_seeds: int = 0, n_heldout: int = 0, real_pool: int = 0) -> CharacterResult:
    """Chapter 5: train (or reuse) every arm of :data:`ARMS` with ``n_seeds`` training seeds (0:
    the profile's), generate ``n_heldout`` held-out expressions with each run and the base (0:
    the profile's evaluation size), score them, and measure the FD section on a pool of
    ``real_pool`` of the vendor's images (0: the profile's :data:`CHARACTER` size)."""
    from lora_core.models import load_base

    settings = resolve_profile(profile)
    chapter = character_settings(settings, n_seeds=n_seeds, n_heldout=n_heldout, real_pool=real_pool)
    base = base if base is not None else load_base(settings.base_model)
    result = score_character(settings, chapter, base, runs_root)
    result.fd = measure_fd(result)
    return read_character(result, base)


def score_character(profile: Profile, settings: CharacterSettings, base, runs_root=None) -> CharacterResult:
    """Train/reuse every run, generate the held-out expressions with each run and with the base
    (in both caption styles) and score every set: one job per run (and the FD section's real
    features), side by side where the cores allow (:mod:`lora_core.train_pool`)."""
    from lora_core.experiments.evaluate import Evaluator
    from lora_core.train_pool import map_side_by_side, train_many

    configs = character_configs(profile, settings)
    n = settings.n_heldout or profile.n_eval_images
    eval_sets = {captions: character_eval_set(settings.subject_set, "heldout", n, captions) for captions in CAPTIONS}
    evaluator, first_seed = Evaluator(profile), training_seeds(profile, settings)[0]
    fd_runs = {(BASE, "tags", None), (*S2_ARM, first_seed), (*LORA_ARM, first_seed)}
    # longest first ((IA)^3 also trains the text encoder), the base's sets last
    runs = sorted(configs, key=lambda run: run[0] != S2_ARM[0]) + [(BASE, captions, None) for captions in CAPTIONS]
    jobs = [(train_and_score, (configs.get(run), runs_root, eval_sets[run[1]], run_labels(*run), run in fd_runs))
            for run in runs]
    with quiet_libraries():
        done = map_side_by_side(jobs[:len(configs)] + [real_features_job(profile, settings)] + jobs[len(configs):],
                                shared=(base, evaluator, expression_head(evaluator)))
        records = train_many(configs, base=base, runs_root=runs_root)   # all finished: their records
    scored = dict(zip(runs, done[:len(configs)] + done[len(configs) + 1:]))   # without the features job's
    result = CharacterResult(profile, settings=settings, configs=configs, records=records, eval_sets=eval_sets)
    order = [(BASE, captions, None) for captions in CAPTIONS] + list(records)
    for run in order:
        result.images[run] = scored[run][0]
        evaluator.unavailable.update(scored[run][2])
    result.results = pd.concat([scored[run][1] for run in order], ignore_index=True)
    result.unavailable = dict(evaluator.unavailable)
    return result


def run_labels(recipe: str, captions: str, seed: int | None) -> dict[str, Any]:
    return {"arm": arm_label(recipe, captions), "recipe": RECIPES[recipe], "captions": captions, "seed": seed}


def train_and_score(base, evaluator, head, config: TrainConfig | None, runs_root, evalset: EvalSet,
                    labels: dict[str, Any], fd_features: bool) -> tuple[torch.Tensor, pd.DataFrame, dict[str, str]]:
    """One run trained (or reused; the base itself without a config), its held-out expressions,
    their scores (:func:`score_images`) and what the evaluator could not measure; with
    ``fd_features``, the FD section's features of the images are cached too."""
    from lora_core.experiments import character_fd
    from lora_core.experiments.common import generate_eval_images
    from lora_core.metrics.backbones import get_backbone
    from lora_core.train_pool import trained

    with quiet_libraries(), adapted_model(base, trained(base, config, runs_root)) as (model, lora_file):
        images = generate_eval_images(model, list(evalset.prompts), list(evalset.seeds), evaluator.profile, lora_file)
    if fd_features:
        get_backbone(character_fd.fd_backbone_name(evaluator.profile)).features(images, "generated",
                                                                                cache=evaluator.cache)
    return images, score_images(evaluator, head, images, evalset, labels), dict(evaluator.unavailable)


def measure_fd(result: CharacterResult, cache=None):
    """The FD section (:func:`character_fd.fd_study`) on the held-out images of the two recipes
    on tags and of the base (first training seed), against the vendor's pool and the 28
    training images, with the profile's FID network."""
    from lora_core.experiments import character_fd

    settings, profile, seed = result.settings, result.profile, result.seeds[0]
    generated = {arm_label(recipe, captions): result.images[(recipe, captions, seed)]
                 for recipe, captions in (S2_ARM, LORA_ARM)}
    generated[arm_label(BASE, "tags")] = result.images[(BASE, "tags", None)]
    backbone, pool_folder, n_pool, training_keys, training_folder = real_sources(profile, settings)
    sets = character_fd.feature_sets(backbone, pool_folder, n_pool, training_keys, training_folder, generated,
                                     profile.resolution, cache if cache is not None else features_cache())
    return character_fd.fd_study(sets, settings.real_sizes, settings.same_style_m, settings.n_draws,
                                 profile.n_bootstrap)


def real_sources(profile: Profile, settings: CharacterSettings) -> tuple[str, Path, int, list[str], Path]:
    """The FD section's network and real images: the FID network's name, the vendor's folder, the
    pool's size, the training keys and their folder."""
    from lora_core.experiments import character_fd
    from lora_core.world import true_images_dir

    train_folder = _absolute(character_folder(settings.subject_set, "train"))
    return (character_fd.fd_backbone_name(profile), true_images_dir(subject_set(settings.subject_set).vendor),
            settings.real_pool, sorted(path.stem for path in train_folder.glob("*.png")), train_folder)


def real_features_job(profile: Profile, settings: CharacterSettings):
    """:func:`character_fd.real_features` of the FD section as a ``train_pool`` job (they need no run)."""
    from lora_core.experiments import character_fd
    from lora_core.train_pool import independent

    return independent(character_fd.real_features, (*real_sources(profile, settings), profile.resolution,
                                                    features_cache()))


# ---- the page: tables and facts read from the scores --------------------------------------------

def read_character(result: CharacterResult, base) -> CharacterResult:
    """Fill what chapter 5 shows (seed-aggregated scores, costs, step sizes, the (IA)^3 module
    check) and its facts: :func:`setup_facts`, :func:`cost_facts`, :func:`ia3_facts`,
    :func:`step_size_facts`, the FD section's ``character_fd.fd_facts`` and the verdicts of
    :func:`verdict_facts`."""
    from lora_core.adapters.lycoris import load_lycoris, wrapped_modules
    from lora_core.experiments import character_fd
    from lora_core.experiments.evaluate import aggregate_seeds, reported_table, unavailable_text
    from lora_core.experiments.methods import cost_table

    result.aggregated = aggregate_seeds(result.results)
    result.costs = cost_table({(arm_label(r, c), s): record for (r, c, s), record in result.records.items()}
                              ).rename(columns={"method": "arm"})
    result.step_sizes = step_size_curves(result.records)
    model = copy.deepcopy(base)
    first_ia3 = result.records[(*S2_ARM, result.seeds[0])]
    result.ia3_modules = pd.DataFrame(wrapped_modules(model, load_lycoris(model, first_ia3.exports["kohya"])))
    result.ia3_targets = ia3_check(model, result.ia3_modules.to_dict("records"))
    reported = reported_table("S2")
    s2_fid = float(reported.loc[reported.metric == "FID_n28", "value"].iloc[0])
    result.add_facts(**setup_facts(result), missing_measures=unavailable_text(result.unavailable),
                     **cost_facts(result.cost_summary()), **ia3_facts(result.ia3_targets, first_ia3),
                     **step_size_facts(result.step_sizes),
                     **character_fd.fd_facts(result.fd, s2_fid, arm_label(*S2_ARM), arm_label(*LORA_ARM)))
    result.add_facts(**verdict_facts(result.method_comparison(), result.caption_comparison(), result.facts))
    return result


def work_counts(result: CharacterResult) -> dict[str, int]:
    """What the chapter computes, the counts its cost follows: optimizer steps of (IA)^3 and LoRA
    runs, generated images, and images through the FD section's network (pool, training images,
    generated sets)."""
    steps = {recipe: sum(config.max_train_steps for (r, _, _), config in result.configs.items() if r == recipe)
             for recipe in ("ia3_prodigy", "lora_adamw")}
    sets = result.fd.sets
    return {"n_runs": len(result.configs), "ia3_steps": steps["ia3_prodigy"], "lora_steps": steps["lora_adamw"],
            "n_generated": sum(len(images) for images in result.images.values()),
            "n_fd_images": len(sets.pool) + len(sets.training) + sum(len(f) for f in sets.generated.values())}


def setup_facts(result: CharacterResult) -> dict[str, Any]:
    """The set-up the prose names: set, vendor, trigger, sizes, steps, seeds, example prompts."""
    settings, profile = result.settings, result.profile
    character = subject_set(settings.subject_set)
    config = result.configs[(*S2_ARM, result.seeds[0])]
    train_folder = _absolute(character_folder(settings.subject_set, "train"))
    from lora_core.metrics.heads import load_classifier
    from lora_core.metrics.style import SUBJECT_GROUP_PATHS
    from lora_core.world import true_images_dir

    head_path = SUBJECT_GROUP_PATHS["subcategory"]
    accuracy = load_classifier(head_path)[1].get("heldout_accuracy") if head_path.is_file() else None
    return {"subject_set": settings.subject_set, "vendor": character.vendor, "trigger": character.trigger,
            "n_vendor": len(list(true_images_dir(character.vendor).glob("*.png"))),
            "expression_accuracy": f"{accuracy:.2f}" if accuracy is not None else "unknown (no classifier)",
            "n_train": len(list(train_folder.glob("*.png"))), "n_heldout": len(result.eval_sets["tags"]),
            "steps": config.max_train_steps, "s2_steps": f"{S2_STEPS:,}", "batch": config.batch_size,
            "n_seeds": len(result.seeds), "example_tags": result.eval_sets["tags"].prompts[0],
            "example_sentence": result.eval_sets["sentences"].prompts[0], "lora_rank": profile.lora_rank,
            "lora_lr": f"{profile.learning_rate:g}", **work_counts(result)}


def cost_facts(summary: pd.DataFrame) -> dict[str, Any]:
    """Trainable parameters, export size (KB) and s/step of the two recipes on tags, and how many
    times the LoRA's parameters and file are the (IA)^3's.

    >>> summary = pd.DataFrame({"trainable_params": [1000.0, 50000.0], "export_mb": [0.01, 0.2],
    ...                         "s_per_step": [0.3, 0.25]},
    ...                        index=pd.Index(["iA3 + Prodigy, tags", "LoRA + AdamW, tags"], name="arm"))
    >>> facts = cost_facts(summary)
    >>> facts["params_ratio"], facts["size_ratio"], facts["ia3_kb"]
    ('50', '20', '10.2')
    """
    ia3, lora = summary.loc[arm_label(*S2_ARM)], summary.loc[arm_label(*LORA_ARM)]
    return {"ia3_params": f"{ia3.trainable_params:,.0f}", "lora_params": f"{lora.trainable_params:,.0f}",
            "params_ratio": f"{lora.trainable_params / ia3.trainable_params:.0f}",
            "ia3_kb": f"{ia3.export_mb * 1024:.1f}", "lora_kb": f"{lora.export_mb * 1024:.1f}",
            "size_ratio": f"{lora.export_mb / ia3.export_mb:.0f}",
            "ia3_s_per_step": f"{ia3.s_per_step:.3g}", "lora_s_per_step": f"{lora.s_per_step:.3g}"}


def ia3_facts(targets: pd.DataFrame, record) -> dict[str, Any]:
    """What the (IA)^3 check found: modules wrapped per network, whether every expected module is
    wrapped and nothing else, and whether the parameters add up to the run's own count."""
    expected = targets[targets.target != "other"]
    complete = bool((expected["in model"] == expected["wrapped"]).all() and (expected["wrapped"] > 0).all())
    others = int(targets.loc[targets.target == "other", "wrapped"].sum())
    total = int(targets["parameters"].sum())
    return {"ia3_unet_modules": int(expected.loc[expected.network == "unet", "wrapped"].sum()),
            "ia3_te_modules": int(expected.loc[expected.network == "text_encoder", "wrapped"].sum()),
            "ia3_wraps": ("every" if complete else "not every") + " module of those names",
            "ia3_others": others, "ia3_total_params": f"{total:,}",
            "ia3_params_match": "matches" if total == record.summary["trainable_params"] else "does not match"}


def step_size_facts(curves: pd.DataFrame) -> dict[str, Any]:
    """Prodigy's ``d`` at the end of the S2 arm's runs (mean over seeds), its growth from d0 and
    its largest per-coordinate step against the LoRA's learning rate."""
    ia3 = curves[curves.arm == arm_label(*S2_ARM)]
    last = ia3[ia3.step == ia3.step.max()]
    first = ia3[ia3.step == ia3.step.min()]
    lora_lr = float(curves.loc[curves.arm == arm_label(*LORA_ARM), "lr"].max())
    peak = float(ia3.groupby("seed")["step_size"].max().mean())
    return {"d_first": f"{first.d.mean():.3g}", "d_final": f"{last.d.mean():.3g}",
            "d_growth": f"{last.d.mean() / first.d.mean():.3g}", "peak_step_size": f"{peak:.3g}",
            "peak_over_lora_lr": f"{peak / lora_lr:.3g}"}


def verdict_facts(methods: pd.DataFrame, captions: pd.DataFrame, facts: Mapping[str, Any]) -> dict[str, str]:
    """``method_tally``, ``caption_tally``, the finding box's ``found_method`` and
    ``found_captions`` and the chapter's closing ``verdict`` paragraph."""
    method_tally, caption_tally = tally(methods), tally(captions)
    found_method = (f"iA3 + Prodigy against LoRA + AdamW on held-out expressions, tags, over {facts['n_seeds']} seeds: "
                    f"{method_tally}, with {facts['params_ratio']}x fewer trained parameters.")
    found_captions = f"Tag captions against sentence captions (iA3 + Prodigy): {caption_tally}."
    verdict = (f"On this character, iA3 + Prodigy trained {facts['ia3_total_params']} parameters "
               f"({facts['params_ratio']}x fewer than the rank-{facts['lora_rank']} LoRA, a file "
               f"{facts['size_ratio']}x smaller, at {facts['ia3_s_per_step']} s/step against "
               f"{facts['lora_s_per_step']}) and, against LoRA + AdamW at the same {facts['steps']} steps, was "
               f"{method_tally} on {facts['n_heldout']} held-out expressions over {facts['n_seeds']} seeds; "
               f"tag captions against sentences were {caption_tally}. A {facts['n_training']}-image FID cannot carry "
               f"such a comparison: two samples of one style already read {facts['same_style_small']} at that n, "
               f"its covariance has rank {facts['rank_training']}, and the 1/m extrapolation leaves the real "
               f"side's bias in place ({facts['fd_inf_rescued_small']} same-style draws reach 0). What the 28 "
               f"images do support is KID with its interval: {facts['kid_arm_training']} for S2's recipe here, "
               f"{facts['kid_arm_reading']}. S2's {facts['s2_reported']:g} is a number without a floor; it says "
               f"nothing by itself about how close the character came.")
    return {"method_tally": method_tally, "caption_tally": caption_tally, "found_method": found_method,
            "found_captions": found_captions, "verdict": verdict}
