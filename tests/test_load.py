"""load_steers: every bad-input class gets its documented outcome; trajectories; datasets."""

from __future__ import annotations

import json

import pytest

from localpref.data import load_steers
from localpref.data.errors import SteerError
from localpref.data.load import MAX_LINE_BYTES, write_steers
from localpref.data.schema import Steer

GOOD = {"prompt": [{"role": "user", "content": "List 3 primes."}], "prefix": "2, 3,",
        "rejected": " 4", "corrected": " 5"}


def line(**changes) -> bytes:
    rec = {**GOOD, **changes}
    return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()


# (raw line, reason, field) -- one row per documented bad-input class.
BAD_LINES = [
    (b'{"prompt": "x", "rejected": "a", "corrected": ', "invalid_json", None),
    (b"[1, 2]", "wrong_type", None),
    (line(rejected=...), "missing_field", "rejected"),
    (line(prompt=...), "missing_field", "prompt"),
    (line(corrected=3), "wrong_type", "corrected"),
    (line(prefix=None), "wrong_type", "prefix"),
    (line(corrected_ends_turn="yes"), "wrong_type", "corrected_ends_turn"),
    (line(meta=[1]), "wrong_type", "meta"),
    (line(id=1.5), "wrong_type", "id"),
    (line(corected=" 5"), "unknown_field", "corected"),
    (line(prompt=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]), "non_string_content",
     "prompt[0].content"),
    (line(prompt=[{"role": "user", "content": None}]), "non_string_content", "prompt[0].content"),
    (line(prompt=[{"role": "human", "content": "hi"}]), "unknown_role", "prompt[0].role"),
    (line(prompt=[{"content": "hi"}]), "missing_field", "prompt[0].role"),
    (line(prompt=7), "wrong_type", "prompt"),
    (line(prompt=""), "empty_prompt", "prompt"),
    (line(prompt="  \n"), "empty_prompt", "prompt"),
    (line(prompt=[]), "empty_prompt", "prompt"),
    (line(prompt=[{"role": "user", "content": " "}]), "empty_prompt", "prompt"),
    (line(prompt=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]),
     "assistant_last", "prompt[1].role"),
    (line(corrected=" 4"), "identical_continuations", "corrected"),
    (line(corrected=""), "empty_continuation", "corrected"),
    (b'{"prompt": "x", "rejected": "\\ud800", "corrected": "b"}', "invalid_utf8", "rejected"),
    (b'{"prompt": "caf\xe9", "rejected": "a", "corrected": "b"}', "invalid_utf8", None),
]


