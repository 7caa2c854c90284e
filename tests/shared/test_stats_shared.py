"""The shared interval estimates against published and independently computed values (sources in
the comments), and against scipy on random inputs where scipy is installed."""

from __future__ import annotations

import math
import random

import pytest

from coachforge_shared.stats import (
    Difference,
    mean_interval,
    newcombe_interval,
    regularized_beta,
    t_cdf,
    t_quantile,
    welch_interval,
    wilson_interval,
)

# Student's t quantiles t(0.975, df), from any t table (e.g. NIST/SEMATECH e-Handbook 1.3.6.7.2) and
# R's qt(0.975, df), to 6 places.
T_975 = [(1, 12.706205), (2, 4.302653), (3, 3.182446), (5, 2.570582), (10, 2.228139), (30, 2.042272),
         (120, 1.979930)]


@pytest.mark.parametrize(("df", "value"), T_975)
def test_t_quantiles_match_the_tables(df: int, value: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-7)
    assert t_quantile(0.025, df) == pytest.approx(-value, abs=5e-7)
    assert t_cdf(value, df) == pytest.approx(0.975, abs=1e-7)


def test_t_distribution_edges() -> None:
    assert t_quantile(0.5, 7) == 0.0
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    # df = 1 is the Cauchy distribution: P(T <= 1) = 1/2 + atan(1)/pi = 0.75 exactly.
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)
    # df = 2 has a closed form: P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)); at t = 1: 0.5 + 1/(2 sqrt 3).
    assert t_cdf(1.0, 2) == pytest.approx(0.5 + 1 / (2 * math.sqrt(3)), abs=1e-12)
    # Far out the t distribution is the normal one: t(0.975, 1e6) -> 1.959964.
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    # I_x(a, b) for integer a, b is a binomial tail: I_0.4(2, 3) = P(Bin(4, 0.4) >= 2) = 0.5248.
    assert regularized_beta(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)
    for bad in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(*bad)


def test_mean_interval_by_hand() -> None:
    # Ratings 3, 4, 5: mean 4, sd 1; 4 -+ t(0.975, 2) / sqrt(3) = 4 -+ 4.302653 / 1.732051 = 4 -+ 2.484138.
    low, high = mean_interval(4.0, 1.0, 3) or (0.0, 0.0)
    assert (low, high) == pytest.approx((1.515862, 6.484138), abs=1e-6)
    # 10 ratings with mean 3.5 and sd 1.2: 3.5 -+ t(0.975, 9) * 1.2 / sqrt(10) = 3.5 -+ 2.262157 * 0.379473
    # = 3.5 -+ 0.858428.
    assert mean_interval(3.5, 1.2, 10) == pytest.approx((2.641572, 4.358428), abs=1e-6)
    assert mean_interval(4.0, 0.0, 5) == (4.0, 4.0)
    assert mean_interval(4.0, 0.0, 1) is None
    assert mean_interval(4.0, 0.0, 0) is None


def test_welch_interval_by_hand() -> None:
    # a = 1, 2, 3, 3, 4, 2, 3: mean 18/7 = 2.571429, variance 20/21 = 0.952381;
    # b = 4, 5, 3, 4, 5, 4:    mean 25/6 = 4.166667, variance 17/30 = 0.566667.
    # se^2 = 0.952381/7 + 0.566667/6 = 0.136054 + 0.094444 = 0.230499 (se 0.480103);
    # df = 0.230499^2 / (0.136054^2/6 + 0.094444^2/5) = 10.911645; t(0.975, 10.911645) = 2.203162;
    # b - a = 1.595238 -+ 2.203162 * 0.480103 = 1.595238 -+ 1.057744 -> (0.537494, 2.652982),
    # as R's t.test(b, a)$conf.int: 0.5374937 2.6529825.
    a = [1, 2, 3, 3, 4, 2, 3]
    b = [4, 5, 3, 4, 5, 4]
    d = welch_interval(_mean(a), _sd(a), len(a), _mean(b), _sd(b), len(b))
    assert d is not None
    assert d.estimate == pytest.approx(25 / 6 - 18 / 7)
    assert (d.low, d.high) == pytest.approx((0.5374937, 2.6529825), abs=5e-7)
    assert d.df == pytest.approx(10.911645, abs=1e-5)
    # Equal sizes and variances: df = 2n - 2 and the classic pooled interval.
    e = welch_interval(3.0, 1.0, 10, 3.8, 1.0, 10)
    assert e is not None and e.df == pytest.approx(18.0)
    half = t_quantile(0.975, 18) * math.sqrt(2 / 10)
    assert (e.low, e.high) == pytest.approx((0.8 - half, 0.8 + half))
    assert welch_interval(3.0, 0.0, 4, 4.0, 0.0, 4) == Difference(1.0, 1.0, 1.0, None)  # nothing varies
    assert welch_interval(3.0, 1.0, 1, 4.0, 1.0, 5) is None


def test_newcombe_interval_matches_the_paper() -> None:
    # Newcombe (1998), Statistics in Medicine 17:873-890, Table II, example (a): 56/70 - 48/80 = 0.2,
    # method 10 (score interval, hybrid): 0.0524 to 0.3339.
    d = newcombe_interval(48, 80, 56, 70)
    assert d is not None and d.estimate == pytest.approx(0.2)
    assert (d.low, d.high) == pytest.approx((0.0524, 0.3339), abs=5e-5)
    # At the edge (all against none) the bounds stay within [-1, 1].
    e = newcombe_interval(0, 20, 10, 10)
    assert e is not None and e.estimate == 1.0 and -1 <= e.low <= e.high <= 1
    assert newcombe_interval(1, 0, 1, 2) is None


def test_wilson_is_the_evaluators() -> None:
    from coachforge_evaluator import stats as evaluator_stats

    assert evaluator_stats.wilson_interval is wilson_interval
    assert wilson_interval(8, 10) == pytest.approx((0.4901625, 0.9433178), abs=5e-7)


def _mean(xs: list[int]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: list[int]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_against_scipy_on_random_inputs() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for _ in range(50):
        df = rng.uniform(0.5, 200)
        p = rng.uniform(0.001, 0.999)
        assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-8, abs=1e-9)
        n = rng.randint(2, 60)
        mean, sd = rng.uniform(1, 5), rng.uniform(0, 2)
        expected = stats.t.interval(0.95, n - 1, loc=mean, scale=sd / math.sqrt(n)) if sd else (mean, mean)
        assert mean_interval(mean, sd, n) == pytest.approx(tuple(map(float, expected)), abs=1e-8)
    for _ in range(20):
        a = [rng.randint(1, 5) for _ in range(rng.randint(2, 40))]
        b = [rng.randint(1, 5) for _ in range(rng.randint(2, 40))]
        if _sd(a) == 0 or _sd(b) == 0:  # (scipy warns about its precision then)
            continue
        ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
        d = welch_interval(_mean(a), _sd(a), len(a), _mean(b), _sd(b), len(b))
        assert d is not None and (d.low, d.high) == pytest.approx((float(ci.low), float(ci.high)), abs=1e-8)
