"""Proportions: the Wilson interval, the exact two-sided binomial test and its power (used by
the user-study analysis and the memorisation shares).

>>> [round(x, 4) for x in wilson_interval(45, 50)]
[0.7864, 0.9565]
>>> f"{binomial_p_value(45, 50, 0.5):.3g}"
'4.21e-09'
>>> round(exact_power(10, 0.9, chance=0.5), 4)   # rejects k in {0, 1, 9, 10}: 0.9**10 + 10 * 0.9**9 * 0.1
0.7361
>>> participants_needed(0.8)
(20, 23)
>>> [round(v, 4) for v in difference_interval(56, 70, 48, 80)]   # Newcombe (1998), Table II, example (a)
[0.2, 0.0524, 0.3339]
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from lora_core.metrics.stats import CONFIDENCE

RELATIVE_TOLERANCE = 1 + 1e-7  # outcomes this close in probability count as equally likely (as scipy)


def _check(successes: int, n: int, chance: float | None = None) -> None:
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got successes={successes}, n={n}")
    if chance is not None and not 0 < chance < 1:
        raise ValueError(f"chance must be in (0, 1), got {chance}")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    r"""Wilson score interval of a binomial proportion :math:`\hat p = k/n`:

    :math:`\frac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}`, z the
    normal quantile at 1/2 + confidence/2. Unlike the Wald interval it stays inside [0, 1]
    and is not empty at k = 0 or k = n.

    >>> [round(v, 4) for v in wilson_interval(3, 10)]
    [0.1078, 0.6032]
    """
    _check(successes, n)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(successes_a: int, n_a: int, successes_b: int, n_b: int,
                        confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    r"""The difference of two independent proportions :math:`d = \hat p_a - \hat p_b` and Newcombe's
    (1998) hybrid score interval (his method 10) built from the two :func:`wilson_interval` s
    :math:`(l_a, u_a)`, :math:`(l_b, u_b)`:
    :math:`[d - \sqrt{(\hat p_a - l_a)^2 + (u_b - \hat p_b)^2},\; d + \sqrt{(u_a - \hat p_a)^2 + (\hat p_b - l_b)^2}]`.
    Unlike the Wald interval it stays inside [-1, 1] and is not empty when both shares are 0.

    >>> [round(v, 4) for v in difference_interval(0, 50, 0, 50)]
    [0.0, -0.0713, 0.0713]
    """
    low_a, high_a = wilson_interval(successes_a, n_a, confidence)
    low_b, high_b = wilson_interval(successes_b, n_b, confidence)
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    difference = rate_a - rate_b
    return (difference, difference - math.hypot(rate_a - low_a, high_b - rate_b),
            difference + math.hypot(high_a - rate_a, rate_b - low_b))


def two_sided_p_values(n: int, chance: float) -> np.ndarray:
    """Exact two-sided p-value of every outcome k = 0..n: the probability, under ``chance``, of an
    outcome at most as likely as k (the "minlike" rule of scipy's ``binomtest``)."""
    pmf = scipy_stats.binom.pmf(np.arange(n + 1), n, chance)
    ascending = np.sort(pmf)
    cumulative = np.cumsum(ascending)
    at_most_as_likely = np.searchsorted(ascending, pmf * RELATIVE_TOLERANCE, side="right")
    return np.minimum(1.0, cumulative[at_most_as_likely - 1])


def binomial_p_value(successes: int, n: int, chance: float) -> float:
    """Exact two-sided binomial test of ``successes`` out of ``n`` against ``chance``."""
    _check(successes, n, chance)
    return float(two_sided_p_values(n, chance)[successes])


def exact_power(n: int, true_rate: float, chance: float = 0.5, alpha: float = 0.05) -> float:
    """Probability that the exact two-sided test at level ``alpha`` rejects ``chance`` with ``n``
    participants when the true rate is ``true_rate`` (the sum over the rejection region)."""
    _check(0, n, chance)
    rejected = np.flatnonzero(two_sided_p_values(n, chance) <= alpha)
    return float(scipy_stats.binom.pmf(rejected, n, true_rate).sum())


def normal_approximate_n(true_rate: float, chance: float = 0.5, alpha: float = 0.05, power: float = 0.8) -> float:
    """The textbook normal-approximation sample size, ((z_a sqrt(p0 q0) + z_b sqrt(p1 q1)) / (p1 - p0))^2.

    >>> round(normal_approximate_n(0.6), 1)
    193.8
    """
    if true_rate == chance:
        raise ValueError(f"true_rate equals chance ({chance}): no sample size tells them apart")
    z_alpha, z_power = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    spread = z_alpha * math.sqrt(chance * (1 - chance)) + z_power * math.sqrt(true_rate * (1 - true_rate))
    return (spread / (true_rate - chance)) ** 2


def participants_needed(true_rate: float, chance: float = 0.5, alpha: float = 0.05, power: float = 0.8,
                        n_max: int | None = None) -> tuple[int, int]:
    """Smallest n whose exact test reaches ``power``, and the n from which it stays there up to ``n_max``.

    Exact power is saw-toothed in n (the discrete rejection region jumps), so a few n above the
    first that reaches the power fall below it again; the second number is the safe plan. The
    search runs over every n up to ``n_max`` (default: three times the normal approximation plus
    100, far past the last tooth that dips below the power).
    """
    if n_max is None:
        n_max = int(3 * normal_approximate_n(true_rate, chance, alpha, power)) + 100
    powers = np.array([exact_power(n, true_rate, chance, alpha) for n in range(1, n_max + 1)])
    reached = powers >= power
    if not reached[-1]:
        raise ValueError(f"power {power} for rate {true_rate} against {chance} needs more than n_max={n_max}")
    first = int(np.argmax(reached)) + 1
    last_short = np.flatnonzero(~reached)
    stable = int(last_short[-1]) + 2 if last_short.size else 1
    return first, stable


def power_table(true_rates: tuple[float, ...] = (0.9, 0.8, 0.7, 0.6), chance: float = 0.5,
                alpha: float = 0.05, power: float = 0.8) -> pd.DataFrame:
    """Participants (one answer each) needed to tell each true rate from ``chance``."""
    rows = []
    for rate in true_rates:
        first, stable = participants_needed(rate, chance, alpha, power)
        rows.append({"true rate": rate, "chance": chance, "alpha": alpha, "power": power,
                     "first n with that power": first, "n from which power stays": stable})
    return pd.DataFrame(rows)
