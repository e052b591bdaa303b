"""Tables, figures and numbers of the paper, from the runs of ``run.py`` only.

    python experiments/fewest_steers/analyze.py OUT [OUT ...]   # OUT -> results/summary.json -> paper/generated/
    python experiments/fewest_steers/analyze.py --render-only   # paper/generated/ from the committed summary

Two steps. ``summarize`` reads each part's run folders (``<OUT>/<part>/runs/<stage>/<method>/<run>/``:
``config.yaml``, ``metrics.jsonl``, ``steer_eval*.jsonl``), its collections, builds, tuning
results and ``timing.jsonl`` into one compact, committed file, ``results/summary.json``: per run
its settings, final metrics and the steers to verify of every held-out prompt (one digit each).
``render`` turns that file alone into ``paper/generated/``: each table as Markdown and LaTeX from
one pandas data frame (``write_table``), figures as PDF with their data as CSV, and
``numbers.tex``, one macro per number the prose quotes. Rendering is deterministic: a test
re-renders the committed summary and compares.

Statistics (``localpref.stats``). The replicates are the builds of a part's task model (each its
own pretraining seed, train prompts and steers) and the clusters of held-out prompts (prompts that
share answer items: a window of the number line, a topic); every interval resamples both, never
single prompts (``crossed_bootstrap``: builds x clusters, 2000 resamples, 95%). A comparison of
two methods is the same bootstrap of their difference on the same builds and prompts, beside an
exact sign-flip permutation test over the builds' means. The headline is steers to verify
(``localpref.steering``: steers per held-out prompt, one not verified within the budget counting
budget + 1: every prompt counts). **Damage** is the share of held-out prompts the build's base
model passed, among those where the family's rule cannot fire, that the trained model no longer
passes. KL and span NLL (on held-out steers, one value per run) get a percentile bootstrap over
builds.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # kernels/ has no __init__.py: the repository root shadows nothing (kernels/README.md)
from localpref.stats import bootstrap_interval, cluster_bootstrap, crossed_bootstrap, paired_permutation_test  # noqa: E402

SUMMARY = HERE / "results" / "summary.json"
GENERATED = REPO / "paper" / "generated"
ORDER = ["base", "sft_span", "sft_rewrite", "dpo_rewrite", "localized", "rpo", "dpop", "cal_dpo",
         "unlikelihood", "orpo", "step_dpo", "control"]
LABELS = {"base": "base model", "sft_span": "1 SFT, corrected spans", "sft_rewrite": "2 SFT, full rewrites",
          "dpo_rewrite": "3 DPO, output vs rewrite", "localized": "4 localized DPO", "rpo": "5 RPO (DPO + tuned NLL)",
          "dpop": "6 DPOP", "cal_dpo": "7 Cal-DPO", "unlikelihood": "8 unlikelihood",
          "orpo": "9 ORPO", "step_dpo": "10 Step-DPO", "control": "control: SFT, rewrites, no budget"}
READS_REJECTED = {"dpo_rewrite", "localized", "rpo", "step_dpo", "dpop", "cal_dpo", "unlikelihood", "orpo"}
PARAMS = {"trainer.lr": "lr", "trainer.epochs": "epochs", "loss.beta": "beta", "loss.sft_weight": "alpha",
          "loss.params.ul_weight": "alpha"}
METRICS = ["eval/drift/kl", "eval/drift/nll", "eval/span/nll", "eval/span/logp_accuracy"]


# ------------------------------------------------------------------------------------------------
# Step 1: OUT -> summary.json


def _final_eval(run_dir: Path) -> dict[str, float] | None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    evals = [r for r in rows if "eval/steer/steers_to_verify" in r]
    if not evals:
        return None
    data = next((r for r in rows if "data/train_pairs" in r), {})
    return {**{k: v for k, v in data.items() if k.startswith(("data/", "trainer/"))}, **evals[-1]}


def _records(path: Path) -> list[dict]:
    from localpref.steering import read_records

    return sorted(read_records(path), key=lambda r: r["id"]) if path.exists() else []


def _digits(records: list[dict], key) -> str:
    return "".join(str(int(key(r))) for r in records)


def _prompts(records: list[dict]) -> dict[str, Any]:
    """The prompts of a split as the runs steered them (id order): ids, clusters, sub-families, and
    whether the family's rule can fire on each (``rule_fires``)."""
    from localpref.tasks import get_family

    family = get_family(records[0]["meta"]["task"]["family"])
    tasks = [r["meta"]["task"] for r in records]
    return {"ids": [r["id"] for r in records], "clusters": [t.get("cluster", r["id"]) for r, t in zip(records, tasks)],
            "subfamilies": [t.get("subfamily", "seen") for t in tasks],
            "fires": "".join(str(int(family.rule_fires(t))) for t in tasks)}


