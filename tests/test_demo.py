"""The main job (``localpref demo``): its verdict rule, and one small run end to end.

The run uses a tiny ranges model pretrained for 30 steps in the systematic regime (the demo's
default model takes minutes to build) and a dozen prompts per split; it checks what the demo
prints and writes, not what it finds.
"""

from __future__ import annotations

import json

import pytest

from localpref import demo
from localpref.tasks import pretrain as pretrain_mod
from localpref.tasks.pretrain import TinySpec, pretrain

KEY = "eval/steer/steers_to_verify"


def _row(value: float, lo: float, hi: float) -> dict:
    return {KEY: value, f"{KEY}_lo": lo, f"{KEY}_hi": hi}


@pytest.mark.parametrize("before, after, says", [
    (_row(0.9, 0.7, 1.1), _row(0.3, 0.2, 0.45), "verdict: fewer steers after training (0.90 -> 0.30"),
    (_row(0.3, 0.2, 0.45), _row(0.9, 0.7, 1.1), "verdict: MORE steers after training (0.30 -> 0.90"),
    (_row(0.9, 0.7, 1.1), _row(0.8, 0.6, 1.0), "verdict: no measurable change (0.90 -> 0.80"),
    (_row(0.9, 0.7, 1.1), _row(0.5, 0.3, 0.7), "verdict: no measurable change"),  # touching: not apart
])
def test_verdict_needs_intervals_that_do_not_overlap(before, after, says):
    assert demo.verdict(before, after).startswith(says)


def test_demo_runs_on_the_ranges_model_and_prints_before_and_after(tmp_path, monkeypatch, capsys):
    spec = TinySpec(steps=30, warmup_steps=5, errors="systematic")
    folder = pretrain("ranges", spec, tmp_path / "model")
    asked = []
    monkeypatch.setattr(pretrain_mod, "task_model_dir",
                        lambda family, spec=None, build=True: asked.append((family, spec.errors)) or folder)
    monkeypatch.setattr(demo, "COLLECT", {split: {**s, "n": 12} for split, s in demo.COLLECT.items()})
    run_dir = tmp_path / "run"
    assert demo.run_demo([f"run_dir={run_dir}", "steer_eval.n=12", "trainer.epochs=null", "trainer.max_steps=2",
                          "trainer.warmup_steps=1", "trainer.checkpoint_every=0"]) == 0
    assert set(asked) == {("ranges", "systematic")}  # the demo's regime, from conf/experiment/demo.yaml
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("steers to verify"))
    assert line.count("[") == 2 and " -> " in line  # before [lo, hi] -> after [lo, hi]
    assert "verdict: " in out and "12 heldout prompts of 'ranges'" in out
    records = [json.loads(x) for x in (run_dir / "collect" / "train.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["meta"]["temperature"] == 0.0 for r in records)  # greedy, as evaluated
    assert (run_dir / "demo.png").stat().st_size > 0 and (run_dir / "export" / "config.json").exists()
