"""Interval estimates shared by the services (the standard library only, no numpy or scipy).

* :func:`wilson_interval` — the Wilson score interval of a proportion (no continuity correction;
  R's ``prop.test(x, n, correct=FALSE)$conf.int``, statsmodels' ``proportion_confint(method="wilson")``);
* :func:`t_quantile` / :func:`t_cdf` — Student's t distribution (any real degrees of freedom, through
  the regularized incomplete beta function), as ``scipy.stats.t.ppf`` / ``.cdf``;
* :func:`mean_interval` — the t-interval of a mean from its sample's size, mean and standard
  deviation (``scipy.stats.t.interval(confidence, n - 1, mean, sd / sqrt(n))``);
* :func:`welch_interval` — the difference of two means with Welch's interval (unequal variances,
  Welch-Satterthwaite degrees of freedom; R's ``t.test(b, a)$conf.int``);
* :func:`newcombe_interval` — the difference of two independent proportions with Newcombe's hybrid
  score interval built from both Wilson intervals (Newcombe 1998, method 10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300


def z_value(confidence: float) -> float:
    """The two-sided standard normal quantile for ``confidence`` (1.959964 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(passed: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``passed / n`` at ``confidence``; ``(0.0, 1.0)`` when ``n == 0``.
    ``passed`` may be fractional (a win rate where ties count half)."""
    if n < 0 or not 0 <= passed <= max(n, 0):
        raise ValueError(f"need 0 <= passed <= n, got passed={passed}, n={n}")
    z = z_value(confidence)
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denominator
    low = 0.0 if passed == 0 else max(0.0, centre - half)
    high = 1.0 if passed == n else min(1.0, centre + half)
    return low, high


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)``, the regularized incomplete beta function (``scipy.special.betainc``)."""
    if a <= 0 or b <= 0:
        raise ValueError(f"need a > 0 and b > 0, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` (> 0, not necessarily whole) degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`,
    to about 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must lie strictly between 0 and 1, got {p}")
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, max(1.0, NormalDist().inv_cdf(p))
    while t_cdf(high, df) < p:
        low, high = high, high * 2.0
    for _ in range(200):
        mid = (low + high) / 2.0
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


def mean_interval(mean: float, sd: float, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """The t-interval ``mean -+ t(n - 1) * sd / sqrt(n)`` of a sample's mean (``sd``: the sample
    standard deviation, divisor ``n - 1``); ``None`` when ``n < 2`` (no spread to estimate)."""
    if sd < 0:
        raise ValueError(f"sd must be >= 0, got {sd}")
    z_value(confidence)
    if n < 2:
        return None
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


@dataclass(frozen=True)
class Difference:
    """An estimated difference ``b - a`` and its interval (``df``: Welch's degrees of freedom)."""

    estimate: float
    low: float
    high: float
    df: float | None = None


def welch_interval(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                   confidence: float = 0.95) -> Difference | None:
    """``mean_b - mean_a`` with Welch's t-interval (each sample's own variance; Welch-Satterthwaite
    degrees of freedom); ``None`` unless both samples have at least two values. When neither
    sample varies the interval is the estimate itself."""
    if sd_a < 0 or sd_b < 0:
        raise ValueError("standard deviations must be >= 0")
    z_value(confidence)
    if n_a < 2 or n_b < 2:
        return None
    va, vb = sd_a * sd_a / n_a, sd_b * sd_b / n_b
    estimate = mean_b - mean_a
    if va + vb == 0:
        return Difference(estimate, estimate, estimate, None)
    df = (va + vb) ** 2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * math.sqrt(va + vb)
    return Difference(estimate, estimate - half, estimate + half, df)


def newcombe_interval(x_a: float, n_a: int, x_b: float, n_b: int, confidence: float = 0.95) -> Difference | None:
    """``x_b / n_b - x_a / n_a`` with Newcombe's hybrid score interval (method 10 of Newcombe 1998,
    from the two Wilson intervals); ``None`` when either sample is empty."""
    if n_a <= 0 or n_b <= 0:
        return None
    pa, pb = x_a / n_a, x_b / n_b
    la, ua = wilson_interval(x_a, n_a, confidence)
    lb, ub = wilson_interval(x_b, n_b, confidence)
    estimate = pb - pa
    low = estimate - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    high = estimate + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    return Difference(estimate, max(-1.0, low), min(1.0, high))


__all__ = ["Difference", "mean_interval", "newcombe_interval", "regularized_beta", "t_cdf", "t_quantile",
           "welch_interval", "wilson_interval", "z_value"]
