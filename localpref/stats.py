"""Intervals and tests for reporting. Distributions and tests come from ``scipy.stats``; this module
keeps only what no library has: percentile bootstraps over clustered and crossed designs.

* ``wilson_interval(k, n)``: Wilson score interval of a proportion (Wilson 1927; scipy's
  ``binomtest``); better than the normal approximation near 0 and 1, where small models' pass rates live.
* ``pooled_wilson_interval(ks, ns)``: the same for a rate pooled over runs that kept only counts.
* ``t_interval(values)``: mean and Student-t interval over seeds (for unbounded per-run quantities).
* ``bootstrap_interval(values, den)``: percentile bootstrap of a mean or a ratio of sums over
  independent units (tasks).
* ``cluster_bootstrap(values, clusters, den)``: the same when units come in clusters (prompts that
  share answer items): whole clusters are resampled.
* ``crossed_bootstrap(matrix, clusters)``: percentile bootstrap over two crossed sources of noise
  (training seeds x evaluation prompts: every run steers the same prompts), resampling both.
* ``paired_permutation_test(a, b)``: exact two-sided sign-flip test of the mean paired difference
  (methods sharing seeds).

Every bootstrap is the same computation (``_bootstrap``): draw, per resample, how often each seed
and each cluster is taken (counts ``W`` (B, S) and ``C`` (B, K)), and weight the cells with them.
Seeded (``numpy.random.default_rng(seed)``), so a table renders the same twice.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
from scipy import stats as sps


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` independent trials (0 successes: the low
    bound is exactly 0; ``n`` successes: the high bound is exactly 1)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def pooled_wilson_interval(ks: Sequence[int], ns: Sequence[int], level: float = 0.95) -> tuple[float, float]:
    """Wilson interval of a rate pooled over runs: ``sum(ks)`` successes in ``sum(ns)`` trials.
    For rates where only each run's count is known (no per-item outcomes to resample); it holds
    the items' binomial noise, not the seeds', so prefer ``crossed_bootstrap`` when the per-item
    outcomes exist."""
    return wilson_interval(int(sum(ks)), int(sum(ns)), level)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``values`` (e.g. one per seed), with
    n - 1 degrees of freedom. One value has no spread to estimate, and equal values have none:
    both give (m, m, m), a point, not a claim of certainty; say so where it is shown."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    m, sem = float(x.mean()), float(sps.sem(x)) if x.size > 1 else 0.0
    if sem == 0:  # scipy's t.interval gives NaN for scale 0
        return m, m, m
    lo, hi = sps.t.interval(level, x.size - 1, loc=m, scale=sem)
    return m, float(lo), float(hi)


def bootstrap_interval(values: Sequence[float], den: Sequence[float] | None = None, *, resamples: int = 2000,
                       seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap of ``sum(values) / sum(den)`` over ``n``
    independent units (tasks) resampled with replacement; ``den`` None: the mean of ``values``.

    For ratios such as steers per verified output (``values`` steers, ``den`` verified 0/1). A
    resample whose ``den`` sums to 0 (nothing verified) counts as +inf, so a high bound may be
    inf; inf has an order, so the percentiles stay defined. Values must be finite (ValueError)."""
    n = len(values)
    return cluster_bootstrap(values, range(n), den, resamples=resamples, seed=seed, level=level)


def cluster_bootstrap(values: Sequence[float], clusters: Sequence[Hashable], den: Sequence[float] | None = None, *,
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(estimate, low, high): percentile bootstrap of the mean of per-prompt ``values`` (n,) (or
    of ``sum(values) / sum(den)``) whose prompts come in ``clusters`` (n,): any hashable labels,
    e.g. the prompts that share answer items. Whole clusters are resampled with replacement and
    the statistic is the mean of the prompts they hold (a cluster drawn twice counts twice), so
    the interval holds the correlation within a cluster that a bootstrap over prompts hides
    (Davison & Hinkley 1997, sec. 3.8). Clusters of one prompt: ``bootstrap_interval``. With one
    cluster every resample is the data itself (zero width): there is nothing to resample.
    ``den``: see ``bootstrap_interval``."""
    x = _finite(values, "values")[None, :]  # (1, n): one replicate unit
    d = None if den is None else _finite(den, "den")[None, :]
    if d is not None and d.shape != x.shape:
        raise ValueError(f"values and den differ in length: {x.shape[1]} and {d.shape[1]}")
    return _bootstrap(x, d, clusters, resample_units=False, resamples=resamples, seed=seed, level=level)


def crossed_bootstrap(matrix: Sequence[Sequence[float]], clusters: Sequence[Hashable] | None = None,
                      den: Sequence[Sequence[float]] | None = None, *,
                      resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean of ``matrix`` (S, P): S replicate units
    (independently trained models, "seeds") each evaluated on the same P prompts, grouped into
    ``clusters`` (P,) (None: each prompt its own cluster).

    Each resample draws seeds and clusters independently with replacement, the two-way
    "pigeonhole" bootstrap (Owen 2007, here over clusters rather than prompts), and weights every
    cell by how often its seed and its cluster were drawn, so the interval holds the seed-to-seed
    and the prompt-to-prompt noise; holding either fixed understates it (a bootstrap over prompts
    alone is ``cluster_bootstrap`` of the seeds' mean per prompt). It is mildly conservative
    (Owen 2007): the cells' own noise is counted in both margins. For a mean of values in [0, 1] the
    interval never leaves [0, 1]. A paired comparison of two methods on the same seeds and prompts
    is this function on the difference matrix. With S = 1 it is ``cluster_bootstrap``. Cells must
    be finite (ValueError): no caller has missing cells, and dropping them would unbalance the design.
    ``den`` (S, P): the statistic is the ratio of the weighted sums instead (a rate among the cells
    that count, e.g. new errors among the prompts a seed's base model got right: ``den`` 0/1)."""
    x = np.asarray(matrix, dtype=float)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"need a non-empty (seeds, prompts) matrix, got shape {x.shape}")
    x = _finite(x, "matrix")
    d = None if den is None else _finite(np.asarray(den, dtype=float), "den")
    if d is not None and d.shape != x.shape:
        raise ValueError(f"matrix and den differ in shape: {x.shape} and {d.shape}")
    clusters = range(x.shape[1]) if clusters is None else clusters
    return _bootstrap(x, d, clusters, resample_units=True, resamples=resamples, seed=seed, level=level)


