"""The paper's experiment in its quick variant: every stage runs and writes well-formed outputs.

Values are not checked (a quick run trains for one or two steps); shapes are: every stage's runs
have their ``result.json`` with the metrics the analysis reads, and the analysis turns them into
tables with a row per method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments" / "fewest_steers"
STEER_KEYS = ["eval/steer/steers_to_verify", "eval/steer/token_capped", "eval/steer/steers_per_verified", "eval/steer/pass_rate", "eval/steer/verified_within_budget",
              "eval/span/logp_accuracy", "eval/span/nll", "eval/drift/nll", "eval/drift/kl"]


@pytest.mark.slow
def test_fewest_steers_quick_variant_is_well_formed(tmp_path, defacto_dir):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "LOCALPREF_SHARED": str(defacto_dir.parents[1])}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(EXP / "run.py"), "--out", str(out), "--quick", "--jobs", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    settings = json.loads((out / "settings.json").read_text())
    assert settings["quick"] and set(settings["parts"]) == {"tiny-lists", "tiny-arith-systematic", "smollm2-style",
                                                            "defacto"}
    results = [json.loads(f.read_text()) for f in out.glob("*/runs/*/*/result.json")]
    stages = {(r["part"], r["stage"]) for r in results}
    for part in ("tiny-lists", "tiny-arith-systematic"):
        assert {(part, s) for s in ("base", "variant", "tune", "final")} <= stages
        assert (out / part / "model.json").exists() and (out / part / "tuned.json").exists()
    assert ("smollm2-style", "final") in stages and ("smollm2-style", "tune") not in stages
    # the regime reaches the tiny model: the systematic part's model was pretrained with errors=systematic
    assert json.loads((out / "tiny-arith-systematic" / "model.json").read_text())["spec"]["errors"] == "systematic"
    assert ("defacto", "base") in stages
    # Every part but the quick SmolLM2 style (16 new tokens: answers may end before a first error)
    # has held-out steers to score; without them a run reports steering metrics only.
    assert all(r["data"]["data/eval_pairs"] > 0 for r in results if r["part"] != "smollm2-style")
    base = [r for r in results if r["stage"] == "base" and r["data"]["data/eval_pairs"]]
    assert {r["part"] for r in base} >= {"tiny-lists", "tiny-arith-systematic", "defacto"}
    assert all(r["metrics"]["eval/span/reward_ties"] == 1.0 for r in base)  # learning rate 0: the reference
    for r in results:
        keys = STEER_KEYS if r["part"] != "defacto" else STEER_KEYS[5:]
        keys = keys if r["data"]["data/eval_pairs"] else [k for k in keys if k.startswith("eval/steer/")]
        assert all(k in r["metrics"] for k in keys), (r["name"], sorted(r["metrics"]))
        assert r["data"]["data/train_pairs"] > 0
    assert ("tiny-lists", "trainprompts") in stages and ("tiny-arith-systematic", "trainprompts") not in stages
    rounds = [r for r in results if r["stage"] == "iterate" and r.get("round") == 2]
    assert {r["part"] for r in rounds} == {"tiny-lists"} and len(rounds) == 4  # two methods x two seeds
    tiny_lists_final = [r for r in results if (r["part"], r["stage"]) == ("tiny-lists", "final")]
    # the seven methods on the curve x seeds x budgets; Step-DPO and the variant (off the curve) and
    # the control x seeds at the main budget only
    assert len(tiny_lists_final) == 7 * 2 * 2 + 3 * 2
    assert {r["budget"] for r in tiny_lists_final if r["method"] in ("step_dpo", "variant")} == {1.0}
    # greedy decoding ignores the seed: seed 1's greedy collections are seed 0's, copied; a control
    # of scale 1 (smollm2-style) trains on the methods' own collection
    collect = out / "tiny-lists" / "collect"
    for name in ("train", "train_control", "heldout"):
        assert (collect / f"{name}_s1.jsonl").read_bytes() == (collect / f"{name}_s0.jsonl").read_bytes()
    assert (collect / "train_t1_s1.jsonl").read_bytes() != (collect / "train_t1_s0.jsonl").read_bytes()
    assert not list((out / "smollm2-style" / "collect").glob("train_control_*"))
    # annotation cost: a method at a budget never spends more than the budget; the control has none
    # and reads a collection four times the size (all it takes is what it spent)
    for r in tiny_lists_final:
        assert r["data"]["data/collected/chars"] <= r["budget_chars"]
    control = [r for r in tiny_lists_final if r["method"] == "control"]
    assert all(r["budget"] is None and r["data"]["data/collected/trajectories_taken"] == 48 for r in control)
    t1 = [r for r in results if (r["part"], r["stage"]) == ("tiny-lists", "final_t1")]
    assert sorted({r["method"] for r in t1}) == ["dpo_rewrite", "localized"] and len(t1) == 4

    gen, summary = tmp_path / "generated", tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(EXP / "analyze.py"), str(out), "--summary", str(summary),
                           "--generated", str(gen)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    table = (gen / "headline_tiny-lists.md").read_text().splitlines()
    assert len(table) == 2 + 1 + 10  # header, rule, base model, nine methods, the control
    assert (gen / "curves_tiny-lists.pdf").stat().st_size > 0
    assert (gen / "rounds_tiny-lists.md").exists() and (gen / "defacto.md").exists()
    assert (gen / "temperature_tiny-lists.md").exists() and (gen / "dial.pdf").stat().st_size > 0
    profiles = (gen / "profiles.md").read_text()  # the base models' held-out error profiles, one row a part
    assert "| lists | random | 6 |" in profiles and "| arith | systematic | 6 |" in profiles
    dial = (gen / "dial.md").read_text()
    assert "| lists | random | control" in dial and "| arith | systematic | base model" in dial
    numbers = (gen / "numbers.tex").read_text()
    assert "\\newcommand{\\fsTinyListsLocalizedSpv}" in numbers and "\\newcommand{\\fsQuick}{yes}" in numbers
