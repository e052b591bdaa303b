"""SFT vs DPO vs the localized loss: final held-out metrics per method, mean and std over seeds.

    localpref train -m experiment=ablation_methods            # writes multirun/<date>/<time>/loss=...,seed=...
    python experiments/ablation_methods/analyze.py multirun/<date>/<time>

Reads each run's config.yaml (which method) and metrics.jsonl (the last eval/ row) and writes
``results.csv`` (one row per run) and ``results.md`` (mean +- std per method) into the sweep folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import yaml

METRICS = ["eval/span/logp_accuracy", "eval/span/reward_accuracy", "eval/span/nll", "eval/drift/nll",
           "eval/drift/kl"]


def method_of(cfg: dict) -> str:
    """The loss group's name, recovered from its values (sft | dpo | localized)."""
    loss = cfg["loss"]
    if loss["objective"] == "sft":
        return "sft"
    return "localized" if loss["mask"] == "span" else "dpo"


def collect(sweep: Path) -> list[dict]:
    runs = []
    for metrics in sorted(sweep.rglob("metrics.jsonl")):
        cfg = yaml.safe_load((metrics.parent / "config.yaml").read_text())
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        evals = [r for r in rows if METRICS[0] in r]
        if not evals:
            continue  # a run that has not finished its first evaluation
        last = evals[-1]
        runs.append({"run": metrics.parent.name, "method": method_of(cfg), "seed": cfg["seed"],
                     "step": last["step"], **{m: last.get(m, float("nan")) for m in METRICS}})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="the multirun folder of the sweep")
    args = parser.parse_args()
    runs = collect(args.sweep)
    if not runs:
        raise SystemExit(f"no finished runs under {args.sweep}")
    with open(args.sweep / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)
    lines = ["| method | runs | " + " | ".join(m.removeprefix("eval/") for m in METRICS) + " |",
             "|---" * (len(METRICS) + 2) + "|"]
    for method in ("sft", "dpo", "localized"):
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        cells = []
        for m in METRICS:
            values = [r[m] for r in mine]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {std:.3f}")
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    (args.sweep / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
