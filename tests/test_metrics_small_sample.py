"""Small-sample FD and KID: each statistic against an independent computation (scipy's sqrtm,
an O(n^2) kernel loop, numpy's rank and least squares, the exact expectation in one
dimension, a Monte Carlo reference on fresh Gaussian samples), plus the errors."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch

from lora_core.metrics.backbones import get_backbone
from lora_core.metrics.distributions import kid_result
from lora_core.metrics.small_sample import (covariance_rank, fd_and_kid, fd_infinity, fd_kid_by_size,
                                            fit_inverse_size, same_distribution_fd_infinity,
                                            same_distribution_fd_kid, size_bands)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_frechet(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def scipy_frechet(x: np.ndarray, y: np.ndarray) -> float:
    return gaussian_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def loop_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with k(a, b) = (a.b / d + 1)^3, one pair at a time."""
    d = x.shape[1]

    def kernel(a: np.ndarray, b: np.ndarray) -> float:
        return (sum(float(ai) * float(bi) for ai, bi in zip(a, b)) / d + 1.0) ** 3

    def within(s: np.ndarray) -> float:
        pairs = [(i, j) for i in range(len(s)) for j in range(len(s)) if i != j]
        return sum(kernel(s[i], s[j]) for i, j in pairs) / len(pairs)

    across = sum(kernel(a, b) for a in x for b in y) / (len(x) * len(y))
    return within(x) + within(y) - 2 * across


def c4(n: int) -> float:
    """E[s] / sigma for the sample standard deviation of n normal draws."""
    return math.sqrt(2.0 / (n - 1)) * math.exp(scipy.special.gammaln(n / 2) - scipy.special.gammaln((n - 1) / 2))


# ---------------------------------------------------------------- rank

@pytest.mark.parametrize("n, d, subspace", [(28, 64, None), (300, 32, None), (50, 40, 10), (28, 256, None)])
def test_covariance_rank_matches_numpy_matrix_rank_of_the_covariance(n, d, subspace):
    rng = np.random.default_rng(n + d)
    latent = rng.normal(size=(n, subspace or d))
    x = latent @ rng.normal(size=(subspace, d)) + 3.0 if subspace else latent + 3.0
    rank = covariance_rank(x)
    assert rank.rank == np.linalg.matrix_rank(np.cov(x, rowvar=False))
    assert rank.rank == min(n - 1, subspace or d)
    assert rank.zero_share == pytest.approx((d - rank.rank) / d)


def test_28_images_in_2048_dimensions_leave_2021_zero_directions():
    x = np.random.default_rng(0).normal(0.4, 0.2, size=(28, 2048))
    rank = covariance_rank(torch.from_numpy(x))
    assert (rank.rank, rank.max_rank) == (27, 27) == (np.linalg.matrix_rank(x - x.mean(0)), 27)
    assert rank.zero_share == pytest.approx(2021 / 2048)
    assert covariance_rank(np.repeat(x[:1], 5, axis=0)).rank == 0     # one image repeated: no spread
    with pytest.raises(ValueError, match="covariance_rank: needs at least 2 images, got n=1"):
        covariance_rank(x[:1])


# ---------------------------------------------------------------- FD and KID of one pair of sets

@pytest.mark.parametrize("m, n, d", [(20, 15, 6), (12, 9, 16)])
def test_fd_and_kid_match_scipy_sqrtm_and_an_explicit_kernel_loop(m, n, d):
    rng = np.random.default_rng(d)
    x, y = rng.normal(size=(m, d)), rng.normal(0.4, 1.3, size=(n, d))
    fd, kid = fd_and_kid(x, y)
    # n < d: the covariances are singular and sqrtm picks up sqrt(rounding noise)
    assert fd == pytest.approx(scipy_frechet(x, y), rel=1e-9 if n > d else 1e-5)
    assert kid == pytest.approx(loop_mmd2(x, y), rel=1e-10)


