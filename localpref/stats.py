"""Intervals and tests for reporting: pure functions of numbers, no dependencies beyond the stdlib.

* ``wilson_interval(k, n)``: 95% Wilson score interval of a proportion (Wilson 1927); better than
  the normal approximation near 0 and 1, where pass rates of small models live.
* ``bootstrap_interval(stat, n)``: percentile bootstrap over ``n`` units (tasks), for ratios such
  as steers per verified output; deterministic (seeded).
* ``crossed_bootstrap_interval(stat, n_seeds, n_prompts)``: percentile bootstrap over two crossed
  sources of noise at once (training seeds x evaluation prompts: every run steers the same prompts),
  resampling both; for a mean of per-prompt values in [0, 1] it never leaves [0, 1].
* ``t_interval(values)``: mean and 95% Student-t interval over seeds (for unbounded quantities).
* ``paired_t_test(a, b)``: two-sided paired t-test of per-seed differences (methods sharing seeds).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

Z95 = 1.959963984540054  # standard normal quantile at 0.975


def t_quantile_975(df: int) -> float:
    """0.975 quantile of Student's t with ``df`` degrees of freedom: the t whose two-sided p-value
    is 0.05, found by bisection on ``_t_sf_two_sided`` (exact for every df; the normal 1.96 is only
    the limit, and using it at df = 40 would make intervals ~3% too narrow)."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    lo, hi = Z95, 13.0  # t_975 falls from 12.706 (df 1) towards 1.96
    for _ in range(100):  # the p-value falls as t grows
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_sf_two_sided(mid, df) > 0.05 else (lo, mid)
    return (lo + hi) / 2


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
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` units resampled with replacement.

    A resample whose statistic is NaN (e.g. inf - inf: two ratios with nothing verified) has no
    order, and sorting it in would place the percentiles arbitrarily: then the interval is
    undefined and both bounds are NaN (say so where it is shown)."""
    if n <= 0:
        raise ValueError("cannot bootstrap zero units")
    rng = random.Random(seed)
    return _percentiles([stat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples)], level)


def crossed_bootstrap_interval(stat: Callable[[list[int], list[int]], float], n_seeds: int, n_prompts: int, *,
                               resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap of ``stat(seed_indices, prompt_indices)`` over a crossed design: runs of
    ``n_seeds`` training seeds each evaluated on the same ``n_prompts`` prompts. Each resample draws
    seeds and prompts independently with replacement (the two-way "pigeonhole" bootstrap, Owen
    2007), so the interval holds both the seed-to-seed and the prompt-to-prompt noise; holding
    either fixed understates it. Comparing two methods that share seeds and prompts, let ``stat``
    return their difference on the same indices (a paired comparison over both). With one seed
    it is the plain bootstrap over prompts. NaN resamples: see ``bootstrap_interval``."""
    if n_seeds <= 0 or n_prompts <= 0:
        raise ValueError(f"cannot bootstrap {n_seeds} seeds x {n_prompts} prompts")
    rng = random.Random(seed)
    values = []
    for _ in range(resamples):
        seeds = [rng.randrange(n_seeds) for _ in range(n_seeds)]
        values.append(stat(seeds, [rng.randrange(n_prompts) for _ in range(n_prompts)]))
    return _percentiles(values, level)


def _percentiles(values: list[float], level: float) -> tuple[float, float]:
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    values = sorted(values)
    lo = values[int((1 - level) / 2 * len(values))]
    hi = values[min(len(values) - 1, int((1 + level) / 2 * len(values)))]
    return lo, hi


def pooled_wilson_interval(ks: Sequence[int], ns: Sequence[int]) -> tuple[float, float]:
    """Wilson interval of a rate pooled over runs: ``sum(ks)`` successes in ``sum(ns)`` trials.
    For rates where only each run's count is known (no per-item outcomes to resample); it holds
    the items' binomial noise, not the seeds', so prefer ``crossed_bootstrap_interval`` when the
    per-item outcomes exist."""
    return wilson_interval(int(sum(ks)), int(sum(ns)))


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
    """(mean of a - b, two-sided p-value) of a paired t-test; ``a[i]`` and ``b[i]`` share seed ``i``.

    Differences that are all equal have no variance, so t is undefined (not infinite: n equal
    draws are weak evidence when n is 3). Then the p-value is the exact two-sided sign test's,
    ``min(1, 2 * 0.5**n)`` (0.25 for three equal non-zero differences), and 1 when they are all 0."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two paired samples of equal length >= 2, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    if any(math.isinf(d) or math.isnan(d) for d in diffs):
        raise ValueError(f"paired differences must be finite, got {diffs}")
    m, sd = mean_std(diffs)
    if sd <= 1e-12 * max(1.0, abs(m)):  # equal up to rounding (0.1 - 0 three times has sd ~1e-17)
        return m, 1.0 if m == 0 else min(1.0, 2 * 0.5 ** len(diffs))
    t = m / (sd / math.sqrt(len(diffs)))
    return m, _t_sf_two_sided(t, len(diffs) - 1)
