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

Statistics (``localpref.stats``). The headline is steers to verify (``localpref.steering``: steers
spent per held-out prompt, a prompt not verified within the budget counting as budget + 1; every
prompt counts). Runs are seeds x the same held-out prompts, so steering figures (steers to verify,
verified within budget, pass rate) get a two-way bootstrap over seeds and prompts (both sources of
noise; a rate's interval never leaves [0, 1]); a method against localized DPO is paired over both
(the same resampled seeds, which share their collected steers, and prompts), beside an exact
paired permutation (sign-flip) test over seeds. Span log-prob accuracy, a rate known per run only,
gets a Wilson interval pooled over the seeds' held-out steers; the unbounded preference metrics
(NLL, KL) a Student-t interval over seeds.

Several ``OUT`` folders may be given (parts run separately), and ``--keep-parts-from FILE`` keeps
the parts of an earlier summary that no given folder re-ran: they are marked ``reanalysed`` in the
settings (their runs used the loop of their day; analysis re-derives the headline from their
per-prompt outcomes).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))  # this checkout's localpref; its kernels/ (no __init__.py) shadows nothing
from localpref.stats import crossed_bootstrap, paired_permutation_test, pooled_wilson_interval, t_interval  # noqa: E402

SUMMARY = HERE / "results" / "summary.json"
GENERATED = REPO / "paper" / "generated"
ORDER = ["sft_span", "sft_rewrite", "dpo_rewrite", "localized", "localized_anchor", "step_dpo", "variant",
         "dpop", "cal_dpo", "control"]
LABELS = {"base": "base model", "sft_span": "1 SFT, corrected spans", "sft_rewrite": "2 SFT, full rewrites",
          "dpo_rewrite": "3 DPO, output vs rewrite", "localized": "4 localized DPO (hunk)",
          "localized_anchor": "5 localized + SFT anchor", "step_dpo": "6 Step-DPO (continuation)",
          "variant": "7 localized variant", "dpop": "8 DPOP (localized)", "cal_dpo": "9 Cal-DPO (localized)",
          "control": "control: SFT on rewrites, no budget"}
# Per-prompt outcomes (``steering.prompt_outcomes``): columns of the two-way bootstrap.
STV, VERIFIED, PASSED = 0, 1, 2
STEER_COLS = [(STV, "steers to verify"), (VERIFIED, "verified $\\le$ budget"), (PASSED, "pass rate")]
PREF_COLS = [("eval/span/nll", "span NLL"), ("eval/drift/nll", "drift NLL"), ("eval/drift/kl", "KL")]


# ------------------------------------------------------------------------------------------------
# Step 1: OUT -> summary.json


def first_error_kind(record: dict) -> str:
    """How the unsteered answer of a steering record first errs: "none", "systematic" (the family's
    rule, ``TaskFamily.systematic_error``) or "other"."""
    from localpref.tasks import get_family

    task, text = record["meta"]["task"], record["meta"]["original"]
    family = get_family(task["family"])
    k = family.first_error_unit(task, text, final=True)
    if k is None:
        return "none"
    return "systematic" if family.systematic_error(task, text, k) else "other"