def first_error_kind(record: dict) -> str:
    """How the unsteered answer first errs: "none", "systematic" (the family's rule) or "other"."""
    from localpref.tasks import get_family

    task, text = record["meta"]["task"], record["meta"]["original"]
    family = get_family(task["family"])
    k = family.first_error_unit(task, text, final=True)
    return "none" if k is None else "systematic" if family.systematic_error(task, text, k) else "other"


def _run(run_dir: Path, part: dict) -> dict[str, Any] | None:
    """One run: its settings, final metrics, and per held-out prompt its steers to verify."""
    import yaml

    from localpref.steering import steers_to_verify

    final = _final_eval(run_dir)
    if final is None:
        return None
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    params = {PARAMS[k]: float(v) for k, v in (o.split("=", 1) for o in overrides) if k in PARAMS}
    run = {"stage": cfg["study"]["stage"], "method": cfg["study"]["method"], "build": cfg["model"]["build"],
           "share": cfg["data"]["cost_share"], "name": run_dir.name, "params": params,
           "metrics": {k: final.get(k) for k in METRICS},
           "steers": {"val": final.get("eval/steer/steers_to_verify") if cfg["steer_eval"]["split"] == "val" else None,
                      "heldout_mean": final.get("eval/steer_heldout/steers_to_verify",
                                                final.get("eval/steer/steers_to_verify"))},
           "data": {"pairs": final.get("data/train_pairs"), "chars": final.get("data/collected/chars"),
                    "budget": final.get("data/collected/budget"), "steps": final.get("trainer/max_steps")}}
    if run["stage"] != "tune":  # final, matched, base: every held-out prompt, kept per prompt
        records = _records(run_dir / "steer_eval.jsonl")
        run["stv"] = _digits(records, steers_to_verify)
        run["capped"] = _digits(records, lambda r: r["meta"]["stopped"] == "token_cap" and not r["verified"])
        if run["stage"] == "base":
            run["first_errors"] = "".join({"none": "-", "systematic": "s", "other": "o"}[first_error_kind(r)]
                                          for r in records)
            part.setdefault("prompts", _prompts(records))
    return run


def _collection(path: Path) -> dict[str, float]:
    from localpref.data.collected import trajectory_cost
    from localpref.data.load import iter_jsonl

    records = [r for _, r in iter_jsonl(path)]
    return {"prompts": len(records), "steers": sum(len([s for s in r["steps"] if "corrected" in s]) for r in records),
            "chars": sum(trajectory_cost(r, "steers") for r in records),
            "passed": sum(r["meta"]["first_error"] is None for r in records)}


def summarize_part(out: Path, name: str, settings: dict) -> dict[str, Any]:
    import yaml

    d = out / name
    part: dict[str, Any] = {"settings": settings, "models": json.loads((d / "models.json").read_text())
                            if (d / "models.json").exists() else []}
    part["collections"] = [{"build": b, "train": _collection(d / "collect" / f"train_b{b}.jsonl"),
                            "control": _collection(d / "collect" / f"train_control_b{b}.jsonl")}
                           for b in range(settings["builds"]) if (d / "collect" / f"train_b{b}.jsonl").exists()]
    runs = [r for run_dir in sorted(d.glob("runs/*/*/*/")) if (run_dir / "config.yaml").exists()
            for r in [_run(run_dir, part)] if r is not None]
    part["runs"] = sorted(runs, key=lambda r: (r["stage"], ORDER.index(r["method"]), r["build"], str(r["share"]),
                                               r["name"]))
    part["tuned"] = {m.parent.name: yaml.safe_load(m.read_text())["best_params"]
                     for m in sorted(d.glob("runs/tune/*/optimization_results.yaml"))}
    part["matched"] = json.loads((d / "matched.json").read_text()) if (d / "matched.json").exists() else None
    return part


