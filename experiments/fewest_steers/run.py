"""Which loss makes a model need the fewest steers, at equal annotation cost? The study's driver.

    python experiments/fewest_steers/run.py --out outputs/fewest_steers          # the parts below (hours)
    python experiments/fewest_steers/run.py --out /tmp/fs --quick                # every code path, minutes
    python experiments/fewest_steers/analyze.py outputs/fewest_steers            # tables, figures -> paper/

Everything a training run needs is config: ``conf/experiment/fewest_steers.yaml`` (what every run
shares), ``conf/part/<part>.yaml`` (task model, prompts, sizes, the methods compared),
``conf/method/<method>.yaml`` (a loss and the data it reads), ``conf/stage/<stage>.yaml`` (tune,
final, base) and ``conf/search/tune/<method>.yaml`` (a method's search space). This script does
only what no config can say, as ``localpref`` commands, each printed to ``OUT/commands.log`` and
runnable alone; ``--jobs`` of them run side by side, one thread each:

1. ``build``: each build of the part's tiny task model, ``localpref steer pretrain --build b``:
   independent models of one recipe (their pretraining seed), the study's replicates.
2. ``collect``: each build steers greedily (a program as the annotator) on its own train prompts
   (``tasks("train", seed=b)``: the control's ``control_scale x n_train`` of them, whose first
   ``n_train`` are the methods'), and on the val and heldout prompts (the held-out steers).
3. ``base``: the base model of every build, evaluated as the trained ones are (``method=base``).
4. ``tune``: every method, the same number of Optuna trials over its search space, on build 0's
   val prompts (``stage=tune``; the objective is ``tune.metric``, see conf/stage/tune.yaml).
5. ``final``: every method at its best trial's settings on every build (``model.build=0,...``),
   steered once on the held-out prompts; the part's ``curve_methods`` also at each share of
   ``budgets`` (``data.cost_share``).
6. ``matched``: the comparison at equal drift. KL* is the median val KL of the tuned trials of the
   methods that moved the model (val KL >= ``MOVED``; the control left out; if none moved, of all
   of them); each method's trial with the fewest val steers to verify among those whose val KL <=
   KL* (none: its lowest-KL trial) runs on every build as ``study.stage=matched`` (skipped where
   that trial is the tuned one: its final runs serve). The first rule, the median over all
   methods, compared every method at no drift in a run where most methods tuned to a model that
   does not move: the median then says nothing about drift.

A command whose runs all finished is skipped, so the same command continues an interrupted study.
``OUT/timing.jsonl`` records each command's wall-clock; ``OUT/settings.json`` the parts' configs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARTS = ["tiny-ranges-systematic", "tiny-ranges", "tiny-ranges_desc-systematic"]
QUICK_PARTS = ["tiny-ranges-systematic"]  # the other tiny parts differ only in config
# Quick: every code path on tiny sizes (two builds of a 40-step model, a few prompts, two trials).
QUICK = ["study.builds=2", "study.n_train=12", "study.control_scale=2", "study.n_val=9", "study.n_heldout=9",
         "model.pretrain_steps=120", "steer_eval.max_new_tokens=40",
         "study.methods=[sft_span,localized,unlikelihood,control]", "study.budgets=[0.5,1.0]",
         "study.curve_methods=[localized]"]
QUICK_TUNE = ["hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2"]  # the sweeper's, tune only


@dataclass
class Part:
    """What this script reads of a part's composed config (``experiment=fewest_steers part=NAME``)."""

    name: str
    model: str  # "tiny" (a tiny task model with builds) or "smollm2" (one build: replicates are seeds)
    family: str
    errors: str
    pretrain_steps: int | None
    builds: int
    n_train: int
    control_scale: int
    n_val: int | None
    n_heldout: int | None
    temperature: float
    collect_batch: int
    steer_budget: int
    max_new_tokens: int
    max_task_tokens: int | None
    tie_weight: float  # tune.tie_weight at stage=tune: how the sweeper's objective weighs KL
    methods: list[str]
    budgets: list[float]
    curve_methods: list[str]


def compose_part(name: str, overrides: list[str]) -> Part:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import localpref.config  # noqa: F401  (registers the schema, base_config)

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fewest_steers", f"part={name}", "stage=tune", *overrides])
    c = OmegaConf.to_object(cfg)
    if c.model.source not in ("tiny_task", "smollm2"):
        raise SystemExit(f"part {name}: run.py collects from a tiny task model or SmolLM2; model.source={c.model.source}")
    s, e = c.study, c.steer_eval
    model = "tiny" if c.model.source == "tiny_task" else "smollm2"
    return Part(name, model, e.family, c.model.errors, c.model.pretrain_steps, s.builds, s.n_train, s.control_scale,
                s.n_val, s.n_heldout, s.temperature, s.collect_batch, e.budget, e.max_new_tokens, e.max_task_tokens,
                c.tune.tie_weight, list(s.methods), list(s.budgets), list(s.curve_methods))


