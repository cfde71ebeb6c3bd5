"""Chapter 5, second half: how far a Fréchet distance on 28 real images can be trusted.

Study S2 reported FID 77.29 between 100 generated images and its **28** training images. The toy
world holds every image of the character's vendor (Fluent 3D draws 1,570 emoji), so this module
measures what S2 could not, with the pure statistics of :mod:`lora_core.metrics.small_sample`
on features of the profile's FID network (Inception 2015; a profile without one, ``smoke``,
falls back to its feature backbone, and the metric is then named ``FD-EffNet``, never FID):

* **the pool**: ``real_pool`` of the vendor's images in one fixed seeded order (:func:`pool_keys`),
  their features computed in chunks of :data:`CHUNK` images, each cached by content, so a
  larger pool reuses a smaller one's features;
* **the training images** (28) and, per arm, **generated** held-out expressions (first seed).

From them: FD and KID against n real images drawn from the pool, n from 10 to the whole pool,
with bands over draws (:func:`size_sweeps`); two disjoint samples of the pool, whose true
distance is 0 (:func:`same_style_sweep`); FD and KID against the 28 training images, S2's
measure, with bootstrap intervals (:func:`against_references`); Chong & Forsyth's FD extrapolated
to infinitely many generated images (:func:`extrapolations`); the covariance rank at n = 28.

>>> pool_sizes(400, (10, 28, 100, 600))
(10, 28, 100, 400)
>>> band_position(77.3, 60.0, 90.0), band_position(120.0, 60.0, 90.0)
('inside', 'above')
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lora_core.metrics import small_sample

CHUNK = 64                # real images per feature-cache entry
POOL_ORDER_SEED = 0       # the fixed order in which the pool takes the vendor's images
TRAINING = "28 training images"
SAME_STYLE = "same style (two real samples)"


def fd_backbone_name(profile) -> str:
    """The profile's FID network (``inception``), or its feature backbone where it names none.

    >>> from lora_core.profiles import get_profile
    >>> fd_backbone_name(get_profile("tiny")), fd_backbone_name(get_profile("smoke"))
    ('inception', 'effnet-lite0')
    """
    from lora_core.experiments.evaluate import FID_BACKBONES

    return FID_BACKBONES.get(profile.fid_backbone, profile.fid_backbone) or profile.feature_backbone


def pool_keys(folder: str | Path, n: int = 0) -> list[str]:
    """The first ``n`` (0: all) image keys of ``folder`` in a fixed seeded order, so a pool of
    n images is the start of every larger pool."""
    keys = sorted(path.stem for path in Path(folder).glob("*.png"))
    if not keys:
        raise FileNotFoundError(f"{folder}: no images (<key>.png); build the toy world with "
                                "`python -m lora_core.toy build`")
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(POOL_ORDER_SEED)).tolist()
    ordered = [keys[i] for i in order]
    return ordered[:n] if n else ordered


def chunked_features(backbone, keys: Sequence[str], folder: str | Path, resolution: int, cache=None) -> np.ndarray:
    """Features of ``folder/<key>.png`` at ``resolution`` (the training preprocessing), computed
    and cached by content in chunks of :data:`CHUNK` images."""
    from lora_core.metrics.style import load_true_images

    parts = [backbone.features(load_true_images(keys[start:start + CHUNK], folder, resolution), "real", cache=cache)
             for start in range(0, len(keys), CHUNK)]
    return torch.cat(parts).numpy()


def pool_sizes(pool: int, sizes: Sequence[int]) -> tuple[int, ...]:
    """The n grid: ``sizes`` below the pool, then the whole pool (the large-n value)."""
    return tuple(sorted({n for n in sizes if 2 <= n < pool} | {pool}))


def band_position(value: float, low: float, high: float) -> str:
    """Where ``value`` lies against a band: ``"below"``, ``"inside"`` or ``"above"``."""
    return "below" if value < low else "above" if value > high else "inside"


@dataclass
class FeatureSets:
    """Features of one FD study (rows are images) and the network that made them."""

    backbone: str                    # lora_core.metrics.backbones name
    source_size: str                 # the images' side in pixels, before the network's resize
    pool: np.ndarray                 # the vendor's real images
    training: np.ndarray             # the set's training images
    generated: dict[str, np.ndarray] = field(default_factory=dict)   # arm -> generated images

    def name(self, kind: str) -> str:
        """The reported name, e.g. ``"FID (Inception 2015, 32->299 px)"``, ``"KID-EffNet (...)"``."""
        from lora_core.metrics.backbones import get_backbone

        return get_backbone(self.backbone).describe(kind, self.source_size)


def feature_sets(backbone_name: str, pool_folder: str | Path, n_pool: int, training_keys: Sequence[str],
                 training_folder: str | Path, generated: Mapping[str, torch.Tensor], resolution: int,
                 cache=None) -> FeatureSets:
    """Features of the pool, the training images and each arm's generated uint8 images."""
    from lora_core.metrics.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    pool, training = real_features(backbone_name, pool_folder, n_pool, training_keys, training_folder, resolution,
                                   cache)
    fakes = {arm: backbone.features(images, "generated", cache=cache).numpy() for arm, images in generated.items()}
    return FeatureSets(backbone.name, str(resolution), pool, training, fakes)


