"""Throughput and peak memory of localpref's layouts against TRL's DPOTrainer, measured in one run.

    .venv/bin/python experiments/throughput/bench.py              # SmolLM2-135M + LoRA and a tiny Llama
    .venv/bin/python experiments/throughput/bench.py --headline   # SmolLM2 only, the issue's ratios, 2 steps
    .venv/bin/python experiments/throughput/bench.py --quick      # tiny Llama, 1 step: a smoke run

For each model and data set (DeFacto steers; synthetic trajectories of k steers, see data.py) it
runs, each in a fresh process (``workers.py``) with the same micro-batch, max length, LoRA rank
and target modules: TRL's ``DPOTrainer`` (reference = adapters disabled), and localpref's
``unpacked``, ``pairs`` and (on trajectories) ``trees`` layouts (reference = adapters disabled,
the localized loss). Then it prints seconds per optimizer step, steers/s, peak RSS and the ratios
against TRL and against ``unpacked``, and writes ``<out>/throughput[-quick|-headline].json`` and ``.png``.
``--cases`` keeps only the named (data set, system) cases; ``--headline`` is the cases the
issue's targets compare, on SmolLM2 with 2 measured steps each (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TINY = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=256)  # SmolLM2 tokenizer, v=49152
# The targets' cases: TRL, unpacked and pairs on DeFacto steers (pairs >= 6x TRL, >= 1.8x unpacked;
# memory <= 0.5x TRL), and unpacked, pairs and trees on trajectories (trees >= k/2 x pairs).
# pairs+heap: pairs with glibc's default allocator (no return_freed_memory): the speed/memory trade.
HEADLINE = ("defacto:trl,defacto:unpacked,defacto:pairs,defacto:pairs+heap,"
            "trajectory:unpacked,trajectory:pairs,trajectory:trees")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny Llama only, 1 measured step, no trl+mmap or pairs+heap")
    p.add_argument("--models", default="smollm2,tiny", help="comma-separated: smollm2, tiny")
    p.add_argument("--datasets", default="defacto,trajectory")
    p.add_argument("--systems", default="trl,trl+mmap,unpacked,pairs,pairs+heap,trees",
                   help="trl+mmap: TRL with localpref's allocator setting (memory.return_freed_memory); "
                        "pairs+heap: pairs without it (glibc's default); both DeFacto only")
    p.add_argument("--cases", default=None,
                   help="comma-separated DATASET:SYSTEM (e.g. defacto:trl,trajectory:trees); default: every "
                        "combination of --datasets and --systems")
    p.add_argument("--headline", action="store_true",
                   help=f"SmolLM2 only, 2 measured steps, --cases {HEADLINE}")
    p.add_argument("--steps", type=int, default=4, help="measured optimizer steps per system")
    p.add_argument("--warmup", type=int, default=1, help="optimizer steps before timing starts")
    p.add_argument("--micro-batch-size", type=int, default=4, help="pairs per step (one micro-batch)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--k", type=int, default=4, help="steers per trajectory")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads of every worker")
    p.add_argument("--defacto", type=Path, default=REPO.parent / "shared" / "data" / "defacto")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "throughput")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one measurement (JSON spec)
    args = p.parse_args()
    if args.quick and args.headline:
        p.error("--quick and --headline are two different runs: pick one")
    if args.quick:
        args.models, args.steps = "tiny", 1
        args.systems = args.systems.replace("trl+mmap,", "").replace("pairs+heap,", "")
    if args.headline:
        args.models, args.steps, args.cases = "smollm2", 2, HEADLINE
    args.name = "throughput" + ("-quick" if args.quick else "-headline" if args.headline else "")
    if args.cases is not None:
        args.cases = [tuple(case.split(":")) for case in args.cases.split(",")]
        bad = [case for case in args.cases if len(case) != 2 or case[0] not in ("defacto", "trajectory")
               or case[1] not in ("trl", "trl+mmap", "unpacked", "pairs", "pairs+heap", "trees")]
        if bad:
            p.error(f"--cases takes DATASET:SYSTEM with DATASET defacto|trajectory and SYSTEM "
                    f"trl|trl+mmap|unpacked|pairs|pairs+heap|trees; got {bad}")
        args.datasets = ",".join(sorted({data for data, _ in args.cases}))
        args.systems = ",".join(dict.fromkeys(system for _, system in args.cases))
    return args


def wanted(args, data: str, system: str) -> bool:
    """Whether (data set, system) is measured: a named case, or else any sensible combination."""
    if args.cases is not None:
        return (data, system) in args.cases
    # flat steers: trees is pairs; the allocator setting once (on DeFacto) is enough
    return not ((system == "trees" and data != "trajectory")
                or (system in ("trl+mmap", "pairs+heap") and data != "defacto"))


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
    sys.path.insert(0, str(HERE))
    import workers

    result = workers.run_trl(spec) if spec["system"].startswith("trl") else workers.run_localpref(spec)
    print(json.dumps(result))


def data_files(args, work: Path) -> dict[str, Path]:
    sys.path.insert(0, str(HERE))
    from data import defacto_file, trajectory_file

    n = (args.warmup + args.steps) * args.micro_batch_size
    files = {}
    if "defacto" in args.datasets:
        files["defacto"] = defacto_file(args.defacto, work / "defacto.jsonl", n)
    if "trajectory" in args.datasets:
        files["trajectory"] = trajectory_file(args.defacto, work / "trajectory.jsonl",
                                              generations=-(-n // args.k), k=args.k)
    return files


def report(results: list[dict], k: int) -> list[str]:
    """Lines of the table and the ratios (to TRL, to unpacked; trees to pairs against k/2)."""
    lines = [f"{'model':8} {'data':10} {'system':9} {'s/step':>8} {'steers/s':>9} {'peak RSS GB':>11} "
             f"{'x TRL':>6} {'x unpacked':>10} {'mem/TRL':>8} {'tokens':>8}"]
    for r in results:
        same = {x["system"]: x for x in results if x["model"] == r["model"] and x["dataset"] == r["dataset"]}
        vs = lambda s, key="steers_per_s": r[key] / same[s][key] if s in same else float("nan")  # noqa: E731
        lines.append(f"{r['model']:8} {r['dataset']:10} {r['system']:9} {statistics.median(r['step_seconds']):8.2f} "
                     f"{r['steers_per_s']:9.3f} {r['peak_rss'] / 1e9:11.2f} {vs('trl'):6.2f} {vs('unpacked'):10.2f} "
                     f"{vs('trl', 'peak_rss'):8.2f} {r.get('tokens', 0):8d}")
    for r in results:
        if r["system"] == "trees":
            pairs = next((x for x in results if x["system"] == "pairs" and x["model"] == r["model"]
                          and x["dataset"] == r["dataset"]), None)
            if pairs:
                lines.append(f"trees / pairs ({r['model']}, {r['dataset']}, k={k}): "
                             f"{r['steers_per_s'] / pairs['steers_per_s']:.2f}x (target >= k/2 = {k / 2:.1f}x)")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted({(r["model"], r["dataset"]) for r in results})
    fig, axes = plt.subplots(2, len(cases), figsize=(4 * len(cases), 6), squeeze=False)
    for c, (model, data) in enumerate(cases):
        rows = [r for r in results if (r["model"], r["dataset"]) == (model, data)]
        names = [r["system"] for r in rows]
        axes[0, c].bar(names, [r["steers_per_s"] for r in rows], color="tab:blue")
        axes[0, c].set_title(f"{model} / {data}")
        axes[0, c].set_ylabel("steers / s")
        axes[1, c].bar(names, [r["peak_rss"] / 1e9 for r in rows], color="tab:orange")
        axes[1, c].set_ylabel("peak RSS (GB)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / args.name.replace("throughput", "data")  # data[-quick|-headline]
    files = data_files(args, work)
    cases = [(model, data, path, system) for model in args.models.split(",") for data, path in files.items()
             for system in args.systems.split(",") if wanted(args, data, system)]
    print(f"{len(cases)} cases: " + ", ".join(f"{m}/{d}/{s}" for m, d, _, s in cases), flush=True)
    results = []
    for model, data, path, system in cases:
        spec = dict(system=system, layout=system.split("+")[0], model=model, dataset=data, data=str(path), threads=args.threads,
                    micro_batch_size=args.micro_batch_size, max_length=args.max_length,
                    steps=args.steps, warmup=args.warmup, **({"tiny": TINY} if model == "tiny" else {}))
        result = {**spec, **run_worker(spec, args.threads)}
        print(f"{model} {data} {system}: {statistics.median(result['step_seconds']):.2f} s/step, "
              f"{result['steers_per_s']:.3f} steers/s, peak RSS {result['peak_rss'] / 1e9:.2f} GB", flush=True)
        results.append(result)
    lines = report(results, args.k)
    print("\n".join(lines))
    name = args.name
    (args.out / f"{name}.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results, "report": lines}, indent=1))
    plot(results, args.out / f"{name}.png")
    print(f"wrote {args.out / name}.json and .png")


if __name__ == "__main__":
    main()