def test_fd_kid_by_size_rows_are_the_seeded_draws_and_reproducible():
    rng = np.random.default_rng(1)
    real, generated = rng.normal(size=(60, 5)), rng.normal(0.5, 1.0, size=(40, 5))
    table = fd_kid_by_size(real, generated, [(10, 40), (30, 20)], n_draws=2, generator=seeded(3))
    assert table.equals(fd_kid_by_size(real, generated, [(10, 40), (30, 20)], n_draws=2, generator=seeded(3)))
    assert list(table.columns) == ["n_real", "n_generated", "draw", "fd", "kid"]
    g = seeded(3)
    for row in table.itertuples():
        x = real[torch.randperm(60, generator=g)[:row.n_real].numpy()]
        y = generated[torch.randperm(40, generator=g)[:row.n_generated].numpy()]
        assert row.fd == pytest.approx(scipy_frechet(x, y), rel=1e-8)
        assert row.kid == pytest.approx(loop_mmd2(x, y), rel=1e-10)
    with pytest.raises(ValueError, match=r"sizes: \(61, 10\) exceeds the pools \(60 real, 40 generated\)"):
        fd_kid_by_size(real, generated, [(61, 10)])
    with pytest.raises(ValueError, match=r"at least 2 images per set, got \(1, 10\)"):
        fd_kid_by_size(real, generated, [(1, 10)])
    with pytest.raises(ValueError, match="n_draws must be >= 1"):
        fd_kid_by_size(real, generated, [(5, 5)], n_draws=0)


def test_same_distribution_draws_are_disjoint_subsets_of_one_pool():
    pool = np.random.default_rng(2).normal(size=(50, 3))
    table = same_distribution_fd_kid(pool, [(20, 30)], n_draws=3, generator=seeded(5))
    g = seeded(5)
    for row in table.itertuples():
        order = torch.randperm(50, generator=g).numpy()
        assert row.fd == pytest.approx(scipy_frechet(pool[order[:20]], pool[order[20:]]), rel=1e-8)
    with pytest.raises(ValueError, match=r"\(28, 30\) needs n \+ m <= 50 images in the pool for disjoint samples"):
        same_distribution_fd_kid(pool, [(28, 30)])


# ---------------------------------------------------------------- the same-distribution spread

def test_same_distribution_fd_matches_the_exact_expectation_in_one_dimension():
    # d = 1: FD = (mean_x - mean_y)^2 + s_x^2 + s_y^2 - 2 s_x s_y, so for N(0, 1) samples
    # E[FD] = 1/n + 1/m + 2 - 2 c4(n) c4(m) exactly
    pool = np.random.default_rng(3).normal(size=(20_000, 1))
    pool = (pool - pool.mean()) / pool.std()
    table = same_distribution_fd_kid(pool, [(10, 10), (28, 100)], n_draws=1500, generator=seeded(0))
    for (n, m), fd in table.groupby(["n_real", "n_generated"]).fd:
        expected = 1 / n + 1 / m + 2 - 2 * c4(n) * c4(m)
        assert fd.mean() == pytest.approx(expected, abs=4 * fd.std() / math.sqrt(len(fd)))


def test_same_distribution_fd_is_positive_shrinks_with_n_and_matches_a_monte_carlo_reference():
    rng = np.random.default_rng(4)
    mixing = rng.normal(size=(4, 4))
    pool = rng.normal(size=(20_000, 4)) @ mixing
    sizes = [(10, 10), (28, 28), (100, 100), (400, 400)]
    table = same_distribution_fd_kid(pool, sizes, n_draws=60, generator=seeded(1))
    assert (table.fd > 0).all()
    means = table.groupby("n_real").fd.mean()
    assert means.is_monotonic_decreasing and means[400] < means[10] / 10
    # reference: fresh samples of the Gaussian the pool came from, through scipy's sqrtm
    ours = table[table.n_real == 28].fd
    reference = [scipy_frechet(rng.normal(size=(28, 4)) @ mixing, rng.normal(size=(28, 4)) @ mixing)
                 for _ in range(600)]
    se = math.sqrt(ours.var() / len(ours) + np.var(reference) / len(reference))
    assert ours.mean() == pytest.approx(np.mean(reference), abs=4 * se)
    # KID is unbiased: its same-distribution draws centre on 0
    kid = table[table.n_real == 28].kid
    assert abs(kid.mean()) < 4 * kid.std() / math.sqrt(len(kid))


def test_kid_interval_at_28_images_covers_zero_for_one_distribution_and_not_for_two():
    rng = np.random.default_rng(5)
    pool, shifted = rng.normal(size=(128, 16)), rng.normal(0.8, 1.0, size=(100, 16))
    backbone = get_backbone("pixels-8")      # names the result only; the features are given
    same = kid_result(pool[:28], pool[28:], backbone, "16", n_resamples=200, generator=seeded(0))
    different = kid_result(pool[:28], shifted, backbone, "16", n_resamples=200, generator=seeded(0))
    assert same.ci_low <= 0 <= same.ci_high          # <=: stays true if intervals get clipped at 0
    assert different.ci_low > same.ci_high
    assert fd_and_kid(pool[:28], pool[28:])[0] > 2.0       # while FD reads a clear distance where there is none


