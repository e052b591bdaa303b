"""Intervals and tests for reporting: pure functions of numbers, no dependencies beyond the stdlib.

* ``wilson_interval(k, n)``: 95% Wilson score interval of a proportion (Wilson 1927); better than
  the normal approximation near 0 and 1, where pass rates of small models live.
* ``bootstrap_interval(stat, n)``: percentile bootstrap over ``n`` units (tasks), for ratios such
  as steers per verified output; deterministic (seeded).
* ``t_interval(values)``: mean and 95% Student-t interval over seeds.
* ``paired_t_test(a, b)``: two-sided paired t-test of per-seed differences (methods sharing seeds).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

Z95 = 1.959963984540054  # standard normal quantile at 0.975

# Student t quantiles at 0.975 for 1..30 degrees of freedom (e.g. Abramowitz & Stegun, table 26.10).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
         2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
         2.052, 2.048, 2.045, 2.042]


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom (normal beyond 30)."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    return _T975[df - 1] if df <= 30 else Z95


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of ``k`` successes in ``n`` trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_interval(stat: Callable[[list[int]], float], n: int, *, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` units resampled with replacement."""
    if n <= 0:
        raise ValueError("cannot bootstrap zero units")
    rng = random.Random(seed)
    values = sorted(stat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    lo = values[int((1 - level) / 2 * resamples)]
    hi = values[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): 95% Student-t interval of the mean of ``values`` (e.g. over seeds)."""
    if not values:
        raise ValueError("no values")
    m, sd = mean_std(values)
    if len(values) == 1:
        return m, m, m
    half = t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))
    return m, m - half, m + half


def _t_sf_two_sided(t: float, df: int) -> float:
    """Two-sided p-value of Student's t via the regularized incomplete beta function."""
    x = df / (df + t * t)
    return _betainc(df / 2, 0.5, x)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function, modified Lentz (Numerical Recipes, betacf)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for aa in (m * (b - m) * x / ((a - 1 + 2 * m) * (a + 2 * m)),
                   -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 1 + 2 * m))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 3e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean of a - b, two-sided p-value) of a paired t-test; ``a[i]`` and ``b[i]`` share seed ``i``."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two paired samples of equal length >= 2, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    m, sd = mean_std(diffs)
    if sd == 0:
        return m, 1.0 if m == 0 else 0.0
    t = m / (sd / math.sqrt(len(diffs)))
    return m, _t_sf_two_sided(t, len(diffs) - 1)
