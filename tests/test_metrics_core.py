"""Metrics core: each formula against an independent reference, real photos through the real
networks (a handful of images: Inception costs ~0.26 s per 299 px image here), bad input."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch
from PIL import Image

from lora_core.metrics.backbones import get_backbone
from lora_core.metrics.cache import FeatureCache, content_key
from lora_core.metrics.distributions import (FrechetDistance, InceptionScore, KernelDistance, distribution_report,
                                             fd_result, feature_statistics, frechet_distance,
                                             frechet_distance_from_features, inception_score, is_result,
                                             kernel_distance, mmd2_unbiased)
from lora_core.metrics.diversity import lpips_diversity, random_pairs, vendi_result, vendi_score
from lora_core.metrics.lpips import ShiftTolerantLPIPS, get_perceptual, paired_distance
from lora_core.metrics.preprocess import as_uint8_images
from lora_core.metrics.stats import (NON_NEGATIVE, MetricResult, aggregate_over_seeds, bootstrap_ci,
                                     bootstrap_result)

# ImageNet-1k indices of acceptable top-1 classes for scikit-image's photos
SENSIBLE_TOP1 = {
    "chelsea": {281, 282, 283, 285, 287},      # tabby, tiger cat, Persian, Egyptian cat, lynx
    "coffee": {504, 967, 968, 969},            # coffee mug, espresso, cup, eggnog
    "rocket": {657, 744, 812},                 # missile, projectile, space shuttle
}


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, size: int = 16, seed: int = 0, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (n, 3, size, size), generator=seeded(seed), dtype=torch.uint8)


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    skimage_data = pytest.importorskip("skimage.data")
    return {name: as_uint8_images(Image.fromarray(getattr(skimage_data, name)()), size=224)
            for name in ("chelsea", "coffee", "rocket", "astronaut")}


# ---------------------------------------------------------------- Fréchet distance

def scipy_frechet(x: np.ndarray, y: np.ndarray) -> float:
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("m, n, d, rtol", [(300, 250, 16, 1e-9), (40, 30, 64, 1e-6)])
def test_frechet_distance_matches_scipy_sqrtm(m, n, d, rtol):
    # with n < d the covariances are singular: sqrtm and eigvals pick up sqrt(rounding noise),
    # the Gram/nuclear-norm route does not, hence the looser tolerance there
    rng = np.random.default_rng(0)
    x = rng.normal(size=(m, d))
    y = rng.normal(0.3, 1.5, size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    reference = scipy_frechet(x, y)
    assert frechet_distance(*feature_statistics(x), *feature_statistics(y)) == pytest.approx(reference, rel=rtol)
    assert frechet_distance_from_features(x, y) == pytest.approx(reference, rel=rtol)


def test_frechet_distance_class_matches_torchmetrics_fid_with_same_backbone():
    from torchmetrics.image.fid import FrechetInceptionDistance

    backbone = get_backbone("pixels-8")
    real, generated = random_images(250, seed=1), random_images(220, seed=2, high=200)
    reference = FrechetInceptionDistance(feature=backbone)
    reference.update(real, real=True)
    reference.update(generated, real=False)
    ours = FrechetDistance(backbone, n_resamples=20)
    ours.update(real, real=True)
    ours.update(generated, real=False)
    result = ours.compute()
    assert result.value == pytest.approx(float(reference.compute()), rel=1e-6)
    assert result.metric == "FD-pixels (raw pixels, 16->8 px)"
    assert result.note == ""      # n=220 >= 192 features: no small-n flag


def test_frechet_distance_flags_small_n_and_refuses_n_below_two():
    metric = FrechetDistance("pixels-8", n_resamples=20)
    metric.update(random_images(100, seed=1), real=True)
    metric.update(random_images(120, seed=2), real=False)
    result = metric.compute()
    assert result.note == "n=100 < 192: biased upward, compare KID"
    assert result.ci_low <= result.value <= result.ci_high
    tiny = FrechetDistance("pixels-8")
    tiny.update(random_images(1), real=True)
    tiny.update(random_images(5), real=False)
    with pytest.raises(ValueError, match="real: needs at least 2 images, got n=1"):
        tiny.compute()
    with pytest.raises(ValueError, match="no generated images"):
        only_real = FrechetDistance("pixels-8")
        only_real.update(random_images(4), real=True)
        only_real.compute()


def test_frechet_distance_at_equal_n_subsamples_the_larger_set_reproducibly():
    real, generated = random_images(50, seed=1), random_images(80, seed=2)
    values = []
    for _ in range(2):
        metric = FrechetDistance("pixels-8", n_resamples=10, seed=3, equal_n=True)
        metric.update(real, real=True)
        metric.update(generated, real=False)
        values.append(metric.compute())
    assert values[0] == values[1] and values[0].n == 50


# ---------------------------------------------------------------- KID and IS

def explicit_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_unbiased_polynomial_mmd_and_caps_subset_size_at_n():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.0, size=(9, 5))
    assert mmd2_unbiased(x, y) == pytest.approx(explicit_mmd2(x, y), rel=1e-12)
    mean, std, size = kernel_distance(x, y, subset_size=1000, n_subsets=5, generator=seeded())
    assert size == 9                                    # never above the smaller set
    subset_values = []
    g = seeded()
    for _ in range(5):
        a = torch.randperm(12, generator=g)[:9].numpy()
        b = torch.randperm(9, generator=g)[:9].numpy()
        subset_values.append(explicit_mmd2(x[a], y[b]))
    assert mean == pytest.approx(np.mean(subset_values), rel=1e-10)
    assert std == pytest.approx(np.std(subset_values), rel=1e-8)


def test_kid_result_reports_mean_and_std_over_subsets():
    metric = KernelDistance("pixels-8", subset_size=30, n_subsets=7, n_resamples=30)
    metric.update(random_images(40, seed=1), real=True)
    metric.update(random_images(35, seed=2, high=128), real=False)
    result = metric.compute()
    assert result.metric == "KID-pixels (raw pixels, 16->8 px)"
    assert result.note.startswith("mean ± std over 7 subsets of 30: ")
    assert result.ci_low < result.value < result.ci_high


def numpy_inception_score(logits: np.ndarray, splits: int) -> float:
    scores = []
    for part in np.array_split(logits, splits):
        p = scipy.special.softmax(part, axis=1)
        marginal = p.mean(axis=0)
        scores.append(np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in p])))
    return float(np.mean(scores))


@pytest.mark.parametrize("splits", [1, 3])
def test_inception_score_matches_numpy_formula(splits):
    logits = np.random.default_rng(0).normal(scale=3.0, size=(30, 10))
    assert inception_score(logits, splits)[0] == pytest.approx(numpy_inception_score(logits, splits), rel=1e-10)
    with pytest.raises(ValueError, match="splits must be in"):
        inception_score(logits[:2], splits=3)


@pytest.mark.parametrize("bad, shown", [(-np.inf, "-inf"), (np.inf, "inf"), (np.nan, "nan")])
def test_inception_score_refuses_non_finite_logits(bad, shown):
    logits = np.random.default_rng(0).normal(size=(6, 4))
    logits[2, 1] = bad   # -inf: probability exactly 0, whose 0 * log 0 made the score nan
    with pytest.raises(ValueError, match=rf"^inception_score: logits: must be finite, got 1 non-finite value "
                                         rf"\({shown} at row 2, column 1\)$"):
        inception_score(logits, splits=2)


def test_inception_score_is_labelled_effnet_and_refuses_inception():
    with pytest.raises(ValueError, match="exposes no logits"):
        InceptionScore("inception")
    with pytest.raises(NotImplementedError, match="'inception' exposes no logits"):
        get_backbone("inception").logits(random_images(1))


# ---------------------------------------------------------------- Vendi, diversity

def test_vendi_matches_eigenvalue_definition():
    x = np.random.default_rng(0).normal(size=(20, 7)) + 1.0
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    eigenvalues = np.clip(np.linalg.eigvalsh(unit @ unit.T / len(x)), 0, None)
    eigenvalues = eigenvalues[eigenvalues > 0]
    assert vendi_score(x) == pytest.approx(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()), rel=1e-9)
    assert vendi_score(np.repeat(x[:1], 6, axis=0)) == pytest.approx(1.0)


def test_vendi_result_and_random_pairs():
    result = vendi_result(random_images(12), backbone="pixels-8", n_resamples=50)
    assert result.metric == "Vendi (raw pixels cosine, 16->8 px)" and result.n == 12
    assert result.ci_low <= result.value <= result.ci_high
    pairs = random_pairs(30, 40, seeded())
    assert len(pairs) == 40 and bool((pairs[:, 0] != pairs[:, 1]).all())
    assert torch.equal(pairs, random_pairs(30, 40, seeded()))
    assert len(random_pairs(4, 40)) == 6                 # all pairs when fewer exist


# ---------------------------------------------------------------- ST-LPIPS

@pytest.mark.parametrize("trunk", ["alex", "vgg"])
def test_st_lpips_weights_equal_shipped_file(trunk):
    network = get_perceptual(f"st-lpips-{trunk}").network
    shipped = torch.load(network.weights_path, map_location="cpu", weights_only=True)
    ours = network.state_dict()
    assert len(shipped) == len(ours)
    for key, value in shipped.items():
        assert torch.equal(ours[ShiftTolerantLPIPS.local_name(key)], value), key


def test_st_lpips_equals_the_package_network(monkeypatch):
    # stlpips-pytorch imports torchvision and torchsummary at import time without using them for
    # the shift-tolerant variant: stub both for this test only, then drop the imported package
    torchvision = types.ModuleType("torchvision")
    torchvision.models = types.ModuleType("torchvision.models")
    torchsummary = types.ModuleType("torchsummary")
    torchsummary.summary = lambda *args, **kwargs: None
    for name, module in {"torchvision": torchvision, "torchvision.models": torchvision.models,
                         "torchsummary": torchsummary}.items():
        monkeypatch.setitem(sys.modules, name, module)
    try:
        from stlpips_pytorch import stlpips

        reference = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False)
    finally:
        for name in [m for m in sys.modules if m.startswith("stlpips_pytorch")]:
            monkeypatch.delitem(sys.modules, name)
    x = torch.rand(2, 3, 48, 48, generator=seeded(1)) * 2 - 1
    y = torch.rand(2, 3, 48, 48, generator=seeded(2)) * 2 - 1
    with torch.no_grad():
        expected = reference(x, y).reshape(-1)
        assert torch.allclose(get_perceptual("st-lpips-alex").network(x, y), expected, rtol=1e-5, atol=1e-7)


def test_st_lpips_zero_for_identical_small_for_one_pixel_shift(photos):
    metric = get_perceptual("st-lpips-alex")
    wide = torch.cat([photos["chelsea"], photos["coffee"]])[..., :65, :65]
    original, shifted = wide[..., :64, :64], wide[..., :64, 1:65]
    identical = metric.distances(original, original)
    shift = metric.distances(original, shifted)
    different = metric.distances(original, original.flip(0))
    assert torch.equal(identical, torch.zeros(2, dtype=torch.float64))
    assert bool((shift > 0).all()) and bool((shift < 0.1 * different).all())


def test_paired_distance_and_diversity_results(photos):
    images = torch.cat([photos["chelsea"], photos["coffee"], photos["rocket"]])[..., ::4, ::4]   # 56 px
    paired = paired_distance(images, images.flip(0), n_resamples=50)
    assert paired.metric == "ST-LPIPS (shift-tolerant alex, 56->64 px)" and paired.n == 3
    assert paired.ci_low <= paired.value <= paired.ci_high
    diversity = lpips_diversity(images, n_pairs=10, n_resamples=50)
    assert diversity.n == 3 and diversity.note == "mean over 3 pairs of 3 images"
    with pytest.raises(ValueError, match="generated and reference must pair up image by image"):
        paired_distance(images, images[:2])


# ---------------------------------------------------------------- real networks on real photos

def test_effnet_top1_on_real_photos_is_sensible(photos):
    backbone = get_backbone("effnet-lite0")
    names = sorted(SENSIBLE_TOP1)
    logits = backbone.logits(torch.cat([photos[n] for n in names]))
    assert logits.dtype == torch.float64 and logits.shape == (3, 1000)
    for name, top1 in zip(names, logits.argmax(dim=1).tolist()):
        assert top1 in SENSIBLE_TOP1[name], (name, top1)
    assert backbone.features(photos["chelsea"]).shape == (1, 1280)


def test_inception_features_put_a_crop_of_the_cat_nearer_than_the_coffee(photos):
    backbone = get_backbone("inception")
    cat, coffee = photos["chelsea"], photos["coffee"]
    cat_crop = as_uint8_images(Image.fromarray(cat[0].permute(1, 2, 0).numpy()[8:216, 8:216]), size=224)
    features = backbone.features(torch.cat([cat, cat_crop, coffee]))
    assert features.shape == (3, 2048) and features.dtype == torch.float64
    distances = torch.cdist(features[:1], features[1:])[0]
    assert distances[0] < 0.5 * distances[1]             # a crop of the cat is nearer than the coffee


# ---------------------------------------------------------------- statistics

def test_bootstrap_ci_contains_value_and_is_deterministic_for_a_seed():
    values = np.random.default_rng(0).exponential(size=40)
    first = bootstrap_ci(values, np.mean, 300, seeded(5))
    assert first == bootstrap_ci(values, np.mean, 300, seeded(5))
    assert first != bootstrap_ci(values, np.mean, 300, seeded(6))
    assert first[0] < values.mean() < first[1]
    result = bootstrap_result("mean", "none", values, n_resamples=300, generator=seeded(5))
    assert (result.ci_low, result.ci_high) == first and result.n == 40


def scripted(values):
    """A statistic that ignores its resample and returns ``values`` in turn: replicates set by hand."""
    draws = iter(values)
    return lambda *resample: next(draws)


def test_a_declared_support_cuts_a_recentred_interval_by_hand():
    # replicates -10, -9, ..., 90 (mean 40), re-centred on 0: -50 ... 50, whose 2.5% and 97.5%
    # points (linear interpolation at positions 2.5 and 97.5) are -47.5 and 47.5; a distance
    # cannot be negative, so its interval is [0, 47.5]
    replicates, data = np.arange(-10.0, 91.0), np.zeros(3)
    assert bootstrap_ci(data, scripted(replicates), 101, recentre_on=0.0) == pytest.approx((-47.5, 47.5))
    assert bootstrap_ci(data, scripted(replicates), 101, recentre_on=0.0,
                        support=NON_NEGATIVE) == pytest.approx((0.0, 47.5))
    # the estimate itself, -1e-15 by rounding, is cut to 0 too
    result = bootstrap_result("d", "none", data, scripted([-1e-15, *replicates]), 101, recentre=True,
                              support=NON_NEGATIVE)
    assert result.value == 0.0 and (result.ci_low, result.ci_high) == pytest.approx((0.0, 47.5))


def test_fd_of_a_set_with_itself_is_zero_with_an_interval_that_stays_non_negative():
    features = np.random.default_rng(0).normal(size=(40, 16))
    result = fd_result(features, features, get_backbone("pixels-8"), "16", n_resamples=100, generator=seeded())
    assert result.value == 0.0                     # the Gram formula gives -7e-15: rounding, cut at 0
    assert result.ci_low == 0.0 < result.ci_high   # was [-1.57, 1.79]: re-centring on 0 crossed the support
    raw = bootstrap_ci((features, features), frechet_distance_from_features, 100, seeded())
    assert raw[0] > 0                              # the resamples' FDs are all positive: repeats raise FD


def test_is_and_vendi_intervals_stay_in_their_range():
    logits = np.zeros((20, 5))                     # the same class distribution for every image: IS = 1
    is_value = is_result(logits, get_backbone("effnet-lite0"), "16", splits=2, n_resamples=50)
    assert (is_value.value, is_value.ci_low) == pytest.approx((1.0, 1.0)) and is_value.ci_high <= 5
    distinct = vendi_result(random_images(6, seed=3), backbone="pixels-8", n_resamples=50)
    assert 1.0 <= distinct.ci_low <= distinct.value <= distinct.ci_high <= 6.0


def test_an_empty_image_file_in_a_metric_folder_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^real: cannot read image .*b\.png: empty file \(0 bytes\)$"):
        as_uint8_images(tmp_path, name="real")


def test_aggregate_over_seeds_t_interval_matches_scipy():
    runs = [MetricResult("FID", "inception", 100, v, v, v) for v in (10.0, 12.5, 11.0, 13.0)]
    result = aggregate_over_seeds(runs)
    low, high = scipy.stats.t.interval(0.95, df=3, loc=np.mean([10, 12.5, 11, 13]),
                                       scale=scipy.stats.sem([10, 12.5, 11, 13]))
    assert (result.value, result.ci_low, result.ci_high) == pytest.approx((11.625, low, high))
    with pytest.raises(ValueError, match="mix metrics"):
        aggregate_over_seeds(runs + [MetricResult("KID", "inception", 100, 1, 1, 1)])


# ---------------------------------------------------------------- inputs and cache

@pytest.mark.parametrize("images, message", [
    (torch.zeros(0, 3, 8, 8, dtype=torch.uint8), r"generated: no images \(tensor has 0 rows\)"),
    ([], r"generated: no images \(empty list\)"),
    (torch.zeros(2, 8, 8), r"generated: expected an image tensor \(N, 3, H, W\)"),
    (torch.zeros(2, 1, 8, 8), r"generated: expected an image tensor"),
    (torch.full((1, 3, 8, 8), -1.0), r"generated: float images must be in \[0, 1\].*to_uint8"),
    (torch.full((1, 3, 8, 8), 255.0), r"generated: float images must be in \[0, 1\], got values in \[255, 255\]$"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.int32), r"generated: expected uint8 or float in \[0, 1\]"),
])
def test_bad_inputs_raise_errors_naming_the_argument(images, message):
    with pytest.raises(ValueError, match=message):
        get_backbone("pixels-8").features(images, name="generated")


def test_float_tensor_png_folder_and_uint8_agree(tmp_path):
    images = random_images(3, size=12)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    from_folder = as_uint8_images(tmp_path)
    from_float = as_uint8_images(images.float() / 255)
    assert torch.equal(from_folder, images) and torch.equal(from_float, images)
    Image.new("RGB", (5, 5)).save(tmp_path / "odd.png")
    with pytest.raises(ValueError, match=r"real: images have different sizes"):
        as_uint8_images(tmp_path, name="real")
    with pytest.raises(TypeError, match="real: expected a uint8 tensor"):
        as_uint8_images(3.0, name="real")


def test_feature_cache_hits_in_memory_and_on_disk(tmp_path):
    backbone = get_backbone("pixels-8")
    images = random_images(5)
    cache = FeatureCache(tmp_path)
    first = backbone.features(images, cache=cache)
    assert backbone.features(images.float() / 255, cache=cache).equal(first)      # same pixels, same key
    assert (cache.misses, cache.hits) == (1, 1)
    assert len(list(tmp_path.glob("pixels-8-features-*.safetensors"))) == 1
    fresh = FeatureCache(tmp_path)
    assert backbone.features(images, cache=fresh).equal(first) and fresh.hits == 1 and fresh.misses == 0
    assert content_key(images, "pixels-8", "features") != content_key(images, "effnet-lite0", "features")
    assert backbone.features(random_images(5, seed=9), cache=cache).shape == (5, 192) and cache.misses == 2


def test_distribution_report_extracts_features_once_per_backbone():
    cache = FeatureCache()
    real, generated = random_images(12, seed=1), random_images(10, seed=2)
    results = distribution_report(real, generated, backbones=("pixels-8",), cache=cache)
    assert [r.metric.split(" ")[0] for r in results] == ["FD-pixels", "KID-pixels"]
    assert (cache.misses, cache.hits) == (2, 2)
    fd = FrechetDistance("pixels-8")
    fd.update(real, real=True)
    fd.update(generated, real=False)
    assert results[0] == fd.compute()