class Runner:
    """Runs ``localpref`` commands ``jobs`` at a time, one thread each; logs and times them."""

    def __init__(self, out: Path, jobs: int, quick: bool, trials: int | None = None, extra: list[str] = ()):
        self.out, self.jobs = out, jobs
        self.overrides, self.tune_overrides = (list(QUICK), list(QUICK_TUNE)) if quick else ([], [])
        self.overrides += list(extra)
        if trials is not None:  # the same for every method of the parts of this invocation
            self.tune_overrides += [f"hydra.sweeper.n_trials={trials}",
                                    f"hydra.sweeper.sampler.n_startup_trials={max(1, trials // 2)}"]
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def train(self, part: Part, *args: str) -> list[str]:
        """A ``localpref train -m`` command of the study (``stage=tune``: with the quick sweeper settings)."""
        tune = self.tune_overrides if "stage=tune" in args else []
        return ["train", "-m", "experiment=fewest_steers", f"part={part.name}", f"study.out={self.out}",
                *self.overrides, *tune, *args]

    def run(self, part: Part, stage: str, commands: list[tuple[str, list[str]]]) -> None:
        """Run (name, argv) commands side by side; a failed one stops the study with its log's tail."""
        if not commands:
            return
        start = time.time()
        with ThreadPoolExecutor(self.jobs) as pool:
            failed = [name for name, rc in zip([n for n, _ in commands], pool.map(self._one, commands)) if rc]
        with open(self.out / "timing.jsonl", "a") as f:
            f.write(json.dumps({"part": part.name, "stage": stage, "commands": len(commands), "jobs": self.jobs,
                                "seconds": round(time.time() - start, 1)}) + "\n")
        if failed:
            tail = (self.out / "logs" / f"{failed[0]}.log").read_text()[-3000:]
            raise SystemExit(f"{part.name} {stage}: {len(failed)} command(s) failed ({', '.join(failed)}):\n{tail}")

    def _one(self, command: tuple[str, list[str]]) -> int:
        name, argv = command
        shown = "localpref " + " ".join(argv)
        with open(self.out / "commands.log", "a") as f:
            f.write(shown + "\n")
        print(f"[{time.strftime('%H:%M:%S')}] {shown}", flush=True)
        # PYTHONPATH: the commands import this checkout's localpref, whatever else is installed
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
               "WANDB_MODE": os.environ.get("WANDB_MODE", "disabled"),
               "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with open(self.out / "logs" / f"{name}.log", "w") as log:
            return subprocess.run([sys.executable, "-m", "localpref.cli", *argv], cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT).returncode


# ------------------------------------------------------------------------------------------------
# Stages


def model_args(part: Part, build: int) -> list[str]:
    """Which model: the family's tiny task model in the part's regime, build ``build``; or SmolLM2
    (one build: ``build`` is only the replicate's index, of its train prompts and seed)."""
    if part.model != "tiny":
        return ["--family", part.family, "--model", part.model]
    return ["--family", part.family, "--model", "tiny", "--errors", part.errors, "--build", str(build),
            *(["--pretrain-steps", str(part.pretrain_steps)] if part.pretrain_steps else [])]


def stage_build(runner: Runner, part: Part) -> None:
    """Each build (cached: a built one is found at once), then ``OUT/<part>/models.json``: each
    build's size, final pretraining loss and wall-clock (its ``pretrain.json``). A part on SmolLM2
    has nothing to build."""
    from localpref.tasks.pretrain import default_spec, task_model_dir

    if part.model != "tiny":
        return
    runner.run(part, "build", [(f"{part.name}-build{b}", ["steer", "pretrain", *model_args(part, b)[:2],
                                                          *model_args(part, b)[4:]])
                               for b in range(part.builds)])
    info = []
    for b in range(part.builds):
        folder = task_model_dir(part.family, default_spec(part.family, part.errors, b, part.pretrain_steps), build=False)
        p = json.loads((folder / "pretrain.json").read_text())
        info.append({"build": b, "folder": folder.name, "parameters": p["parameters"], "steps": p["spec"]["steps"],
                     "seconds": p["seconds"], "final_loss": p["loss"][-1]})
    (runner.out / part.name).mkdir(exist_ok=True)
    (runner.out / part.name / "models.json").write_text(json.dumps(info, indent=1))