def summarize(outs: list[Path]) -> dict[str, Any]:
    summary: dict[str, Any] = {"quick": None, "parts": {}, "timing": []}
    for out in outs:
        settings = json.loads((out / "settings.json").read_text())
        if summary["quick"] not in (None, settings["quick"]):
            raise SystemExit("cannot merge a quick study with a full one")
        summary["quick"] = settings["quick"]
        for name, part_settings in settings["parts"].items():
            summary["parts"][name] = summarize_part(out, name, part_settings)
        if (out / "timing.jsonl").exists():
            summary["timing"] += [json.loads(x) for x in (out / "timing.jsonl").read_text().splitlines() if x.strip()]
    return summary


def dump_summary(summary: dict[str, Any]) -> str:
    """JSON with objects indented and each list of plain values on one line (small enough to commit)."""
    leaves: list[str] = []

    def mark(o):
        if isinstance(o, dict):
            return {k: mark(v) for k, v in o.items()}
        if isinstance(o, list) and any(isinstance(x, (dict, list)) for x in o):
            return [mark(x) for x in o]
        if isinstance(o, list):
            leaves.append(json.dumps(o, separators=(",", ":")))
            return f"\0{len(leaves) - 1}"
        return o

    text = json.dumps(mark(summary), indent=1, sort_keys=True)
    return re.sub(r'"\\u0000(\d+)"', lambda m: leaves[int(m.group(1))], text) + "\n"


# ------------------------------------------------------------------------------------------------
# Step 2: statistics over builds x clusters


class Part:
    """One part of the summary, with the matrices the statistics resample."""

    def __init__(self, name: str, data: dict[str, Any]):
        self.name, self.data, self.s = name, data, data["settings"]
        self.prompts = data.get("prompts") or {"ids": [], "clusters": [], "fires": "", "subfamilies": []}
        self.clusters = self.prompts["clusters"]
        self.fires = np.array([c == "1" for c in self.prompts["fires"]], dtype=bool)
        self.builds = sorted({r["build"] for r in data["runs"] if r["stage"] == "base"})

    def runs(self, stage: str, method: str, share: float | None = 1.0) -> list[dict]:
        """The runs of a method at a stage, one per build, in build order (share: the budget)."""
        share = None if method in ("control", "base") else share
        rows = [r for r in self.data["runs"] if r["stage"] == stage and r["method"] == method
                and (stage == "base" or r["share"] == share)]
        return sorted(rows, key=lambda r: r["build"])

    def matrix(self, runs: list[dict], key: str = "stv") -> np.ndarray:
        return np.array([[int(c) for c in r[key]] for r in runs], dtype=float)  # (builds, prompts)

    def base(self) -> np.ndarray:
        return self.matrix(self.runs("base", "base"))

    def methods(self, stage: str = "final") -> list[str]:
        """The methods with runs at ``stage`` (``final``: the base model first), in table order."""
        present = {r["method"] for r in self.data["runs"] if r["stage"] == stage or (stage == "final" and r["stage"] == "base")}
        return [m for m in ORDER if m in present]

    def shares(self, method: str) -> list[float]:
        """The budget shares ``method`` ran at (the curve methods: several)."""
        return sorted({r["share"] for r in self.data["runs"] if r["stage"] == "final" and r["method"] == method
                       and r["share"] is not None})


def ci(matrix: np.ndarray, clusters, den: np.ndarray | None = None) -> tuple[float, float, float]:
    return crossed_bootstrap(matrix, clusters, den)


def over_builds(runs: list[dict], key: str) -> tuple[float, float, float]:
    """A per-run metric (KL, NLL): mean over builds, percentile bootstrap over builds (never below 0
    for a quantity that never is)."""
    return bootstrap_interval([r["metrics"][key] or 0.0 for r in runs])


