"""Generated images + the toy world's true images -> one tidy table of results with intervals.

:class:`Evaluator` scores one set of generated images (one adapter, one seed, one evaluation
set) and returns one row per measure: the caller's labels (``style``, ``adapter``, ``seed``,
``eval_set`` ...), ``measure`` (a stable short key, :data:`MEASURES`), and the
:class:`~lora_core.metrics.stats.MetricResult` fields ``metric`` (the reported name, e.g.
``"FD-EffNet (EfficientNet-Lite0, 32->224 px)"``), ``backbone``, ``n``, ``value``, ``ci_low``,
``ci_high`` (95%, bootstrap over images), ``note``, plus ``better`` (``lower``/``higher``).
Tables of several calls concatenate; :func:`aggregate_seeds` then averages over training seeds
with a t-interval, and :func:`format_results` pivots to ``value [low, high]`` text.

    evaluator = Evaluator(get_profile("tiny"))
    rows = evaluator.evaluate(images, eval_set("twemoji", "heldout", 100), "twemoji",
                              labels={"adapter": "lora", "seed": 0})

Learned measures need their heads in ``models/metrics`` (``python -m lora_core.toy train-heads``);
without them those measures are left out and :attr:`Evaluator.unavailable` says why.

>>> import pandas as pd
>>> rows = pd.DataFrame({"adapter": ["lora"] * 3, "seed": [0, 1, 2], "measure": ["m"] * 3,
...                      "metric": ["M"] * 3, "backbone": ["b"] * 3, "n": [10] * 3, "value": [1.0, 2.0, 3.0],
...                      "ci_low": [0.5, 1.5, 2.5], "ci_high": [1.5, 2.5, 3.5], "note": [""] * 3,
...                      "better": ["lower"] * 3})
>>> agg = aggregate_seeds(rows)
>>> agg[["adapter", "n_seeds", "value"]].values.tolist(), round(float(agg.ci_high[0]), 3)
([['lora', 3, 2.0]], 4.484)
"""
from __future__ import annotations

import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd
import torch

from lora_core.experiments.common import EvalSet
from lora_core.metrics.stats import MetricResult, aggregate_over_seeds, bootstrap_result
from lora_core.profiles import Profile
from lora_core.profiling import phase

RESULT_COLUMNS = ("metric", "backbone", "n", "value", "ci_low", "ci_high", "note")
# measure key -> (which direction is better for a style LoRA, what it asks)
MEASURES: dict[str, tuple[str, str]] = {
    "p_target_style": ("higher", "style classifier: mean P(target style)"),
    "target_style_rate": ("higher", "style classifier: share of images assigned to the target style"),
    "feature_to_target": ("lower", "EffNet feature L2 to the same subject's true target-style image"),
    "feature_to_base": ("higher", "EffNet feature L2 to the same subject's true base-style (noto) image"),
    "pixel_mse_to_target": ("lower", "pixel MSE to the same subject's true target-style image"),
    "pixel_mse_to_base": ("higher", "pixel MSE to the same subject's true base-style image"),
    "st_lpips_to_target": ("lower", "ST-LPIPS to the same subject's true target-style image"),
    "subject_group_p": ("higher", "subject classifier: mean P(true emoji category)"),
    "subject_group_accuracy": ("higher", "subject classifier: share assigned to the true category"),
    "fd_effnet": ("lower", "FD-EffNet to the reference images (biased at small n)"),
    "kid_effnet": ("lower", "KID-EffNet to the reference images"),
    "fid": ("lower", "FID (Inception 2015) to the reference images"),
    "is_effnet": ("higher", "IS-EffNet of the generated images"),
    "st_lpips_diversity": ("higher", "ST-LPIPS between random pairs of generated images (S1's 'LPIPS')"),
    "alignment": ("higher", "AlignScore (stand-in, not CLIP) of image vs its subject caption"),
}
PAIRED = ("feature_to_target", "feature_to_base", "pixel_mse_to_target", "pixel_mse_to_base",
          "st_lpips_to_target", "subject_group_p", "subject_group_accuracy")
