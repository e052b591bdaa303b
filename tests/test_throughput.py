"""The throughput benchmark and the evaluation-cost script run end to end (timings are not checked:
they are the scripts' output, not a test's). What is checked is what does not depend on the
machine: every case ran, TRL included; the layouts' input tokens fall as they share more, and a
token budget changes padding, not tokens; the evaluation metrics agree between layouts. And,
without running a model: the bench's system names, its interleaved round order and its table's
figures against hand-computed values (``experiments/throughput/cases.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import math

import pytest

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "experiments" / "throughput"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
sys.path.insert(0, str(HERE))
from cases import (System, compare, paired_ratio, parse_system, report, round_order, summarize,  # noqa: E402
                   with_precisions)


def test_system_names_parse_in_any_order_and_print_canonically():
    assert parse_system("pairs") == System("pairs")
    assert parse_system("pairs@tpm=2048@bf16") == System("pairs", "bf16", "auto", 2048)
    assert parse_system("pairs@tpm=2048@bf16").name == "pairs@bf16@tpm=2048"
    assert parse_system("trl@release@bf16").name == "trl@bf16@release"
    assert parse_system("trees@fp32").name == "trees"  # fp32 is the default
    assert parse_system("pairs@bf16@tpm=2048").plain.name == "pairs"
    for bad in ("heap", "pairs+heap", "unpacked@tpm=2048", "trl@tpm=512", "pairs@bf16@fp32", "pairs@tpm=0",
                "pairs@fp16"):
        with pytest.raises(ValueError):
            parse_system(bad)


def test_precisions_cross_the_systems_that_name_none():
    assert with_precisions(["pairs", "trl@bf16", "pairs@fp32"], ["fp32", "bf16"]) == ["pairs", "pairs@bf16", "trl@bf16"]
    assert with_precisions(["defacto:pairs@tpm=1024"], ["bf16"]) == ["defacto:pairs@bf16@tpm=1024"]
    assert with_precisions(["trees"], None) == ["trees"]


def test_rounds_rotate_so_every_case_runs_once_in_every_position():
    n = 5
    orders = [round_order(n, k) for k in range(n)]
    for order in orders:
        assert sorted(order) == list(range(n))  # every case once a round
    for position in range(n):
        assert sorted(order[position] for order in orders) == list(range(n))
    assert round_order(n, n) == round_order(n, 0) == [0, 1, 2, 3, 4]
    assert round_order(3, 1) == [1, 2, 0]


def test_summary_figures_by_hand():
    runs = [dict(step_seconds=[4.0], peak_rss=5e9, tokens=300, padded=400),
            dict(step_seconds=[2.0], peak_rss=7e9, tokens=100, padded=100),
            dict(step_seconds=[8.0, 10.0], peak_rss=6e9, tokens=200, padded=300)]  # a round of 2 steps: its median, 9
    got = summarize(runs, pairs_per_step=4)
    assert got["step_seconds"] == [4.0, 2.0, 9.0]
    assert (got["median_seconds"], got["min_seconds"], got["max_seconds"]) == (4.0, 2.0, 9.0)
    assert got["steers_per_s"] == 1.0 and got["peak_rss"] == 7e9
    assert got["tokens_per_step"] == 150 and got["padded_per_step"] == 200  # 600 and 800 over 4 steps
    assert got["padding_share"] == pytest.approx(0.25)  # 200 padding of 800 row tokens
    assert math.isnan(summarize([dict(step_seconds=[1.0], peak_rss=1)], 4)["padding_share"])  # nothing counted


def test_paired_ratio_cancels_drift_between_rounds():
    # The machine runs at speeds 1, 1/4 and 1/2 in three rounds; the case is twice as fast as TRL in each.
    trl, case = [10.0, 40.0, 20.0], [5.0, 20.0, 10.0]
    assert paired_ratio(case, trl) == 2.0
    assert paired_ratio(trl, case) == 0.5
    assert math.isnan(paired_ratio([1.0], [1.0, 2.0]))


def _result(system, seconds, peak=1e9, model="tiny", dataset="defacto"):
    return dict(model=model, dataset=dataset, system=system, **summarize(
        [dict(step_seconds=[s], peak_rss=peak, tokens=10, padded=10) for s in seconds], pairs_per_step=4))


def test_ratios_against_the_fastest_trl_precision_and_the_plain_base():
    results = [_result("trl", [10.0, 20.0], peak=8e9), _result("trl@bf16", [5.0, 10.0], peak=6e9),
               _result("trl@release", [1.0, 1.0]),  # another allocator: never the TRL reference
               _result("pairs", [2.5, 5.0], peak=3e9), _result("pairs@bf16@tpm=2048", [1.0, 2.5]),
               _result("unpacked@bf16", [5.0, 10.0]),  # no plain unpacked: x base is NaN
               _result("trees", [1.0, 1.0], dataset="trajectory")]  # no TRL on trajectories
    compare(results)
    got = {(r["dataset"], r["system"]): r for r in results}
    assert got["defacto", "pairs"]["trl_reference"] == "trl@bf16"
    assert got["defacto", "pairs"]["x_trl"] == 2.0 and got["defacto", "pairs"]["mem_trl"] == 0.5
    assert got["defacto", "trl@bf16"]["x_trl"] == 1.0 and got["defacto", "trl@bf16"]["x_base"] == 2.0
    assert got["defacto", "trl"]["x_trl"] == 0.5
    assert got["defacto", "pairs@bf16@tpm=2048"]["x_base"] == 2.25  # median of 2.5 and 2.0
    assert math.isnan(got["defacto", "unpacked@bf16"]["x_base"])
    assert got["trajectory", "trees"]["trl_reference"] is None and math.isnan(got["trajectory", "trees"]["x_trl"])
    lines = report(results, k=4)
    assert len(lines) == 1 + len(results) + 2 + 2  # header, rows, legend, a TRL reference line per (model, data)
    assert "against trl@bf16" in lines[-2] and "no TRL case" in lines[-1]


@pytest.mark.slow
def test_bench_quick_cases_run_and_packing_reads_fewer_tokens(tmp_path, defacto_dir):
    cases = ("defacto:trl@bf16,defacto:pairs,defacto:pairs@tpm=1024,trajectory:unpacked,trajectory:pairs,"
             "trajectory:trees")
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--quick", "--cases", cases, "--precisions", "fp32",
                           "--threads", "2", "--defacto", str(defacto_dir), "--out", str(tmp_path)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads((tmp_path / "throughput-quick.json").read_text())
    got = {(r["dataset"], r["system"]): r for r in out["results"]}
    assert set(got) == {tuple(c.split(":")) for c in cases.split(",")}
    for r in got.values():  # --quick: one round, one measured step
        assert len(r["step_seconds"]) == 1 and r["step_seconds"][0] > 0 and r["peak_rss"] > 0
        assert r["tokens_per_step"] > 0 and r["padded_per_step"] >= r["tokens_per_step"]
    assert got["defacto", "trl@bf16"]["rounds"][0]["precision"] == "bf16"
    # The same pairs in every layout (data.py: trajectories of exactly k = 4 steers, 4 pairs a step),
    # fewer tokens as more is shared: trees < pairs < unpacked.
    tokens = {s: got["trajectory", s]["tokens_per_step"] for s in ("unpacked", "pairs", "trees")}
    assert tokens["trees"] < tokens["pairs"] < tokens["unpacked"], tokens
    # A token budget cuts the same rows into micro-batches of similar lengths: same tokens, less padding.
    budget, plain = got["defacto", "pairs@tpm=1024"], got["defacto", "pairs"]
    assert budget["tokens_per_step"] == plain["tokens_per_step"]
    assert budget["padding_share"] <= plain["padding_share"]
    assert any(line.startswith("trees / pairs") for line in out["report"])
    assert (tmp_path / "throughput-quick.png").stat().st_size > 0


@pytest.mark.slow
def test_eval_cost_runs_and_layouts_agree(tmp_path, defacto_dir):
    out = tmp_path / "eval_cost.json"
    proc = subprocess.run([sys.executable, str(HERE / "eval_cost.py"), "--n", "4", "--train-steps", "0",
                           "--threads", "2", "--defacto", str(defacto_dir), "--out", str(out)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    got = json.loads(out.read_text())
    assert set(got) == {"unpacked", "pairs"}
    for layout in got.values():
        assert len(layout["eval_seconds"]) == 2 and min(layout["eval_seconds"]) > 0
    # Before training the policy is the reference: every margin ties, the KL is 0, in both layouts.
    # The NLLs are fp32 SmolLM2 log-probs of another layout: its O(100) hidden features make them
    # differ by up to ~1e-5 per token (tests/test_packing.py), ~5e-6 of an NLL of 2 or more: rel 1e-4.
    for name, value in got["unpacked"]["metrics"].items():
        assert got["pairs"]["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
    assert got["pairs"]["metrics"]["span/reward_accuracy"] == 0.5 and got["pairs"]["metrics"]["drift/kl"] == 0.0
