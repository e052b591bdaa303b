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


# ---------------------------------------------------------------------------------------------
# Nothing lost at the edges: every command that writes refuses to replace steers without --force,
# and never writes over an input or a file that is not steer JSONL


OLD_STEER = {"prompt": "Q?", "rejected": " no", "corrected": " yes", "id": "old"}


def _writers(tmp_path, edits_file):
    """(command without OUT, its input or None) for every `data` command that writes one file."""
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text(json.dumps({"prompt": "Q?", "chosen": " yes", "rejected": " no"}) + "\n")
    return {"from-edits": (["data", "from-edits", str(edits_file)], edits_file),
            "from-trl": (["data", "from-trl", "--completions", "full", str(prefs)], prefs),
            "examples": (["data", "examples", "--n", "4"], None)}


@pytest.mark.parametrize("command", ["from-edits", "from-trl", "examples"])
def test_writers_replace_steers_only_with_force(command, edits_file, tmp_path, capsys):
    argv, _ = _writers(tmp_path, edits_file)[command]
    out = tmp_path / "steers.jsonl"
    out.write_text(json.dumps(OLD_STEER) + "\n" + json.dumps({**OLD_STEER, "id": "old2"}) + "\n")
    before = out.read_bytes()
    assert main([*argv, str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {out} already holds 2 record(s); refusing to replace it" in err and "--force" in err
    assert out.read_bytes() == before
    assert main([*argv, str(out), "--force"]) == 0
    assert "old" not in {s.id for s in load_steers(out)} and not list(tmp_path.glob(".*.tmp"))
    notes = tmp_path / "notes.txt"  # not steer JSONL: kept even with --force
    notes.write_text("my notes\n")
    assert main([*argv, str(notes), "--force"]) == 2
    assert f"{notes} exists and is not a steer JSONL file; refusing to overwrite it" in capsys.readouterr().err
    assert notes.read_text() == "my notes\n"
    empty = tmp_path / "empty.jsonl"  # nothing to lose
    empty.touch()
    assert main([*argv, str(empty)]) == 0 and len(load_steers(empty)) > 0


@pytest.mark.parametrize("command", ["from-edits", "from-trl"])
def test_writers_never_write_over_their_input(command, edits_file, tmp_path, capsys):
    argv, source = _writers(tmp_path, edits_file)[command]
    before = source.read_bytes()
    for force in ([], ["--force"]):
        assert main([*argv, str(source), *force]) == 2
        assert f"error: {source} is one of the files being read; refusing to write over it" in capsys.readouterr().err
        assert source.read_bytes() == before
    link = tmp_path / "link.jsonl"  # the same file under another name
    link.symlink_to(source)
    assert main([*argv, str(link), "--force"]) == 2 and source.read_bytes() == before
    assert main([*argv[:-1], str(tmp_path / "missing.jsonl"), str(tmp_path / "o.jsonl")]) == 2
    assert f"{tmp_path / 'missing.jsonl'} does not exist" in capsys.readouterr().err


def test_from_defacto_keeps_existing_splits(tmp_path, capsys):
    src = tmp_path / "defacto"  # one hand-made DeFacto row per split
    src.mkdir()
    row = {"doc_id": 7, "article": "The river rose two metres.", "candidate": "The river rose three metres.",
           "feedback": {"summary": "The river rose two metres."}, "has_error": True}
    for split in ("train", "val"):
        (src / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "val.jsonl").write_text(json.dumps(OLD_STEER) + "\n")
    argv = ["data", "from-defacto", str(out), "--dir", str(src), "--splits", "train", "val"]
    assert main(argv) == 2
    assert f"{out / 'val.jsonl'} already holds 1 record(s); refusing to replace it" in capsys.readouterr().err
    assert not (out / "train.jsonl").exists()  # every output is checked before any is written
    assert main([*argv, "--force"]) == 0
    assert [s.id for s in load_steers(out / "val.jsonl")] == ["defacto/val/7/hunk0"]
    assert main([*argv[:3], "--dir", str(src), "--splits", "train", "test"]) == 2
    assert f"{src / 'test.jsonl'} does not exist" in capsys.readouterr().err
    # OUT is the folder read from: its train.jsonl is an input, kept even with --force
    assert main(["data", "from-defacto", str(src), "--dir", str(src), "--splits", "train", "--force"]) == 2
    assert f"{src / 'train.jsonl'} is one of the files being read" in capsys.readouterr().err
    assert json.loads((src / "train.jsonl").read_text()) == row
    assert main(["data", "from-defacto", str(src / "val.jsonl"), "--dir", str(src)]) == 2
    assert "is a file; OUT is the folder" in capsys.readouterr().err
