"""Throughput and peak memory of localpref's layouts against TRL's DPOTrainer, measured in one run.

    .venv/bin/python experiments/throughput/bench.py              # SmolLM2-135M + LoRA and a tiny Llama
    .venv/bin/python experiments/throughput/bench.py --headline   # SmolLM2 only, the issue's ratios, 2 rounds
    .venv/bin/python experiments/throughput/bench.py --quick      # tiny Llama, 1 round: a smoke run

For each model and data set (DeFacto steers; synthetic trajectories of k steers, see data.py) it
measures cases (data set, system): TRL's ``DPOTrainer`` (reference = adapters disabled) and
localpref's ``unpacked``, ``pairs`` and (on trajectories) ``trees`` layouts (reference = adapters
disabled, the localized loss), each at a precision, an allocator setting and (packed layouts) a
token budget per micro-batch: ``cases.py`` has the system names (``pairs@bf16@tpm=2048``), all with
the same micro-batch, max length, LoRA rank and target modules.

The cases are interleaved: round ``k`` (``--steps`` rounds) runs every case once, in an order
rotated by ``k``, each run a fresh process (``workers.py``; so only one model is in memory at a
time, and its peak RSS is its own) that runs ``--warmup`` untimed steps and then times optimizer
step ``warmup + k``: the same pairs in every case of the round. It prints per case the median
seconds per step over the rounds and their range, steers/s, peak RSS, tokens per step and the
padding share, the ratios against TRL's fastest precision and against the same base at fp32 with no
option; and writes ``<out>/throughput[-quick|-headline].json`` (after every round: a stopped run
keeps what it measured) and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from cases import (DATASETS, GRAMMAR, compare, parse_system, report, round_order, summarize,  # noqa: E402
                   with_precisions)

TINY = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256)  # SmolLM2 tokenizer, v=49152
SYSTEMS = "trl,trl@release,unpacked,pairs,pairs@release,pairs@tpm=2048,trees"
# The targets' cases: TRL, unpacked and pairs on DeFacto steers (pairs >= 6x TRL, >= 1.8x unpacked;
# memory <= 0.5x TRL), and unpacked, pairs and trees on trajectories (trees >= k/2 x pairs); with
# the precision and padding axes on DeFacto: TRL and pairs in bf16, pairs cut by a token budget.
# pairs@release: localpref's other allocator setting (trainer.cpu_allocator), the speed/memory trade.
HEADLINE = ("defacto:trl,defacto:trl@bf16,defacto:unpacked,defacto:pairs,defacto:pairs@bf16,defacto:pairs@release,"
            "defacto:pairs@tpm=2048,trajectory:unpacked,trajectory:pairs,trajectory:trees")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=GRAMMAR)
    p.add_argument("--quick", action="store_true", help="tiny Llama only, 1 round, no @release systems")
    p.add_argument("--models", default="smollm2,tiny", help="comma-separated: smollm2, tiny")
    p.add_argument("--datasets", default="defacto,trajectory")
    p.add_argument("--systems", default=SYSTEMS,
                   help="comma-separated SYSTEM names (see below); @release: localpref's other allocator "
                        "setting (trainer.cpu_allocator), DeFacto only unless named in --cases")
    p.add_argument("--precisions", default="fp32,bf16",
                   help="comma-separated: each system (or case) that names no precision runs at each of these")
    p.add_argument("--cases", default=None,
                   help="comma-separated DATASET:SYSTEM (e.g. defacto:trl,trajectory:trees@bf16); default: every "
                        "sensible combination of --datasets and --systems")
    p.add_argument("--headline", action="store_true",
                   help=f"SmolLM2 only, 2 rounds, --precisions fp32, --cases {HEADLINE}")
    p.add_argument("--steps", type=int, default=4, help="rounds: measured optimizer steps per case, one per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps before each measured one")
    p.add_argument("--micro-batch-size", type=int, default=4, help="pairs per step (one micro-batch without tpm)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--k", type=int, default=4, help="steers per trajectory")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every worker")
    p.add_argument("--defacto", type=Path, default=REPO.parent / "shared" / "data" / "defacto")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "throughput")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measurement (JSON spec)
    args = p.parse_args()
    if args.worker:
        return args
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps takes 1 or more rounds, --warmup 0 or more steps")
    if args.quick and args.headline:
        p.error("--quick and --headline are two different runs: pick one")
    if args.quick:
        args.models, args.steps = "tiny", 1
        args.systems = ",".join(s for s in args.systems.split(",") if "release" not in s)
    if args.headline:
        args.models, args.steps, args.cases, args.precisions = "smollm2", 2, HEADLINE, "fp32"
    args.name = "throughput" + ("-quick" if args.quick else "-headline" if args.headline else "")
    precisions = args.precisions.split(",") if args.precisions else None
    try:
        args.systems = with_precisions(args.systems.split(","), precisions)
        if args.cases is not None:
            args.cases = [tuple(case.split(":")) for case in with_precisions(args.cases.split(","), precisions)]
    except ValueError as err:
        p.error(str(err))
    if args.cases is not None:
        bad = [case for case in args.cases if len(case) != 2 or case[0] not in DATASETS]
        if bad:
            p.error(f"--cases takes DATASET:SYSTEM with DATASET {'|'.join(DATASETS)}; got {bad}")
        args.datasets = ",".join(sorted({data for data, _ in args.cases}))
        args.systems = list(dict.fromkeys(system for _, system in args.cases))
    return args


def wanted(args, data: str, system: str) -> bool:
    """Whether (data set, system) is measured: a named case, or else any sensible combination."""
    if args.cases is not None:
        return (data, system) in args.cases
    # flat steers: trees is pairs; the other allocator setting once (on DeFacto) is enough
    s = parse_system(system)
    return not ((s.base == "trees" and data != "trajectory") or (s.allocator != "auto" and data != "defacto"))


def run_worker(spec: dict, threads: int) -> dict:
    """One measurement in a fresh process (so that its peak RSS is its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(HERE / "bench.py"), "--worker", json.dumps(spec)],
                          env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec['system']} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_main(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import workers

    print(json.dumps(workers.run(spec)))


def data_files(args, work: Path) -> dict[str, Path]:
    from data import defacto_file, trajectory_file

    n = (args.warmup + args.steps) * args.micro_batch_size  # the pairs of steps 0 .. warmup + steps - 1
    files = {}
    if "defacto" in args.datasets:
        files["defacto"] = defacto_file(args.defacto, work / "defacto.jsonl", n)
    if "trajectory" in args.datasets:
        files["trajectory"] = trajectory_file(args.defacto, work / "trajectory.jsonl",
                                              generations=-(-n // args.k), k=args.k)
    return files


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys((r["model"], r["dataset"]) for r in results))
    most = max(sum((r["model"], r["dataset"]) == case for r in results) for case in cases)
    fig, axes = plt.subplots(2, len(cases), figsize=(max(4, 0.6 * most) * len(cases), 7), squeeze=False)
    for c, (model, data) in enumerate(cases):
        rows = [r for r in results if (r["model"], r["dataset"]) == (model, data)]
        names = [r["system"] for r in rows]
        low = [r["steers_per_s"] - r["micro_batch_size"] / r["max_seconds"] for r in rows]  # the rounds' range
        high = [r["micro_batch_size"] / r["min_seconds"] - r["steers_per_s"] for r in rows]
        axes[0, c].bar(names, [r["steers_per_s"] for r in rows], yerr=[low, high], color="tab:blue")
        axes[0, c].set_title(f"{model} / {data}")
        axes[0, c].set_ylabel("steers / s (median, range)")
        axes[1, c].bar(names, [r["peak_rss"] / 1e9 for r in rows], color="tab:orange")
        axes[1, c].set_ylabel("peak RSS (GB)")
        for ax in axes[:, c]:
            ax.tick_params(axis="x", labelrotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def results_of(cases: list[dict], runs: dict[int, list[dict]]) -> list[dict]:
    """Each case's figures (``cases.summarize``) and ratios (``cases.compare``) from its runs so far."""
    results = [{**case, **summarize(runs[i], case["micro_batch_size"]), "rounds": runs[i]}
               for i, case in enumerate(cases) if runs[i]]
    compare(results)
    return results


def write_json(path: Path, args, rounds_done: int, results: list[dict], report_lines: list[str] | None = None):
    """Every measurement so far (NaN, a missing reference, written as null: strict JSON)."""
    def strict(x):
        if isinstance(x, float) and math.isnan(x):
            return None
        return {k: strict(v) for k, v in x.items()} if isinstance(x, dict) else (
            [strict(v) for v in x] if isinstance(x, list) else x)

    path.write_text(json.dumps(strict({"args": {key: str(value) for key, value in vars(args).items()},
                                       "rounds_done": rounds_done, "results": results, "report": report_lines}),
                               indent=1))


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / args.name.replace("throughput", "data")  # data[-quick|-headline]
    files = data_files(args, work)
    cases = [dict(system=system, model=model, dataset=data, data=str(path), threads=args.threads,
                  micro_batch_size=args.micro_batch_size, max_length=args.max_length, warmup=args.warmup,
                  **({"tiny": TINY} if model == "tiny" else {}))
             for model in args.models.split(",") for data, path in files.items()
             for system in args.systems if wanted(args, data, system)]
    print(f"{len(cases)} cases x {args.steps} rounds: "
          + ", ".join(f"{c['model']}/{c['dataset']}/{c['system']}" for c in cases), flush=True)
    runs: dict[int, list[dict]] = {i: [] for i in range(len(cases))}
    path = args.out / f"{args.name}.json"
    for k in range(args.steps):
        for i in round_order(len(cases), k):
            case = cases[i]
            out = run_worker({**case, "measure": [args.warmup + k]}, args.threads)
            runs[i].append(out)
            print(f"round {k + 1}/{args.steps} {case['model']} {case['dataset']} {case['system']}: "
                  f"{sum(out['step_seconds']):.2f} s, peak RSS {out['peak_rss'] / 1e9:.2f} GB", flush=True)
        results = results_of(cases, runs)
        write_json(path, args, k + 1, results)
    lines = report(results, args.k)
    print("\n".join(lines))
    write_json(path, args, args.steps, results, lines)
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


if __name__ == "__main__":
    main()
