"""Comparison statistics against values computed independently (sources in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from coachforge_evaluator.stats import mcnemar_exact, paired_bootstrap, percentile, wilson_interval

# Wilson score intervals, 95 %, no continuity correction.  Source: R 4.x
# ``prop.test(x, n, correct = FALSE)$conf.int`` (= statsmodels ``proportion_confint(x, n, method="wilson")``
# = scipy ``binomtest(x, n).proportion_ci(method="wilson")``), rounded to 7 places:
#   8/10  -> 0.4901625 0.9433178   (also Newcombe 1998, Table I style textbook example)
#   0/10  -> 0.0000000 0.2775328   (upper bound z^2 / (n + z^2) = 3.841459 / 13.841459)
#   10/10 -> 0.7224672 1.0000000
#   1/20  -> 0.0088814 0.2361312
#   45/50 -> 0.7863977 0.9565242
WILSON_95 = [
    (8, 10, 0.4901625, 0.9433178),
    (0, 10, 0.0, 0.2775328),
    (10, 10, 0.7224672, 1.0),
    (1, 20, 0.0088814, 0.2361312),
    (45, 50, 0.7863977, 0.9565242),
]


@pytest.mark.parametrize(("passed", "n", "low", "high"), WILSON_95)
def test_wilson_interval_matches_published_values(passed: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(passed, n) == pytest.approx((low, high), abs=5e-7)


def test_wilson_interval_other_confidence_and_edges() -> None:
    # R: prop.test(8, 10, conf.level = 0.90, correct = FALSE)$conf.int -> 0.5407928 0.9314420
    assert wilson_interval(8, 10, 0.90) == pytest.approx((0.5407928, 0.9314420), abs=5e-7)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and wilson_interval(10, 10)[1] == 1.0 and high < 1
    for bad in ((11, 10), (-1, 10), (1, -1)):
        with pytest.raises(ValueError):
            wilson_interval(*bad)
    with pytest.raises(ValueError):
        wilson_interval(5, 10, 1.0)


# Exact McNemar = two-sided binomial test of b successes in b + c trials at p = 1/2, summed by hand:
#   (1, 5):  2 * (C(6,0) + C(6,1)) / 2^6            = 2 * 7 / 64        = 0.21875
#   (0, 10): 2 * C(10,0) / 2^10                      = 2 / 1024          = 0.001953125
#   (2, 8):  2 * (1 + 10 + 45) / 2^10                = 112 / 1024        = 0.109375
#   (8, 2):  symmetric                                                   = 0.109375
#   (7, 20): 2 * sum_{i<=7} C(27, i) / 2^27, the sum 1 + 27 + 351 + 2925 + 17550 + 80730 + 296010
#            + 888030 = 1285624                      = 2 * 1285624 / 134217728 = 0.0191572904586792
#            (scipy.stats.binomtest(7, 27).pvalue gives the same)
#   (3, 3), (0, 1), (0, 0): 1.0 (capped / no discordant pairs)
MCNEMAR = [
    (1, 5, 0.21875),
    (0, 10, 0.001953125),
    (2, 8, 0.109375),
    (8, 2, 0.109375),
    (7, 20, 0.0191572904586792),
    (3, 3, 1.0),
    (0, 1, 1.0),
    (0, 0, 1.0),
]


@pytest.mark.parametrize(("b", "c", "p"), MCNEMAR)
def test_mcnemar_exact_matches_hand_computed_binomial_sums(b: int, c: int, p: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=1e-12)


def test_mcnemar_exact_checks_the_hand_sums_and_stays_finite_for_many_pairs() -> None:
    assert sum(math.comb(27, i) for i in range(8)) == 1285624
    tiny = mcnemar_exact(0, 2000)
    assert 0.0 <= tiny < 1e-300
    assert mcnemar_exact(990, 1010) == pytest.approx(mcnemar_exact(1010, 990))
    assert 0.6 < mcnemar_exact(990, 1010) < 0.7  # |z| ~ 0.45 under the normal approximation
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_paired_bootstrap_of_a_constant_difference_has_zero_width() -> None:
    a = [0.2, 0.5, 0.9, 0.0, 1.0, 0.3, 0.7]
    b = [x + 0.25 for x in a]
    mean, low, high = paired_bootstrap(a, b)
    assert mean == pytest.approx(0.25)
    assert low == pytest.approx(0.25, abs=1e-12) and high == pytest.approx(0.25, abs=1e-12)
    assert high - low == pytest.approx(0.0, abs=1e-12)


def test_paired_bootstrap_covers_the_true_mean_difference_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(300)
    b = a + 0.1 + rng.normal(0.0, 0.2, 300)  # true mean difference 0.1 (this sample's: 0.1009)
    mean, low, high = paired_bootstrap(a.tolist(), b.tolist(), resamples=2000, seed=3)
    assert mean == pytest.approx(float(np.mean(b - a)))
    assert low < 0.1 < high
    assert low < mean < high
    # the standard error of the mean is ~0.2 / sqrt(300) = 0.0115: a 95 % interval is ~0.045 wide
    assert 0.03 < high - low < 0.06
    assert paired_bootstrap(a.tolist(), b.tolist(), resamples=2000, seed=3) == (mean, low, high)
    assert paired_bootstrap(a.tolist(), b.tolist(), resamples=2000, seed=4) != (mean, low, high)
    narrower = paired_bootstrap(a.tolist(), b.tolist(), resamples=2000, confidence=0.5, seed=3)
    assert low < narrower[1] < narrower[2] < high


def test_paired_bootstrap_intervals_cover_the_true_difference_about_as_often_as_promised() -> None:
    covered = 0
    for seed in range(100, 140):  # 40 seeded data sets, true mean difference 0.1
        rng = np.random.default_rng(seed)
        a = rng.random(100)
        b = a + 0.1 + rng.normal(0.0, 0.2, 100)
        _, low, high = paired_bootstrap(a.tolist(), b.tolist(), resamples=1000, seed=seed)
        covered += low < 0.1 < high
    assert covered >= 34  # 95 % of 40 is 38; P(fewer than 34) = 0.003 for an exact 95 % interval


def test_paired_bootstrap_of_pass_fail_items() -> None:
    # 1/0 grades of two models on the same 10 items: b passes 3 more items
    a = [1, 0, 0, 1, 0, 1, 0, 0, 1, 0]
    b = [1, 1, 1, 1, 0, 1, 1, 0, 1, 0]
    mean, low, high = paired_bootstrap(a, b, seed=1)
    assert mean == pytest.approx(0.3)
    assert 0.0 <= low <= mean <= high <= 0.7


def test_paired_bootstrap_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])
    with pytest.raises(ValueError):
        paired_bootstrap([1.0], [2.0], resamples=0)


def test_percentile() -> None:
    # linear interpolation (R type 7): p95 of 1..10 = 1 + 0.95 * 9 = 9.55, p50 = 5.5
    values = [float(v) for v in range(10, 0, -1)]
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 10.0
    assert percentile([0.3], 95) == 0.3
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(values, 101)
