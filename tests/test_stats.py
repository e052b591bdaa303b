"""localpref.stats against hand-computed values (closed forms and published tables)."""

import math

import pytest

from localpref.stats import (bootstrap_interval, crossed_bootstrap_interval, paired_t_test, pooled_wilson_interval,
                             t_interval, t_quantile_975, wilson_interval)


@pytest.mark.parametrize("df, want", [(1, 12.7062), (2, 4.3027), (10, 2.2281), (30, 2.0423),
                                      (40, 2.0211), (60, 2.0003), (120, 1.9799)])
def test_t_quantile_matches_the_tables_also_beyond_30_degrees_of_freedom(df, want):
    # Abramowitz & Stegun 26.10 (df <= 30, 120) and standard tables (40, 60): beyond df 30 the
    # old code used 1.96, an interval 3% too narrow at df 40.
    assert t_quantile_975(df) == pytest.approx(want, abs=6e-5)


def test_t_interval_by_hand():
    # mean 2, sd 1, n 3: half width 4.3027 / sqrt(3) = 2.4842
    m, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - 2.48418, 2.0 + 2.48418), abs=1e-4)


def test_paired_t_test_by_hand():
    # differences 1, 2, 3: t = 2 / (1 / sqrt 3) = 3.4641 on 2 df; for 2 df the two-sided p-value
    # has the closed form 1 - |t| / sqrt(t^2 + 2) = 1 - 3.4641 / sqrt(14) = 0.074180
    diff, p = paired_t_test([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert diff == 2.0 and p == pytest.approx(1 - math.sqrt(12) / math.sqrt(14), abs=1e-9)


def test_constant_paired_differences_are_not_significant_by_fiat():
    # three equal non-zero differences: t is undefined (0 variance); the exact sign test gives
    # 2 * 0.5^3 = 0.25 (it was 0.0 before); four: 0.125; all zero: 1.
    assert paired_t_test([4.04, 4.04, 4.04], [4.0, 4.0, 4.0]) == pytest.approx((0.04, 0.25))
    assert paired_t_test([1.0] * 4, [0.0] * 4)[1] == pytest.approx(0.125)
    assert paired_t_test([0.1] * 3, [0.0] * 3)[1] == pytest.approx(0.25)  # equal up to rounding, not p ~ 1e-32
    assert paired_t_test([1.0, 2.0], [1.0, 2.0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        paired_t_test([math.inf, 1.0], [1.0, 1.0])


def test_wilson_by_hand():
    # 1 of 10: center (0.1 + z^2/20) / (1 + z^2/10) = 0.21103, half width 0.19312 (z = 1.95996)
    lo, hi = wilson_interval(1, 10)
    assert (lo, hi) == pytest.approx((0.01788, 0.40415), abs=1e-5)
    assert pooled_wilson_interval([1, 0], [4, 6]) == (lo, hi)  # pooled: 1 of 10
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0


def test_bootstrap_with_undefined_resamples_gives_undefined_bounds():
    # inf - inf = nan in some resamples (e.g. a difference of two ratios with nothing verified):
    # sorted in, NaN would put the percentiles anywhere; the interval is undefined instead.
    values = [math.inf, 1.0, 2.0]
    lo, hi = bootstrap_interval(lambda idx: sum(values[i] for i in idx) - sum(values[i] for i in idx), 3)
    assert math.isnan(lo) and math.isnan(hi)
    lo, hi = bootstrap_interval(lambda idx: sum(values[i] for i in idx) / len(idx), 3)
    assert hi == math.inf and lo >= 1.0  # inf itself has an order


def _mean(matrix):
    return lambda si, pi: sum(matrix[s][p] for s in si for p in pi) / (len(si) * len(pi))


def test_crossed_bootstrap_holds_seed_noise_that_a_prompt_bootstrap_hides():
    # Two seeds, every prompt 0 under seed 0 and 1 under seed 1. Resampling prompts only, the
    # pooled mean is 0.5 in every resample (zero width); resampling seeds too, each resample is
    # 0, 0.5 or 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% percentiles are 0 and 1.
    matrix = [[0.0] * 20, [1.0] * 20]
    assert bootstrap_interval(lambda pi: _mean(matrix)([0, 1], pi), 20) == (0.5, 0.5)
    assert crossed_bootstrap_interval(_mean(matrix), 2, 20) == (0.0, 1.0)


def test_crossed_bootstrap_of_rates_stays_in_the_unit_interval():
    # the seeds agree exactly (0.09 each) yet prompts vary: a t-interval over seeds is [0.09, 0.09];
    # the crossed bootstrap keeps the prompts' noise and stays inside [0, 1]
    matrix = [[1.0] * 10 + [0.0] * 101 for _ in range(3)]
    lo, hi = crossed_bootstrap_interval(_mean(matrix), 3, 111)
    assert 0.0 <= lo < 10 / 111 < hi <= 1.0 and hi - lo > 0.06
    assert t_interval([10 / 111] * 3)[1:] == pytest.approx((10 / 111, 10 / 111))
    matrix = [[0.0] * 30, [0.0] * 29 + [1.0], [0.0] * 30]  # a rate near 0: never a negative bound
    lo, hi = crossed_bootstrap_interval(_mean(matrix), 3, 30)
    assert lo == 0.0 and 0 < hi <= 1.0


def test_crossed_bootstrap_of_a_paired_difference():
    # method a is b plus 0.5 on every seed and prompt: the difference is exactly 0.5 in every resample
    b = [[float(p % 3) for p in range(12)] for _ in range(3)]
    a = [[x + 0.5 for x in row] for row in b]
    diff = lambda si, pi: _mean(a)(si, pi) - _mean(b)(si, pi)  # noqa: E731
    assert crossed_bootstrap_interval(diff, 3, 12) == pytest.approx((0.5, 0.5))
