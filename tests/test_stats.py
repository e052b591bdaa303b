"""localpref.stats against hand-computed values, scipy itself, and simulations with known truth."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from localpref.stats import (bootstrap_interval, cluster_bootstrap, crossed_bootstrap, paired_permutation_test,
                             pooled_wilson_interval, t_interval, wilson_interval)


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: half width t_{0.975, 2} / sqrt(3) = 4.3027 / 1.7321 = 2.4842 (tables)
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - 2.48418, 2.0 + 2.48418), abs=1e-4)
    assert t_interval([0.3]) == (0.3, 0.3, 0.3)  # one seed: no spread to estimate, a point
    assert t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)  # no spread: a point (scipy alone gives NaN)
    assert t_interval([1.0, 2.0, 3.0], level=0.9)[2] == pytest.approx(2.0 + 2.91999 / math.sqrt(3), abs=1e-4)
    with pytest.raises(ValueError, match="no values"):
        t_interval([])


def test_wilson_by_hand():
    # 1 of 10: center (0.1 + z^2/20) / (1 + z^2/10) = 0.21103, half width 0.19312 (z = 1.95996)
    lo, hi = wilson_interval(1, 10)
    assert (lo, hi) == pytest.approx((0.01788, 0.40415), abs=1e-5)
    assert pooled_wilson_interval([1, 0], [4, 6]) == (lo, hi)  # pooled: 1 of 10
    # 0 of 96: center = half width = (z^2 / 192) / (1 + z^2 / 96) = 0.019238, so [0, 0.038476]
    assert wilson_interval(0, 96) == pytest.approx((0.0, 0.038476), abs=1e-6)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_permutation_test_by_hand():
    # |differences| 1, 2, 3, 4 with signs + - + +: observed sum 6; a flip of the subset A gives
    # 10 - 2 sum(A) >= 6 for A = {}, {1}, {2}: 3 of 16, two-sided 2 * 3/16 = 0.375
    assert paired_permutation_test([1.0, -2.0, 3.0, 4.0], [0.0] * 4) == pytest.approx(0.375)
    assert paired_permutation_test([1.0, 2.0, 3.0], [0.0] * 3) == pytest.approx(0.25)  # only all + reaches 2
    assert paired_permutation_test([1.0] * 4, [0.0] * 4) == pytest.approx(0.125)
    assert paired_permutation_test([1.0, 2.0], [1.0, 2.0]) == 1.0  # all differences 0
    with pytest.raises(ValueError, match="finite"):
        paired_permutation_test([math.inf, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="equal length"):
        paired_permutation_test([1.0, 2.0], [1.0])


def test_permutation_test_is_stable_for_nearly_equal_differences():
    # the paired t-test gave p ~ 1e-17 for one and 0.25 for the other: the variance is ~0 or exactly 0
    near = paired_permutation_test([0.1, 0.1, 0.1 + 1e-9], [0.0] * 3)
    equal = paired_permutation_test([0.1, 0.1, 0.1], [0.0] * 3)
    assert near == equal == pytest.approx(0.25)
    assert paired_permutation_test([4.04] * 3, [4.0] * 3) == pytest.approx(0.25)  # 0.04 up to rounding


def test_bootstrap_of_a_ratio_with_nothing_in_the_denominator():
    # steers per verified output: a resample that verified nothing counts as inf (an order, so the
    # percentiles stay defined); 3 steers / 1 verified overall
    est, lo, hi = bootstrap_interval([1.0, 2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    assert est == 3.0 and hi == math.inf and lo >= 0.0
    with pytest.raises(ValueError, match="finite"):
        bootstrap_interval([math.inf, 1.0])


def test_bootstrap_agrees_with_scipys_percentile_bootstrap():
    # independent units: the same percentile bootstrap as scipy.stats.bootstrap, up to Monte Carlo
    # error (2000 resamples: the 2.5% percentile moves by ~0.05 standard errors; allow 0.15)
    x = np.random.default_rng(3).normal(size=200)
    m, lo, hi = bootstrap_interval(x)
    ref = sps.bootstrap((x,), np.mean, method="percentile", n_resamples=2000,
                        random_state=np.random.default_rng(0))  # random_state: scipy 1.11 has no rng=
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert m == pytest.approx(x.mean())
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.15 * se)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.15 * se)


def test_special_cases_are_one_computation():
    # bootstrap over units = cluster bootstrap with one unit per cluster = crossed with one seed
    x = np.random.default_rng(1).normal(size=50)
    assert bootstrap_interval(x) == cluster_bootstrap(x, range(50)) == crossed_bootstrap(x[None, :])
    labels = [f"item{i % 7}" for i in range(50)]  # any hashable labels
    assert cluster_bootstrap(x, labels) == crossed_bootstrap(x[None, :], labels)
    with pytest.raises(ValueError, match="finite"):
        crossed_bootstrap([[0.0, math.nan]])
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_bootstrap(x, labels[:-1])


def test_crossed_bootstrap_holds_seed_noise_that_a_prompt_bootstrap_hides():
    # Two seeds, every prompt 0 under seed 0 and 1 under seed 1. Resampling prompts only, the
    # pooled mean is 0.5 in every resample (zero width); resampling seeds too, each resample is
    # 0, 0.5 or 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% percentiles are 0 and 1.
    matrix = np.array([[0.0] * 20, [1.0] * 20])
    assert cluster_bootstrap(matrix.mean(0), range(20)) == (0.5, 0.5, 0.5)
    assert crossed_bootstrap(matrix) == (0.5, 0.0, 1.0)


def test_crossed_bootstrap_of_rates_stays_in_the_unit_interval():
    # the seeds agree exactly (0.09 each) yet prompts vary: a t-interval over seeds is [0.09, 0.09];
    # the crossed bootstrap keeps the prompts' noise and stays inside [0, 1]
    matrix = [[1.0] * 10 + [0.0] * 101 for _ in range(3)]
    m, lo, hi = crossed_bootstrap(matrix)
    assert m == pytest.approx(10 / 111) and 0.0 <= lo < m < hi <= 1.0 and hi - lo > 0.06
    assert t_interval([10 / 111] * 3)[1:] == pytest.approx((10 / 111, 10 / 111))
    matrix = [[0.0] * 30, [0.0] * 29 + [1.0], [0.0] * 30]  # a rate near 0: never a negative bound
    _, lo, hi = crossed_bootstrap(matrix)
    assert lo == 0.0 and 0 < hi <= 1.0


def test_crossed_bootstrap_of_a_paired_difference():
    # method a is b plus 0.5 on every seed and prompt: the difference is exactly 0.5 in every resample
    b = np.array([[float(p % 3) for p in range(12)] for _ in range(3)])
    assert crossed_bootstrap((b + 0.5) - b, [p // 4 for p in range(12)]) == pytest.approx((0.5, 0.5, 0.5))


def _covers(interval, truth):
    return interval[1] <= truth <= interval[2]


def test_cluster_bootstrap_covers_where_a_prompt_bootstrap_does_not():
    # 40 clusters of 9 prompts: value = cluster effect + noise, both N(0, 1) (intra-cluster
    # correlation 0.5), true mean 0. Treating the 360 prompts as independent understates the
    # variance by the design effect 1 + 8 * 0.5 = 5: nominal 95% covers ~2 Phi(1.96 / sqrt 5) - 1
    # = 0.62. Measured over 300 datasets (data seeds 0..11): prompt-level 0.59-0.66, cluster
    # 0.91-0.96 (40 clusters: the percentile bootstrap is a little narrow). Margins hold for all.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(40), 9)
    prompt_level = clustered = 0
    for i in range(300):
        x = rng.normal(size=40)[labels] + rng.normal(size=360)
        prompt_level += _covers(bootstrap_interval(x, resamples=500, seed=i), 0.0)
        clustered += _covers(cluster_bootstrap(x, labels, resamples=500, seed=i), 0.0)
    assert prompt_level / 300 < 0.85
    assert clustered / 300 >= 0.88


def test_crossed_bootstrap_covers_where_resampling_prompts_only_does_not():
    # 10 seeds x 30 clusters of 4 prompts: value = seed effect N(0, 1) + cluster effect N(0, 0.5^2)
    # + noise N(0, 1), true mean 0. The mean's variance is 1/10 + 0.25/30 + 1/1200, almost all
    # from the seeds; resampling prompts only (seeds fixed) sees ~9% of it and covers ~0.4. Measured
    # over 300 datasets (data seeds 0..14): crossed 0.89-0.94, prompts only 0.39-0.46.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(30), 4)
    crossed = prompts_only = 0
    for i in range(300):
        x = rng.normal(size=(10, 1)) + 0.5 * rng.normal(size=30)[labels][None, :] + rng.normal(size=(10, 120))
        crossed += _covers(crossed_bootstrap(x, labels, resamples=500, seed=i), 0.0)
        prompts_only += _covers(cluster_bootstrap(x.mean(0), labels, resamples=500, seed=i), 0.0)
    assert crossed / 300 >= 0.85
    assert prompts_only / 300 < 0.6
