"""Tables, figures and numbers of the paper, from the runs of ``run.py`` only.

    python experiments/fewest_steers/analyze.py OUT            # OUT -> results/summary.json -> paper/generated/
    python experiments/fewest_steers/analyze.py --render-only  # paper/generated/ from the committed summary

Two steps. ``summarize(OUT)`` reads every run's ``result.json``, the base models' steering summaries,
the settings and the wall-clock (``timing.jsonl``) and writes one compact, committed file,
``experiments/fewest_steers/results/summary.json``. ``render(summary)`` turns that file alone into
``paper/generated/``: LaTeX tables (``*.tex``), the same tables in Markdown (``*.md``), figures
(``*.pdf`` with their data as ``*.csv``), and ``numbers.tex``: one macro per number the prose quotes.
Rendering is deterministic, so a test re-renders the committed summary and compares: a table the
paper includes that is missing or stale fails the suite.

Statistics: per method, the mean over seeds with a 95% Student-t interval (``localpref.stats``);
methods share seeds (the same collected steers), so method differences get a paired t-test.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
from localpref.stats import bootstrap_interval, paired_t_test, t_interval  # noqa: E402

SUMMARY = HERE / "results" / "summary.json"
GENERATED = REPO / "paper" / "generated"
ORDER = ["sft_span", "sft_rewrite", "dpo_rewrite", "localized", "localized_anchor", "step_dpo", "variant"]
LABELS = {"base": "base model", "sft_span": "1 SFT, corrected spans", "sft_rewrite": "2 SFT, full rewrites",
          "dpo_rewrite": "3 DPO, output vs rewrite", "localized": "4 localized DPO (hunk)",
          "localized_anchor": "5 localized + SFT anchor", "step_dpo": "6 Step-DPO (continuation)",
          "variant": "7 localized variant"}
STEER_COLS = [("eval/steer/steers_per_verified", "steers / verified"), ("eval/steer/pass_rate", "pass rate"),
              ("eval/steer/verified_within_budget", "verified $\\le$ budget"),
              ("eval/steer/first_error_unit", "first error (unit)")]
PREF_COLS = [("eval/span/logp_accuracy", "span log-p acc."), ("eval/span/nll", "span NLL"),
             ("eval/drift/nll", "drift NLL"), ("eval/drift/kl", "KL")]


# ------------------------------------------------------------------------------------------------
# Step 1: OUT -> summary.json


def summarize(out: Path) -> dict[str, Any]:
    """Everything the paper needs from a run folder, small enough to commit."""
    runs = []
    listed = {f"{m.parent.name}/runs/{line}" for m in out.glob("*/runs.txt") for line in m.read_text().split()}
    for f in sorted(out.glob("*/runs/*/*/result.json")):
        if str(f.parent.relative_to(out)) not in listed:
            continue  # a run of older settings left in the folder
        r = json.loads(f.read_text())
        keep = {k: v for k, v in r.items() if k not in ("overrides",)}
        keep["metrics"] = {k: v for k, v in r["metrics"].items() if k.startswith("eval/")}
        trajectories = f.parent / "steer_eval.jsonl"
        if r["stage"] in ("final", "base") and trajectories.exists():  # per prompt, in id order: paired tests
            records = sorted((json.loads(line) for line in trajectories.read_text().splitlines() if line), key=lambda x: x["id"])
            keep["prompts"] = [[x["meta"]["steers"], int(x["verified"])] for x in records]
        runs.append(keep)
    collections = {}
    for f in sorted(out.glob("*/collect/*.summary.json")):
        collections.setdefault(f.parts[-3], {})[f.name.split(".")[0]] = json.loads(f.read_text())["all"]
    extra = {}
    for name in ("tuned.json", "variant.json", "data.json", "model.json"):
        for f in sorted(out.glob(f"*/{name}")):
            extra.setdefault(f.parts[-2], {})[name.removesuffix(".json")] = json.loads(f.read_text())
    timing = [json.loads(line) for line in (out / "timing.jsonl").read_text().splitlines() if line.strip()]
    return {"settings": json.loads((out / "settings.json").read_text()), "runs": runs,
            "collections": collections, "choices": extra, "timing": timing}


# ------------------------------------------------------------------------------------------------
# Step 2: summary.json -> paper/generated


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "--"
    return f"{x:.{digits}f}"


def _mean(values: list[float | None], digits: int = 2) -> str:
    """The mean over seeds of the finite values ('--' when there are none: a part without held-out
    steers has no span metrics; a run that verified nothing has infinite steers per output)."""
    finite = [v for v in values if v is not None and not math.isinf(v) and not math.isnan(v)]
    return _fmt(t_interval(finite)[0], digits) if finite else "--"


def _ci(values: list[float], digits: int = 2) -> str:
    """'m [lo, hi]' over seeds (or 'm' for one seed); values that are inf (nothing verified) are
    left out and counted: 'm [lo, hi] (1 inf)'."""
    finite = [v for v in values if v is not None and not math.isinf(v) and not math.isnan(v)]
    dropped = sum(v is not None and math.isinf(v) for v in values)
    note = f" ({dropped} inf)" if dropped else ""
    if not finite:
        return "--" + note
    m, lo, hi = t_interval(finite)
    return (_fmt(m, digits) if len(finite) == 1 else f"{_fmt(m, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]") + note


def _table(name: str, header: list[str], rows: list[list[str]], caption: str) -> dict[str, str]:
    """The same table as LaTeX (booktabs) and Markdown."""
    wide = len(header) > 6  # scaled to the page width
    tex = ["% generated by experiments/fewest_steers/analyze.py; do not edit", "\\begin{table}[t]", "\\centering",
           "\\scriptsize", f"\\caption{{{caption}}}", f"\\label{{tab:{name}}}",
           *(["\\resizebox{\\linewidth}{!}{%"] if wide else []),
           "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    tex += [" & ".join(r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else ""), "\\end{table}", ""]
    md = ["| " + " | ".join(h.replace("$\\le$", "≤") for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("\\%", "%") for c in r) + " |" for r in rows]
    return {f"{name}.tex": "\n".join(tex), f"{name}.md": "\n".join(md) + "\n"}


def _runs(summary, part: str, stage: str, **match) -> list[dict]:
    return [r for r in summary["runs"] if r["part"] == part and r["stage"] == stage
            and all(r.get(k) == v for k, v in match.items())]


def _metric(runs: list[dict], key: str) -> list[float]:
    return [r["metrics"].get(key) for r in runs]


def headline(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """Per method at the main budget: steering on heldout and preference metrics, mean [95% CI] over seeds."""
    final = _runs(summary, part, "final")
    if not final:
        return {}, {}
    budget = max(r["budget"] for r in final)
    base = _runs(summary, part, "base", eval_split="heldout")
    rows = [[LABELS["base"], "0"] + [_ci(_metric(base, k)) for k, _ in STEER_COLS]
            + [_ci(_metric(base, k)) for k, _ in PREF_COLS]]
    numbers = {}
    for method in ORDER:
        runs = _runs(summary, part, "final", method=method, budget=budget)
        if not runs:
            continue
        label = LABELS[method] + (f" ({summary['choices'][part]['variant']['chosen'].replace('_', '-')})" if method == "variant"
                                  and "variant" in summary["choices"].get(part, {}) else "")
        chars = _fmt(sum(r["budget_chars"] for r in runs) / len(runs), 0)
        rows.append([label, chars] + [_ci(_metric(runs, k)) for k, _ in STEER_COLS]
                    + [_ci(_metric(runs, k)) for k, _ in PREF_COLS])
        for what, key in (("spv", "eval/steer/steers_per_verified"), ("pass", "eval/steer/pass_rate"),
                          ("spannll", "eval/span/nll"), ("kl", "eval/drift/kl")):
            numbers[_macro(part, method, what)] = _mean(_metric(runs, key))
    for what, key in (("spv", "eval/steer/steers_per_verified"), ("pass", "eval/steer/pass_rate"),
                      ("spannll", "eval/span/nll")):
        numbers[_macro(part, "base", what)] = _mean(_metric(base, key))
    seeds = len({r["seed"] for r in final})
    header = ["method", "chars"] + [c for _, c in STEER_COLS] + [c for _, c in PREF_COLS]
    caption = (f"{part}: held-out steering (greedy, at most {summary['settings']['parts'][part]['steer_budget']} "
               f"steers per prompt) and held-out steer preference metrics after training at equal annotation "
               f"cost (chars typed). Mean [95\\% CI] over {seeds} training seeds; every run steers the same "
               f"held-out prompts (Table~\\ref{{tab:paired_{part}}} adds the prompts' variance).")
    return _table(f"headline_{part}", header, rows, caption), numbers


def subfamilies(summary, part: str) -> dict[str, str]:
    """Prompts of sub-families trained on vs the one never trained on (heldout only)."""
    final = _runs(summary, part, "final")
    if not final or "eval/steer/unseen/pass_rate" not in final[0]["metrics"]:
        return {}
    budget = max(r["budget"] for r in final)
    rows = []
    for method in ["base", *ORDER]:
        runs = (_runs(summary, part, "base", eval_split="heldout") if method == "base"
                else _runs(summary, part, "final", method=method, budget=budget))
        if runs:
            rows.append([LABELS[method], *[_ci(_metric(runs, f"eval/steer/{g}/{k}")) for g in ("seen", "unseen")
                                           for k in ("steers_per_verified", "pass_rate")]])
    return _table(f"subfamilies_{part}", ["method", "seen: steers / verified", "seen: pass", "unseen: steers / verified",
                                          "unseen: pass"], rows,
                  f"{part}: held-out prompts of the sub-families trained on (seen) and of the one never trained "
                  f"on (unseen), main budget. Mean [95\\% CI] over seeds.")


def _pooled_spv(runs: list[dict]):
    """Steers per verified output over all seeds' runs, as a statistic of resampled prompt indices."""
    def stat(idx: list[int]) -> float:
        steers = sum(r["prompts"][i][0] for r in runs for i in idx)
        verified = sum(r["prompts"][i][1] for r in runs for i in idx)
        return steers / verified if verified else float("inf")
    return stat


