"""The paper's experiment in its quick variant: every stage runs as the Hydra multiruns of conf/,
and writes well-formed outputs the analysis turns into tables.

Values are not checked (a quick study trains a 120-step model for a step or two); shapes are:
two builds, their collections, an Optuna study of the same number of trials per method, final
runs on every build (and every budget share for a curve method), the matched-KL choice, and the
analysis' tables with a row per method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXP = REPO / "experiments" / "fewest_steers"


@pytest.mark.slow
def test_fewest_steers_quick_variant_is_well_formed(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(EXP / "run.py"), "--out", str(out), "--quick", "--jobs", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    part = out / "tiny-ranges-systematic"
    settings = json.loads((out / "settings.json").read_text())
    assert settings["quick"] and list(settings["parts"]) == ["tiny-ranges-systematic"]
    methods = settings["parts"]["tiny-ranges-systematic"]["methods"]
    assert methods == ["sft_span", "localized", "unlikelihood", "control"]

    # builds and collections: each build its own model and train subset; the methods' steers are
    # the first n_train of the control's
    models = json.loads((part / "models.json").read_text())
    assert [m["build"] for m in models] == [0, 1] and len({m["folder"] for m in models}) == 2
    train = [(part / "collect" / f"train_b{b}.jsonl").read_text().splitlines() for b in (0, 1)]
    control = [(part / "collect" / f"train_control_b{b}.jsonl").read_text().splitlines() for b in (0, 1)]
    assert [len(t) for t in train] == [12, 12] and [len(c) for c in control] == [24, 24]
    assert all(c[:12] == t for c, t in zip(control, train))
    assert {json.loads(x)["id"] for x in train[0]} != {json.loads(x)["id"] for x in train[1]}

    # tuning: Optuna, the same number of trials for every method, each logged with its search
    # space's parameters; the objective is val steers to verify (+ 0.001 KL)
    for m in methods:
        results = yaml.safe_load((part / "runs" / "tune" / m / "optimization_results.yaml").read_text())
        trials = sorted((part / "runs" / "tune" / m).glob("t*"))
        assert len(trials) == 3, m
        assert {"trainer.lr", "trainer.epochs"} <= set(results["best_params"])
        assert ("loss.beta" in results["best_params"]) == (m == "localized")
        assert ("loss.params.ul_weight" in results["best_params"]) == (m == "unlikelihood")
        cfg = yaml.safe_load((trials[0] / "config.yaml").read_text())
        assert (cfg["model"]["build"], cfg["steer_eval"]["split"], cfg["steer_eval"]["extra_split"]) == (0, "val", "heldout")
        assert (trials[0] / "steer_eval_heldout.jsonl").exists()

    # final runs: every method on every build at its tuned settings, the curve method at each share
    for m in methods:
        shares = ["cNone"] if m == "control" else ["c0.5", "c1.0"] if m == "localized" else ["c1.0"]
        for b in (0, 1):
            for share in shares:
                run = part / "runs" / "final" / m / f"b{b}_{share}"
                cfg = yaml.safe_load((run / "config.yaml").read_text())
                assert cfg["model"]["build"] == b and cfg["steer_eval"]["split"] == "heldout"
                rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                data = next(r for r in rows if "data/train_pairs" in r)
                spent, budget = data["data/collected/chars"], data["data/collected/budget"]
                assert (budget == -1) if m == "control" else (0 < spent <= budget)
    assert (part / "matched.json").exists() and (part / "runs" / "base" / "base" / "b1").exists()

    # the analysis: summary -> tables with a row per method
    gen, summary = tmp_path / "generated", tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, str(EXP / "analyze.py"), str(out), "--summary", str(summary),
                           "--generated", str(gen)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    dial = (gen / "dial.md").read_text().splitlines()
    assert len([x for x in dial if x.startswith("| tiny-ranges-systematic |")]) == 1 + len(methods)  # + the base
    assert (gen / "frontier.pdf").stat().st_size > 0 and (gen / "curves.md").exists()
    frontier = (gen / "frontier.csv").read_text().splitlines()
    assert len(frontier) == 1 + 3 * len(methods)  # every trial of every method
    numbers = (gen / "numbers.tex").read_text()
    assert "\\newcommand{\\fsTinyRangesSystematicLocalizedStv}" in numbers and "\\newcommand{\\fsQuick}{yes}" in numbers


def test_run_py_trials_and_overrides_reach_every_train_command(tmp_path):
    """``run.py --trials N --set K=V``: N Optuna trials (half random) for every method's tune command
    only, K=V on every train command; without them, the tune command is the conf's own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fewest_steers_run", EXP / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses look their module up
    spec.loader.exec_module(run)
    runner = run.Runner(tmp_path, jobs=1, quick=False, trials=8, extra=["study.n_frontier=150"])
    part = run.compose_part("tiny-ranges-systematic", runner.overrides)
    tune = runner.train(part, "method=localized", "stage=tune")
    final = runner.train(part, "method=localized", "stage=final", "model.build=0,1")
    assert "hydra.sweeper.n_trials=8" in tune and "hydra.sweeper.sampler.n_startup_trials=4" in tune
    assert not any(a.startswith("hydra.sweeper") for a in final)
    assert "study.n_frontier=150" in tune and "study.n_frontier=150" in final
    assert run.Runner(tmp_path, jobs=1, quick=False).train(part, "stage=tune")[-1] == "stage=tune"  # conf's own
