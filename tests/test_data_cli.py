"""`localpref data ...` end to end through `localpref.cli.main` (offline SmolLM2 tokenizer)."""

from __future__ import annotations

import json

import pytest

from localpref.cli import main
from localpref.data.load import load_steers

EDITS = [
    {"prompt": [{"role": "user", "content": "Give three facts about water."}], "id": "water",
     "original": "Water boils at 90 degrees. It freezes at 0 degrees. It is made of hydrogen and carbon.",
     "edited": "Water boils at 100 degrees. It freezes at 0 degrees. It is made of hydrogen and oxygen."},
    {"prompt": [{"role": "user", "content": "Capital of Australia?"}], "id": "aus",
     "original": "The capital of Australia is Sydney.", "edited": "The capital of Australia is Canberra."},
    {"prompt": [{"role": "user", "content": "Say hi."}], "original": "Hi!", "edited": "Hi!"},
]


@pytest.fixture
def edits_file(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EDITS))
    return path


def test_from_edits_then_inspect(edits_file, tmp_path, capsys):
    out = tmp_path / "steers.jsonl"
    assert main(["data", "from-edits", str(edits_file), str(out), "--hunks", "all"]) == 0
    report = capsys.readouterr().out
    assert "wrote 3 steers" in report and '"unchanged": 1' in report
    steers = load_steers(out)
    assert [s.id for s in steers] == ["water/hunk0", "water/hunk1", "aus/hunk0"]
    for s, row in zip(steers, [EDITS[0], EDITS[0], EDITS[1]]):
        assert row["edited"].startswith(s.prefix + s.corrected)

    assert main(["data", "inspect", str(out), "--limit", "3"]) == 0
    shown = capsys.readouterr().out
    # The exact trained-on tokens of each side (SmolLM2 splits numbers into digits).
    assert "chosen span: 2 tokens" in shown and "['1', '0']" in shown and "['9']" in shown
    assert "[' oxygen']" in shown and "[' carbon']" in shown
    assert "[' Canberra']" in shown and "[' Sydney']" in shown
    assert "steers loaded: 3   tokenized: 3" in shown and "chosen span tokens:" in shown


def test_bad_rows_stop_with_location_or_are_counted(tmp_path, capsys):
    path = tmp_path / "edits.jsonl"
    path.write_bytes(json.dumps(EDITS[1]).encode() + b"\n" + b'{"prompt": "p", "original": "a"}\n'
                     + b"\xff\xfe\n")
    out = tmp_path / "steers.jsonl"
    assert main(["data", "from-edits", str(path), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2 field 'edited'" in err and "missing_field" in err and "--on-error skip" in err
    assert main(["data", "from-edits", str(path), str(out), "--on-error", "skip"]) == 0
    report = capsys.readouterr().out
    assert '"skipped": {"invalid_utf8": 1, "missing_field": 1}' in report
    assert len(load_steers(out)) == 1


def test_inspect_counts_token_level_skips(tmp_path, capsys):
    path = tmp_path / "steers.jsonl"
    long_prompt = [{"role": "user", "content": "word " * 200}]
    rows = [{"prompt": long_prompt, "prefix": "", "rejected": "no " * 100, "corrected": "yes " * 100, "id": "long"},
            {"prompt": [{"role": "user", "content": "Hi"}], "rejected": " a", "corrected": " b", "id": "ok"},
            {"prompt": "p", "rejected": "x", "corrected": "x", "id": "same"},
            {"prompt": long_prompt, "rejected": " a", "corrected": " b", "id": "cut"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "inspect", str(path), "--span", "continuation", "--max-length", "64"]) == 0
    shown = capsys.readouterr().out
    assert "skipped while loading: 1" in shown and "'identical_continuations': 1" in shown
    assert "skipped while tokenizing: 1" in shown and "'span_too_long': 1" in shown
    assert "tokenized: 2" in shown and "[span_too_long]" in shown  # the shown steer says why
    assert "truncated from the left (context lost) to fit max_length: 1" in shown
    assert main(["data", "inspect", str(path), "--on-error", "raise"]) == 1
    assert "identical_continuations" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path / "missing.jsonl")]) == 2


def test_inspect_min_match_joins_short_equal_runs(tmp_path, capsys):
    path = tmp_path / "steers.jsonl"
    path.write_text(json.dumps({"prompt": "Q:", "rejected": " The cat sat on the mat", "corrected": " A dog sat by the mat"}) + "\n")
    assert main(["data", "inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "chosen span: 2 tokens" in shown and "[' A', ' dog']" in shown  # the first differing region
    assert main(["data", "inspect", str(path), "--min-match", "2"]) == 0
    shown = capsys.readouterr().out
    # " sat" (one equal token) no longer ends the hunk; " the mat" (two) does
    assert "chosen span: 4 tokens" in shown and "[' A', ' dog', ' sat', ' by']" in shown
    assert main(["data", "inspect", str(path), "--min-match", "0"]) == 2


def test_from_trl_needs_explicit_completions(tmp_path, capsys):
    path = tmp_path / "prefs.jsonl"
    path.write_text(json.dumps({"prompt": "Q?", "chosen": " yes", "rejected": " no"}) + "\n")
    with pytest.raises(SystemExit) as info:
        main(["data", "from-trl", str(path), str(tmp_path / "o.jsonl")])
    assert info.value.code == 2
    assert main(["data", "from-trl", str(path), str(tmp_path / "o.jsonl"), "--completions", "partial"]) == 0
    [s] = load_steers(tmp_path / "o.jsonl")
    assert (s.corrected, s.rejected, s.corrected_ends_turn) == (" yes", " no", False)


def test_examples_command(tmp_path, capsys):
    out = tmp_path / "ex.jsonl"
    assert main(["data", "examples", str(out), "--split", "eval", "--n", "12"]) == 0
    steers = load_steers(out)
    assert len(steers) == 12 and all(s.meta["family"] for s in steers)
    assert main(["data", "examples", str(out), "--n", "100000"]) == 2


def test_from_defacto_command(defacto_dir, tmp_path, capsys):
    assert main(["data", "from-defacto", str(tmp_path), "--dir", str(defacto_dir), "--splits", "val"]) == 0
    report = capsys.readouterr().out
    assert "val: wrote" in report
    assert len(load_steers(tmp_path / "val.jsonl")) > 0
    assert main(["data", "from-defacto", str(tmp_path), "--dir", str(tmp_path / "nowhere")]) == 2


def test_histogram_bins_by_hand():
    from localpref.data.inspect import histogram, histogram_lines

    assert histogram([1, 1, 2, 3, 4, 5, 9]) == [(1, 1, 2), (2, 2, 1), (3, 4, 2), (5, 8, 1), (9, 16, 1)]
    assert histogram([0, 3]) == [(0, 0, 1), (1, 1, 0), (2, 2, 0), (3, 4, 1)]
    assert histogram([]) == []
    assert histogram_lines([1, 1, 3], width=4) == ["        1 | ████ 2", "        2 |  0", "      3-4 | ██ 1"]
