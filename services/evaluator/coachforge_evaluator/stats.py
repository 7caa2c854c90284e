"""Statistics for comparing eval runs: pass-rate intervals, paired tests, latency percentiles.

Pure functions (numpy and the standard library only):

* :func:`wilson_interval` — the Wilson score interval of a pass rate (no continuity correction;
  R's ``prop.test(x, n, correct=FALSE)$conf.int``, statsmodels' ``proportion_confint(method="wilson")``),
  from :mod:`coachforge_shared.stats` (other services use it too);
* :func:`mcnemar_exact` — McNemar's exact test on the discordant pairs of two models graded on
  the same items (``b``: items only the first passed, ``c``: only the second), the two-sided
  binomial test of ``b`` out of ``b + c`` at 1/2;
* :func:`paired_bootstrap` — the mean per-item difference of two paired score lists and its
  percentile bootstrap interval (items resampled with replacement, seeded);
* :func:`percentile` — latency percentiles (linear interpolation, numpy's default, R type 7);
* :func:`bradley_terry` — Bradley-Terry strengths from pairwise wins (Hunter's MM algorithm, ties
  counted as half a win to each side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Final

import numpy as np

from coachforge_shared.stats import wilson_interval

_CHUNK_CELLS: Final = 1 << 20  # resampled values held at once by paired_bootstrap


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``2 * P(X <= min(b, c))`` for ``X ~ Binomial(b + c, 1/2)``, at most 1.

    ``1.0`` when there are no discordant pairs.  Exact integer arithmetic (no rounding until the end).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    if 2 * k >= n:  # b == c: the observed split is the most likely one
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / (1 << n))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], *, resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """``(mean(b - a), low, high)``: the mean paired difference and its percentile bootstrap interval.

    The items (pairs) are resampled with replacement ``resamples`` times with numpy's generator
    seeded by ``seed`` (same inputs, same interval); ``low``/``high`` are the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles of the resampled means.
    """
    if len(a) != len(b):
        raise ValueError(f"paired samples must have the same length, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("paired_bootstrap needs at least one pair")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    _z(confidence)
    diff = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    n = diff.size
    mean = float(diff.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    rows = max(1, _CHUNK_CELLS // n)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (``q`` in 0..100, e.g. 50 or 95) with linear interpolation; ``None`` when empty."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be within 0..100, got {q}")
    if len(values) == 0:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def bradley_terry(wins: Sequence[Sequence[float]], *, iterations: int = 10_000,
                  tolerance: float = 1e-10) -> list[float]:
    """Bradley-Terry strengths ``p`` (summing to 1) from ``wins[i][j]``, how often ``i`` beat ``j``
    (a tie adds 0.5 to both), fitted by maximum likelihood with Hunter's (2004) MM iteration
    ``p_i <- W_i / sum_j n_ij / (p_i + p_j)``. A model that never won tends to 0 (and one that never
    lost to 1: no finite maximum exists then, the iteration stops after ``iterations``); a model that
    met nobody keeps its start value before normalising.
    """
    k = len(wins)
    if any(len(row) != k for row in wins):
        raise ValueError("wins must be a square matrix")
    w = np.asarray(wins, dtype=np.float64)
    if (w < 0).any():
        raise ValueError("wins must be >= 0")
    games = w + w.T
    total_wins = w.sum(axis=1)
    p = np.full(k, 1.0 / k) if k else np.zeros(0)
    for _ in range(iterations):
        denom = np.array([sum(games[i, j] / (p[i] + p[j]) for j in range(k) if j != i and games[i, j] > 0)
                          for i in range(k)])
        new = np.where(denom > 0, total_wins / np.where(denom > 0, denom, 1.0), p)
        new = new / new.sum() if new.sum() > 0 else new
        if np.abs(new - p).max() < tolerance:
            p = new
            break
        p = new
    return [float(x) for x in p]


__all__ = ["bradley_terry", "mcnemar_exact", "paired_bootstrap", "percentile", "wilson_interval"]
