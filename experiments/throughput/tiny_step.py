"""Tiny-model training and pretraining steps, before and after a change, measured in one run.

    .venv/bin/python experiments/throughput/tiny_step.py --before 9950ba5      # ~10 minutes on 2 cores

Question: how much faster is one optimizer step of the fewest-steers experiment's tiny runs (a
1.1M-parameter task model, 16 steers a step) and of pretraining a tiny task model, at the
working tree than at git revision ``--before``?

Both revisions run the same steps on the same data and the same weights: trajectories collected
once with the tiny-lists task model (greedy steering on ``--n`` train prompts and 32 val prompts,
written under ``--out``), the model passed as a folder (``model=local``). Each measurement runs
in a fresh process whose ``sys.path`` starts at that revision's checkout (a ``git worktree`` of
``--before`` under ``--out``), and the cases are **interleaved**: round ``k`` runs every case
once, in an order rotated by ``k``, so drift of a shared machine hits every case alike. Reported
per case: the median seconds per step over the rounds (each round's figure is the median of its
measured steps, warm-up steps left out) and the range over the rounds; ratios are of medians.

Cases (training: ``localpref.train.train`` on ``experiment=fewest_steers`` with its trainer and
model overrides, ``trainer.max_steps`` steps, the first ``--warmup`` left out):

* ``before`` / ``after``: each revision with its own ``conf/experiment/fewest_steers.yaml``
  (the experiment as it runs at that revision);
* ``before+trees`` / ``after+unpacked``: the layout and reference of the other revision's
  config, to split what the code changed from what the config changed.

Pretraining (``localpref.tasks.pretrain.pretrain`` with ``TinySpec(steps=N)`` for two values of
N): seconds per step = the difference of the wall times over the difference of the steps, so the
tokenizer training, the model's construction and saving cancel out; and the full default spec's
time extrapolated from it.

Threads: ``--threads`` torch threads per process (default 1: the experiment runs two jobs of
one thread each on 2 cores). Writes ``<out>/tiny_step.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

# The experiment's layout/reference before and after 2026-12-03 (conf/experiment/fewest_steers.yaml).
UNPACKED = ["data.layout=unpacked", "reference=copy"]
TREES = ["data.layout=trees", "reference=precomputed"]

TRAIN_WORKER = r"""
import json, sys, time, torch
repo, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, repo)
torch.set_num_threads(spec["threads"])
from hydra import compose, initialize_config_dir
from localpref.train import CONF_DIR, train
assert str(CONF_DIR).startswith(repo), (CONF_DIR, repo)
with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
    cfg = compose("config", overrides=spec["overrides"])
train(cfg)
rows = [json.loads(line) for line in open(spec["run_dir"] + "/metrics.jsonl")]
times = [r["time"] for r in rows if "train/loss" in r]
tokens = [r["train/tokens_per_pair"] for r in rows if "train/loss" in r]
print("RESULT " + json.dumps({"step_seconds": [b - a for a, b in zip(times, times[1:])][spec["warmup"]:],
                              "tokens_per_pair": sum(tokens) / len(tokens)}))
"""

PRETRAIN_WORKER = r"""
import json, sys, time, tempfile, torch
from pathlib import Path
repo, spec = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, repo)
torch.set_num_threads(spec["threads"])
import localpref.tasks.pretrain as pt
assert pt.__file__.startswith(repo), (pt.__file__, repo)
start = time.perf_counter()
pt.pretrain(spec["family"], pt.TinySpec(steps=spec["steps"], warmup_steps=5), Path(tempfile.mkdtemp()) / "m")
print("RESULT " + json.dumps({"seconds": time.perf_counter() - start}))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision to compare the working tree with")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each runs every case once)")
    p.add_argument("--steps", type=int, default=40, help="training steps per run")
    p.add_argument("--warmup", type=int, default=5, help="steps left out of each run's median")
    p.add_argument("--pretrain-steps", default="40,120", help="two step counts for the pretraining slope")
    p.add_argument("--families", default="lists,arith", help="pretraining: task families")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n", type=int, default=96, help="train prompts to collect steers on")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "tiny_step")
    return p.parse_args()