def collection(out: Path, part: Part, name: str) -> Path:
    return out / part.name / "collect" / f"{name}.jsonl"


def stage_collect(runner: Runner, part: Part) -> None:
    """Per build: the control's train prompts (the methods' are their first n_train), val, heldout."""
    from localpref.tasks import get_family

    family = get_family(part.family)
    n_control = min(part.control_scale * part.n_train, len(family.tasks("train")))
    commands = []
    for b in range(part.builds):
        for split, n, name, task_seed in (("train", n_control, f"train_control_b{b}", b),
                                          ("val", part.n_val, f"val_b{b}", 0), ("heldout", part.n_heldout, f"heldout_b{b}", 0)):
            n = n if n is not None else len(family.tasks(split))
            out = collection(runner.out, part, name)
            if out.exists() and len(out.read_text().splitlines()) == n:
                continue  # collected (a partial file is continued: steer collect skips finished prompts)
            out.parent.mkdir(parents=True, exist_ok=True)
            commands.append((f"{part.name}-collect-{name}", [
                "steer", "collect", *model_args(part, b), "--split", split, "--n", str(n), "--task-seed", str(task_seed),
                "--temperature", str(part.temperature), "--budget", str(part.steer_budget),
                "--max-new-tokens", str(part.max_new_tokens), "--batch-size", str(part.collect_batch), "--out", str(out),
                *(["--max-task-tokens", str(part.max_task_tokens)] if part.max_task_tokens else [])]))
    runner.run(part, "collect", commands)
    for b in range(part.builds):  # the methods' collection: the first n_train trajectories of the control's
        lines = collection(runner.out, part, f"train_control_b{b}").read_text().splitlines()
        collection(runner.out, part, f"train_b{b}").write_text("".join(x + "\n" for x in lines[:part.n_train]))


def finished(run_dir: Path) -> bool:
    """The run logged its final steering evaluation."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.exists() and '"eval/steer/steers_to_verify"' in metrics.read_text()


def builds_to_run(out: Path, part: Part, stage: str, method: str, share: float | None) -> list[int]:
    sub = "b{}" if stage == "base" else "b{}_c" + str(share)
    return [b for b in range(part.builds) if not finished(out / part.name / "runs" / stage / method / sub.format(b))]


def stage_base(runner: Runner, part: Part) -> None:
    todo = builds_to_run(runner.out, part, "base", "base", None)
    if todo:
        runner.run(part, "base", [(f"{part.name}-base", runner.train(
            part, "method=base", "stage=base", f"model.build={','.join(map(str, todo))}"))])


def stage_tune(runner: Runner, part: Part) -> None:
    commands = [(f"{part.name}-tune-{m}", runner.train(part, f"method={m}", "stage=tune")) for m in part.methods
                if not (runner.out / part.name / "runs" / "tune" / m / "optimization_results.yaml").exists()]
    runner.run(part, "tune", commands)


def trials(out: Path, part: Part, method: str) -> list[dict]:
    """Each tuning trial of ``method``: its overrides, val steers to verify and val KL."""
    import yaml

    rows = []
    for run_dir in sorted((out / part.name / "runs" / "tune" / method).glob("t*")):
        if not finished(run_dir):
            continue
        final = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"eval/' in x][-1]
        overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        params = [o for o in overrides if o.split("=")[0] in SEARCHED]
        rows.append({"trial": int(run_dir.name[1:]), "params": params, "stv": final["eval/steer/steers_to_verify"],
                     "kl": final["eval/drift/kl"]})
    return sorted(rows, key=lambda r: r["trial"])


SEARCHED = ("trainer.lr", "trainer.epochs", "loss.beta", "loss.sft_weight", "loss.params.ul_weight")
MOVED = 0.01  # val KL (nats per token) below which a tuned model has not moved from its base


def best_params(out: Path, part: Part, method: str) -> list[str]:
    """The tuned settings: Optuna's best trial (``optimization_results.yaml``), as overrides."""
    import yaml

    results = yaml.safe_load((out / part.name / "runs" / "tune" / method / "optimization_results.yaml").read_text())
    return [f"{k}={v}" for k, v in sorted(results["best_params"].items())]


def stage_final(runner: Runner, part: Part) -> None:
    commands = []
    for m in part.methods:
        shares = part.budgets if m in part.curve_methods else [1.0]
        for share in [None] if m == "control" else shares:
            todo = builds_to_run(runner.out, part, "final", m, share)
            if todo:
                budget = [] if share is None else [f"data.cost_share={share}"]
                commands.append((f"{part.name}-final-{m}-c{share}", runner.train(
                    part, f"method={m}", "stage=final", f"model.build={','.join(map(str, todo))}", *budget,
                    *best_params(runner.out, part, m))))
    runner.run(part, "final", commands)


