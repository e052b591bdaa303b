"""paper/ cites only generated results, and they are current.

Every table and figure the paper includes, and every number macro its prose uses, must exist in
``paper/generated/``; re-rendering the committed summary (``analyze.py --render-only``) must give
exactly the committed files (a table edited by hand, or left behind by an older summary, fails);
and the PDF must build.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "paper"
GENERATED = PAPER / "generated"
ANALYZE = REPO / "experiments" / "fewest_steers" / "analyze.py"
SUMMARY = REPO / "experiments" / "fewest_steers" / "results" / "summary.json"


def paper_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(PAPER.glob("*.tex")))


def test_every_cited_file_exists():
    cited = re.findall(r"\\(?:input|includegraphics)(?:\[[^\]]*\])?\{(generated/[^}]+)\}", paper_sources())
    assert cited, "the paper cites no generated file"
    missing = [c for c in cited if not (PAPER / c).exists() and not (PAPER / f"{c}.tex").exists()]
    assert not missing, f"cited but not generated: {missing}"


def test_every_number_macro_is_generated():
    defined = set(re.findall(r"\\newcommand\{\\(fs[A-Za-z]+)\}", (GENERATED / "numbers.tex").read_text()))
    used = set(re.findall(r"\\(fs[A-Za-z]+)", paper_sources()))
    assert used, "the prose quotes no generated number"
    assert used <= defined, f"used but not generated: {sorted(used - defined)}"


def test_generated_files_are_what_the_committed_summary_renders(tmp_path):
    proc = subprocess.run([sys.executable, str(ANALYZE), "--render-only", "--summary", str(SUMMARY),
                           "--generated", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fresh = {p.name for p in tmp_path.iterdir()}
    committed = {p.name for p in GENERATED.iterdir()}
    assert fresh == committed, f"stale or missing files: {sorted(fresh ^ committed)}"
    for name in sorted(fresh):
        if name.endswith((".tex", ".md", ".csv")):
            assert (tmp_path / name).read_text() == (GENERATED / name).read_text(), f"{name} is stale"


@pytest.mark.slow
def test_pdf_builds(tmp_path):
    if shutil.which("pdflatex") is None and not os.environ.get("CI"):
        pytest.skip("pdflatex is not installed (bash paper/build.sh installs it as root)")
    copy = tmp_path / "paper"
    shutil.copytree(PAPER, copy, ignore=lambda d, names: ["main.pdf"] if Path(d) == PAPER else [])  # figures stay
    proc = subprocess.run(["bash", str(copy / "build.sh")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (copy / "main.pdf").stat().st_size > 10_000