def real_features(backbone_name: str, pool_folder: str | Path, n_pool: int, training_keys: Sequence[str],
                  training_folder: str | Path, resolution: int, cache=None) -> tuple[np.ndarray, np.ndarray]:
    """Features of the first ``n_pool`` images of the pool (:func:`pool_keys`) and of the training
    images; they need no run, so a chapter can compute them while its runs train."""
    from lora_core.metrics.backbones import get_backbone

    backbone = get_backbone(backbone_name)
    return (chunked_features(backbone, pool_keys(pool_folder, n_pool), pool_folder, resolution, cache),
            chunked_features(backbone, list(training_keys), training_folder, resolution, cache))


# ---------------------------------------------------------------- sweeps over n and m

def _labelled(table: pd.DataFrame, **labels: Any) -> pd.DataFrame:
    return small_sample.size_bands(table).assign(**labels)


def size_sweeps(sets: FeatureSets, real_sizes: Sequence[int], generated_sizes: Sequence[int], n_draws: int,
                generator: torch.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per arm: bands of FD and KID against n real images of the pool (every generated image,
    n over :func:`pool_sizes`), and against m generated images at n = len(training) drawn from
    the pool and at the whole pool. The whole pool is one draw (every draw would be the same)."""
    pool, by_n, by_m = len(sets.pool), [], []
    small_n = len(sets.training)
    for arm, fake in sets.generated.items():
        m = len(fake)
        for n in pool_sizes(pool, real_sizes):
            draws = 1 if n == pool else n_draws
            by_n.append(_labelled(small_sample.fd_kid_by_size(sets.pool, fake, [(n, m)], draws, generator), arm=arm))
        for n in (small_n, pool):
            sizes = [(n, size) for size in generated_sizes if size <= m]
            draws = 1 if n == pool else n_draws
            by_m.append(_labelled(small_sample.fd_kid_by_size(sets.pool, fake, sizes, draws, generator), arm=arm))
    return pd.concat(by_n, ignore_index=True), pd.concat(by_m, ignore_index=True)


def same_style_sweep(pool: np.ndarray, real_sizes: Sequence[int], n_generated: int, n_draws: int,
                     generator: torch.Generator) -> pd.DataFrame:
    """Bands of FD and KID between two disjoint samples of the pool (n "real", ``n_generated``
    "generated"), for every n of the grid that fits: what a measure reads when nothing differs."""
    sizes = [(n, n_generated) for n in pool_sizes(len(pool), real_sizes) if n + n_generated <= len(pool)]
    if not sizes:
        raise ValueError(f"same_style_sweep: a pool of {len(pool)} images holds no disjoint pair of "
                         f"n in {tuple(real_sizes)} and m = {n_generated}")
    table = small_sample.same_distribution_fd_kid(pool, sizes, n_draws, generator)
    return _labelled(table, arm=SAME_STYLE)


POOL_RESAMPLES = 200  # bootstrap resamples against the whole pool: each costs O(pool^2), and that
                     # interval is context (the n-sweep shows the pool's value); 1,000 against 400
                     # images took ~13 s per arm on 2 busy cores


def against_references(sets: FeatureSets, n_resamples: int, generator: torch.Generator) -> pd.DataFrame:
    """Per arm, FD and KID of its generated images against the training images (S2's measure,
    ``n_resamples`` bootstrap resamples) and against the whole pool (at most
    :data:`POOL_RESAMPLES`), each with a 95% interval over images."""
    from lora_core.metrics.backbones import get_backbone
    from lora_core.metrics.distributions import fd_result, kid_result

    backbone, source = get_backbone(sets.backbone), sets.source_size
    references = {f"{len(sets.training)} training images": (sets.training, n_resamples),
                  f"{len(sets.pool)} vendor images": (sets.pool, min(n_resamples, POOL_RESAMPLES))}
    rows = []
    for arm, fake in sets.generated.items():
        for reference, (real, resamples) in references.items():
            for measure, result in (("fd", fd_result(real, fake, backbone, source, resamples, generator)),
                                    ("kid", kid_result(real, fake, backbone, source, n_resamples=resamples,
                                                       generator=generator))):
                rows.append({"arm": arm, "reference": reference, "measure": measure, **result.to_dict()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- FD at infinitely many generated images

def fit_sizes(available: int, points: int = 4) -> tuple[int, ...]:
    """``points`` generated-set sizes evenly spaced up to ``available`` (at least 2 images each).

    >>> fit_sizes(372), fit_sizes(50, 5)
    ((93, 186, 279, 372), (10, 20, 30, 40, 50))
    """
    return tuple(sorted({max(2, int(round(available * (i + 1) / points))) for i in range(points)}))


def _fit_rows(case: str, n_real: int, fits: Sequence[small_sample.InverseSizeFit]) -> tuple[list, list]:
    rows, points = [], []
    for draw, fit in enumerate(fits):
        rows.append({"case": case, "n_real": n_real, "draw": draw, "fd_inf": fit.intercept, "ci_low": fit.ci_low,
                     "ci_high": fit.ci_high, "slope": fit.slope})
        points += [{"case": case, "n_real": n_real, "draw": draw, "m": m, "fd": value}
                   for m, value in zip(fit.sizes, fit.values)]
    return rows, points


def extrapolations(sets: FeatureSets, n_draws: int, n_real_draws: int,
                   generator: torch.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """FD_inf (Chong & Forsyth's 1/m fit): per arm against the training images and against the
    pool; and between two samples of the pool (true value 0) with n_real = len(training) and
    n_real = half the pool, ``n_real_draws`` draws each. Returns (fits, the points fitted)."""
    rows, points = [], []
    for arm, fake in sets.generated.items():
        for reference, real in ((TRAINING, sets.training), ("vendor pool", sets.pool)):
            fit = small_sample.fd_infinity(real, fake, fit_sizes(len(fake), 5), n_draws, generator)
            more_rows, more_points = _fit_rows(f"{arm}, {reference}", len(real), [fit])
            rows, points = rows + more_rows, points + more_points
    for n_real in (len(sets.training), len(sets.pool) // 2):
        fits = small_sample.same_distribution_fd_infinity(sets.pool, n_real, fit_sizes(len(sets.pool) - n_real),
                                                          n_real_draws, n_draws, generator)
        more_rows, more_points = _fit_rows(f"{SAME_STYLE}, n = {n_real}", n_real, fits)
        rows, points = rows + more_rows, points + more_points
    return pd.DataFrame(rows), pd.DataFrame(points)


# ---------------------------------------------------------------- the study and what it says

@dataclass(kw_only=True)
class FDStudy:
    """Every table of the FD section (see the module docstring)."""

    sets: FeatureSets
    by_real_size: pd.DataFrame
    by_generated_size: pd.DataFrame
    same_style: pd.DataFrame
    references: pd.DataFrame
    fits: pd.DataFrame
    fit_points: pd.DataFrame
    ranks: dict[str, small_sample.CovarianceRank]

    def _panels(self, bands: pd.DataFrame, x: str, line: pd.Series) -> pd.DataFrame:
        """Bands as ``plots.interval_panels`` rows: FD and KID panels named by the metric."""
        frames = [pd.DataFrame({x: bands[x], "value": bands[f"{metric}_mean"], "ci_low": bands[f"{metric}_low"],
                                "ci_high": bands[f"{metric}_high"], "line": line, "panel": self.sets.name(kind)})
                  for metric, kind in (("fd", "FD"), ("kid", "KID"))]
        return pd.concat(frames, ignore_index=True)

    def size_panels(self) -> pd.DataFrame:
        """FD and KID against n (every generated image of each arm; the same-style pairs at their m)."""
        same = self.same_style
        both = pd.concat([self.by_real_size, same], ignore_index=True)
        lines = [f"{arm}, m = {m}" for arm, m in zip(both.arm, both.n_generated)]
        return self._panels(both, "n_real", pd.Series(lines))

    def generated_size_panels(self) -> pd.DataFrame:
        """FD and KID against m, at n = the training set's size (drawn from the pool) and the whole pool."""
        table = self.by_generated_size
        return self._panels(table, "n_generated", pd.Series([f"{arm}, n = {n}" for arm, n in zip(table.arm,
                                                                                               table.n_real)]))

    def references_table(self) -> pd.DataFrame:
        """``value [95% interval]`` of FD and KID per arm (rows) against each reference (columns)."""
        from lora_core.experiments.evaluate import format_results

        named = self.references.assign(measure=self.references.measure.map({"fd": self.sets.name("FD"),
                                                                             "kid": self.sets.name("KID")}))
        return format_results(named, index=["measure", "arm"], columns="reference")

    def rank_table(self) -> pd.DataFrame:
        """Covariance rank of the training images and of the pool in the network's dimensions."""
        return pd.DataFrame([{"images": name, "n": rank.n, "dimensions": rank.dim, "rank": rank.rank,
                              "largest possible": rank.max_rank, "zero eigenvalues": f"{rank.zero_share:.1%}"}
                             for name, rank in self.ranks.items()])

    def fits_table(self) -> pd.DataFrame:
        """FD_inf per case: mean intercept over draws, the range of the draws' 95% intervals and how
        many of them contain the true value 0 where it is known (same-style cases)."""
        rows = []
        for case, group in self.fits.groupby("case", sort=False):
            contains = int(((group.ci_low <= 0) & (group.ci_high >= 0)).sum())
            rows.append({"case": case, "n_real": int(group.n_real.iloc[0]), "draws": len(group),
                         "FD_inf (mean)": float(group.fd_inf.mean()), "lowest ci_low": float(group.ci_low.min()),
                         "highest ci_high": float(group.ci_high.max()),
                         "intervals containing 0": f"{contains} of {len(group)}" if case.startswith(SAME_STYLE)
                         else "true value unknown"})
        return pd.DataFrame(rows)


def fd_study(sets: FeatureSets, real_sizes: Sequence[int], same_style_m: int, n_draws: int, n_resamples: int,
             seed: int = 0) -> FDStudy:
    """All tables from one seeded generator (numbers repeat run to run)."""
    generator = torch.Generator().manual_seed(seed)
    real_sizes = tuple(sorted(set(real_sizes) | {len(sets.training)}))  # S2's n always on the grid
    largest = max(len(fake) for fake in sets.generated.values())
    by_n, by_m = size_sweeps(sets, real_sizes, fit_sizes(largest, 5), n_draws, generator)
    same = same_style_sweep(sets.pool, real_sizes, same_style_m, n_draws, generator)
    fits, points = extrapolations(sets, max(2, n_draws // 5), 5, generator)
    ranks = {TRAINING: small_sample.covariance_rank(sets.training),
             "vendor pool": small_sample.covariance_rank(sets.pool)}
    return FDStudy(sets=sets, by_real_size=by_n, by_generated_size=by_m, same_style=same,
                   references=against_references(sets, n_resamples, generator), fits=fits, fit_points=points,
                   ranks=ranks)


def band_at(bands: pd.DataFrame, n_real: int, metric: str = "fd") -> tuple[float, float, float] | None:
    """(mean, low, high) of ``metric`` at ``n_real`` in a :func:`small_sample.size_bands` table
    (its first such row), or None when the table has no row at that n.

    >>> bands = pd.DataFrame({"n_real": [28], "fd_mean": [2.0], "fd_low": [1.0], "fd_high": [3.0]})
    >>> band_at(bands, 28), band_at(bands, 100)
    ((2.0, 1.0, 3.0), None)
    """
    rows = bands[bands.n_real == n_real]
    if rows.empty:
        return None
    row = rows.iloc[0]
    return float(row[f"{metric}_mean"]), float(row[f"{metric}_low"]), float(row[f"{metric}_high"])


def kid_reading(low: float, high: float) -> str:
    """What a KID interval says: a difference, or one no larger than noise.

    >>> kid_reading(0.002, 0.01), kid_reading(-0.001, 0.004)
    ('above 0: the sets differ', 'includes 0: no difference shows')
    """
    return "above 0: the sets differ" if low > 0 else "includes 0: no difference shows"


def rescued_draws(fits: pd.DataFrame, case_prefix: str) -> tuple[int, int]:
    """(draws whose FD_inf interval contains 0, all draws) among the cases starting with
    ``case_prefix``: the extrapolation rescues a draw when it reaches the true value 0.

    >>> fits = pd.DataFrame({"case": ["same, n = 28"] * 2, "ci_low": [0.5, -0.1], "ci_high": [2.0, 0.3]})
    >>> rescued_draws(fits, "same, n = 28")
    (1, 2)
    """
    rows = fits[fits.case.str.startswith(case_prefix)]
    return int(((rows.ci_low <= 0) & (rows.ci_high >= 0)).sum()), len(rows)


def _interval_text(row: pd.Series) -> str:
    from lora_core.experiments.evaluate import ci_text

    return ci_text(row.value, row.ci_low, row.ci_high)


def reference_row(study: FDStudy, arm: str, measure: str, reference: str = "training") -> pd.Series:
    """The :func:`against_references` row of ``arm`` and ``measure`` against the training
    images (``reference="training"``) or the pool (``"pool"``)."""
    table = study.references
    word = "training images" if reference == "training" else "vendor images"
    rows = table[(table.arm == arm) & (table.measure == measure) & table.reference.str.endswith(word)]
    if rows.empty:
        raise ValueError(f"arm: no {measure} row for {arm!r} against the {word} (arms: {sorted(set(table.arm))})")
    return rows.iloc[0]


def separated(first: pd.Series, second: pd.Series) -> bool:
    """True when two results' 95% intervals do not overlap.

    >>> row = lambda low, high: pd.Series({"ci_low": low, "ci_high": high})
    >>> separated(row(1.0, 2.0), row(2.5, 3.0)), separated(row(1.0, 2.0), row(1.5, 3.0))
    (True, False)
    """
    return bool(first.ci_high < second.ci_low or second.ci_high < first.ci_low)


def fd_facts(study: FDStudy, reported: float, arm: str, other: str) -> dict[str, Any]:
    """The FD section's numbers and sentences: the rank limit, the same-style band at n = 28 and at
    the largest n, S2's ``reported`` value against that band, ``arm``'s FD and KID against the
    training images and the pool, FD_inf between two real samples, whether FD and KID at n = 28
    separate ``arm`` from ``other``, and ``found_fd``."""
    n_small, n_pool = len(study.sets.training), len(study.sets.pool)
    rank = study.ranks[TRAINING]
    same_small = band_at(study.same_style, n_small)
    same_large_n = int(study.same_style.n_real.max())
    same_large = band_at(study.same_style, same_large_n)
    arm_bands = study.by_real_size[study.by_real_size.arm == arm]
    fd_small, fd_large = band_at(arm_bands, n_small), band_at(arm_bands, n_pool)
    fd_arm, kid_arm = reference_row(study, arm, "fd"), reference_row(study, arm, "kid")
    rescued_small, draws_small = rescued_draws(study.fits, f"{SAME_STYLE}, n = {n_small}")
    rescued_large, draws_large = rescued_draws(study.fits, f"{SAME_STYLE}, n = {n_pool // 2}")
    fd_apart = separated(fd_arm, reference_row(study, other, "fd"))
    kid_apart = separated(kid_arm, reference_row(study, other, "kid"))
    facts = {
        "fd_name": study.sets.name("FD"), "fd_short": study.sets.name("FD").split(" ")[0],
        "kid_name": study.sets.name("KID"), "n_training": n_small,
        "n_pool": n_pool, "rank_training": f"{rank.rank} of {rank.dim}", "rank_zero_share": f"{rank.zero_share:.1%}",
        "same_style_small": f"{same_small[0]:.3g} [{same_small[1]:.3g}, {same_small[2]:.3g}]",
        "same_style_large_n": same_large_n,
        "same_style_large": f"{same_large[0]:.3g} [{same_large[1]:.3g}, {same_large[2]:.3g}]",
        "s2_reported": reported, "s2_position": band_position(reported, same_small[1], same_small[2]),
        "fd_arm_training": _interval_text(fd_arm), "kid_arm_training": _interval_text(kid_arm),
        "kid_arm_reading": kid_reading(kid_arm.ci_low, kid_arm.ci_high),
        "fd_arm_pool": _interval_text(reference_row(study, arm, "fd", "pool")),
        "fd_small_over_large": f"{fd_small[0] / fd_large[0]:.2f}",
        "fd_inf_rescued_small": f"{rescued_small} of {draws_small}",
        "fd_inf_rescued_large": f"{rescued_large} of {draws_large}", "fd_inf_large_n": n_pool // 2,
        "fd_separates": "separates" if fd_apart else "does not separate",
        "kid_separates": "separates" if kid_apart else "does not separate",
    }
    facts["found_fd"] = (f"Between two samples of the same vendor's images, {facts['fd_short']} at "
                         f"n = {n_small} reads {facts['same_style_small']} (true value 0); extrapolating to "
                         f"infinitely many generated images reaches 0 in {facts['fd_inf_rescued_small']} draws at "
                         f"n = {n_small}, so KID with its interval is the number to report.")
    return facts