def summarize(outs: list[Path], keep_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the paper needs from run folders (merged), small enough to commit; the parts of
    ``keep_from`` (an earlier summary) that no folder holds are kept, marked ``reanalysed``."""
    merged = [_summarize_one(out) for out in outs]
    summary = {"settings": {"quick": merged[0]["settings"]["quick"], "parts": {}, "reanalysed": []},
               "runs": [], "collections": {}, "choices": {}, "timing": []}
    for m in merged:
        if m["settings"]["quick"] != summary["settings"]["quick"]:
            raise SystemExit("cannot merge a quick run with a full one")
        for key in ("methods", "variants"):
            summary["settings"][key] = m["settings"].get(key, {})
    if keep_from is not None:
        fresh = {p for m in merged for p in m["settings"]["parts"]}
        kept = [p for p in keep_from["settings"]["parts"] if p not in fresh]
        merged.insert(0, {"settings": {"parts": {p: keep_from["settings"]["parts"][p] for p in kept}},
                          "runs": [r for r in keep_from["runs"] if r["part"] in kept],
                          "collections": {p: v for p, v in keep_from["collections"].items() if p in kept},
                          "choices": {p: v for p, v in keep_from["choices"].items() if p in kept},
                          "timing": [t for t in keep_from["timing"] if t["part"] in kept]})
        summary["settings"]["reanalysed"] = sorted(set(kept) | set(keep_from["settings"].get("reanalysed", [])) - fresh)
        merged[0]["settings"]["pilot"] = [p for p in keep_from["settings"].get("pilot_parts", []) if p in kept]
    for m in merged:
        summary["settings"]["parts"].update(m["settings"]["parts"])
        summary["runs"] += m["runs"]
        mine = m["settings"]["parts"]  # a folder's files of other parts (e.g. a variant.json it was given) are not its own
        summary["collections"].update({p: v for p, v in m["collections"].items() if p in mine})
        summary["choices"].update({p: v for p, v in m["choices"].items() if p in mine})
        summary["timing"] += [t for t in m["timing"] if t["part"] != "all"]
    # parts run with --pilot (one learning rate, core methods): marked in the tables
    # (a run folder's settings say pilot: true; kept parts of an earlier summary carry their list)
    pilot = [m["settings"].get("pilot") for m in merged]
    summary["settings"]["pilot_parts"] = sorted({p for m, flag in zip(merged, pilot) for p in m["settings"]["parts"]
                                                 if flag is True or p in (flag or [])})
    order = list(summary["settings"]["parts"])
    summary["settings"]["parts"] = {p: summary["settings"]["parts"][p] for p in sorted(order, key=_PART_ORDER)}
    return summary


def dump_summary(summary: dict[str, Any]) -> str:
    """The summary as JSON: objects indented (diffs stay readable), each list without an object in it
    on one line (per-prompt outcomes one line per run: the file stays small enough to commit)."""
    leaves: list[str] = []

    def mark(o):
        if isinstance(o, dict):
            return {k: mark(v) for k, v in o.items()}
        if isinstance(o, list) and any(isinstance(x, dict) for x in o):
            return [mark(x) for x in o]
        if isinstance(o, list):
            leaves.append(json.dumps(o, separators=(",", ":")))
            return f"\0{len(leaves) - 1}"
        return o

    text = json.dumps(mark(summary), indent=1, sort_keys=True)
    return re.sub(r'"\\u0000(\d+)"', lambda m: leaves[int(m.group(1))], text) + "\n"


def _PART_ORDER(part: str) -> tuple[int, int]:
    """The tiny parts by family and regime (random, systematic, mixed), then SmolLM2's, then DeFacto."""
    known = ["tiny-ranges", "tiny-lists", "tiny-arith", "smollm2-style", "smollm2-lists", "defacto"]
    for i, name in enumerate(known):
        for j, regime in enumerate(("", "-systematic", "-mixed")):
            if part == name + regime:
                return i, j
    return len(known), 0


def _summarize_one(out: Path) -> dict[str, Any]:
    """One ``run.py --out`` folder."""
    from localpref.steering import prompt_outcomes, read_records

    runs = []
    listed = {f"{m.parent.name}/runs/{line}" for m in out.glob("*/runs.txt") for line in m.read_text().split()}
    for f in sorted(out.glob("*/runs/*/*/result.json")):
        if str(f.parent.relative_to(out)) not in listed:
            continue  # a run of older settings left in the folder
        r = json.loads(f.read_text())
        keep = {k: v for k, v in r.items() if k not in ("overrides",)}
        keep["metrics"] = {k: v for k, v in r["metrics"].items() if k.startswith("eval/")}
        trajectories = f.parent / "steer_eval.jsonl"
        if r["stage"] in ("final", "final_t1", "base", "trainprompts", "iterate") and trajectories.exists():  # per prompt, id order
            records = sorted(read_records(trajectories), key=lambda x: x["id"])
            keep["prompts"] = [prompt_outcomes(x) for x in records]
            keep["subfamilies"] = [x["meta"]["task"].get("subfamily") for x in records]
            keep["first_errors"] = [first_error_kind(x) for x in records]
            if r["stage"] == "trainprompts":  # which of these prompts the method's budget paid for
                data = next(o.split("=", 1)[1] for o in r["overrides"] if o.startswith("data.path="))
                taken = {x["id"] for x in read_records(data)[:int(r["data"]["data/collected/trajectories_taken"])]}
                keep["trained"] = [int(x["id"] in taken) for x in records]
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
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "--"
    if math.isinf(x):
        return "$\\infty$"
    return f"{x:.{digits}f}"


def _finite(values: list[float | None]) -> list[float]:
    """The values that are there (a part without held-out steers has no span metrics: None). An
    infinite value is not dropped: it makes the mean infinite (see ``_mean``)."""
    return [v for v in values if v is not None and not math.isnan(v)]


def _mean(values: list[float | None], digits: int = 2) -> str:
    """The mean over seeds of the recorded values ('--' when there are none); one infinite seed
    makes the mean infinite, it is never left out."""
    present = _finite(values)
    if not present:
        return "--"
    return _fmt(math.inf if any(math.isinf(v) for v in present) else sum(present) / len(present), digits)


def _ci(values: list[float | None], digits: int = 2, floor: float | None = None) -> str:
    """'m [lo, hi]': mean and 95% Student-t interval over seeds (or 'm' for one seed), for per-run
    quantities that are not rates (NLL, KL, characters); an infinite seed gives an infinite mean, no
    interval. ``floor``: where the quantity is bounded below (KL >= 0), the low bound is clipped there."""
    present = _finite(values)
    if not present:
        return "--"
    if any(math.isinf(v) for v in present) or len(present) == 1:
        return _mean(present, digits)
    m, lo, hi = t_interval(present)
    return f"{_fmt(m, digits)} [{_fmt(lo if floor is None else max(floor, lo), digits)}, {_fmt(hi, digits)}]"


def _pref_cell(runs: list[dict], key: str) -> str:
    return _ci(_metric(runs, key), floor=0.0 if key.endswith("/kl") else None)


def _interval(m: float, lo: float, hi: float, digits: int = 2) -> str:
    return f"{_fmt(m, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _table(name: str, header: list[str], rows: list[list[str]], caption: str) -> dict[str, str]:
    """The same table as LaTeX (booktabs) and Markdown."""
    wide = len(header) > 6  # scaled to the page width
    tex = ["% generated by experiments/fewest_steers/analyze.py; do not edit", "\\begin{table}[t]", "\\centering",
           "\\scriptsize", f"\\caption{{{caption}}}", f"\\label{{tab:{name}}}",
           *(["\\resizebox{\\linewidth}{!}{%"] if wide else []),
           "\\begin{tabular}{l" + "r" * (len(header) - 1) + "}", "\\toprule", " & ".join(header) + " \\\\", "\\midrule"]
    tex_cell = lambda c: c if "$" in c else c.replace("_", "\\_")  # noqa: E731  (final_t1: text, not a subscript)
    tex += [" & ".join(tex_cell(c) for c in r) + " \\\\" for r in rows]
    tex += ["\\bottomrule", "\\end{tabular}" + ("}" if wide else ""), "\\end{table}", ""]
    md = ["| " + " | ".join(h.replace("$\\le$", "≤") for h in header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(c.replace("\\%", "%").replace("$\\infty$", "∞") for c in r) + " |" for r in rows]
    return {f"{name}.tex": "\n".join(tex), f"{name}.md": "\n".join(md) + "\n"}


def _runs(summary, part: str, stage: str, **match) -> list[dict]:
    runs = [r for r in summary["runs"] if r["part"] == part and r["stage"] == stage
            and all(r.get(k) == v for k, v in match.items())]
    return sorted(runs, key=lambda r: r["seed"])  # seed order: paired comparisons match seeds by position


def _main_budget(final: list[dict]) -> float:
    """A part's main annotation budget: the largest of its runs' (the control's is None: no budget)."""
    return max(r["budget"] for r in final if r["budget"] is not None)


def _budget_of(method: str, budget: float) -> float | None:
    """The budget a method's runs are filed under at the part's main budget (the control: none)."""
    return None if method == "control" else budget


def _metric(runs: list[dict], key: str) -> list[float]:
    return [r["metrics"].get(key) for r in runs]


def _steer_budget(summary, part: str) -> int:
    return int(summary["settings"]["parts"][part]["steer_budget"])


def _outcomes(run: dict, budget: int, keep: list[int] | None = None) -> list[tuple[int, int, int]]:
    """Per prompt (id order): (steers to verify, verified, passed). Runs summarized before the
    loop recorded a pass per prompt hold [steers, verified]: a pass is then a prompt verified with
    no steer (the unsteered answer verified), which is the same thing."""
    rows = []
    for i, p in enumerate(run["prompts"]):
        if keep is not None and i not in keep:
            continue
        steers, verified = int(p[0]), int(p[1])
        passed = int(p[2]) if len(p) > 2 else int(steers == 0 and verified)
        rows.append((steers if verified else budget + 1, verified, passed))
    return rows


def _capped(runs: list[dict]) -> str:
    """Prompts that ended on the token cap, summed over seeds ('?': the runs did not record it)."""
    if not runs or any(len(p) < 4 for r in runs for p in r["prompts"]):
        return "?"
    return str(sum(p[3] for r in runs for p in r["prompts"]))


def _column(matrix: list[list[tuple]], col: int) -> list[list[float]]:
    """Column ``col`` of the outcomes: a (seeds, prompts) matrix for ``crossed_bootstrap``."""
    return [[float(row[col]) for row in m] for m in matrix]


def _same_prompts(*matrices: list[list[tuple]]) -> None:
    sizes = {len(row) for m in matrices for row in m}
    if len(sizes) != 1:  # runs that steered other prompts (or a torn file) cannot be paired by position
        raise ValueError(f"runs of one comparison steered different numbers of prompts: {sorted(sizes)}")


def steering_ci(matrix: list[list[tuple]], col: int) -> tuple[float, float, float]:
    """(mean, lo, hi) of a steering figure over seeds x prompts, two-way bootstrap (``localpref.stats``).
    A rate whose outcomes are all equal (a pass rate of 0 everywhere) gives every resample the same
    value, a zero-width interval that hides how few prompts were seen: then the Wilson interval of
    all seeds' prompts pooled is given instead."""
    _same_prompts(matrix)
    mean, lo, hi = crossed_bootstrap(_column(matrix, col))
    values = {row[col] for m in matrix for row in m}
    if col != STV and len(values) == 1:
        n = len(matrix) * len(matrix[0])
        return (mean, *pooled_wilson_interval([round(mean * n)], [n]))
    return mean, lo, hi


def paired_ci(a: list[list[tuple]], b: list[list[tuple]], col: int) -> tuple[float, float, float]:
    """(mean, lo, hi) of a - b, paired over seeds (position) and prompts: the same resample for both."""
    _same_prompts(a, b)
    diff = [[x - y for x, y in zip(ra, rb)] for ra, rb in zip(_column(a, col), _column(b, col))]
    return crossed_bootstrap(diff)


def _steer_cells(runs: list[dict], budget: int, keep: list[int] | None = None) -> list[str]:
    """Steers to verify, verified within budget, pass rate: 'm [lo, hi]' over seeds x prompts."""
    if not runs or any("prompts" not in r for r in runs):
        return ["--"] * len(STEER_COLS)
    matrix = [_outcomes(r, budget, keep) for r in runs]
    if not matrix[0]:
        return ["--"] * len(STEER_COLS)
    return [_interval(*steering_ci(matrix, col)) for col, _ in STEER_COLS]


def _rate_cell(runs: list[dict], budget: int, col: int, key: str, keep: list[int] | None = None) -> str:
    """A steering rate (``col`` of the outcomes) over seeds x prompts; runs that kept no per-prompt
    outcomes fall back to a Wilson interval pooled over their prompts (``key`` x ``tasks``)."""
    if not runs:
        return "--"
    if all("prompts" in r for r in runs):
        return _steer_cells(runs, budget, keep)[[c for c, _ in STEER_COLS].index(col)]
    return "--" if keep is not None else _metric_rate(runs, key)


def _metric_rate(runs: list[dict], key: str) -> str:
    """A logged steering rate pooled over runs: Wilson over their prompts (``key`` x ``tasks``)."""
    have = [r for r in runs if r["metrics"].get(key) is not None]
    if not have:
        return "--"
    tasks_key = key.rsplit("/", 1)[0] + "/tasks"
    ns = [int(r["metrics"][tasks_key]) for r in have]
    ks = [round(r["metrics"][key] * n) for r, n in zip(have, ns)]
    return _interval(sum(ks) / sum(ns), *pooled_wilson_interval(ks, ns))


def _stv(run: dict, budget: int, keep: list[int] | None = None) -> float | None:
    """A run's steers to verify: from its prompts when recorded, else its logged metric (None: neither)."""
    if "prompts" in run:
        rows = _outcomes(run, budget, keep)
        return sum(r[STV] for r in rows) / len(rows) if rows else None
    return run["metrics"].get("eval/steer/steers_to_verify")


def _accuracy(runs: list[dict], key: str = "eval/span/logp_accuracy") -> str:
    """A per-steer rate (span log-prob or reward accuracy) pooled over the seeds' held-out steers,
    Wilson interval (a reward tie counts 1/2, so a count is rounded to the nearest whole steer)."""
    have = [r for r in runs if r["metrics"].get(key) is not None and r["data"].get("data/eval_pairs")]
    if not have:
        return "--"
    ns = [int(r["data"]["data/eval_pairs"]) for r in have]
    ks = [round(r["metrics"][key] * n) for r, n in zip(have, ns)]
    return _interval(sum(r["metrics"][key] * n for r, n in zip(have, ns)) / sum(ns), *pooled_wilson_interval(ks, ns))


def headline(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """Per method at the main budget: held-out steering (seeds x prompts) and preference metrics."""
    final = _runs(summary, part, "final")
    if not final:
        return {}, {}
    budget, steer_budget = _main_budget(final), _steer_budget(summary, part)
    numbers = {}
    rows = []
    for method in ["base", *ORDER]:
        runs = (_runs(summary, part, "base", eval_split="heldout") if method == "base"
                else _runs(summary, part, "final", method=method, budget=_budget_of(method, budget)))
        if not runs:
            continue
        label = LABELS[method] + (f" ({summary['choices'][part]['variant']['chosen'].replace('_', '-')})"
                                  if method == "variant" and "variant" in summary["choices"].get(part, {}) else "")
        chars = "0" if method == "base" else _fmt(sum(r["budget_chars"] for r in runs) / len(runs), 0)
        cells = _steer_cells(runs, steer_budget)
        rows.append([label, chars, *cells, _capped(runs), _mean(_metric(runs, "eval/steer/steers_per_verified")),
                     _mean(_metric(runs, "eval/steer/first_error_unit")), _accuracy(runs),
                     *[_pref_cell(runs, k) for k, _ in PREF_COLS]])
        numbers[_macro(part, method, "stv")] = cells[0]
        numbers[_macro(part, method, "stvmean")] = cells[0].split(" ")[0]
        numbers[_macro(part, method, "pass")] = cells[2].split(" ")[0]
        numbers[_macro(part, method, "passci")] = cells[2]
        numbers[_macro(part, method, "first")] = _mean(_metric(runs, "eval/steer/first_error_unit"))
        numbers[_macro(part, method, "acc")] = _accuracy(runs)
        numbers[_macro(part, method, "verified")] = cells[1].split(" ")[0]
        numbers[_macro(part, method, "spv")] = _mean(_metric(runs, "eval/steer/steers_per_verified"))
        numbers[_macro(part, method, "capped")] = _capped(runs)
        taken = [r["data"].get("data/collected/trajectories_taken") for r in runs if method != "base"]
        numbers[_macro(part, method, "prompts")] = _mean(taken, 0) if taken else "--"  # train prompts the budget paid for
        for what, key in (("spannll", "eval/span/nll"), ("kl", "eval/drift/kl")):
            numbers[_macro(part, method, what)] = _mean(_metric(runs, key))
    seeds = len({r["seed"] for r in final})
    header = ["method", "chars", *[c for _, c in STEER_COLS], "token cap", "steers / verified", "first error (unit)",
              "span log-p acc.", *[c for _, c in PREF_COLS]]
    caption = (f"{part}: held-out steering (greedy, at most {steer_budget} steers per prompt) and held-out steer "
               f"preference metrics after training at equal annotation cost (chars typed), {seeds} training seeds. "
               f"Steers to verify: steers spent per prompt, a prompt not verified within the budget counting as "
               f"{steer_budget + 1} (every prompt counts); with verified $\\le$ budget and pass rate: mean [95\\% "
               f"two-way bootstrap interval over seeds and prompts]. Token cap: prompts (over all seeds) that ended "
               f"unverified on the per-prompt token cap ('?': not recorded by runs of the older loop). Steers / "
               f"verified (the earlier headline, which leaves out prompts that end unverified without a steer) and "
               f"first error: means over seeds. Span log-p acc.: Wilson interval pooled over the seeds' held-out "
               f"steers; NLL and KL: Student-t over seeds (KL's low bound clipped at 0).")
    return _table(f"headline_{part}", header, rows, caption), numbers


def _regime(summary, part: str) -> str:
    """A part's error regime: tiny task models' ``errors`` (random before regimes existed); "own"
    for a real model's own habits."""
    settings = summary["settings"]["parts"][part]
    if not str(settings.get("model", [""])[0]).startswith("model=tiny_task"):
        return "own"
    return settings.get("errors", "random")


def error_profile(runs: list[dict]) -> tuple[int, int, int]:
    """(prompts, first errors, systematic first errors) of unsteered answers, over runs."""
    kinds = [k for r in runs for k in r.get("first_errors", [])]
    return len(kinds), sum(k != "none" for k in kinds), sum(k == "systematic" for k in kinds)


def _base_for(runs: list[dict], base: list[dict]) -> list[dict]:
    """The base-model run paired with each of ``runs``: the one of the same seed, else the first (the
    base model is one model, evaluated greedily: its seeds' outcomes are the same)."""
    by_seed = {b["seed"]: b for b in base}
    return [by_seed.get(r["seed"], base[0]) for r in runs]


def control_power(summary, part: str) -> tuple[str, tuple[float, float, float] | None]:
    """("yes" | "no" | "no control", (diff, lo, hi)): does the positive control lower held-out steers
    to verify below the base model's, its paired interval (seeds x prompts) excluding 0?"""
    steer_budget = _steer_budget(summary, part)
    control = _runs(summary, part, "final", method="control")
    base = _runs(summary, part, "base", eval_split="heldout")
    if not control or not base or any("prompts" not in r for r in control + base):
        return "no control", None
    d = paired_ci([_outcomes(r, steer_budget) for r in control],
                  [_outcomes(r, steer_budget) for r in _base_for(control, base)], STV)
    return ("yes" if d[2] < 0 else "no"), d


def dial(summary) -> tuple[dict[str, str], dict[str, str]]:
    """One row per (family, regime, method) at each part's main budget: held-out steers to verify,
    verified within budget, pass rate (two-way bootstrap), the difference from the base model
    (paired), chosen-span NLL and KL (Student-t over seeds), and whether the part's positive
    control has power. Plus, per part, the base model's greedy error profile on held-out prompts."""
    rows, numbers, csv_rows = [], {}, []
    for part in sorted(summary["settings"]["parts"], key=_PART_ORDER):  # sort_keys put them in name order
        settings = summary["settings"]["parts"][part]
        final = _runs(summary, part, "final")
        if not settings.get("family") or not final:
            continue
        budget, steer_budget = _main_budget(final), _steer_budget(summary, part)
        regime = _regime(summary, part)
        power, d = control_power(summary, part)
        numbers[_macro(part, "", "power")] = power
        if d is not None:
            numbers[_macro(part, "control", "vsbase")] = _interval(*d)
        base = _runs(summary, part, "base", eval_split="heldout")
        n, errs, syst = error_profile(base[:1])
        numbers[_macro(part, "base", "firsterrors")] = f"{errs}/{n}"
        numbers[_macro(part, "base", "systematic")] = f"{syst}/{errs}" if errs else "0/0"
        for method in ["base", *ORDER]:
            runs = (base if method == "base" else
                    _runs(summary, part, "final", method=method, budget=None if method == "control" else budget))
            if not runs:
                continue
            cells = _steer_cells(runs, steer_budget)
            if method == "base" or any("prompts" not in r for r in runs + base):
                delta = "--"
            else:
                dd = paired_ci([_outcomes(r, steer_budget) for r in runs],
                               [_outcomes(r, steer_budget) for r in _base_for(runs, base)], STV)
                delta = _interval(*dd)
                numbers[_macro(part, method, "vsbase")] = delta
                csv_rows.append([part, settings["family"], regime, method,
                                 round(sum(r["budget_chars"] for r in runs) / len(runs), 1),
                                 *[round(x, 4) for x in steering_ci([_outcomes(r, steer_budget) for r in runs], STV)]])
            if method == "base":
                m, lo, hi = steering_ci([_outcomes(r, steer_budget) for r in runs], STV) if all(
                    "prompts" in r for r in runs) else (math.nan,) * 3
                csv_rows.append([part, settings["family"], regime, "base", 0, round(m, 4), round(lo, 4), round(hi, 4)])
            chars = "0" if method == "base" else _fmt(sum(r["budget_chars"] for r in runs) / len(runs), 0)
            pilot = " (pilot)" if part in summary["settings"].get("pilot_parts", []) else ""
            rows.append([settings["family"] + pilot, regime, LABELS[method], chars, *cells, delta,
                         _pref_cell(runs, "eval/span/nll"), _pref_cell(runs, "eval/drift/kl"),
                         power if method == "base" else ""])
            numbers[_macro(part, method, "dialstv")] = cells[0]
            numbers[_macro(part, method, "dialchars")] = chars
    if not rows:
        return {}, {}
    header = ["family", "regime", "method", "chars", *[c for _, c in STEER_COLS], "$\\Delta$ vs base",
              "span NLL", "KL", "control has power"]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["part", "family", "regime", "method", "chars", "stv", "lo", "hi"],
                                                    *csv_rows])
    tables = _table("dial", header, rows,
                    "The systematicity dial: held-out steering after training at each part's main annotation budget "
                    "(the control: SFT on full correct answers of every prompt of a train collection up to four times "
                    "the methods' -- a finite family has fewer: all its train prompts -- with no budget), per "
                    "family and error regime (random: the tiny model's pretraining errors were injected at random; "
                    "systematic: one rule wherever the prompt fires it; mixed: half each; own: SmolLM2's own habit). "
                    "Steers to verify, verified $\\le$ budget, pass rate: mean [95\\% two-way bootstrap over seeds and "
                    "prompts]; $\\Delta$ vs base: the same, paired (negative: fewer steers than the base model); span "
                    "NLL (chosen span) and KL: mean [95\\% Student-t over seeds]. Control has power: the control's "
                    "$\\Delta$ interval lies below 0; where it does not, the part cannot show a gain and no "
                    "conclusion is drawn from it.")
    tables["dial.csv"] = buf.getvalue()
    return tables, numbers


def profiles(summary) -> dict[str, str]:
    """The base models' greedy error profiles on held-out prompts, per part: how often the unsteered
    answer is right, and whether its first error is the family's rule (``first_error_kind``)."""
    rows = []
    for part in sorted(summary["settings"]["parts"], key=_PART_ORDER):
        settings = summary["settings"]["parts"][part]
        base = _runs(summary, part, "base", eval_split="heldout")
        n, errs, syst = error_profile(base[:1])  # greedy: every seed's base run is the same
        if not settings.get("family") or not n:
            continue
        pilot = " (pilot)" if part in summary["settings"].get("pilot_parts", []) else ""
        rows.append([settings["family"] + pilot, _regime(summary, part), str(n), _fmt((n - errs) / n),
                     _fmt(syst / n), _fmt((errs - syst) / n), _fmt(syst / errs) if errs else "--"])
    if not rows:
        return {}
    return _table("profiles", ["family", "regime", "held-out prompts", "pass", "first error: the rule",
                               "first error: other", "rule's share of first errors"], rows,
                  "The base models' greedy answers to the held-out prompts, before any steer: the share that "
                  "passes, and the shares whose first wrong unit is the family's rule (the systematic error: ranges, "
                  "\\emph{between} read inclusively; lists, a strict bound counted; arith, a dropped carry) or "
                  "anything else (a random slip, or what the model cannot do).")


def plot_dial(csv_text: str, path: Path) -> None:
    """The main figure: held-out steers to verify against characters typed, one panel per part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    parts = list(dict.fromkeys(r["part"] for r in rows))
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker.NullFormatter below)

    fig, axes = plt.subplots(1, len(parts), figsize=(3.1 * len(parts), 3.6), squeeze=False)
    for ax, part in zip(axes[0], parts):
        mine = [r for r in rows if r["part"] == part]
        base = next((r for r in mine if r["method"] == "base"), None)
        if base is not None and base["stv"] != "nan":
            ax.axhspan(float(base["lo"]), float(base["hi"]), color="0.85")
            ax.axhline(float(base["stv"]), color="0.4", lw=1, label="base model")
        for r in (r for r in mine if r["method"] != "base"):
            y, k = float(r["stv"]), ORDER.index(r["method"])
            x = float(r["chars"]) * 1.06 ** (k - len(ORDER) / 2)  # spread apart the methods at one cost
            ax.errorbar([x], [y], yerr=[[max(0.0, y - float(r["lo"]))], [max(0.0, float(r["hi"]) - y)]],
                        fmt="o" if r["method"] != "control" else "s", capsize=2, color=f"C{k % 10}",
                        label=LABELS[r["method"]])  # one colour per method in every panel
        ax.set(title=f"{mine[0]['family']}, {mine[0]['regime']}", xlabel="characters typed", xscale="log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0][0].set_ylabel("held-out steers to verify")
    handles = {}
    for ax in axes[0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), fontsize=7, loc="lower center", ncol=min(6, len(handles)))
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)


def temperature_condition(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """The second condition: steers collected at temperature 1.0 against the greedy collection, each
    method at its learning rate and the main budget of its collection's own cost."""
    t1 = _runs(summary, part, "final_t1")
    if not t1:
        return {}, {}
    steer_budget, numbers, rows = _steer_budget(summary, part), {}, []
    final = _runs(summary, part, "final")
    budget = _main_budget(final)
    for method in ORDER:
        hot = _runs(summary, part, "final_t1", method=method)
        greedy = _runs(summary, part, "final", method=method, budget=_budget_of(method, budget))
        if not hot or not greedy:
            continue
        g, h = _steer_cells(greedy, steer_budget)[0], _steer_cells(hot, steer_budget)[0]
        numbers[_macro(part, method, "tonestv")] = h
        rows.append([LABELS[method], _fmt(sum(r["budget_chars"] for r in greedy) / len(greedy), 0), g,
                     _fmt(sum(r["budget_chars"] for r in hot) / len(hot), 0), h])
    return _table(f"temperature_{part}", ["method", "chars (greedy)", "steers to verify, greedy collection",
                                          "chars (T=1.0)", "steers to verify, T=1.0 collection"], rows,
                  f"{part}: training steers collected greedily (as the evaluation decodes; the default) against "
                  f"steers collected at temperature 1.0, each at the main budget of its own collection: held-out "
                  f"steers to verify, mean [95\\% two-way bootstrap over seeds and prompts]."), numbers


def subfamilies(summary, part: str) -> dict[str, str]:
    """Prompts of sub-families trained on vs the one never trained on (heldout only)."""
    final = _runs(summary, part, "final")
    budget, steer_budget = (_main_budget(final), _steer_budget(summary, part)) if final else (None, None)
    if not final or "eval/steer/unseen/pass_rate" not in final[0]["metrics"]:
        return {}
    rows = []
    for method in ["base", *ORDER]:
        runs = (_runs(summary, part, "base", eval_split="heldout") if method == "base"
                else _runs(summary, part, "final", method=method, budget=_budget_of(method, budget)))
        if not runs:
            continue
        cells = []
        for group in ("seen", "unseen"):
            if all("subfamilies" in r for r in runs):
                keep = [i for i, g in enumerate(runs[0]["subfamilies"]) if g == group]
                c = _steer_cells(runs, steer_budget, keep)
                cells += [c[0], c[2]]
            else:  # runs summarized before sub-families were kept per prompt
                cells += [_mean(_metric(runs, f"eval/steer/{group}/steers_to_verify")),
                          _metric_rate(runs, f"eval/steer/{group}/pass_rate")]
        rows.append([LABELS[method], *cells])
    return _table(f"subfamilies_{part}", ["method", "seen: steers to verify", "seen: pass", "unseen: steers to verify",
                                          "unseen: pass"], rows,
                  f"{part}: held-out prompts of the sub-families trained on (seen) and of the one never trained "
                  f"on (unseen), main budget. Mean [95\\% two-way bootstrap interval over seeds and prompts; runs "
                  f"that kept no per-prompt sub-family: steers to verify '--', pass rate with a Wilson interval "
                  f"pooled over seeds].")


def paired(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each method against localized DPO: the difference in steers to verify, paired over seeds and
    prompts at once (a two-way bootstrap resampling seeds, which methods share with their
    collected steers, and the held-out prompts every run steers), and an exact paired permutation
    (sign-flip) test of the seeds' means."""
    final = _runs(summary, part, "final")
    if not final:
        return {}, {}
    budget, steer_budget = _main_budget(final), _steer_budget(summary, part)
    numbers = {}
    ref = _runs(summary, part, "final", method="localized", budget=budget)
    rows = []
    for method in ["base", *ORDER]:
        if method == "localized":
            continue
        other = (_runs(summary, part, "base", eval_split="heldout") if method == "base"
                 else _runs(summary, part, "final", method=method, budget=_budget_of(method, budget)))
        if not other or not ref:
            continue  # a method this part does not run
        if [r["seed"] for r in other] != [r["seed"] for r in ref] or any("prompts" not in r for r in other + ref):
            rows.append([LABELS[method], "--", "--", "--", str(len(other))])
            continue
        a = [_outcomes(r, steer_budget) for r in other]
        b = [_outcomes(r, steer_budget) for r in ref]
        diff, lo, hi = paired_ci(a, b, STV)
        cell = _interval(diff, lo, hi)
        per_seed = ([sum(x[STV] for x in m) / len(m) for m in a], [sum(x[STV] for x in m) / len(m) for m in b])
        p = paired_permutation_test(*per_seed) if len(a) >= 2 else math.nan
        numbers[_macro(part, method, "vsloc")] = cell
        numbers[_macro(part, method, "vslocp")] = _fmt(p, 3)
        rows.append([LABELS[method], cell, _fmt(p, 3), "yes" if lo > 0 or hi < 0 else "no", str(len(a))])
    return _table(f"paired_{part}", ["method", "$\\Delta$ vs 4 [95\\% CI, seeds $\\times$ prompts]",
                                     "p (sign-flip perm., seeds)", "CI excludes 0", "seeds"], rows,
                  f"{part}: steers to verify of each method minus localized DPO's (positive: the method needs more "
                  f"steers). The interval resamples seeds and held-out prompts together, the same resample for both "
                  f"methods (paired over both); p: exact two-sided sign-flip permutation test of the seeds' "
                  f"paired means (with three seeds p is never below 0.25). With three seeds both are coarse."), numbers


def curves(summary, part: str) -> dict[str, str]:
    """Steers to verify and pass rate against annotation cost (CSV + PDF figure), two-way intervals."""
    final = _runs(summary, part, "final")
    budgets = sorted({r["budget"] for r in final if r["budget"] is not None})
    if len(budgets) < 2:
        return {}
    steer_budget = _steer_budget(summary, part)
    rows = []
    for method in ORDER:
        if len({r["budget"] for r in _runs(summary, part, "final", method=method)} & set(budgets)) < 2:
            continue  # a method run at the main budget only (Part.curve_methods) has no curve
        for b in budgets:
            runs = _runs(summary, part, "final", method=method, budget=b)
            if runs and all("prompts" in r for r in runs):
                chars = sum(r["budget_chars"] for r in runs) / len(runs)
                matrix = [_outcomes(r, steer_budget) for r in runs]
                for name, col in (("steers_to_verify", STV), ("pass_rate", PASSED)):
                    m, lo, hi = steering_ci(matrix, col)
                    rows.append([method, b, round(chars, 1), name, round(m, 4), round(lo, 4), round(hi, 4)])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([["method", "budget", "chars", "metric", "mean", "lo", "hi"], *rows])
    return {f"curves_{part}.csv": buf.getvalue()}


_PERCENT = {0.1: "ten", 0.25: "twentyfive", 0.5: "fifty", 1.0: "hundred"}


def curve_numbers(curves_csv: str, part: str) -> dict[str, str]:
    """Macros for the prose from a part's curves: steers to verify '[lo, hi]' and characters per
    (method, budget), e.g. ``fsTinyRangesSystematicLocalizedBtwentyfiveStv``."""
    numbers = {}
    for row in csv.DictReader(io.StringIO(curves_csv)):
        word = _PERCENT.get(float(row["budget"]))
        if word is None or row["metric"] != "steers_to_verify":
            continue
        numbers[_macro(part, row["method"], f"b{word}-stv")] = _interval(float(row["mean"]), float(row["lo"]), float(row["hi"]))
        numbers[_macro(part, row["method"], f"b{word}-chars")] = _fmt(float(row["chars"]), 0)
    return numbers


def plot_curves(csv_text: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(io.StringIO(csv_text)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric, label in zip(axes, ("steers_to_verify", "pass_rate"), ("steers to verify", "pass rate")):
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
    steer_budget = _steer_budget(summary, part)
    tune = _runs(summary, part, "tune")
    lrs = sorted({r["lr"] for r in tune})
    for r in tune:
        i = "ABCDEFGH"[lrs.index(r["lr"])]
        numbers[_macro(part, r["method"], f"lr{i}-stv")] = _fmt(_stv(r, steer_budget))
        numbers[_macro(part, r["method"], f"lr{i}-spv")] = _fmt(r["metrics"].get("eval/steer/steers_per_verified"))
        numbers[_macro(part, r["method"], f"lr{i}-pass")] = _fmt(r["metrics"].get("eval/steer/pass_rate"))
        numbers[_macro(part, r["method"], f"lr{i}-spannll")] = _fmt(r["metrics"].get("eval/span/nll"))
        numbers[_macro(part, r["method"], f"lr{i}-kl")] = _fmt(r["metrics"].get("eval/drift/kl"))
    for i, lr in enumerate(lrs):
        numbers[_macro(part, "", f"lr{'ABCDEFGH'[i]}")] = f"{lr:g}"
    for r in _runs(summary, part, "base", eval_split="val", seed=tune[0]["seed"] if tune else None):
        numbers[_macro(part, "base", "val-stv")] = _fmt(_stv(r, steer_budget))
        numbers[_macro(part, "base", "val-spv")] = _fmt(r["metrics"].get("eval/steer/steers_per_verified"))
        numbers[_macro(part, "base", "val-pass")] = _fmt(r["metrics"].get("eval/steer/pass_rate"))
        numbers[_macro(part, "base", "val-spannll")] = _fmt(r["metrics"].get("eval/span/nll"))
    for r2 in [r for r in _runs(summary, part, "iterate") if r.get("round") == 2]:
        runs = [x for x in _runs(summary, part, "iterate") if x.get("round") == 2 and x["method"] == r2["method"]]
        numbers[_macro(part, r2["method"], "round-stv")] = (  # as in the rounds table
            _steer_cells(runs, steer_budget)[0] if all("prompts" in x for x in runs)
            else _ci([_stv(x, steer_budget) for x in runs]))
    return numbers


def trainprompts(summary, part: str) -> tuple[dict[str, str], dict[str, str]]:
    """The diagnostic: each method steering the train prompts, split into the prompts its budget
    paid for (trained on) and the rest, each beside the base model on the same prompts."""
    diag = _runs(summary, part, "trainprompts")
    base = [r for r in diag if r["method"] == "base"]
    if not diag or not base or any("trained" not in r for r in diag):
        return {}, {}
    steer_budget, base = _steer_budget(summary, part), base[0]
    rows, numbers = [], {}
    for r in sorted((r for r in diag if r["method"] != "base"), key=lambda r: ORDER.index(r["method"])):
        cells = []
        for flag, what in ((1, "trained"), (0, "untrained")):
            keep = [i for i, t in enumerate(r["trained"]) if t == flag]
            if not keep:
                cells += ["0", "--", "--", "--"]
                continue
            mine, theirs = [_outcomes(r, steer_budget, keep)], [_outcomes(base, steer_budget, keep)]
            d = _interval(*paired_ci(mine, theirs, STV))
            cells += [str(len(keep)), _fmt(_stv(base, steer_budget, keep)), _fmt(_stv(r, steer_budget, keep)), d]
            numbers[_macro(part, r["method"], f"{what}-n")] = str(len(keep))
            numbers[_macro(part, r["method"], f"{what}-base")] = cells[-3]
            numbers[_macro(part, r["method"], f"{what}-stv")] = cells[-2]
            numbers[_macro(part, r["method"], f"{what}-diff")] = d
        rows.append([LABELS[r["method"]], *cells])
    header = ["method", "trained: prompts", "base", "method", "$\\Delta$ [95\\% CI]",
              "untrained: prompts", "base", "method", "$\\Delta$ [95\\% CI]"]
    return _table(f"trainprompts_{part}", header, rows,
                  f"{part}: a diagnostic (seed {base['seed']}, main budget): steers to verify on the train prompts, "
                  f"split per method into the prompts its annotation budget paid for (trained on: the rewrite "
                  f"methods' budget pays for fewer prompts) and the rest, each against the base model on the same "
                  f"prompts; $\\Delta$ = method minus base, bootstrap over those prompts."), numbers


def small_tables(summary, part: str) -> dict[str, str]:
    """Tuning (lr per method on val), the variant study, the iterated rounds."""
    out = {}
    steer_budget = _steer_budget(summary, part)
    tune = _runs(summary, part, "tune")
    old = not all("eval/steer/steers_to_verify" in r["metrics"] for r in tune + _runs(summary, part, "variant"))
    # Runs of the older loop recorded no steers to verify for these single-run stages; they were
    # chosen on steers per verified output, so that is what their tables show, named as such.
    score = "steers / verified (older loop)" if old else "steers to verify"
    value = (lambda r: r["metrics"].get("eval/steer/steers_per_verified")) if old else (lambda r: _stv(r, steer_budget))
    if tune:
        lrs = sorted({r["lr"] for r in tune})
        rows = []
        for method in ORDER:
            if not _runs(summary, part, "tune", method=method):
                continue  # a method this part does not run
            cells = []
            for lr in lrs:
                rs = _runs(summary, part, "tune", method=method, lr=lr)
                cells.append(_fmt(value(rs[0])) if rs else "--")
            chosen = summary["choices"].get(part, {}).get("tuned", {}).get("lr", {}).get(method)
            rows.append([LABELS[method], *cells, f"{chosen:g}" if chosen else "--"])
        out.update(_table(f"tune_{part}", ["method", *[f"lr {lr:g}" for lr in lrs], "chosen"], rows,
                          f"{part}: {score} on val prompts (seed 0) for each learning rate; the lowest wins."))
    variant = _runs(summary, part, "variant")
    if variant:
        base = _runs(summary, part, "base", eval_split="val", seed=variant[0]["seed"])
        rows = [[r["method"].replace("_", "-") if r["stage"] == "variant" else LABELS["base"],
                 _fmt(value(r)), *[_fmt(r["metrics"].get(k)) for k in
                                                ("eval/steer/pass_rate", "eval/span/nll", "eval/drift/kl")]]
                for r in base + variant]
        out.update(_table(f"variant_{part}", ["candidate", score, "pass rate", "span NLL", "KL"],
                          rows, f"{part}: the study choosing method 7 (val prompts, seed 0, the grid's middle "
                                f"learning rate); the lowest {score} wins."))
    it = _runs(summary, part, "iterate")
    if it:
        rows = []
        final = _runs(summary, part, "final")
        top = _main_budget(final)
        for method in sorted({r["method"] for r in it}, key=ORDER.index):
            one = _runs(summary, part, "final", method=method, budget=top)
            r1 = [r for r in it if r["method"] == method and r.get("round") != 2]
            r2 = [r for r in it if r["method"] == method and r.get("round") == 2]
            spent = lambda runs: [r["data"].get("data/collected/chars", 0) for r in runs]  # noqa: E731
            stv = lambda runs: (_steer_cells(runs, steer_budget)[0] if runs and all("prompts" in r for r in runs)  # noqa: E731
                                else _ci([_stv(r, steer_budget) for r in runs]))
            rows.append([LABELS[method], *[stv(x) for x in (one, r1, r2)],
                         *[_rate_cell(x, steer_budget, PASSED, "eval/steer/pass_rate") for x in (one, r2)],
                         _ci(spent(one), 0), _ci([a + b for a, b in zip(spent(r1), spent(r2))], 0)])
        out.update(_table(f"rounds_{part}", ["method", "1 round (all)", "round 1 (half)", "2 rounds",
                                             "pass, 1 round", "pass, 2 rounds", "chars, 1 round",
                                             "chars, 2 rounds"], rows,
                          f"{part}: iterated on-policy rounds at equal total cost: steers to verify "
                          f"(and pass rate) after one round on the whole budget vs two rounds of half each, the "
                          f"second on steers collected from the round-1 model; the characters actually spent (the "
                          f"round-1 model may need fewer steers than the budget allows). Steers to verify and pass "
                          f"rate: mean [95\\% two-way bootstrap over seeds and prompts] (runs of the older loop, which "
                          f"kept no per-prompt outcome: a Student-t interval over seeds, or a Wilson interval pooled "
                          f"over seeds for the pass rate); characters: mean [95\\% Student-t interval over seeds]."))
    return out


def defacto(summary) -> tuple[dict[str, str], dict[str, str]]:
    runs = _runs(summary, "defacto", "final")
    if not runs:
        return {}, {}
    base = _runs(summary, "defacto", "base")
    before = [r["metrics"] for r in base]
    cols = [("eval/span/logp_accuracy", "span log-p acc."), ("eval/span/reward_accuracy", "reward acc."),
            ("eval/span/nll", "span NLL"), ("eval/drift/nll", "drift NLL"), ("eval/drift/kl", "KL")]
    cell = lambda rs, k: _accuracy(rs, k) if k.endswith("accuracy") else _pref_cell(rs, k)  # noqa: E731
    rows = [[LABELS["base"], "--"] + [cell(base, k) for k, _ in cols]]
    numbers = {}
    for method in sorted({r["method"] for r in runs}, key=lambda m: (ORDER + [m]).index(m)):
        rs = _runs(summary, "defacto", "final", method=method)
        rows.append([LABELS.get(method, method.replace("_", " ")), str(rs[0]["data"].get("data/train_pairs", "--"))]
                    + [cell(rs, k) for k, _ in cols])
        for what, key in (("spannll", "eval/span/nll"), ("acc", "eval/span/logp_accuracy"),
                          ("driftnll", "eval/drift/nll"), ("kl", "eval/drift/kl")):
            numbers[_macro("defacto", method, what)] = _mean(_metric(rs, key))
    for what, key in (("spannll", "eval/span/nll"), ("acc", "eval/span/logp_accuracy"),
                      ("driftnll", "eval/drift/nll"), ("kl", "eval/drift/kl")):
        numbers[_macro("defacto", "base", what)] = _mean([b.get(key) for b in before])
    tex = _table("defacto", ["method", "pairs"] + [c for _, c in cols], rows,
                 "DeFacto test split (human corrections of summaries, never tuned on): preference metrics of "
                 "SmolLM2-135M-Instruct + LoRA after training at equal annotation cost. Accuracies: Wilson interval "
                 "pooled over the seeds' steers; NLL, KL: mean [95\\% Student-t interval] over seeds.")
    return tex, numbers


def timing(summary) -> dict[str, str]:
    earlier = set(summary["settings"].get("reanalysed", []))
    name = lambda part: f"{part} (earlier run)" if part in earlier else part  # noqa: E731
    rows = [[name(t["part"]), t["stage"], str(t["jobs"]), _fmt(t["seconds"] / 60, 1)]
            for t in summary["timing"] if t["part"] != "all" and t["jobs"] and t["stage"] != "pretrain"]
    rows = [[name(part), "pretrain (model build)", "1", _fmt(seconds / 60, 1)]
            for part, seconds in _builds(summary).items()] + rows
    rows.append(["all", "", "", _fmt(_total_seconds(summary) / 60, 1)])
    note = (" Parts marked (earlier run) were run by an earlier version and re-analysed, not re-run; the "
            "total adds their stages to the re-run's." if earlier else "")
    return _table("timing", ["part", "stage", "jobs", "minutes"], rows,
                  "Wall-clock of each stage on a 2-core CPU (jobs: the stage's runs, on one or two worker processes; a "
                  "tiny model is built by one). The total sums them: what the run costs one stage at a time; "
                  "stages of different parts may have run side by side (the experiment's README gives the "
                  "wall-clock)." + note)


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
    for part in sorted(summary["settings"]["parts"], key=_PART_ORDER):
        if part == "defacto":
            tex, nums = defacto(summary)
        else:
            tex, nums = headline(summary, part)
            tables, paired_numbers = paired(summary, part)
            tex.update(tables)
            nums.update(paired_numbers)
            tex.update(subfamilies(summary, part))
            tex.update(curves(summary, part))
            if f"curves_{part}.csv" in tex:
                nums.update(curve_numbers(tex[f"curves_{part}.csv"], part))
            tex.update(small_tables(summary, part))
            nums.update(small_numbers(summary, part))
            tables, diag_numbers = trainprompts(summary, part)
            tex.update(tables)
            nums.update(diag_numbers)
            tables, t1_numbers = temperature_condition(summary, part)
            tex.update(tables)
            nums.update(t1_numbers)
        files.update(tex)
        numbers.update(nums)
    files.update(timing(summary))
    tables, dial_numbers = dial(summary)
    files.update(tables)
    files.update(profiles(summary))
    numbers.update(dial_numbers)
    numbers["fsTotalMinutes"] = _fmt(_total_seconds(summary) / 60, 0)
    numbers["fsQuick"] = "yes" if summary["settings"]["quick"] else "no"
    numbers["fsPilot"] = ", ".join(summary["settings"].get("pilot_parts", [])) or "none"
    numbers["fsReanalysed"] = ", ".join(summary["settings"].get("reanalysed", [])) or "none"
    for part, settings in summary["settings"]["parts"].items():
        if settings.get("family"):
            numbers[_macro(part, "", "budget")] = str(settings["steer_budget"])
            numbers[_macro(part, "", "budgetplusone")] = str(settings["steer_budget"] + 1)
            numbers[_macro(part, "", "maxnewtokens")] = str(settings["max_new_tokens"])
            cap = settings.get("max_task_tokens") or (4 * settings["max_new_tokens"] if part not in
                                                      summary["settings"].get("reanalysed", []) else None)
            numbers[_macro(part, "", "tasktokens")] = str(cap) if cap else "none"
    for part, choices in summary["choices"].items():
        if "model" in choices:
            numbers[_macro(part, "", "params")] = f"{choices['model']['parameters'] / 1e6:.2f}M"
            numbers[_macro(part, "", "pretrainminutes")] = _fmt(choices["model"]["seconds"] / 60, 0)
    files["numbers.tex"] = "% generated by experiments/fewest_steers/analyze.py; do not edit\n" + "".join(
        f"\\newcommand{{\\{k}}}{{{v}}}\n" for k, v in sorted(numbers.items()))
    out.mkdir(parents=True, exist_ok=True)
    for name, text in sorted(files.items()):
        (out / name).write_text(text)
    figures = []
    for name in [n for n in files if n.startswith("curves_")]:
        part = name.removeprefix("curves_").removesuffix(".csv")
        figures.append(f"curves_{part}.pdf")
        plot_curves(files[name], out / figures[-1], f"{part}: held-out steering vs annotation cost")
    if "dial.csv" in files:
        figures.append("dial.pdf")
        plot_dial(files["dial.csv"], out / "dial.pdf")
    for stale in out.iterdir():  # a table an older summary wrote and this one does not: gone, not left stale
        if stale.suffix in (".tex", ".md", ".csv", ".pdf") and stale.name not in files and stale.name not in figures:
            stale.unlink()
    return sorted(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="*", type=Path, help="run.py's --out folder(s) (parts run separately)")
    parser.add_argument("--keep-parts-from", type=Path, default=None, metavar="SUMMARY",
                        help="keep the parts of this earlier summary.json that no given folder re-ran (marked reanalysed)")
    parser.add_argument("--render-only", action="store_true", help="render paper/generated from the committed summary")
    parser.add_argument("--summary", type=Path, default=SUMMARY)
    parser.add_argument("--generated", type=Path, default=GENERATED)
    args = parser.parse_args()
    if not args.render_only:
        if not args.out:
            parser.error("give run.py's --out folder, or --render-only")
        keep = json.loads(args.keep_parts_from.read_text()) if args.keep_parts_from else None
        summary = summarize(args.out, keep)  # read before writing: --keep-parts-from may be --summary
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(dump_summary(summary))
    names = render(json.loads(args.summary.read_text()), args.generated)
    print(f"{len(names)} files in {args.generated} from {args.summary}")


if __name__ == "__main__":
    main()
