"""Memorisation measures on constructed cases with known answers (exact copies, near copies,
unrelated images, underfitting), each part against an independent reference: Wilson intervals
by hand, in closed form and from scipy's binomtest; U and its p-value from
scipy.stats.mannwhitneyu; nearest neighbours by brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import torch
from scipy.cluster import vq

from lora_core.metrics.memorisation import (calibrate_similarity_threshold, copy_share, data_copying_test,
                                            feature_copy_share, mann_whitney_u, nearest_distances,
                                            nearest_pixel_mse, nearest_training, paired_pixel_mse,
                                            pixel_copy_share, z_u)
from lora_core.metrics.proportions import wilson_interval

Z95 = scipy.stats.norm.ppf(0.975)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clustered(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    """Three well-separated Gaussian clusters, so k-means cells are meaningful."""
    centres = np.array([np.full(d, 4.0), np.full(d, -4.0), np.r_[np.full(d // 2, 4.0), np.full(d - d // 2, -4.0)]])
    return centres[rng.integers(0, 3, size=n)] + rng.normal(size=(n, d))


def all_closer_z(m: int, n: int) -> float:
    """Z_U when every generated distance is below every held-out one (U = 0)."""
    return -math.sqrt(3 * m * n / (m + n + 1))


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    training = clustered(rng, 600)
    return {"training": training, "held_out": clustered(rng, 600), "unrelated": clustered(rng, 300),
            "copies": training[rng.choice(600, 300, replace=False)],
            "near_copies": training[rng.choice(600, 300, replace=False)] + rng.normal(scale=0.02, size=(300, 16)),
            "underfit": clustered(rng, 300) + rng.normal(scale=1.5, size=(300, 16))}


# ---------------------------------------------------------------- Wilson intervals

def test_wilson_interval_by_hand_in_closed_form_and_against_scipy():
    # by hand, 3 of 10: p = 0.3, z^2 = 3.8415; centre (0.3 + 0.19207) / 1.38415 = 0.35550,
    # half 1.95996 * sqrt(0.021 + 0.0096037) / 1.38415 = 0.24771
    assert wilson_interval(3, 10) == pytest.approx((0.10779, 0.60322), abs=1e-5)
    n = 40
    assert wilson_interval(0, n) == pytest.approx((0.0, Z95**2 / (n + Z95**2)))      # k = 0: [0, z^2 / (n + z^2)]
    assert wilson_interval(n, n) == pytest.approx((n / (n + Z95**2), 1.0))           # k = n: [n / (n + z^2), 1]
    for k, trials, confidence in [(1, 7, 0.95), (17, 120, 0.9), (299, 300, 0.99), (5, 5, 0.8)]:
        reference = scipy.stats.binomtest(k, trials).proportion_ci(confidence_level=confidence, method="wilson")
        assert wilson_interval(k, trials, confidence) == pytest.approx((reference.low, reference.high), rel=1e-10)
    with pytest.raises(ValueError, match=r"need 0 <= successes <= n and n >= 1, got successes=11, n=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence must be in"):
        wilson_interval(1, 10, confidence=1.0)


def test_copy_share_counts_strictly_beyond_the_threshold_and_reports_a_metric_result():
    share = copy_share([0.1, 0.5, 0.5, 0.9], 0.5, "cosine")
    below = copy_share([0.1, 0.5, 0.5, 0.9], 0.5, "mse", above=False)
    assert (share.count, below.count, share.n, share.share) == (1, 1, 4, 0.25)
    assert (share.ci_low, share.ci_high) == wilson_interval(1, 4)
    result = share.metric_result("inception")
    assert (result.metric, result.n, result.value, result.note) == (
        "copy share (cosine)", 4, 0.25, "1 of 4 beyond 0.5, Wilson interval")
    with pytest.raises(ValueError, match="copy_share: no values"):
        copy_share([], 0.5, "cosine")


# ---------------------------------------------------------------- nearest training image by cosine

def test_nearest_training_matches_brute_force_cosine():
    rng = np.random.default_rng(1)
    queries, training = rng.normal(size=(15, 6)), rng.normal(size=(25, 6))
    index, similarity = nearest_training(queries, torch.from_numpy(training))
    for q, i, s in zip(queries, index, similarity):
        similarities = [1 - scipy.spatial.distance.cosine(q, t) for t in training]
        assert i == int(np.argmax(similarities)) and s == pytest.approx(max(similarities), rel=1e-12)
    with pytest.raises(ValueError, match="training: needs at least one image and no all-zero feature vector"):
        nearest_training(queries, np.vstack([training, np.zeros(6)]))


def test_threshold_leaves_the_calibration_share_of_held_out_images_above_it(world):
    threshold = calibrate_similarity_threshold(world["held_out"], world["training"], quantile=0.95)
    held_out_similarity = nearest_training(world["held_out"], world["training"])[1]
    assert (held_out_similarity > threshold).mean() == pytest.approx(0.05, abs=1 / 600)
    with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\), got 99"):
        calibrate_similarity_threshold(world["held_out"], world["training"], quantile=99)


@pytest.mark.parametrize("case, expected_count", [("copies", 300), ("near_copies", 300)])
def test_feature_copy_share_finds_every_copy(world, case, expected_count):
    share = feature_copy_share(world[case], world["training"], world["held_out"])
    assert share.count == expected_count == share.n
    assert share.ci_low == pytest.approx(300 / (300 + Z95**2))            # Wilson at k = n


def test_feature_copy_share_of_unrelated_images_is_near_the_calibration_level(world):
    share = feature_copy_share(world["unrelated"], world["training"], world["held_out"], quantile=0.95)
    assert share.ci_low < 0.05 < share.ci_high
    assert share.share < 0.1


# ---------------------------------------------------------------- Mann-Whitney U and Z_U

def test_mann_whitney_u_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(2)
    tied_x, tied_y = rng.integers(0, 6, size=40), rng.integers(0, 6, size=25)
    assert mann_whitney_u(tied_x, tied_y) == scipy.stats.mannwhitneyu(tied_x, tied_y).statistic
    x, y = rng.gamma(2.0, size=30), rng.gamma(2.5, size=45)
    assert mann_whitney_u(x, y) == scipy.stats.mannwhitneyu(x, y).statistic
    # Z_U is the normal approximation scipy uses for the one-sided test, without continuity correction
    p_less = scipy.stats.mannwhitneyu(x, y, alternative="less", method="asymptotic", use_continuity=False).pvalue
    assert scipy.stats.norm.cdf(z_u(x, y)) == pytest.approx(p_less, rel=1e-10)
    with pytest.raises(ValueError, match="z_u: needs at least one generated and one held-out distance, got m=0"):
        z_u([], y)


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(3)
    queries, training = rng.normal(size=(20, 5)), rng.normal(size=(30, 5))
    reference = scipy.spatial.distance.cdist(queries, training).min(axis=1)
    assert nearest_distances(queries, training) == pytest.approx(reference, rel=1e-9)
    assert nearest_distances(training[:4], training) == pytest.approx(np.zeros(4), abs=1e-6)


# ---------------------------------------------------------------- the data-copying test

def test_exact_copies_give_the_all_closer_z_in_every_cell(world):
    result = data_copying_test(world["copies"], world["held_out"], world["training"], n_cells=3, generator=seeded())
    assert result.z_u_global == pytest.approx(all_closer_z(300, 600))
    cells = result.cells
    assert cells.n_generated.sum() == 300 and cells.n_held_out.sum() == 600 and cells.n_training.sum() == 600
    for row in cells.itertuples():
        assert row.z_u == pytest.approx(all_closer_z(row.n_generated, row.n_held_out))
    counted = cells[cells.counted]
    expected = (counted.held_out_share * counted.z_u).sum() / counted.held_out_share.sum()
    assert result.c_t == pytest.approx(expected) and result.c_t < -10


def test_cells_and_their_z_u_match_a_recomputation_with_scipy(world):
    result = data_copying_test(world["near_copies"], world["held_out"], world["training"], n_cells=4,
                               generator=seeded(1))
    cell_of = {name: vq.vq(world[name], result.centroids)[0] for name in ("near_copies", "held_out", "training")}
    for row in result.cells.itertuples():
        train = world["training"][cell_of["training"] == row.cell]
        generated = scipy.spatial.distance.cdist(world["near_copies"][cell_of["near_copies"] == row.cell], train).min(1)
        held_out = scipy.spatial.distance.cdist(world["held_out"][cell_of["held_out"] == row.cell], train).min(1)
        u = scipy.stats.mannwhitneyu(generated, held_out).statistic
        m, n = len(generated), len(held_out)
        assert row.z_u == pytest.approx((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12), rel=1e-9)
        assert row.held_out_share == n / 600 and row.counted == (m >= 20)
    assert result.c_t < -10
    assert result == data_copying_test(world["near_copies"], world["held_out"], world["training"], n_cells=4,
                                       generator=seeded(1))


def test_unrelated_images_give_c_t_near_zero_and_underfitting_a_positive_one(world):
    unrelated = data_copying_test(world["unrelated"], world["held_out"], world["training"], n_cells=3,
                                  generator=seeded())
    assert abs(unrelated.c_t) < 2.5 and abs(unrelated.z_u_global) < 2.5
    underfit = data_copying_test(world["underfit"], world["held_out"], world["training"], n_cells=3,
                                 generator=seeded())
    assert underfit.c_t > 5


def test_cells_without_held_out_images_are_reported_and_left_out(world):
    # held-out images from one cluster only: the cells of the other clusters have P_n(pi) = 0
    held_out = world["held_out"]
    one_cluster = held_out[(held_out[:, 0] > 2) & (held_out[:, -1] > 2)]
    result = data_copying_test(world["copies"], one_cluster, world["training"], n_cells=3, generator=seeded())
    empty = result.cells[result.cells.n_held_out == 0]
    assert len(empty) >= 1 and empty.z_u.isna().all() and not empty.counted.any()
    counted = result.cells[result.cells.counted]
    assert result.c_t == pytest.approx(counted.z_u.iloc[0]) and len(counted) == 1
    assert result.counted_generated_share == pytest.approx(counted.n_generated.sum() / 300)
    assert result.counted_generated_share < 0.6


def test_data_copying_test_refuses_too_few_generations_and_bad_cell_counts(world):
    with pytest.raises(ValueError, match=r"no cell holds 500 generations and a held-out image \(generations \[.*\], "
                                         r"held-out \[.*\]\); use fewer cells"):
        data_copying_test(world["copies"], world["held_out"], world["training"], n_cells=3,
                          min_generated_per_cell=500, generator=seeded())
    with pytest.raises(ValueError, match=r"n_cells must be in \[1, 600 training images\], got 0"):
        data_copying_test(world["copies"], world["held_out"], world["training"], n_cells=0)


# ---------------------------------------------------------------- pixel level

@pytest.fixture(scope="module")
def pixel_world() -> dict[str, torch.Tensor]:
    g = seeded(4)
    # smooth-ish images: a random 4x4 pattern upsampled, so neighbours are not all equidistant
    def images(n: int) -> torch.Tensor:
        coarse = torch.rand(n, 3, 4, 4, generator=g)
        return (torch.nn.functional.interpolate(coarse, size=16, mode="bilinear") * 255).round().to(torch.uint8)
    training = images(200)
    noise = torch.randint(-3, 4, training[:50].shape, generator=g)
    return {"training": training, "held_out": images(200), "unrelated": images(50),
            "near_copies": (training[:50].int() + noise).clamp(0, 255).to(torch.uint8)}


def test_pixel_mse_matches_an_explicit_computation(pixel_world):
    a, b = pixel_world["held_out"][:5], pixel_world["training"][:5]
    explicit = [float(((x.double() / 255 - y.double() / 255) ** 2).mean()) for x, y in zip(a, b)]
    assert paired_pixel_mse(a, b) == pytest.approx(explicit, rel=1e-12)
    brute = [min(float(((x.double() / 255 - t.double() / 255) ** 2).mean()) for t in pixel_world["training"])
             for x in a]
    assert nearest_pixel_mse(a, pixel_world["training"]) == pytest.approx(brute, rel=1e-8)
    with pytest.raises(ValueError, match="must pair one to one at one size"):
        paired_pixel_mse(a, b[:4])


@pytest.mark.parametrize("case, expected_share", [("exact", 1.0), ("near_copies", 1.0), ("unrelated", 0.0)])
def test_pixel_copy_share_on_copies_near_copies_and_unrelated_images(pixel_world, case, expected_share):
    generated = pixel_world["training"][:50] if case == "exact" else pixel_world[case]
    share = pixel_copy_share(generated, pixel_world["training"][:50], pixel_world["held_out"], pixel_world["training"])
    # unrelated images are further from a given training image than held-out ones are from their nearest
    assert share.share == expected_share and share.n == 50
    assert share.threshold == pytest.approx(np.quantile(nearest_pixel_mse(pixel_world["held_out"],
                                                                          pixel_world["training"]), 0.01))