def paired_permutation_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the exact paired permutation (sign-flip) test of mean(a - b) = 0;
    ``a[i]`` and ``b[i]`` share seed ``i``. Under the null each difference is as likely negated,
    so all 2^S sign flips are enumerated (``scipy.stats.permutation_test``, ``permutation_type=
    "samples"``); no normality is assumed, and equal differences need no special case: three
    equal positive ones give 2 / 2^3 = 0.25 (the smallest p three seeds allow), all zero give 1.
    S is at most 16 (65,536 flips); more seeds want a sampled test."""
    if len(a) != len(b) or not 2 <= len(a) <= 16:
        raise ValueError(f"need two paired samples of equal length in 2..16, got {len(a)} and {len(b)}")
    _finite(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), "paired differences")
    res = sps.permutation_test((np.asarray(a, dtype=float), np.asarray(b, dtype=float)),
                               lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                               vectorized=True, n_resamples=np.inf, alternative="two-sided")
    return float(res.pvalue)


def _finite(values, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError(f"cannot bootstrap empty {what}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} must be finite, got {x[~np.isfinite(x)][:3].tolist()}")
    return x


def _counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """(B, n): how often each of ``n`` units is drawn in each of B resamples of n draws with
    replacement (a multinomial(n, 1/n) per row, from one index matrix and a bincount)."""
    draws = rng.integers(n, size=(resamples, n)) + n * np.arange(resamples)[:, None]  # (B, n), row-offset
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n)


def _bootstrap(x: np.ndarray, den: np.ndarray | None, clusters: Sequence[Hashable], *, resample_units: bool,
               resamples: int, seed: int, level: float) -> tuple[float, float, float]:
    """The percentile bootstrap of sum(W C x) / sum(W C den) over x (S, P) (den None: ones), C
    resampling the clusters of the P prompts and W (``resample_units``) the S rows."""
    labels = list(clusters)
    if len(labels) != x.shape[1]:
        raise ValueError(f"{len(labels)} cluster labels for {x.shape[1]} prompts")
    index: dict[Hashable, int] = {}
    codes = np.array([index.setdefault(c, len(index)) for c in labels])  # (P,) cluster of each prompt
    k = len(index)
    # cell sums per (seed, cluster): resampling whole clusters only ever needs these
    num = np.stack([np.bincount(codes, weights=row, minlength=k) for row in x])  # (S, K)
    den_sums = (np.bincount(codes, minlength=k)[None, :].repeat(x.shape[0], 0) if den is None
                else np.stack([np.bincount(codes, weights=row, minlength=k) for row in den]))  # (S, K)
    rng = np.random.default_rng(seed)
    c = _counts(rng, k, resamples)  # (B, K), drawn first: with S = 1 the crossed and cluster bootstraps agree
    w = _counts(rng, x.shape[0], resamples) if resample_units else np.ones((resamples, x.shape[0]))  # (B, S)
    top = np.einsum("bs,sk,bk->b", w, num, c)
    bottom = np.einsum("bs,sk,bk->b", w, den_sums, c)
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(bottom > 0, top / bottom, np.inf)  # (B,) nothing in the denominator: +inf
    total = den_sums.sum()
    estimate = float(num.sum() / total) if total > 0 else float("inf")
    # no interpolation between neighbours: a percentile is one resample's value (inf stays inf)
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return estimate, float(lo), float(hi)