def test_size_bands_are_percentiles_over_draws():
    rng = np.random.default_rng(6)
    table = pd.DataFrame({"n_real": np.repeat([10, 28], 50), "n_generated": 100, "draw": np.tile(range(50), 2),
                          "fd": rng.gamma(2.0, size=100), "kid": rng.normal(size=100)})
    bands = size_bands(table, confidence=0.9)
    for row in bands.itertuples():
        fd = table[table.n_real == row.n_real].fd
        assert (row.fd_low, row.fd_high) == pytest.approx(tuple(np.quantile(fd, [0.05, 0.95])))
        assert row.fd_mean == pytest.approx(fd.mean()) and row.draws == 50
    with pytest.raises(ValueError, match=r"table lacks columns \['kid'\]"):
        size_bands(table.drop(columns="kid"))


# ---------------------------------------------------------------- FD extrapolated in 1/m

def test_fit_inverse_size_matches_numpy_least_squares():
    rng = np.random.default_rng(7)
    sizes = np.repeat([50, 100, 200, 400, 800], 3)
    values = 10 + 300 / sizes + rng.normal(scale=0.2, size=len(sizes))
    fit = fit_inverse_size(sizes, values, confidence=0.9)
    design = np.column_stack([np.ones(len(sizes)), 1 / sizes])
    coef, rss, *_ = np.linalg.lstsq(design, values, rcond=None)
    covariance = rss[0] / (len(sizes) - 2) * np.linalg.inv(design.T @ design)
    assert (fit.intercept, fit.slope) == pytest.approx(tuple(coef), rel=1e-10)
    assert fit.intercept_se == pytest.approx(math.sqrt(covariance[0, 0]), rel=1e-8)
    half = scipy.stats.t.ppf(0.95, df=len(sizes) - 2) * fit.intercept_se
    assert (fit.ci_low, fit.ci_high) == pytest.approx((coef[0] - half, coef[0] + half), rel=1e-10)
    assert fit.predict([100]) == pytest.approx(design[3] @ coef)
    with pytest.raises(ValueError, match="needs >= 3 points over >= 2 distinct positive sizes"):
        fit_inverse_size([100, 100, 100], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="must be 1-d of one length"):
        fit_inverse_size([100, 200, 300], [1.0, 2.0])


def test_fd_infinity_recovers_the_infinite_m_limit_but_keeps_the_real_side_bias():
    # 28 fixed real images of N(0, I); the generator is N(0, I) itself. As m -> infinity the
    # generated statistics become exact, so FD -> FD(N(mean_28, cov_28), N(0, I)): not 0.
    rng = np.random.default_rng(8)
    real, generator_pool = rng.normal(size=(28, 4)), rng.normal(size=(40_000, 4))
    fit = fd_infinity(real, generator_pool, [50, 100, 200, 400, 800], n_draws=20, generator=seeded(0))
    limit = gaussian_frechet(real.mean(0), np.cov(real, rowvar=False), np.zeros(4), np.eye(4))
    assert fit.intercept == pytest.approx(limit, abs=max(3 * fit.intercept_se, 0.02))
    assert fit.ci_low > 0.5 * limit > 0
    assert np.mean(fit.values[:20]) > fit.intercept     # at m = 50 the generated side adds bias too


def test_fd_infinity_of_28_same_distribution_images_stays_far_from_zero():
    pool = np.random.default_rng(9).normal(size=(4_000, 16))
    small = same_distribution_fd_infinity(pool, 28, [100, 200, 400, 800], n_real_draws=3, generator=seeded(0))
    large = same_distribution_fd_infinity(pool, 1_000, [100, 200, 400, 800], n_real_draws=2, generator=seeded(0))
    assert min(f.ci_low for f in small) > 10 * max(abs(f.intercept) for f in large)
    # the first fit extrapolates to the FD between the 28 images and the rest of the pool
    order = torch.randperm(4_000, generator=seeded(0)).numpy()
    real, rest = pool[order[:28]], pool[order[28:]]
    limit = scipy_frechet(real, rest)
    assert small[0].intercept == pytest.approx(limit, abs=3 * small[0].intercept_se + 0.05 * limit)
    with pytest.raises(ValueError, match="n_real=28 and sizes up to 4000 must fit disjointly in the pool of 4000"):
        same_distribution_fd_infinity(pool, 28, [100, 4_000])