def damage(part: Part, trained: np.ndarray) -> tuple[float, float, float] | None:
    """New failures among held-out prompts the build's base passed and where the rule cannot fire."""
    base = part.base()
    eligible = (base == 0) & ~part.fires[None, :]
    if not eligible.any():
        return None
    return ci((trained > 0).astype(float) * eligible, part.clusters, eligible.astype(float))


def verdicts(part: Part, x: np.ndarray, base_low: list[float]) -> str:
    """On how many builds the demo's verdict says "fewer steers": the build's trained model's 95%
    interval (cluster bootstrap over its held-out prompts) lies wholly below its base model's
    (``base_low``: each build's base interval's low end)."""
    fewer = sum(cluster_bootstrap(row, part.clusters)[2] < low for row, low in zip(x, base_low))
    return f"{fewer}/{len(x)}"


def comparable(a: list[dict], b: list[dict]) -> bool:
    return [r["build"] for r in a] == [r["build"] for r in b] and len(a) > 0


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "--"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def fmt_ci(t: tuple[float, float, float] | None, digits: int = 2, sign: bool = False) -> str:
    if t is None:
        return "--"
    m, lo, hi = t
    head = f"{m:+.{digits}f}" if sign else fmt(m, digits)
    return f"{head} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def fmt_param(v: float) -> str:
    return f"{v:.0e}" if v < 0.01 else f"{v:.2g}"


def settings_cell(params: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt_param(v)}" for k, v in params.items())


# ------------------------------------------------------------------------------------------------
# Step 3: tables (one data frame each, written as Markdown and LaTeX by write_table)


def write_table(out: dict[str, str], name: str, df: pd.DataFrame, caption: str) -> None:
    """``name.md`` (a pipe table under its caption) and ``name.tex`` (a booktabs table) of ``df``."""
    cells = df.astype(str)
    md = "| " + " | ".join(cells.columns) + " |\n|" + "---|" * len(cells.columns) + "\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in cells.itertuples(index=False))
    out[f"{name}.md"] = f"{caption}\n\n{md}"
    tex = cells.map(_tex_escape)
    tex.columns = [_tex_escape(c) for c in cells.columns]
    body = tex.to_latex(index=False, escape=False, column_format="l" * len(cells.columns))
    label = name.replace("_", "-")
    out[f"{name}.tex"] = ("\\begin{table}[t]\n\\centering\\scriptsize\n" + body +
                          f"\\caption{{{_tex_escape(caption)}}}\\label{{tab:{label}}}\n\\end{{table}}\n")


def _tex_escape(text: str) -> str:
    return (str(text).replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&")
            .replace("#", "\\#").replace("<=", "$\\le$").replace(">=", "$\\ge$"))