def tuned_trial(rows: list[dict], tie_weight: float) -> dict:
    """The trial Optuna reports best: the lowest objective (steers to verify + tie_weight x KL), the
    first of equal ones."""
    return min(rows, key=lambda t: (t["stv"] + tie_weight * t["kl"], t["trial"]))


def matched_choice(out: Path, part: Part) -> dict:
    """KL* (the median val KL of the tuned trials of the methods that moved, the control left out;
    the docstring's stage 6) and each method's trial at equal drift: the fewest val steers to verify
    (then the lower KL) among its trials with val KL <= KL*, else its lowest-KL trial."""
    table = {m: trials(out, part, m) for m in part.methods}
    tuned = {m: tuned_trial(table[m], part.tie_weight) for m in part.methods}
    kls = [tuned[m]["kl"] for m in part.methods if m != "control"]
    kl_star = statistics.median([k for k in kls if k >= MOVED] or kls)
    choice = {}
    for m in part.methods:
        under = [t for t in table[m] if t["kl"] <= kl_star]
        pick = min(under, key=lambda t: (t["stv"], t["kl"])) if under else min(table[m], key=lambda t: t["kl"])
        choice[m] = {**pick, "under_cap": bool(under), "tuned": pick["trial"] == tuned[m]["trial"]}
    return {"kl_star": kl_star, "moved": MOVED, "methods": choice}


def stage_matched(runner: Runner, part: Part) -> None:
    import shutil

    path = runner.out / part.name / "matched.json"
    before = json.loads(path.read_text())["methods"] if path.exists() else {}
    choice = matched_choice(runner.out, part)
    path.write_text(json.dumps(choice, indent=1))
    commands = []
    for m, c in choice["methods"].items():
        if m in before and before[m]["trial"] != c["trial"]:  # chosen anew: its earlier runs are stale
            shutil.rmtree(runner.out / part.name / "runs" / "matched" / m, ignore_errors=True)
        if c["tuned"]:
            continue  # its final runs are the matched ones
        share = None if m == "control" else 1.0  # the control has no budget (its method file says so)
        todo = builds_to_run(runner.out, part, "matched", m, share)
        if todo:
            budget = [] if share is None else [f"data.cost_share={share}"]
            commands.append((f"{part.name}-matched-{m}", runner.train(
                part, f"method={m}", "stage=final", "study.stage=matched", f"model.build={','.join(map(str, todo))}",
                *budget, *sorted(c["params"]))))
    runner.run(part, "matched", commands)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every code path in minutes")
    parser.add_argument("--parts", nargs="+", default=None,
                        help=f"parts in order (default: {' '.join(PARTS)}; --quick: {' '.join(QUICK_PARTS)})")
    parser.add_argument("--jobs", type=int, default=2, help="commands side by side (one thread each)")
    parser.add_argument("--stages", nargs="+", default=["build", "collect", "base", "tune", "final", "matched"],
                        choices=["build", "collect", "base", "tune", "final", "matched"])
    parser.add_argument("--trials", type=int, default=None,
                        help="Optuna trials per method (default: conf/stage/tune.yaml's; half of them random)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every train command, e.g. study.n_frontier=150")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    settings = json.loads(settings_file.read_text()) if settings_file.exists() else {"quick": args.quick, "parts": {}}
    if settings["quick"] != args.quick:
        raise SystemExit(f"{out} holds a {'quick' if settings['quick'] else 'full'} study: use another --out")
    runner = Runner(out, args.jobs, args.quick, args.trials, args.set)
    start = time.time()
    for name in args.parts or (QUICK_PARTS if args.quick else PARTS):
        part = compose_part(name, runner.overrides)
        settings["parts"][name] = {**asdict(part), "overrides": runner.overrides + runner.tune_overrides}
        settings_file.write_text(json.dumps(settings, indent=1))
        stages = {"build": stage_build, "collect": stage_collect, "base": stage_base, "tune": stage_tune,
                  "final": stage_final, "matched": stage_matched}
        for stage in args.stages:
            stages[stage](runner, part)
    with open(out / "timing.jsonl", "a") as f:
        f.write(json.dumps({"part": "all", "stage": "all", "seconds": round(time.time() - start, 1)}) + "\n")
    print(f"done in {(time.time() - start) / 60:.1f} min: {out}")


if __name__ == "__main__":
    sys.exit(main())
