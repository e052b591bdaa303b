"""steering.summarize resamples whole clusters when every task names its cluster (meta.task.cluster)."""

import pytest

from localpref.stats import wilson_interval
from localpref.steering import summarize


def rec(cluster, verified):
    # verified: the unsteered answer passed (0 steers); else the budget of 3 was spent (counts 4)
    task = {} if cluster is None else {"cluster": cluster}
    return {"verified": verified, "steps": [] if verified else [{"cost": {"chars": 2}}] * 3,
            "meta": {"task": task, "first_error": None if verified else {"unit": 0}, "steers": 0 if verified else 3,
                     "budget": 3, "new_tokens": 10, "seconds": 1.0, "stopped": "verified" if verified else "budget"}}


def test_outcomes_shared_within_clusters_widen_the_intervals():
    # 4 clusters of 5 tasks, the tasks of a cluster alike: clusters a, b pass, c, d fail.
    # Resampling the 4 clusters, the pass rate is j/4 with j ~ Binomial(4, 1/2): P(j = 0) = 1/16 >
    # 2.5%, so the interval is [0, 1], and steers to verify (0 or 4 per cluster) spans [0, 4].
    # As 20 independent tasks the pass rate would get Wilson's [0.30, 0.70].
    records = [rec(c, c in "ab") for c in "abcd" for _ in range(5)]
    s = summarize(records)
    assert s["pass_rate"] == 0.5 and s["steers_to_verify"] == 2.0
    assert s["pass_rate_ci"] == (0.0, 1.0) and s["verified_within_budget_ci"] == (0.0, 1.0)
    assert s["steers_to_verify_ci"] == (0.0, 4.0)
    independent = summarize([rec(None, r["verified"]) for r in records])
    assert independent["pass_rate_ci"] == pytest.approx(wilson_interval(10, 20))
    assert independent["pass_rate_ci"] == pytest.approx((0.2993, 0.7007), abs=1e-4)
    lo, hi = independent["steers_to_verify_ci"]
    assert 0.0 < lo < 2.0 < hi < 4.0


def test_one_task_without_a_cluster_means_independent_tasks():
    records = [rec(c, c in "ab") for c in "abcd" for _ in range(5)]
    records[0]["meta"]["task"] = {}
    assert summarize(records)["pass_rate_ci"] == pytest.approx(wilson_interval(10, 20))


def test_equal_outcomes_keep_wilson_with_clusters():
    # every task passes: all resamples are 1, a zero-width interval; Wilson says how few were seen
    s = summarize([rec(c, True) for c in "abcd" for _ in range(2)])
    assert s["pass_rate_ci"] == pytest.approx(wilson_interval(8, 8)) and s["pass_rate_ci"][0] < 0.7