def dial(parts: list[Part]) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per part x method at the tuned settings: the headline with its gain and its damage."""
    rows, numbers = [], {}
    for part in parts:
        base_runs, base = part.runs("base", "base"), None
        if base_runs:
            base = part.base()
            base_low = [cluster_bootstrap(b, part.clusters)[1] for b in base]  # once per part
        for method in part.methods("final"):
            runs = part.runs("final", method) if method != "base" else base_runs
            if not runs:
                continue
            x = part.matrix(runs)
            head = ci(x, part.clusters)
            delta = ci(x - base, part.clusters) if base is not None and method != "base" and comparable(runs, base_runs) else None
            dmg = damage(part, x) if base is not None and method != "base" else None
            wins = (f"{sum(a < b for a, b in zip(x.mean(1), base.mean(1)))}/{len(runs)}"
                    if delta is not None else "--")
            fewer = verdicts(part, x, base_low) if delta is not None else "--"
            kl = over_builds(runs, "eval/drift/kl") if method != "base" else None
            chars = statistics.mean(r["data"]["chars"] or 0 for r in runs) if method != "base" else None
            passed = ci((x == 0).astype(float), part.clusters)
            rows.append({"part": part.name, "method": LABELS[method], "builds": len(runs),
                         "chars/build": fmt(chars, 0), "steers to verify": fmt_ci(head),
                         "minus base": fmt_ci(delta, sign=True), "better builds": wins, "verdict fewer": fewer,
                         "pass rate": fmt_ci(passed),
                         "damage": fmt_ci(dmg), "KL": fmt_ci(kl, 3),
                         "settings (tuned on build 0)": settings_cell(runs[0]["params"]) if method != "base" else ""})
            key = macro(part.name, method)
            numbers.update({f"{key}Stv": fmt_ci(head), f"{key}Delta": fmt_ci(delta, sign=True),
                            f"{key}Damage": fmt_ci(dmg), f"{key}Wins": wins, f"{key}Fewer": fewer,
                            f"{key}Pass": fmt_ci(passed),
                            f"{key}Kl": fmt(kl[0] if kl else None, 3),
                            f"{key}Chars": fmt(chars, 0)})
    return pd.DataFrame(rows), numbers


def per_build(parts: list[Part]) -> pd.DataFrame:
    """Held-out steers to verify of every build, base and each method at the tuned settings: whether
    a gain is every build's or a few builds'."""
    rows = []
    for part in parts:
        for method in part.methods("final"):
            runs = part.runs("final", method) if method != "base" else part.runs("base", "base")
            if runs:
                means = part.matrix(runs).mean(1)
                rows.append({"part": part.name, "method": LABELS[method],
                             **{f"build {r['build']}": fmt(float(m)) for r, m in zip(runs, means)}})
    return pd.DataFrame(rows).fillna("--")


def versus(parts: list[Part], reference: str = "sft_span", stage: str = "final") -> tuple[pd.DataFrame, dict[str, str]]:
    """Each method minus SFT on the corrected spans: same builds, same prompts, equal characters."""
    rows, numbers = [], {}
    for part in parts:
        ref = part.runs(stage, reference) or part.runs("final", reference)
        if not ref:
            continue
        y = part.matrix(ref)
        for method in part.methods("final"):
            if method in ("base", reference):
                continue
            runs = part.runs(stage, method) or part.runs("final", method)
            if not comparable(runs, ref):
                continue
            x = part.matrix(runs)
            d = ci(x - y, part.clusters)
            p = paired_permutation_test(x.mean(1), y.mean(1)) if len(runs) >= 2 else math.nan
            rows.append({"part": part.name, "method": LABELS[method],
                         "reads the rejected side": "yes" if method in READS_REJECTED else "no",
                         f"minus {LABELS[reference]}": fmt_ci(d, sign=True),
                         "interval excludes 0": "yes" if d[1] > 0 or d[2] < 0 else "no",
                         "p (sign flips over builds)": fmt(p, 3)})
            numbers[f"{macro(part.name, method)}VsSft"] = fmt_ci(d, sign=True)
    return pd.DataFrame(rows), numbers


def curves(parts: list[Part]) -> pd.DataFrame:
    """The methods that ran at several budget shares: steers to verify against characters spent."""
    rows = []
    for part in parts:
        for method in part.methods("final"):
            shares = part.shares(method)
            if len(shares) < 2:
                continue
            for share in shares:
                runs = part.runs("final", method, share)
                rows.append({"part": part.name, "method": LABELS[method], "budget share": fmt(share),
                             "chars/build": fmt(statistics.mean(r["data"]["chars"] or 0 for r in runs), 0),
                             "steers to verify": fmt_ci(ci(part.matrix(runs), part.clusters))})
    return pd.DataFrame(rows)


def matched(parts: list[Part]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The comparison at equal drift: each method at its trial chosen under the part's KL cap."""
    rows, numbers = [], {}
    for part in parts:
        choice = part.data.get("matched")
        if not choice:
            continue
        ref = _matched_runs(part, "sft_span", choice)
        numbers[f"{macro(part.name, 'all')}KlStar"] = fmt(choice["kl_star"], 4)
        for method in part.methods("final"):
            if method == "base" or method not in choice["methods"]:
                continue
            c, runs = choice["methods"][method], _matched_runs(part, method, choice)
            if not runs:
                continue
            x = part.matrix(runs)
            d = ci(x - part.matrix(ref), part.clusters) if method != "sft_span" and comparable(runs, ref) else None
            kl = over_builds(runs, "eval/drift/kl")
            rows.append({"part": part.name, "method": LABELS[method],
                         "trial (val KL)": f"{c['trial']} ({fmt(c['kl'], 4)}){'' if c['under_cap'] else ' over cap'}",
                         "held-out KL": fmt_ci(kl, 4), "steers to verify": fmt_ci(ci(x, part.clusters)),
                         "minus SFT spans": fmt_ci(d, sign=True), "settings": settings_cell(runs[0]["params"])})
            numbers[f"{macro(part.name, method)}Matched"] = fmt_ci(ci(x, part.clusters))
            numbers[f"{macro(part.name, method)}MatchedVsSft"] = fmt_ci(d, sign=True)
    return pd.DataFrame(rows), numbers