def run_worker(code: str, repo: Path, spec: dict) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", code, str(repo), json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=repo)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({repo}, {spec}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def checkout(rev: str, out: Path) -> Path:
    """A worktree of ``rev`` under ``out`` (reused when it is there already)."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    tree = out / f"worktree-{sha[:10]}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=REPO, check=True,
                       capture_output=True)
    return tree


def collect(out: Path, n: int) -> tuple[Path, Path, Path]:
    """(model folder, train trajectories, val trajectories), collected with the working tree."""
    from localpref.tasks.pretrain import task_model_dir

    model = task_model_dir("lists")
    data = {}
    for split, count in (("train", n), ("val", 32)):
        path = out / f"{split}.jsonl"
        if not path.exists():
            subprocess.run([sys.executable, "-m", "localpref.cli", "steer", "collect", "--family", "lists",
                            "--model", str(model), "--split", split, "--n", str(count), "--budget", "4",
                            "--temperature", "0", "--out", str(path)], cwd=REPO, check=True, capture_output=True)
        data[split] = path
    return model, data["train"], data["val"]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    trees = {"before": checkout(args.before, args.out), "after": REPO}
    model, train_path, val_path = collect(args.out, args.n)
    base = ["experiment=fewest_steers", "model=local", f"model.path={model}", "data=collected",
            f"data.path={train_path}", f"data.eval_path={val_path}", "trainer.micro_batch_size=16",
            f"trainer.max_steps={args.steps}", "trainer.warmup_steps=3", "trainer.resume=false",
            "trainer.progress=false", "trainer.checkpoint_every=0", "logger.wandb=disabled", "steer_eval.n=0"]
    cases = {"before": ("before", []), "before+trees": ("before", TREES),
             "after": ("after", []), "after+unpacked": ("after", UNPACKED)}
    a, b = (int(x) for x in args.pretrain_steps.split(","))
    families = [f for f in args.families.split(",") if f]
    jobs = [("train", name) for name in cases] + [("pretrain", (f, rev, s)) for f in families
                                                   for rev in ("before", "after") for s in (a, b)]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for kind, name in jobs[k % len(jobs):] + jobs[:k % len(jobs)]:  # rotated: drift hits all alike
                if kind == "train":
                    rev, extra = cases[name]
                    run_dir = f"{tmp}/{name}-{k}"
                    r = run_worker(TRAIN_WORKER, trees[rev], {"threads": args.threads, "warmup": args.warmup,
                                                              "run_dir": run_dir,
                                                              "overrides": [*base, f"run_dir={run_dir}", *extra]})
                    results.setdefault(name, {"step": [], "tokens_per_pair": r["tokens_per_pair"]})
                    results[name]["step"].append(statistics.median(r["step_seconds"]))
                else:
                    family, rev, steps = name
                    r = run_worker(PRETRAIN_WORKER, trees[rev], {"threads": args.threads, "family": family,
                                                                 "steps": steps})
                    results.setdefault(f"pretrain {family} {rev}", {}).setdefault(steps, []).append(r["seconds"])
                print(f"round {k + 1}/{args.rounds} {kind} {name}: done", flush=True)

    table = {"threads": args.threads, "before": args.before, "train": {}, "pretrain": {}}
    print(f"\ntraining step, tiny-lists model, 16 steers a step, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds")
    print(f"{'case':16s} {'s/step':>8s} {'range':>17s} {'tokens/pair':>12s} {'x before':>9s}")
    ref = statistics.median(results["before"]["step"])
    for name in cases:
        s = summary(results[name]["step"])
        table["train"][name] = {**s, "tokens_per_pair": results[name]["tokens_per_pair"], "speedup": ref / s["median"]}
        print(f"{name:16s} {s['median']:8.4f} [{s['min']:.4f}, {s['max']:.4f}] "
              f"{results[name]['tokens_per_pair']:12.1f} {ref / s['median']:9.2f}")
    from localpref.tasks.pretrain import TinySpec

    full = TinySpec().steps
    print(f"\npretraining step (slope between {a} and {b} steps), full spec of {full} steps extrapolated")
    for family in families:
        for rev in ("before", "after"):
            runs = results[f"pretrain {family} {rev}"]
            slopes = [(tb - ta) / (b - a) for ta, tb in zip(runs[a], runs[b])]
            fixed = [ta - s * a for ta, s in zip(runs[a], slopes)]
            s = summary(slopes)
            minutes = (statistics.median(fixed) + s["median"] * full) / 60
            table["pretrain"][f"{family} {rev}"] = {**s, "full_minutes": minutes}
            print(f"{family:6s} {rev:7s} {s['median'] * 1000:7.1f} ms/step [{s['min'] * 1000:.1f}, "
                  f"{s['max'] * 1000:.1f}]  full pretraining {minutes:.1f} min")
        before, after = (table["pretrain"][f"{family} {r}"]["median"] for r in ("before", "after"))
        print(f"{family:6s} speed-up {before / after:.2f}x")
    (args.out / "tiny_step.json").write_text(json.dumps(table, indent=1))
    print(f"\nwrote {args.out / 'tiny_step.json'}")


if __name__ == "__main__":
    main()
