"""The study's statistics against independent references: scipy's binomtest, hand computations,
published Wilson intervals, a brute-force power, and the S4 / simulated-panel tables."""
import math
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as scipy_stats

from lora_core.metrics.proportions import (binomial_p_value, exact_power, participants_needed, power_table,
                                           wilson_interval)
from lora_core.metrics.stats import bootstrap_ci
from lora_core.user_study.__main__ import main
from lora_core.user_study.analysis import cluster_interval, question_table
from lora_core.user_study.s4 import S4_PARTICIPANTS, s4_reported_analysis, simulated_panel_analysis


def test_wilson_matches_a_hand_computation_and_published_values():
    z = NormalDist().inv_cdf(0.975)
    k, n = 45, 50
    # The interval's other algebraic form: (2k + z^2 -+ z sqrt(z^2 + 4k(n-k)/n)) / (2(n + z^2)).
    root = z * math.sqrt(z * z + 4 * k * (n - k) / n)
    expected = ((2 * k + z * z - root) / (2 * (n + z * z)), (2 * k + z * z + root) / (2 * (n + z * z)))
    assert wilson_interval(k, n) == pytest.approx(expected, abs=1e-12)
    # Newcombe (1998), Statistics in Medicine 17:857, Table II: Wilson score intervals.
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=5e-5)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=5e-5)
    assert wilson_interval(0, 10) == pytest.approx((0.0, z * z / (10 + z * z)), abs=1e-12)


@pytest.mark.parametrize("n", [1, 7, 15, 50, 250])
def test_wilson_and_p_values_match_scipy_binomtest(n):
    for k in range(n + 1):
        for chance in (0.5, 0.25, 0.3):
            reference = scipy_stats.binomtest(k, n, chance)
            assert binomial_p_value(k, n, chance) == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
        ci = scipy_stats.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_binomial_inputs_are_checked():
    with pytest.raises(ValueError, match="need 0 <= successes <= n"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match=r"chance must be in \(0, 1\)"):
        binomial_p_value(3, 10, 1.0)


def test_exact_power_by_hand_and_by_brute_force():
    # n = 10 against 1/2: P(k <= 1) = 11/1024 (two-sided 0.021) rejects, P(k <= 2) = 56/1024 (0.109) does
    # not, so the test rejects k in {0, 1, 9, 10}.
    by_hand = 0.1**10 + 10 * 0.9 * 0.1**9 + 10 * 0.9**9 * 0.1 + 0.9**10
    assert exact_power(10, 0.9) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.73610, abs=1e-5)
    for n, rate, chance in ((23, 0.8, 0.5), (40, 0.5, 0.25), (54, 0.7, 0.5)):
        rejected = [k for k in range(n + 1) if scipy_stats.binomtest(k, n, chance).pvalue <= 0.05]
        assert exact_power(n, rate, chance) == pytest.approx(scipy_stats.binom.pmf(rejected, n, rate).sum(), rel=1e-12)


def test_participants_needed_is_the_first_and_the_stable_n():
    table = power_table().set_index("true rate")
    assert table.loc[[0.9, 0.8, 0.7, 0.6], "first n with that power"].tolist() == [12, 20, 49, 199]
    assert table.loc[[0.9, 0.8, 0.7, 0.6], "n from which power stays"].tolist() == [12, 23, 54, 210]
    first, stable = participants_needed(0.8)
    powers = {n: exact_power(n, 0.8) for n in range(1, 120)}
    assert powers[first] >= 0.8 and all(powers[n] < 0.8 for n in range(1, first))
    assert powers[stable - 1] < 0.8 and all(powers[n] >= 0.8 for n in range(stable, 120))
    # The normal approximation ((1.96 * 0.5 + 0.84 * sqrt(0.24)) / 0.1)^2 = 194 is close for 60%.
    assert abs(table.loc[0.6, "first n with that power"] - 194) < 10
    with pytest.raises(ValueError, match="needs more than n_max=30"):
        participants_needed(0.6, n_max=30)


def test_cluster_interval_is_the_plain_bootstrap_for_one_answer_each_and_wider_for_clusters():
    one_each = pd.DataFrame({"count": [1] * 30 + [0] * 20, "answers": 1})
    plain = bootstrap_ci(one_each["count"].to_numpy(float), np.mean, 500, torch.Generator().manual_seed(3))
    assert cluster_interval(one_each, 500, seed=3) == pytest.approx(plain, abs=1e-12)
    # 10 participants answering 5 subjects alike: the evidence is 10 people, not 50 answers.
    alike = pd.DataFrame({"participant": np.repeat([f"p{i}" for i in range(10)], 5),
                          "buy": np.repeat([True] * 6 + [False] * 4, 5), "style": True, "recognisable": False})
    row = question_table(alike, n_resamples=1000).set_index("question").loc["buy"]
    assert (row["count"], row["answers"], row["participants"]) == (30, 50, 10)
    assert row["cluster_high"] - row["cluster_low"] > 1.5 * (row["wilson_high"] - row["wilson_low"])


def test_s4_reported_shares_as_fifty_participants():
    table = s4_reported_analysis(n_resamples=500).set_index("question")
    assert table["count"].tolist() == [45, 40, 25] and set(table["participants"]) == {S4_PARTICIPANTS}
    assert table["chance"].tolist() == [0.5, 0.5, 0.25]
    for question, row in table.iterrows():
        reference = scipy_stats.binomtest(int(row["count"]), S4_PARTICIPANTS, row["chance"])
        assert row["p_value"] == pytest.approx(reference.pvalue, rel=1e-9)
        ci = reference.proportion_ci(method="wilson")
        assert (row["wilson_low"], row["wilson_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert table.loc["recognisable", "wilson_low"] < 0.4 and table.loc["recognisable", "wilson_high"] > 0.6
    assert set(table["verdict"]) == {"more often than chance"}


def test_simulated_panel_is_labelled_seeded_and_drops_the_random_answerers():
    panel = simulated_panel_analysis(seed=0, n_resamples=300)
    assert panel.label.startswith("SIMULATED panel, not data (seed 0)")
    assert set(panel.dropped) <= {f"SIM-{i:03d}" for i in range(46, 51)} and len(panel.dropped) >= 4
    assert panel.n_files == 50 and len(panel.answers) == panel.n_kept * 5
    again = simulated_panel_analysis(seed=0, n_resamples=300)
    pd.testing.assert_frame_equal(panel.table, again.table)
    other = simulated_panel_analysis(seed=1, n_resamples=300)
    assert not panel.table["count"].equals(other.table["count"])
    table = panel.table.set_index("question")
    assert table.loc["buy", "proportion"] == pytest.approx(0.9, abs=0.1)
    assert (table["cluster_high"] - table["cluster_low"] > table["wilson_high"] - table["wilson_low"]).all()


def test_power_command_prints_the_table(capsys):
    assert main(["power"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["true", "rate"] and len(lines) == 5
    assert lines[-1].split()[-2:] == ["199", "210"]