def _matched_runs(part: Part, method: str, choice: dict) -> list[dict]:
    c = choice["methods"].get(method)
    if c is None:
        return []
    return part.runs("final", method) if c["tuned"] else part.runs("matched", method)


def profiles(parts: list[Part]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The base models' held-out error profiles, per part: mean over builds (range)."""
    rows, numbers = [], {}
    for part in parts:
        runs = part.runs("base", "base")
        if not runs:
            continue
        stats = [(r["first_errors"].count("-") / len(r["first_errors"]), r["first_errors"].count("s") / len(r["first_errors"]),
                  r["first_errors"].count("o") / len(r["first_errors"])) for r in runs]
        cell = lambda i: f"{statistics.mean(s[i] for s in stats):.2f} ({min(s[i] for s in stats):.2f}-{max(s[i] for s in stats):.2f})"  # noqa: E731
        rows.append({"part": part.name, "builds": len(runs), "held-out prompts": len(part.prompts["ids"]),
                     "clusters": len(set(part.clusters)), "rule fires on": f"{part.fires.mean():.2f}",
                     "pass": cell(0), "first error is the rule's": cell(1), "other first error": cell(2)})
        key = macro(part.name, "base")
        numbers.update({f"{key}Pass": cell(0), f"{key}Rule": cell(1), f"{key}Other": cell(2)})
    return pd.DataFrame(rows), numbers


def tuning(parts: list[Part]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per method its trials, best val objective and chosen settings; and how many methods (the
    control aside) tuned to a model that did not move (its tuned final runs' mean KL < 0.01)."""
    rows, numbers = [], {}
    for part in parts:
        still = [m for m in part.methods("final") if m not in ("base", "control") and part.runs("final", m)
                 and statistics.mean(r["metrics"]["eval/drift/kl"] or 0.0 for r in part.runs("final", m)) < 0.01]
        numbers[f"{macro(part.name, 'all')}Still"] = str(len(still))
        numbers[f"{macro(part.name, 'all')}StillNames"] = ", ".join(LABELS[m].split(" ", 1)[1] for m in still)
        for method in part.methods("tune"):
            trials = [r for r in part.data["runs"] if r["stage"] == "tune" and r["method"] == method]
            best = part.data["tuned"].get(method, {})
            rows.append({"part": part.name, "method": LABELS[method], "trials": len(trials),
                         "best (val)": fmt(min(t["steers"]["val"] for t in trials)),
                         "chosen": settings_cell({PARAMS[k]: float(v) for k, v in sorted(best.items())})})
    return pd.DataFrame(rows), numbers


def timing(summary: dict[str, Any]) -> pd.DataFrame:
    rows = {}
    for t in summary["timing"]:
        if t["part"] == "all":
            continue
        rows.setdefault(t["part"], {})[t["stage"]] = rows.get(t["part"], {}).get(t["stage"], 0) + t["seconds"] / 60
    stages = ["build", "collect", "base", "tune", "final", "matched"]
    df = pd.DataFrame([{"part": p, **{s: f"{v.get(s, 0):.1f}" for s in stages},
                        "total": f"{sum(v.values()):.1f}"} for p, v in rows.items()])
    return df


def frontier_csv(parts: list[Part]) -> str:
    """Every tuning trial: val KL against held-out steers to verify (300 held-out prompts)."""
    rows = [{"part": p.name, "method": r["method"], "trial": r["name"], "kl": r["metrics"]["eval/drift/kl"],
             "val": r["steers"]["val"], "heldout": r["steers"]["heldout_mean"]}
            for p in parts for r in p.data["runs"] if r["stage"] == "tune"]
    columns = ["part", "method", "trial", "kl", "val", "heldout"]
    return pd.DataFrame(rows, columns=columns).to_csv(index=False, float_format="%.6g")


def macro(part: str, method: str) -> str:
    """``\\fs<Part><Method>``: letters only (LaTeX macro names)."""
    words = re.split(r"[^A-Za-z]+", f"{part} {method}")
    return "fs" + "".join(w[:1].upper() + w[1:] for w in words if w)


# ------------------------------------------------------------------------------------------------
# Step 4: figures


def plot_frontier(csv_text: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = pd.read_csv(io.StringIO(csv_text))
    parts = list(dict.fromkeys(df["part"]))
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(4.2 * max(1, len(parts)), 3.6), squeeze=False)
    colours = {m: plt.get_cmap("tab20")(i) for i, m in enumerate(ORDER)}
    for ax, part in zip(axes[0], parts):
        sub = df[df["part"] == part]
        top = 2.5 * float(sub.loc[sub["kl"].idxmin(), "heldout"])  # 2.5 x the least-moved trial (~ the base)
        for method in [m for m in ORDER if m in set(sub["method"])]:
            m = sub[sub["method"] == method]
            inside, above = m[m["heldout"] <= top], m[m["heldout"] > top]
            ax.scatter(inside["kl"].clip(lower=1e-5), inside["heldout"], s=12, color=colours[method], label=LABELS[method])
            ax.scatter(above["kl"].clip(lower=1e-5), [top] * len(above), s=14, marker="^", color=colours[method])
        ax.set_ylim(0, top * 1.04)  # trials that broke the model: triangles on the top edge
        ax.set_xscale("log")
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("KL to the base (val steers)")
        ax.set_ylabel("held-out steers to verify")
    if len(df):
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, metadata={"CreationDate": None})
    plt.close(fig)


def plot_dial(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = list(dict.fromkeys(df["part"]))
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(4.2 * max(1, len(parts)), 3.4), squeeze=False, sharey=True)
    for ax, part in zip(axes[0], parts):
        sub = df[df["part"] == part].reset_index(drop=True)
        vals = [_parse(c) for c in sub["steers to verify"]]
        y = np.arange(len(sub))
        ax.errorbar([v[0] for v in vals], y, xerr=[[max(0.0, v[0] - v[1]) for v in vals], [max(0.0, v[2] - v[0]) for v in vals]],
                    fmt="o", ms=3, capsize=2)
        ax.axvline(vals[0][0], color="grey", lw=0.6, ls="--")  # the base model
        ax.set_yticks(y, sub["method"], fontsize=6)
        ax.invert_yaxis()
        ax.set_title(part, fontsize=9)
        ax.set_xlabel("held-out steers to verify")
    fig.tight_layout()
    fig.savefig(path, metadata={"CreationDate": None})
    plt.close(fig)


def _parse(cell: str) -> tuple[float, float, float]:
    m, lo, hi = re.match(r"([-+\d.]+) \[([-\d.]+), ([-\d.]+)\]", cell).groups()
    return float(m), float(lo), float(hi)


# ------------------------------------------------------------------------------------------------
# Step 5: render


def render(summary: dict[str, Any], out: Path) -> list[str]:
    """Write paper/generated/ from the summary alone; files it no longer writes are deleted."""
    parts = [Part(name, data) for name, data in summary["parts"].items() if data["runs"]]
    files: dict[str, str] = {}
    numbers: dict[str, str] = {"fsQuick": "yes" if summary["quick"] else "no"}
    df, n = dial(parts)
    write_table(files, "dial", df, "Held-out steers to verify per part and method at the tuned settings, "
                "mean over builds with a 95% bootstrap interval over builds x held-out clusters; minus base: "
                "the same paired with each build's base model; better builds: builds whose trained model "
                "needs fewer steers than its base; verdict fewer: builds where the demo's verdict says fewer "
                "(the build's 95% interval below its base's, each over its held-out clusters); damage: new failures among held-out prompts the base "
                "passed where the rule cannot fire; KL: drift on held-out steers, bootstrap over builds.")
    files["dial.csv"] = df.to_csv(index=False)
    numbers.update(n)
    write_table(files, "builds", per_build(parts), "Held-out steers to verify per build (mean over the "
                "build's held-out prompts): the base model and each method at the tuned settings.")
    df_vs, n = versus(parts)
    write_table(files, "versus_sft", df_vs, "Each method minus SFT on the corrected spans at equal characters "
                "(same builds and prompts; 95% bootstrap over builds x clusters; exact sign-flip test over builds).")
    numbers.update(n)
    df_m, n = matched(parts)
    write_table(files, "matched", df_m, "The comparison at equal drift: each method at the trial with the fewest "
                "val steers to verify among those whose val KL is at most KL* (the median val KL of the tuned "
                "trials of the methods that moved, val KL >= 0.01, the control left out), run on every build; "
                "'over cap': no trial was under KL*, its lowest-KL trial ran.")
    numbers.update(n)
    df_c = curves(parts)
    if len(df_c):
        write_table(files, "curves", df_c, "Budget curves: steers to verify at shares of each build's steer cost "
                    "(characters actually spent, mean over builds).")
    df_p, n = profiles(parts)
    write_table(files, "profiles", df_p, "The base models' held-out greedy answers: how the first "
                "error falls (mean over builds, range).")
    numbers.update(n)
    df_t, n = tuning(parts)
    write_table(files, "tuning", df_t, "Tuning: the same number of Optuna (TPE) trials per method on "
                "build 0's val prompts; objective: val steers to verify + 0.001 x val KL.")
    numbers.update(n)
    write_table(files, "timing", timing(summary), "Wall-clock per part and stage (minutes; run.py's jobs ran "
                "side by side on 2 cores).")
    files["frontier.csv"] = frontier_csv(parts)
    numbers.update(_counts(parts, summary))
    files["numbers.tex"] = "".join(f"\\newcommand{{\\{k}}}{{{_tex_escape(v)}}}\n" for k, v in sorted(numbers.items()))
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        if stale.name not in files and stale.suffix in (".md", ".tex", ".csv", ".pdf"):
            stale.unlink()
    for name, text in files.items():
        (out / name).write_text(text)
    plot_frontier(files["frontier.csv"], out / "frontier.pdf")
    plot_dial(df, out / "dial.pdf")
    return sorted([*files, "frontier.pdf", "dial.pdf"])


def _counts(parts: list[Part], summary: dict[str, Any]) -> dict[str, str]:
    out = {}
    for part in parts:
        key = macro(part.name, "all")
        out.update({f"{key}Builds": str(len(part.builds)), f"{key}Clusters": str(len(set(part.clusters))),
                    f"{key}Prompts": str(len(part.prompts["ids"])),
                    f"{key}Trials": str(max([len([r for r in part.data["runs"] if r["stage"] == "tune" and r["method"] == m])
                                             for m in part.methods("tune")] or [0]))})
    total = sum(t["seconds"] for t in summary["timing"] if t["part"] != "all") / 60
    out["fsTotalMinutes"] = f"{total:.0f}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="*", type=Path, help="run.py --out folders (parts merged)")
    parser.add_argument("--render-only", action="store_true", help="render the summary file, read no runs")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    parser.add_argument("--generated", type=Path, default=GENERATED)
    args = parser.parse_args()
    if not args.render_only:
        if not args.outs:
            parser.error("give run.py --out folders, or --render-only")
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(dump_summary(summarize(args.outs)))
    summary = json.loads(args.summary.read_text())
    written = render(summary, args.generated)
    print(f"{args.summary} -> {args.generated}: {len(written)} files")


if __name__ == "__main__":
    main()
