"""The fewest-steers analysis (experiments/fewest_steers/analyze.py) on hand-made runs, and the
committed tables: every prompt counts, rate intervals stay in [0, 1], merged parts are marked."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fs_analyze", REPO / "experiments" / "fewest_steers" / "analyze.py")
analyze = importlib.util.module_from_spec(spec)
spec.loader.exec_module(analyze)

RATE_COLUMNS = ("pass rate", "verified ≤ budget", "span log-p acc.", "reward acc.", "seen: pass", "unseen: pass")


def run(method, seed, prompts, **kw):
    return {"part": "p", "stage": kw.pop("stage", "final"), "method": method, "seed": seed, "budget": 1.0,
            "budget_chars": 100, "metrics": kw.pop("metrics", {}), "data": {"data/eval_pairs": 0}, "prompts": prompts, **kw}


def summary(runs):
    return {"settings": {"parts": {"p": {"steer_budget": 2, "family": "lists", "max_new_tokens": 8}}, "quick": False},
            "runs": runs, "choices": {}, "collections": {}, "timing": []}


def test_every_prompt_counts_in_the_headline():
    # budget 2: a prompt verified after 1 steer counts 1; one not verified (budget spent, or ended on
    # the token cap with no steer) counts 3. Old-style prompts [steers, verified]: a pass is a
    # prompt verified with no steer.
    r = run("localized", 0, [[1, 1, 0, 0], [0, 0, 0, 1], [2, 0, 0, 0], [0, 1, 1, 0]])
    assert analyze._outcomes(r, 2) == [(1, 1, 0), (3, 0, 0), (3, 0, 0), (0, 1, 1)]
    assert analyze._outcomes(run("x", 0, [[0, 1], [0, 0]]), 2) == [(0, 1, 1), (3, 0, 0)]
    assert analyze._stv(r, 2) == pytest.approx(7 / 4) and analyze._capped([r]) == "1"
    assert analyze._capped([run("x", 0, [[0, 1]])]) == "?"  # not recorded by the older loop


def test_rate_intervals_stay_in_the_unit_interval_and_hold_seed_noise():
    # three seeds that agree on a pass rate of 1/20: never a negative bound, never zero width
    runs = [run("localized", s, [[0, 1, 1, 0]] + [[2, 0, 0, 0]] * 19) for s in range(3)]
    m, lo, hi = analyze.steering_ci([analyze._outcomes(r, 2) for r in runs], analyze.PASSED)
    assert m == pytest.approx(0.05) and 0.0 <= lo < m < hi <= 1.0


def test_means_keep_infinite_seeds():
    assert analyze._mean([2.0, math.inf, 3.0]) == "$\\infty$"  # not 2.50: the seed is not dropped
    assert analyze._mean([2.0, None, 3.0]) == "2.50"  # a metric a run does not have is not a value
    assert analyze._ci([1.0, 2.0, 3.0]) == "2.00 [-0.48, 4.48]"  # Student-t, 2 df: 2 +- 4.3027 / sqrt 3


def test_paired_table_resamples_seeds_and_prompts():
    ref = [run("localized", s, [[1, 1, 0, 0]] * 10) for s in range(3)]
    dpo = [run("dpo_rewrite", s, [[0, 1, 1, 0]] * 10) for s in range(3)]  # one steer fewer everywhere
    tables, numbers = analyze.paired(summary(ref + dpo), "p")
    assert numbers["fsPDpoRewriteVsloc"] == "-1.00 [-1.00, -1.00]"
    assert numbers["fsPDpoRewriteVslocp"] == "0.250"  # three equal differences: the sign test's 2 / 2^3
    assert "| 3 DPO, output vs rewrite | -1.00 [-1.00, -1.00] | 0.250 | yes | 3 |" in tables["paired_p.md"]


def test_merging_keeps_older_parts_marked_reanalysed(tmp_path):
    out = tmp_path / "out"
    (out / "q").mkdir(parents=True)
    (out / "settings.json").write_text(json.dumps({"quick": False, "parts": {"q": {"steer_budget": 4}}}))
    (out / "timing.jsonl").write_text(json.dumps({"part": "q", "stage": "base", "jobs": 1, "seconds": 6.0}) + "\n")
    (out / "q" / "runs.txt").write_text("")
    (out / "p").mkdir()  # the folder was handed p's chosen variant (q takes it from p): not p's results
    (out / "p" / "variant.json").write_text(json.dumps({"chosen": "mean", "by": "given"}))
    old = summary([run("localized", 0, [[1, 1]])])
    old["timing"] = [{"part": "p", "stage": "final", "jobs": 1, "seconds": 60.0}]
    old["choices"] = {"p": {"model": {"parameters": 1}, "variant": {"chosen": "mean", "by": "val"}}}
    merged = analyze.summarize([out], old)
    assert list(merged["settings"]["parts"]) == ["p", "q"] and merged["settings"]["reanalysed"] == ["p"]
    assert merged["choices"] == old["choices"]
    assert [r["part"] for r in merged["runs"]] == ["p"] and len(merged["timing"]) == 2


def test_parts_of_a_pilot_run_are_marked_and_stay_marked_when_kept(tmp_path):
    def folder(name, parts, pilot):
        out = tmp_path / name
        out.mkdir()
        (out / "settings.json").write_text(json.dumps({"quick": False, "pilot": pilot,
                                                       "parts": {p: {"steer_budget": 4} for p in parts}}))
        (out / "timing.jsonl").write_text("")
        return out

    merged = analyze.summarize([folder("full", ["a"], False), folder("pilot", ["b", "c"], True)])
    assert merged["settings"]["pilot_parts"] == ["b", "c"]
    again = analyze.summarize([folder("rerun", ["c"], False)], merged)  # c re-run in full; b kept from before
    assert again["settings"]["pilot_parts"] == ["b"] and again["settings"]["reanalysed"] == ["a", "b"]


def _cells(md: str):
    lines = md.splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        yield from zip(header, [c.strip() for c in line.strip("|").split("|")])


def test_no_rate_interval_in_the_committed_tables_leaves_the_unit_interval():
    checked = 0
    for path in sorted((REPO / "paper" / "generated").glob("*.md")):
        for column, cell in _cells(path.read_text()):
            if column in RATE_COLUMNS and "[" in cell:
                lo, hi = map(float, re.search(r"\[(-?[\d.]+), (-?[\d.]+)\]", cell).groups())
                assert 0.0 <= lo <= hi <= 1.0, (path.name, column, cell)
                checked += 1
    assert checked >= 20


def test_the_summary_file_round_trips_with_each_plain_list_on_one_line():
    s = summary([run("localized", 0, [[1, 1, 0, 0], [0, 1, 1, 0]], first_errors=["other", "none"])])
    text = analyze.dump_summary(s)
    assert json.loads(text) == s
    assert '"prompts": [[1,1,0,0],[0,1,1,0]]' in text and '"first_errors": ["other","none"]' in text
    assert '\n  "settings": {' not in text and '\n "settings": {' in text  # objects stay indented