def paired(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each method against localized DPO: the difference in steers per verified output, paired over
    seeds (t-test) and over prompts (every run steers the same held-out prompts: a bootstrap of
    prompts, the same resample for both methods and all seeds)."""
    final = _runs(summary, part, "final")
    if not final:
        return {}, {}
    budget = max(r["budget"] for r in final)
    numbers = {}
    ref = {r["seed"]: r["metrics"].get("eval/steer/steers_per_verified") for r in
           _runs(summary, part, "final", method="localized", budget=budget)}
    rows = []
    for method in ORDER:
        if method == "localized":
            continue
        other = {r["seed"]: r["metrics"].get("eval/steer/steers_per_verified") for r in
                 _runs(summary, part, "final", method=method, budget=budget)}
        if not other:
            continue  # a method this part does not run
        seeds = sorted(set(ref) & set(other))
        pairs = [(other[s], ref[s]) for s in seeds if other[s] is not None and ref[s] is not None
                 and not math.isinf(other[s]) and not math.isinf(ref[s])]
        mine = [r for r in _runs(summary, part, "final", method=method, budget=budget) if "prompts" in r]
        theirs = [r for r in _runs(summary, part, "final", method="localized", budget=budget) if "prompts" in r]
        by_prompt = "--"
        if mine and theirs:
            a, b = _pooled_spv(mine), _pooled_spv(theirs)
            idx = list(range(len(mine[0]["prompts"])))
            lo, hi = bootstrap_interval(lambda i: a(i) - b(i), len(idx))
            by_prompt = f"{_fmt(a(idx) - b(idx))} [{_fmt(lo)}, {_fmt(hi)}]"
            numbers[_macro(part, method, "vsloc")] = by_prompt
        if len(pairs) < 2:
            rows.append([LABELS[method], "--", "--", str(len(pairs)), by_prompt])
            continue
        diff, p = paired_t_test([a for a, _ in pairs], [b for _, b in pairs])
        numbers[_macro(part, method, "vslocp")] = _fmt(p, 3)
        rows.append([LABELS[method], _fmt(diff), _fmt(p, 3), str(len(pairs)), by_prompt])
    return _table(f"paired_{part}", ["method", "$\\Delta$ vs 4 (seed mean)", "p (paired t)", "seeds",
                                     "$\\Delta$ pooled [95\\% CI, prompts]"], rows,
                  f"{part}: steers per verified output of each method minus localized DPO's (positive: the method "
                  f"needs more steers). Paired over seeds: the mean difference and a paired t-test. Paired over "
                  f"prompts: the ratio pooled over seeds, with a bootstrap of the held-out prompts."), numbers


def curves(summary, part: str) -> dict[str, str]:
    """Steers per verified output and pass rate against annotation cost (CSV + PDF figure)."""
    final = _runs(summary, part, "final")
    budgets = sorted({r["budget"] for r in final})
    if len(budgets) < 2:
        return {}
    rows = []
    for method in ORDER:
        for b in budgets:
            runs = _runs(summary, part, "final", method=method, budget=b)
            if runs:
                chars = sum(r["budget_chars"] for r in runs) / len(runs)
                for key in ("eval/steer/steers_per_verified", "eval/steer/pass_rate"):
                    m, lo, hi = t_interval([v for v in _metric(runs, key) if v is not None and not math.isinf(v)] or [math.nan])
                    rows.append([method, b, round(chars, 1), key.split("/")[-1], round(m, 4), round(lo, 4), round(hi, 4)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["method", "budget", "chars", "metric", "mean", "lo", "hi"], *rows])
    return {f"curves_{part}.csv": buf.getvalue()}


def plot_curves(csv_text: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric, label in zip(axes, ("steers_per_verified", "pass_rate"), ("steers per verified output", "pass rate")):
        for method in ORDER:
            pts = [r for r in rows if r["method"] == method and r["metric"] == metric]
            if pts:
                x = [float(r["chars"]) for r in pts]
                y = [float(r["mean"]) for r in pts]
                err = [[float(r["mean"]) - float(r["lo"]) for r in pts], [float(r["hi"]) - float(r["mean"]) for r in pts]]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=2, label=LABELS[method])
        ax.set(xlabel="annotation cost (characters typed)", ylabel=label, xscale="log")
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)


def small_numbers(summary, part: str) -> dict[str, str]:
    """Macros for the prose: tuning (per method and grid index, ``Lr1`` the smallest), the
    train-prompts diagnostic, the iterated rounds."""
    numbers = {}
    tune = _runs(summary, part, "tune")
    lrs = sorted({r["lr"] for r in tune})
    for r in tune:
        i = "ABCDEFGH"[lrs.index(r["lr"])]
        numbers[_macro(part, r["method"], f"lr{i}-spv")] = _fmt(r["metrics"].get("eval/steer/steers_per_verified"))
        numbers[_macro(part, r["method"], f"lr{i}-pass")] = _fmt(r["metrics"].get("eval/steer/pass_rate"))
        numbers[_macro(part, r["method"], f"lr{i}-spannll")] = _fmt(r["metrics"].get("eval/span/nll"))
        numbers[_macro(part, r["method"], f"lr{i}-kl")] = _fmt(r["metrics"].get("eval/drift/kl"))
    for i, lr in enumerate(lrs):
        numbers[_macro(part, "", f"lr{'ABCDEFGH'[i]}")] = f"{lr:g}"
    for r in _runs(summary, part, "base", eval_split="val", seed=tune[0]["seed"] if tune else None):
        numbers[_macro(part, "base", "val-spv")] = _fmt(r["metrics"].get("eval/steer/steers_per_verified"))
        numbers[_macro(part, "base", "val-pass")] = _fmt(r["metrics"].get("eval/steer/pass_rate"))
        numbers[_macro(part, "base", "val-spannll")] = _fmt(r["metrics"].get("eval/span/nll"))
    for r in _runs(summary, part, "trainprompts"):
        numbers[_macro(part, r["method"], "train-spv")] = _fmt(r["metrics"].get("eval/steer/steers_per_verified"))
        numbers[_macro(part, r["method"], "train-pass")] = _fmt(r["metrics"].get("eval/steer/pass_rate"))
    for r2 in [r for r in _runs(summary, part, "iterate") if r.get("round") == 2]:
        key = _macro(part, r2["method"], "round-spv")
        vals = [x["metrics"].get("eval/steer/steers_per_verified") for x in _runs(summary, part, "iterate")
                if x.get("round") == 2 and x["method"] == r2["method"]]
        numbers[key] = _ci(vals)
    return numbers


def small_tables(summary, part: str) -> dict[str, str]:
    """Tuning (lr per method on val), the variant study, the iterated rounds."""
    out = {}
    tune = _runs(summary, part, "tune")
    if tune:
        lrs = sorted({r["lr"] for r in tune})
        rows = []
        for method in ORDER:
            cells = []
            for lr in lrs:
                rs = _runs(summary, part, "tune", method=method, lr=lr)
                cells.append(_fmt(rs[0]["metrics"].get("eval/steer/steers_per_verified")) if rs else "--")
            chosen = summary["choices"].get(part, {}).get("tuned", {}).get("lr", {}).get(method)
            rows.append([LABELS[method], *cells, f"{chosen:g}" if chosen else "--"])
        out.update(_table(f"tune_{part}", ["method", *[f"lr {lr:g}" for lr in lrs], "chosen"], rows,
                          f"{part}: steers per verified output on val prompts (seed 0) for each learning rate."))
    variant = _runs(summary, part, "variant")
    if variant:
        base = _runs(summary, part, "base", eval_split="val", seed=variant[0]["seed"])
        rows = [[r["method"].replace("_", "-") if r["stage"] == "variant" else LABELS["base"],
                 *[_fmt(r["metrics"].get(k)) for k in ("eval/steer/steers_per_verified", "eval/steer/pass_rate",
                                                        "eval/span/nll", "eval/drift/kl")]] for r in base + variant]
        out.update(_table(f"variant_{part}", ["candidate", "steers / verified", "pass rate", "span NLL", "KL"],
                          rows, f"{part}: the study choosing method 7 (val prompts, seed 0, the grid's middle "
                                f"learning rate); the lowest steers per verified output wins."))
    diag = _runs(summary, part, "trainprompts")
    if diag:
        heldout = {m: _runs(summary, part, "final", method=m, seed=diag[0]["seed"],
                            budget=max(r["budget"] for r in _runs(summary, part, "final")))
                   for m in ORDER}
        heldout["base"] = _runs(summary, part, "base", eval_split="heldout", seed=diag[0]["seed"])
        rows = [[LABELS[r["method"]], _fmt(r["metrics"].get("eval/steer/steers_per_verified")),
                 _fmt(r["metrics"].get("eval/steer/pass_rate")),
                 _fmt(heldout[r["method"]][0]["metrics"].get("eval/steer/steers_per_verified")) if heldout.get(r["method"]) else "--"]
                for r in sorted(diag, key=lambda r: (["base", *ORDER]).index(r["method"]))]
        out.update(_table(f"trainprompts_{part}", ["method", "train prompts: steers / verified", "train prompts: pass",
                                                   "heldout: steers / verified"], rows,
                          f"{part}: a diagnostic (seed 0, main budget): steering on the train prompts whose steers "
                          f"were trained on, beside the same model on heldout prompts."))
    it = _runs(summary, part, "iterate")
    if it:
        rows = []
        final = _runs(summary, part, "final")
        top = max(r["budget"] for r in final)
        for method in sorted({r["method"] for r in it}, key=ORDER.index):
            one = _runs(summary, part, "final", method=method, budget=top)
            r1 = [r for r in it if r["method"] == method and r.get("round") != 2]
            r2 = [r for r in it if r["method"] == method and r.get("round") == 2]
            spent = lambda runs: [r["data"].get("data/collected/chars", 0) for r in runs]  # noqa: E731
            rows.append([LABELS[method], *[_ci(_metric(x, "eval/steer/steers_per_verified")) for x in (one, r1, r2)],
                         *[_ci(_metric(x, "eval/steer/pass_rate")) for x in (one, r2)],
                         _ci(spent(one), 0), _ci([a + b for a, b in zip(spent(r1), spent(r2))], 0)])
        out.update(_table(f"rounds_{part}", ["method", "1 round (all)", "round 1 (half)", "2 rounds",
                                             "pass, 1 round", "pass, 2 rounds", "chars, 1 round",
                                             "chars, 2 rounds"], rows,
                          f"{part}: iterated on-policy rounds at equal total cost: steers per verified output "
                          f"(and pass rate) after one round on the whole budget vs two rounds of half each, the "
                          f"second on steers collected from the round-1 model; the characters actually spent (the "
                          f"round-1 model may need fewer steers than the budget allows)."))
    return out


def defacto(summary) -> tuple[dict[str, str], dict[str, str]]:
    runs = _runs(summary, "defacto", "final")
    if not runs:
        return {}, {}
    before = [r["metrics"] for r in _runs(summary, "defacto", "base")]
    cols = [("eval/span/logp_accuracy", "span log-p acc."), ("eval/span/reward_accuracy", "reward acc."),
            ("eval/span/nll", "span NLL"), ("eval/drift/nll", "drift NLL"), ("eval/drift/kl", "KL")]
    rows = [[LABELS["base"], "--"] + [_ci([b.get(k) for b in before]) for k, _ in cols]]
    numbers = {}
    for method in sorted({r["method"] for r in runs}, key=lambda m: (ORDER + [m]).index(m)):
        rs = _runs(summary, "defacto", "final", method=method)
        rows.append([LABELS.get(method, method.replace("_", " ")), str(rs[0]["data"].get("data/train_pairs", "--"))]
                    + [_ci(_metric(rs, k)) for k, _ in cols])
        for what, key in (("spannll", "eval/span/nll"), ("acc", "eval/span/logp_accuracy"),
                          ("driftnll", "eval/drift/nll"), ("kl", "eval/drift/kl")):
            numbers[_macro("defacto", method, what)] = _mean(_metric(rs, key))
    for what, key in (("spannll", "eval/span/nll"), ("acc", "eval/span/logp_accuracy"),
                      ("driftnll", "eval/drift/nll"), ("kl", "eval/drift/kl")):
        numbers[_macro("defacto", "base", what)] = _mean([b.get(key) for b in before])
    tex = _table("defacto", ["method", "pairs"] + [c for _, c in cols], rows,
                 "DeFacto test split (human corrections of summaries, never tuned on): preference metrics of "
                 "SmolLM2-135M-Instruct + LoRA after training at equal annotation cost. Mean [95\\% CI] over seeds.")
    return tex, numbers


def timing(summary) -> dict[str, str]:
    rows = [[t["part"], t["stage"], str(t["jobs"]), _fmt(t["seconds"] / 60, 1)]
            for t in summary["timing"] if t["part"] != "all" and t["jobs"] and t["stage"] != "pretrain"]
    rows = [[part, "pretrain (model build)", "1", _fmt(seconds / 60, 1)] for part, seconds in _builds(summary).items()] + rows
    rows.append(["all", "", "", _fmt(_total_seconds(summary) / 60, 1)])
    return _table("timing", ["part", "stage", "jobs", "minutes"], rows,
                  "Wall-clock of each stage on 2 CPU cores (2 worker processes; a tiny model is built by one).")


def _builds(summary) -> dict[str, float]:
    """Seconds each tiny task model took to build (its ``pretrain.json``), whether this run built
    it or found it cached: what a run from scratch pays."""
    return {part: c["model"]["seconds"] for part, c in summary["choices"].items() if "model" in c}


def _total_seconds(summary) -> float:
    """Wall-clock from scratch: every stage (a resumed experiment's stages add up across its
    processes) with the tiny models' builds in place of their pretrain stages."""
    stages = sum(t["seconds"] for t in summary["timing"] if t["part"] != "all" and t["stage"] != "pretrain")
    return stages + sum(_builds(summary).values())


def _macro(part: str, method: str, what: str) -> str:
    name = "".join(w.capitalize() for w in f"{part}-{method}-{what}".replace("_", "-").split("-"))
    return "fs" + "".join(c for c in name if c.isalpha())


def render(summary: dict[str, Any], out: Path) -> list[str]:
    """Write every generated file; returns their names."""
    files: dict[str, str] = {}
    numbers: dict[str, str] = {}
    for part in summary["settings"]["parts"]:
        if part == "defacto":
            tex, nums = defacto(summary)
        else:
            tex, nums = headline(summary, part)
            tables, paired_numbers = paired(summary, part)
            tex.update(tables)
            nums.update(paired_numbers)
            tex.update(subfamilies(summary, part))
            tex.update(curves(summary, part))
            tex.update(small_tables(summary, part))
            nums.update(small_numbers(summary, part))
        files.update(tex)
        numbers.update(nums)
    files.update(timing(summary))
    numbers["fsTotalMinutes"] = _fmt(_total_seconds(summary) / 60, 0)
    numbers["fsQuick"] = "yes" if summary["settings"]["quick"] else "no"
    for part, choices in summary["choices"].items():
        if "model" in choices:
            numbers[_macro(part, "", "params")] = f"{choices['model']['parameters'] / 1e6:.2f}M"
            numbers[_macro(part, "", "pretrainminutes")] = _fmt(choices["model"]["seconds"] / 60, 0)
    files["numbers.tex"] = "% generated by experiments/fewest_steers/analyze.py; do not edit\n" + "".join(
        f"\\newcommand{{\\{k}}}{{{v}}}\n" for k, v in sorted(numbers.items()))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(files.items()):
        (out / name).write_text(text)
    for name in [n for n in files if n.startswith("curves_")]:
        part = name.removeprefix("curves_").removesuffix(".csv")
        plot_curves(files[name], out / f"curves_{part}.pdf", f"{part}: held-out steering vs annotation cost")
    return sorted(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, help="run.py's --out folder")
    parser.add_argument("--render-only", action="store_true", help="render paper/generated from the committed summary")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    parser.add_argument("--generated", type=Path, default=GENERATED)
    args = parser.parse_args()
    if not args.render_only:
        if args.out is None:
            parser.error("give run.py's --out folder, or --render-only")
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(summarize(args.out), indent=1, sort_keys=True) + "\n")
    names = render(json.loads(args.summary.read_text()), args.generated)
    print(f"{len(names)} files in {args.generated} from {args.summary}")


if __name__ == "__main__":
    main()
