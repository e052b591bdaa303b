"""The fewest-steers analysis (experiments/fewest_steers/analyze.py) on a hand-made summary: every
prompt counts, intervals resample builds and clusters, damage counts only what the base got right
where the rule cannot fire, tables come out of one data frame each."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("fs_analyze", REPO / "experiments" / "fewest_steers" / "analyze.py")
analyze = importlib.util.module_from_spec(spec)
spec.loader.exec_module(analyze)

# Six held-out prompts in three clusters (windows): the first of each cluster is its "between"
# prompt, where the rule can fire. Three builds.
PROMPTS = {"ids": [f"p{i}" for i in range(6)], "clusters": ["w0", "w0", "w1", "w1", "w2", "w2"],
           "subfamilies": ["seen"] * 6, "fires": "101010"}


def run(stage, method, build, stv, share=1.0, **kw):
    return {"stage": stage, "method": method, "build": build, "share": None if method in ("base", "control") else share,
            "name": f"b{build}", "params": kw.pop("params", {"lr": 1e-4}),
            "metrics": {"eval/drift/kl": kw.pop("kl", 0.1), "eval/drift/nll": 1.0, "eval/span/nll": 1.0,
                        "eval/span/logp_accuracy": 0.5},
            "steers": {"val": kw.pop("val", None), "heldout_mean": sum(map(int, stv)) / len(stv)},
            "data": {"pairs": 10, "chars": 100, "budget": 100, "steps": 5}, "stv": stv, "capped": "0" * len(stv),
            "first_errors": "s-s-o-", **kw}


BASE = ["202000", "102000", "201000"]  # every build's base passes p1, p3, p5 (the rule cannot fire there)
SFT = ["000000", "000000", "000100"]   # one new failure: build 2, p3, which its base passed
LOC = ["100000", "000000", "100000"]


def summary():
    runs = ([run("base", "base", b, s) for b, s in enumerate(BASE)] + [run("final", "sft_span", b, s) for b, s in enumerate(SFT)]
            + [run("final", "localized", b, s) for b, s in enumerate(LOC)])
    part = {"settings": {"builds": 3}, "models": [], "collections": [], "runs": runs, "tuned": {}, "matched": None,
            "prompts": PROMPTS}
    return {"quick": False, "parts": {"p": part}, "timing": [{"part": "p", "stage": "tune", "seconds": 60.0}]}


def test_the_dial_by_hand():
    part = analyze.Part("p", summary()["parts"]["p"])
    df, numbers = analyze.dial([part])
    assert list(df["method"]) == ["base model", "1 SFT, corrected spans", "4 localized DPO"]
    rows = df.set_index("method")
    # means over builds x prompts: base (4 + 3 + 3) / 18, SFT 1 / 18, localized 2 / 18
    assert rows.loc["base model", "steers to verify"].startswith(f"{10 / 18:.2f} [")
    assert rows.loc["1 SFT, corrected spans", "steers to verify"].startswith(f"{1 / 18:.2f} [")
    assert rows.loc["4 localized DPO", "minus base"].startswith(f"{(2 - 10) / 18:+.2f} [")
    assert rows.loc["4 localized DPO", "better builds"] == "3/3"
    # damage: prompts the build's base passed where the rule cannot fire (p1, p3, p5 of each of the
    # three builds), 9 in all; SFT fails one of them (build 2, p3), localized none
    assert rows.loc["1 SFT, corrected spans", "damage"].startswith(f"{1 / 9:.2f} [")
    assert rows.loc["4 localized DPO", "damage"].startswith("0.00 [0.00, 0.00]")
    assert numbers["fsPLocalizedWins"] == "3/3"


def test_intervals_resample_builds_and_clusters_not_prompts():
    part = analyze.Part("p", summary()["parts"]["p"])
    x = part.matrix(part.runs("final", "localized"))
    m, lo, hi = analyze.ci(x, part.clusters)
    assert m == pytest.approx(2 / 18) and 0.0 <= lo <= m <= hi
    # resampling whole clusters: only three, so the interval is wide; over 18 independent cells it is not
    _, lo_cells, hi_cells = analyze.ci(x.reshape(1, -1), list(range(18)))
    assert hi - lo > hi_cells - lo_cells


def test_versus_sft_is_paired_on_builds_and_prompts():
    part = analyze.Part("p", summary()["parts"]["p"])
    df, numbers = analyze.versus([part])
    row = df.set_index("method").loc["4 localized DPO"]
    assert row["minus 1 SFT, corrected spans"].startswith(f"{(2 - 1) / 18:+.2f} [")
    assert row["reads the rejected side"] == "yes" and row["p (sign flips over builds)"] == "1.000"


def test_tables_are_one_frame_in_markdown_and_latex():
    files = {}
    analyze.write_table(files, "t_x", pd.DataFrame([{"a_b": "1 [0, 2]", "c": "x%"}]), "A caption with 50% and a_b.")
    assert files["t_x.md"].splitlines()[2:] == ["| a_b | c |", "|---|---|", "| 1 [0, 2] | x% |"]
    tex = files["t_x.tex"]
    assert "a\\_b" in tex and "x\\%" in tex and "\\label{tab:t-x}" in tex and "\\toprule" in tex


def test_the_summary_round_trips_with_plain_lists_on_one_line():
    s = summary()
    text = analyze.dump_summary(s)
    assert json.loads(text) == s
    assert '"clusters": ["w0","w0","w1","w1","w2","w2"]' in text


def test_render_writes_every_table_and_deletes_stale_files(tmp_path):
    (tmp_path / "old_table.md").write_text("stale")
    written = analyze.render(summary(), tmp_path)
    assert not (tmp_path / "old_table.md").exists()
    assert {"dial.md", "dial.tex", "versus_sft.md", "numbers.tex", "dial.pdf", "frontier.pdf"} <= set(written)
    assert "\\newcommand{\\fsPSftSpanStv}" in (tmp_path / "numbers.tex").read_text()
    again = tmp_path / "again"
    analyze.render(summary(), again)
    for name in written:
        if name.endswith((".md", ".tex", ".csv")):
            assert (tmp_path / name).read_text() == (again / name).read_text(), name  # deterministic


def test_macro_names_are_letters_only():
    assert analyze.macro("tiny-ranges_desc-systematic", "sft_span") == "fsTinyRangesDescSystematicSftSpan"