DEFAULT_MEASURES = tuple(m for m in MEASURES if m not in ("fid", "pixel_mse_to_target", "pixel_mse_to_base"))
REPORTED_TABLES = Path(__file__).resolve().parents[2] / "book" / "reference" / "reported_tables.csv"
FID_BACKBONES = {"inception-2015": "inception", "none": None}


class Evaluator:
    """Scores generated images for the profile's backbones; features are cached by content.

    ``n_resamples`` bootstrap resamples per interval (``profile.n_bootstrap`` by default), every
    interval seeded with ``seed``.
    """

    def __init__(self, profile: Profile, cache: Any = None, seed: int = 0, n_resamples: int | None = None,
                 base_style: str = "noto"):
        from lora_core.experiments.common import features_cache

        self.profile = profile
        self.cache = cache if cache is not None else features_cache()
        self.seed = seed
        self.n_resamples = n_resamples or profile.n_bootstrap
        self.base_style = base_style
        self.unavailable: dict[str, str] = {}

    # -- learned heads, loaded once, None when their file is missing ----------------------------
    def _head(self, kind: str):
        from lora_core.metrics import style

        path = style.STYLE_CLASSIFIER_PATH if kind == "style" else style.SUBJECT_GROUP_PATHS["category"]
        if not path.is_file():
            command = "train-judge" if kind == "style" else "train-heads"
            self.unavailable[kind] = f"{path} is missing (python -m lora_core.toy {command})"
            return None
        head_class = style.StyleClassifier if kind == "style" else style.SubjectGroupClassifier
        return head_class(path, cache=self.cache)

    @cached_property
    def style_classifier(self):
        return self._head("style")

    @cached_property
    def subject_classifier(self):
        return self._head("subject")

    @cached_property
    def alignment_scorer(self):
        from lora_core.metrics.alignment import STANDIN_PATH, get_alignment_scorer

        name = self.profile.alignment_backbone
        if name == "none":
            self.unavailable["alignment"] = f"profile {self.profile.name} has no alignment model"
            return None
        if name == "standin-minilm-effnet" and not STANDIN_PATH.is_file():
            self.unavailable["alignment"] = f"{STANDIN_PATH} is missing (python -m lora_core.toy train-heads)"
            return None
        kwargs = {"cache": self.cache} if name == "standin-minilm-effnet" else {}
        return get_alignment_scorer(name, **kwargs)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def true_images(self, subject_keys: Sequence[str], style: str, resolution: int) -> torch.Tensor:
        """uint8 true images of the subjects in ``style`` (a style set or vendor name)."""
        from lora_core.metrics.style import load_true_images
        from lora_core.world import true_images_dir

        return load_true_images(list(subject_keys), true_images_dir(style), resolution)

    # -- the table ------------------------------------------------------------------------------
    @phase("metrics: other")
    def evaluate(self, images: Any, eval_set: EvalSet, target_style: str, labels: dict[str, Any] | None = None,
                 reference: Any = None, measures: Sequence[str] = DEFAULT_MEASURES) -> pd.DataFrame:
        """One row per measure for ``images`` (generated from ``eval_set``'s prompts, in order).

        ``reference`` (uint8 images) is what FD/KID/FID compare with; by default the true
        target-style images of the set's subjects. Paired measures need a paired set and are
        skipped for unseen prompts.
        """
        from lora_core.metrics.preprocess import as_uint8_images

        unknown = [m for m in measures if m not in MEASURES]
        if unknown:
            raise ValueError(f"measures: unknown {unknown}. Valid: {', '.join(MEASURES)}")
        images = as_uint8_images(images, "generated")
        if len(images) != len(eval_set):
            raise ValueError(f"images and eval_set must pair up: {len(images)} images, {len(eval_set)} prompts")
        wanted = [m for m in measures if eval_set.paired or m not in PAIRED]
        self._features_and_logits_once(images)
        results: dict[str, MetricResult] = {}
        if eval_set.paired:
            results.update(self._paired(images, eval_set, target_style, wanted))
        results.update(self._style(images, target_style, wanted))
        if reference is None and eval_set.paired:
            reference = self.true_images(eval_set.subject_keys, target_style, images.shape[-1])
        if reference is not None:
            results.update(self._distribution(as_uint8_images(reference, "reference"), images, wanted))
        if "is_effnet" in wanted:
            results["is_effnet"] = self._inception_score(images)
        if "st_lpips_diversity" in wanted and len(images) >= 2:
            from lora_core.metrics.diversity import lpips_diversity

            # as many random pairs as images: the interval is over pairs, and ST-LPIPS is the
            # costliest network here after EfficientNet
            results["st_lpips_diversity"] = lpips_diversity(images, self.profile.lpips_backbone, n_pairs=len(images),
                                                            n_resamples=self.n_resamples, generator=self._generator())
        if "alignment" in wanted and self.alignment_scorer is not None:
            results["alignment"] = self.alignment_scorer.score(images, list(eval_set.captions), self._generator(),
                                                               self.n_resamples)
        return results_frame(results, {"eval_set": eval_set.name, "target_style": target_style, **(labels or {})})

    def _features_and_logits_once(self, images: torch.Tensor) -> None:
        """Fill the cache with the feature backbone's features and logits of ``images`` from one
        forward pass (``features()`` and ``logits()`` would each run the network)."""
        from lora_core.metrics.backbones import get_backbone

        net = get_backbone(self.profile.feature_backbone)
        if not net.has_logits or self.cache is None:
            return
        both: list = []

        def run(kind: int):
            def compute(imgs):
                if not both:
                    both.extend(net._run(imgs, "generated"))
                return both[kind]
            return compute

        self.cache.get_or_compute(net, images, "features", run(0))
        self.cache.get_or_compute(net, images, "logits", run(1))

    def _paired(self, images, eval_set: EvalSet, target_style: str, wanted) -> dict[str, MetricResult]:
        from lora_core.metrics.lpips import paired_distance
        from lora_core.metrics.style import paired_style_distances
        from lora_core.world import true_images_dir

        results = {}
        keys = list(eval_set.subject_keys)
        if {"feature_to_target", "feature_to_base", "pixel_mse_to_target", "pixel_mse_to_base"} & set(wanted):
            distances = paired_style_distances(images, keys, true_images_dir(target_style),
                                               true_images_dir(self.base_style),
                                               self.profile.feature_backbone, cache=self.cache,
                                               generator=self._generator())
            for role in ("target", "base"):
                results[f"feature_to_{role}"] = distances[f"feature-{role}"]
                results[f"pixel_mse_to_{role}"] = distances[f"pixel-mse-{role}"]
        if "st_lpips_to_target" in wanted:
            truth = self.true_images(keys, target_style, images.shape[-1])
            results["st_lpips_to_target"] = paired_distance(images, truth, self.profile.lpips_backbone,
                                                            self.n_resamples, self._generator())
        if {"subject_group_p", "subject_group_accuracy"} & set(wanted) and self.subject_classifier is not None:
            head = self.subject_classifier
            results["subject_group_p"] = head.p_true_group(_at_resolution(images, head.resolution), keys,
                                                           self._generator())
            results["subject_group_accuracy"] = bootstrap_result(
                f"subject {head.card.get('level', 'category')} accuracy", head.backbone_name,
                self.subject_hits(images, keys), n_resamples=self.n_resamples, generator=self._generator(),
                note=results["subject_group_p"].note)
        return {k: v for k, v in results.items() if k in wanted}

    def subject_hits(self, images: torch.Tensor, subject_keys: Sequence[str]):
        """Per image, 1.0 where the subject classifier names the category of its subject, else
        0.0 (float64 array); None without a subject classifier."""
        head = self.subject_classifier
        if head is None:
            return None
        probs = head.predict_proba(_at_resolution(images, head.resolution))
        truth = torch.tensor([head.classes.index(head.group_of[k]) for k in subject_keys])
        return (probs.argmax(-1) == truth).double().numpy()

    def style_probabilities(self, images: torch.Tensor) -> torch.Tensor | None:
        """The style judge's probabilities (N, len(classes)) of uint8 ``images``, resized to the
        judge's resolution where it names one; None without a judge."""
        head = self.style_classifier
        if head is None:
            return None
        return head.predict_proba(_at_resolution(images, getattr(head, "resolution", None)))

    def _style(self, images, target_style: str, wanted) -> dict[str, MetricResult]:
        from lora_core.world import style_vendor

        if not {"p_target_style", "target_style_rate"} & set(wanted) or self.style_classifier is None:
            return {}
        head = self.style_classifier
        small = _at_resolution(images, head.resolution)
        vendor = style_vendor(target_style, "target_style")
        results = {"p_target_style": head.p_style(small, vendor, self._generator())}
        assigned = head.predict_proba(small).argmax(-1)
        hits = (assigned == head.classes.index(vendor)).double().numpy()
        results["target_style_rate"] = bootstrap_result(
            f"assigned to style={vendor}", head.backbone_name, hits,
            n_resamples=self.n_resamples, generator=self._generator(), note=results["p_target_style"].note)
        return {k: v for k, v in results.items() if k in wanted}

    def _distribution(self, reference, images, wanted) -> dict[str, MetricResult]:
        from lora_core.metrics.backbones import get_backbone
        from lora_core.metrics.distributions import fd_result, kid_result

        results = {}
        size = f"{images.shape[-1]}"
        backbones = {"fd_effnet": self.profile.feature_backbone, "kid_effnet": self.profile.feature_backbone}
        fid_name = FID_BACKBONES.get(self.profile.fid_backbone, self.profile.fid_backbone)
        if fid_name is not None:
            backbones["fid"] = fid_name
        for measure, name in backbones.items():
            if measure not in wanted:
                continue
            net = get_backbone(name)
            real = net.features(reference, "reference", cache=self.cache).numpy()
            fake = net.features(images, "generated", cache=self.cache).numpy()
            if measure == "kid_effnet":
                results[measure] = kid_result(real, fake, net, size, n_subsets=50, n_resamples=self.n_resamples,
                                              generator=self._generator())
            else:
                results[measure] = fd_result(real, fake, net, size, self.n_resamples, self._generator())
        return results

    def _inception_score(self, images) -> MetricResult:
        from lora_core.metrics.backbones import get_backbone
        from lora_core.metrics.distributions import is_result

        net = get_backbone(self.profile.feature_backbone)
        logits = net.logits(images, "generated", cache=self.cache).numpy()
        return is_result(logits, net, f"{images.shape[-1]}", splits=max(1, min(10, len(images) // 10)),
                         n_resamples=self.n_resamples, generator=self._generator())


def generate_and_score(evaluator: Evaluator, model, profile: Profile, sets: Mapping[str, EvalSet],
                       target_style: str, labels: dict[str, Any], measures: Mapping[str, Sequence[str]],
                       lora_file: str | Path | None = None, prompt_fn: Callable[[str], str] | None = None,
                       reference: Any = None) -> dict[str, tuple[torch.Tensor, pd.DataFrame, dict[str, str]]]:
    """Each of ``sets`` generated with ``model`` (and ``lora_file``; prompts through ``prompt_fn``
    where given, e.g. a textual-inversion token) and scored against ``target_style`` with
    ``measures[split]``; sets without paired truth compare with ``reference``. Returns ``{split:
    (images, table, what the evaluator could not measure)}``: what a chapter's job sends back
    from a child process."""
    from lora_core.experiments.common import generate_eval_images

    scored = {}
    for split, es in sets.items():
        prompts = [prompt_fn(p) for p in es.prompts] if prompt_fn else list(es.prompts)
        images = generate_eval_images(model, prompts, es.seeds, profile, lora_file)
        table = evaluator.evaluate(images, es, target_style, labels, None if es.paired else reference, measures[split])
        scored[split] = images, table, dict(evaluator.unavailable)
    return scored


def _at_resolution(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Images resized (Lanczos, the training preprocessing) to a head's resolution when they differ."""
    if resolution is None or images.shape[-1] == resolution:
        return images
    from PIL import Image

    from lora_core.images import prepare_image
    from lora_core.metrics.preprocess import as_uint8_images

    return as_uint8_images([prepare_image(Image.fromarray(image.permute(1, 2, 0).numpy()), resolution)
                            for image in images], "images")


def results_frame(results: dict[str, MetricResult], labels: dict[str, Any]) -> pd.DataFrame:
    """Tidy rows: ``labels`` + ``measure`` + the result's fields + ``better``."""
    rows = [{**labels, "measure": measure, **result.to_dict(), "better": MEASURES.get(measure, ("", ""))[0]}
            for measure, result in results.items()]
    return pd.DataFrame(rows)


def label_columns(table: pd.DataFrame, seed_column: str | None = "seed") -> list[str]:
    """Every column that is not a result field (nor the seed column)."""
    return [c for c in table.columns if c not in RESULT_COLUMNS and c != seed_column]


def aggregate_seeds(table: pd.DataFrame, seed_column: str = "seed", method: str = "t") -> pd.DataFrame:
    """Mean over seeds of every (labels, measure) group with a 95% interval over seeds
    (``stats.aggregate_over_seeds``); a group with one run (the base model, which has no training
    seed) keeps its interval over images and says so in ``note``. Adds ``n_seeds``."""
    keys = label_columns(table, seed_column)
    rows = []
    for key, group in table.groupby(keys, sort=False, dropna=False):
        results = [MetricResult(*(row[c] for c in RESULT_COLUMNS)) for _, row in group.iterrows()]
        if len(results) == 1:
            merged = MetricResult(**{**results[0].to_dict(),
                                     "note": "; ".join(filter(None, ["one run: interval over images", results[0].note]))})
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                merged = aggregate_over_seeds(results, method=method)
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **merged.to_dict(),
                     "n_seeds": len(results)})
    return pd.DataFrame(rows)


def ci_text(value: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.512 [0.48, 0.55]"`` with ``digits`` significant digits.

    >>> ci_text(0.51234, 0.48, 0.5533)
    '0.512 [0.48, 0.553]'
    """
    return f"{value:.{digits}g} [{low:.{digits}g}, {high:.{digits}g}]"


def format_results(table: pd.DataFrame, index: str | Sequence[str], columns: str | Sequence[str],
                   digits: int = 3) -> pd.DataFrame:
    """Pivot ``value [ci_low, ci_high]`` strings: one row per ``index``, one column per ``columns``."""
    text = table.assign(result=[ci_text(v, lo, hi, digits) for v, lo, hi in
                                zip(table["value"], table["ci_low"], table["ci_high"])])
    return text.pivot_table(index=index, columns=columns, values="result", aggfunc="first", sort=False)


def tables_by_eval_set(aggregated: pd.DataFrame, columns: str | Sequence[str], caption: str) -> list:
    """One captioned table per evaluation set of ``aggregated`` (from :func:`aggregate_seeds`):
    rows ``measure (backbone)``, one column per ``columns`` value, cells ``value [ci_low, ci_high]``.
    The caption is ``"<evaluation set>: <caption>"``."""
    labelled = aggregated.assign(**{"measure (backbone)": [f"{measure} ({backbone})" for measure, backbone
                                                           in zip(aggregated.measure, aggregated.backbone)]})
    return [format_results(labelled[labelled.eval_set == name], index="measure (backbone)", columns=columns)
            .style.set_caption(f"{name}: {caption}") for name in labelled.eval_set.unique()]


def rank_agreement(results: pd.DataFrame, measure_a: str = "fid",
                   measure_b: str = "fd_effnet") -> tuple[pd.DataFrame, dict[str, float]]:
    """Do two measures order the same image sets alike? For every set scored by both (one row
    per label combination, e.g. style x adapter x seed x evaluation set, in order of appearance):
    both values and their ranks (1 = lowest), and Spearman's rho and Kendall's tau over the sets.

    >>> rows = pd.DataFrame({"run": list("abcabc"), "measure": ["fid"] * 3 + ["fd_effnet"] * 3,
    ...                      "metric": ["M"] * 6, "backbone": ["b"] * 6, "n": [9] * 6,
    ...                      "value": [3.0, 1.0, 2.0, 30.0, 5.0, 20.0], "ci_low": [0.0] * 6,
    ...                      "ci_high": [0.0] * 6, "note": [""] * 6})
    >>> table, summary = rank_agreement(rows)
    >>> table[["run", "rank fid", "rank fd_effnet"]].values.tolist(), summary["spearman_rho"]
    ([['a', 3, 3], ['b', 1, 1], ['c', 2, 2]], 1.0)
    """
    from scipy.stats import kendalltau, spearmanr

    keys = [c for c in label_columns(results, seed_column=None) if c not in ("measure", "better")]
    wide = (results[results.measure.isin([measure_a, measure_b])]
            .pivot_table(index=keys, columns="measure", values="value", aggfunc="first", dropna=False, sort=False)
            .reindex(columns=[measure_a, measure_b]).dropna().reset_index().rename_axis(columns=None))
    if len(wide) < 3:
        raise ValueError(f"results: {len(wide)} sets scored by both {measure_a} and {measure_b}; "
                         f"ranking needs at least 3")
    for measure in (measure_a, measure_b):
        wide[f"rank {measure}"] = wide[measure].rank(method="min").astype(int)
    summary = {"n_sets": len(wide), "spearman_rho": float(spearmanr(wide[measure_a], wide[measure_b]).statistic),
               "kendall_tau": float(kendalltau(wide[measure_a], wide[measure_b]).statistic)}
    return wide, summary


def unavailable_table(unavailable: dict[str, str]) -> pd.DataFrame:
    """The measure groups an evaluation left out, and why (a missing model file, a smoke profile)."""
    return pd.DataFrame(list(unavailable.items()), columns=["measure group", "left out because"])


def unavailable_text(unavailable: dict[str, str]) -> str:
    """The left-out measure groups in one line for the prose, "none" when nothing was left out.

    >>> unavailable_text({}), unavailable_text({"alignment": "profile smoke has no alignment model"})
    ('none', 'alignment: profile smoke has no alignment model')
    """
    return "; ".join(f"{group}: {reason}" for group, reason in unavailable.items()) or "none"


def measure_panels(aggregated: pd.DataFrame, measures: Sequence[str]) -> pd.DataFrame:
    """The rows of ``measures`` that were measured, in that order, with a ``panel`` title per
    measure: its key and, below it, its reported name (the first, where it names a target style
    that varies between rows): one panel per measure in ``plots.interval_panels``.

    >>> rows = pd.DataFrame({"measure": ["fd_effnet", "alignment", "fd_effnet"],
    ...                      "metric": ["FD-EffNet (to a)", "AlignScore", "FD-EffNet (to b)"]})
    >>> measure_panels(rows, ["alignment", "fid", "fd_effnet"])["panel"].tolist()
    ['alignment\\n(AlignScore)', 'fd_effnet\\n(FD-EffNet (to a))', 'fd_effnet\\n(FD-EffNet (to a))']
    """
    order = {measure: i for i, measure in enumerate(measures)}
    rows = aggregated[aggregated["measure"].isin(order)]
    rows = rows.assign(_order=rows["measure"].map(order)).sort_values("_order", kind="stable").drop(columns="_order")
    first_metric = rows.groupby("measure", sort=False)["metric"].first()
    return rows.assign(panel=[f"{measure}\n({first_metric[measure]})" for measure in rows["measure"]])


def reported_table(study: str = "S1", experiment: str | None = None, path: str | Path = REPORTED_TABLES) -> pd.DataFrame:
    """The studies' reported numbers (``book/reference/reported_tables.csv``): study, experiment,
    setting, method, metric, value — labelled "reported by the study" (their data, hardware, CLIP/FID)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the studies' reported tables are missing")
    table = pd.read_csv(path, dtype={"experiment": str})
    if study not in set(table.study):
        raise ValueError(f"study: {study!r} is not in {path} (has {', '.join(sorted(set(table.study)))})")
    table = table[table.study == study]
    if experiment is not None:
        table = table[table.experiment == experiment]
    return table.reset_index(drop=True)
