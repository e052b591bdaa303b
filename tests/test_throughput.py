"""The throughput benchmark and the evaluation-cost script run end to end (timings are not checked:
they are the scripts' output, not a test's). What is checked is what does not depend on the
machine: every case ran, TRL included; the layouts' input tokens fall as they share more; the
evaluation metrics agree between layouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "experiments" / "throughput"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_bench_quick_cases_run_and_packing_reads_fewer_tokens(tmp_path, defacto_dir):
    cases = "defacto:trl,trajectory:unpacked,trajectory:pairs,trajectory:trees"
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--quick", "--cases", cases, "--threads", "2",
                           "--defacto", str(defacto_dir), "--out", str(tmp_path)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = json.loads((tmp_path / "throughput-quick.json").read_text())
    got = {(r["dataset"], r["system"]): r for r in out["results"]}
    assert set(got) == {tuple(c.split(":")) for c in cases.split(",")}
    for r in got.values():
        assert len(r["step_seconds"]) == 1 and r["step_seconds"][0] > 0 and r["peak_rss"] > 0
    # The same pairs in every layout (data.py: trajectories of exactly k = 4 steers, 4 pairs a step),
    # fewer tokens as more is shared: trees < pairs < unpacked.
    tokens = {s: got["trajectory", s]["tokens"] for s in ("unpacked", "pairs", "trees")}
    assert tokens["trees"] < tokens["pairs"] < tokens["unpacked"], tokens
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