def write_lines(path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("raw,reason,field", BAD_LINES, ids=[f"{r}-{f}" for _, r, f in BAD_LINES])
def test_bad_line_raises_with_file_line_field(tmp_path, raw, reason, field):
    path = tmp_path / "steers.jsonl"
    write_lines(path, [line(), b"", raw])  # the bad record is on line 3, after a blank line
    with pytest.raises(SteerError) as info:
        load_steers(path)
    err = info.value
    assert (err.reason, err.file, err.line, err.field) == (reason, str(path), 3, field)
    assert f"{path}:3" in str(err) and reason in str(err)
    if field:
        assert f"field '{field}'" in str(err)


def test_skip_policy_counts_every_reason(tmp_path):
    path = tmp_path / "steers.jsonl"
    write_lines(path, [line(id="a")] + [raw for raw, _, _ in BAD_LINES] + [b"   ", line(id="b")])
    steers = load_steers(path, on_error="skip")
    assert [s.id for s in steers] == ["a", "b"]
    expected = {}
    for _, reason, _ in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(steers.skipped) == expected
    assert steers.source == str(path)


def test_on_error_must_be_known(tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, [line()])
    with pytest.raises(ValueError, match="on_error"):
        load_steers(path, on_error="ignore")


def test_long_line_is_discarded_in_chunks_and_reading_goes_on(tmp_path):
    path = tmp_path / "steers.jsonl"
    long = line(prefix="x" * 5000)
    write_lines(path, [line(id="a"), long, line(id="c")])
    steers = load_steers(path, on_error="skip", max_line_bytes=1000)
    assert [s.id for s in steers] == ["a", "c"] and dict(steers.skipped) == {"line_too_long": 1}
    with pytest.raises(SteerError) as info:
        load_steers(path, max_line_bytes=1000)
    assert (info.value.reason, info.value.line) == ("line_too_long", 2)
    # A line of exactly the limit (newline excluded) is fine.
    assert len(load_steers(path, max_line_bytes=len(long))) == 3


def test_default_line_limit_is_10_mib(tmp_path):
    assert MAX_LINE_BYTES == 10 * 1024 * 1024
    path = tmp_path / "big.jsonl"
    write_lines(path, [line(prefix="x" * MAX_LINE_BYTES), line(id="ok")])
    steers = load_steers(path, on_error="skip")
    assert [s.id for s in steers] == ["ok"] and dict(steers.skipped) == {"line_too_long": 1}


def test_fields_defaults_and_int_id(tmp_path):
    path = tmp_path / "s.jsonl"
    write_lines(path, [json.dumps({"prompt": "Q: 2+2?\nA:", "rejected": " 5", "corrected": " 4", "id": 7,
                                   "corrected_ends_turn": True, "meta": {"src": "hand"}}).encode()])
    [s] = load_steers(path)
    assert s == Steer(prompt="Q: 2+2?\nA:", prefix="", rejected=" 5", corrected=" 4", id="7",
                      corrected_ends_turn=True, meta={"src": "hand"})


def test_end_of_turn_counts_as_a_difference(tmp_path):
    # "stop here" (empty text that ends the turn) vs "go on", and the same words with and
    # without the end of turn: both are valid steers.
    path = tmp_path / "s.jsonl"
    write_lines(path, [line(rejected=" 4", corrected="", corrected_ends_turn=True),
                       line(rejected=" 4", corrected=" 4", rejected_ends_turn=True)])
    assert len(load_steers(path)) == 2


def test_round_trip_through_write_steers(tmp_path):
    steers = [Steer(prompt=[{"role": "user", "content": "Nämen drei Städte ☃"}], prefix="Köln,",
                    rejected=" Paris", corrected=" Bonn", id="u1", rejected_ends_turn=True, meta={"k": [1]}),
              Steer(prompt="plain", prefix="", rejected="a", corrected="b")]
    path = tmp_path / "out" / "s.jsonl"
    assert write_steers(steers, path) == 2
    assert list(load_steers(path)) == steers


def test_trajectory_expands_with_earlier_corrections_in_the_prefix(tmp_path):
    rec = {"prompt": "Count:", "id": "t", "meta": {"who": "me"}, "steps": [
        {"accepted": " 1, 2,", "rejected": " 4", "corrected": " 3"},
        {"accepted": ", 4,"},  # accepted text only: no steer, but it joins the prefix
        {"accepted": " 5,", "rejected": " 7", "corrected": " 6", "corrected_ends_turn": True},
    ]}
    path = tmp_path / "t.jsonl"
    write_lines(path, [json.dumps(rec).encode()])
    steers = load_steers(path)
    assert [(s.id, s.prefix, s.rejected, s.corrected, s.corrected_ends_turn) for s in steers] == [
        ("t/step0", " 1, 2,", " 4", " 3", False),
        ("t/step2", " 1, 2, 3, 4, 5,", " 7", " 6", True),
    ]
    assert steers[1].meta == {"who": "me", "step": 2}


@pytest.mark.parametrize("steps,reason,field", [
    ([{"accepted": "a", "rejected": "b"}], "missing_field", "steps[0].corrected"),
    ([{"accepted": 1}], "wrong_type", "steps[0].accepted"),
    ([{"acepted": "a"}], "unknown_field", "steps[0].acepted"),
    ([{"rejected": "b", "corrected": "b"}], "identical_continuations", "steps[0].corrected"),
    ([{"rejected": "b", "corrected": "c", "corrected_ends_turn": True}, {"accepted": "d"}],
     "wrong_type", "steps[0].corrected_ends_turn"),
    ("abc", "wrong_type", "steps"),
    (["abc"], "wrong_type", "steps[0]"),
])
def test_trajectory_errors_name_the_step(tmp_path, steps, reason, field):
    path = tmp_path / "t.jsonl"
    write_lines(path, [json.dumps({"prompt": "p", "steps": steps}).encode()])
    with pytest.raises(SteerError) as info:
        load_steers(path)
    assert (info.value.reason, info.value.field, info.value.line) == (reason, field, 1)


def test_trajectory_without_corrections_is_counted_as_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    write_lines(path, [json.dumps({"prompt": "p", "steps": [{"accepted": "all good"}]}).encode(), line()])
    steers = load_steers(path)
    assert len(steers) == 1 and steers.accepted == 1 and not steers.skipped


def test_hf_dataset_and_rows(tmp_path):
    datasets = pytest.importorskip("datasets")
    # (one dataset cannot mix string and message prompts: Arrow columns have one type)
    rows = [dict(GOOD, id="a"), {"prompt": GOOD["prompt"], "rejected": "x", "corrected": "y", "id": "b"}]
    # datasets fills the columns a row lacks with None; the loader treats None as absent.
    ds = datasets.Dataset.from_list(rows)
    assert [s.id for s in load_steers(ds)] == ["a", "b"]
    assert [s.id for s in load_steers(rows)] == ["a", "b"]
    bad = datasets.Dataset.from_list(rows + [{"prompt": GOOD["prompt"], "rejected": "x", "corrected": "x", "id": "c"}])
    with pytest.raises(SteerError) as info:
        load_steers(bad)
    assert (info.value.reason, info.value.line) == ("identical_continuations", 3)
    assert "Dataset" in info.value.file
    assert dict(load_steers(bad, on_error="skip").skipped) == {"identical_continuations": 1}
