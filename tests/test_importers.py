"""Importers: word-level edit hunks (property tests), TRL preference rows, DeFacto."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localpref.data.errors import SteerError
from localpref.data.importers import (apply_hunks, import_defacto, import_edits, steers_from_defacto,
                                      steers_from_edits, steers_from_preferences, word_hunks)
from localpref.data.load import load_steers

# ---------------------------------------------------------------------------------------------
# Edits: hand-worked examples


def test_word_hunks_by_hand():
    original = "Commuters are facing a fourth day of strike action."
    edited = "Commuters are facing delays due to strike action!"
    hs = word_hunks(original, edited)
    assert [(original[h.orig_start:h.orig_end], h.replacement) for h in hs] == [
        (" a fourth day of", " delays due to"), (".", "!")]
    assert apply_hunks(original, hs) == edited


def test_edit_steers_first_and_all_by_hand():
    row = {"prompt": "Facts:", "original": "Water boils at 90 degrees and is made of carbon.",
           "edited": "Water boils at 100 degrees and is made of oxygen.", "id": "w"}
    [first] = steers_from_edits([row], hunks="first").steers
    assert (first.prefix, first.rejected, first.corrected) == (
        "Water boils at", " 90 degrees and is made of", " 100 degrees and is made of")
    assert not first.corrected_ends_turn and first.id == "w/hunk0"
    second = steers_from_edits([row], hunks="all").steers[1]
    assert (second.prefix, second.rejected, second.corrected) == (
        "Water boils at 100 degrees and is made of", " carbon.", " oxygen.")
    assert second.corrected_ends_turn and second.rejected_ends_turn  # reaches the end of whole answers
    partial = steers_from_edits([row], hunks="all", complete=False).steers[1]
    assert not partial.corrected_ends_turn


def test_edit_deleting_the_end_ends_the_turn_or_is_skipped_when_partial():
    row = {"prompt": "p", "original": "Yes. And more text.", "edited": "Yes."}
    [s] = steers_from_edits([row]).steers
    assert (s.prefix, s.rejected, s.corrected, s.corrected_ends_turn) == ("Yes.", " And more text.", "", True)
    res = steers_from_edits([row], complete=False, on_error="skip")
    assert res.steers == [] and dict(res.skipped) == {"empty_continuation": 1}


def test_unchanged_rows_are_counted_and_bad_rows_named(tmp_path):
    path = tmp_path / "edits.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "p", "original": "same", "edited": "same"}),
        json.dumps({"prompt": "p", "original": "a b", "edited": "a c", "note": "kept"}),
        "{broken",
        json.dumps({"prompt": "p", "original": "a b"}),
        json.dumps({"prompt": [{"role": "bot", "content": "x"}], "original": "a", "edited": "b"}),
    ]) + "\n")
    with pytest.raises(SteerError) as info:
        import_edits(path, tmp_path / "out.jsonl")
    assert (info.value.reason, info.value.line) == ("invalid_json", 3)
    res = import_edits(path, tmp_path / "out.jsonl", on_error="skip")
    assert res.counts["rows"] == 4 and res.counts["unchanged"] == 1  # the broken line is not a row
    assert dict(res.skipped) == {"invalid_json": 1, "missing_field": 1, "unknown_role": 1}
    [s] = load_steers(tmp_path / "out.jsonl")
    assert s.meta == {"note": "kept", "hunk": 0, "n_hunks": 1} and s.id == "row2/hunk0"


# ---------------------------------------------------------------------------------------------
# Edits: properties

WORDS = ["a", "the", "cat", "sat", "on", "mat", ".", ",", "!", "é", "42", "\n", "  ", "日本"]
texts = st.lists(st.sampled_from(WORDS), max_size=25).map(lambda ws: " ".join(ws))
any_texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


def _mutate(draw, original: str) -> str:
    words = original.split(" ")
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        i = draw(st.integers(0, len(words)))
        if op == "insert" or not words:
            words.insert(i, draw(st.sampled_from(WORDS)))
        elif op == "replace":
            words[min(i, len(words) - 1)] = draw(st.sampled_from(WORDS))
        else:
            del words[min(i, len(words) - 1)]
    return " ".join(words)


@st.composite
def edit_pairs(draw):
    if draw(st.booleans()):
        return draw(any_texts), draw(any_texts)  # unrelated arbitrary unicode
    original = draw(texts)
    return original, _mutate(draw, original)  # a few word edits, the usual case


def _check_written(steers, original: str, edited: str, hunks: str, complete: bool) -> None:
    hs = word_hunks(original, edited)
    for s in steers:
        assert edited.startswith(s.prefix + s.corrected)  # the contract of from-edits
    if hunks == "first" and steers:
        assert original.startswith(steers[0].prefix + steers[0].rejected)
    if hunks == "all":
        # Each later prefix is the previous prefix plus its correction: earlier edits applied.
        for a, b in zip(steers, steers[1:]):
            assert b.prefix == a.prefix + a.corrected
        if len(steers) == len(hs) and steers:
            last = steers[-1]
            assert last.prefix + last.corrected == edited and last.corrected_ends_turn == complete


@settings(max_examples=300, deadline=None)
@given(edit_pairs(), st.sampled_from(["first", "all"]), st.booleans())
def test_prefix_plus_corrected_is_a_prefix_of_edited(pair, hunks, complete):
    original, edited = pair
    res = steers_from_edits([{"prompt": "p", "original": original, "edited": edited}], hunks=hunks,
                            complete=complete, on_error="skip")
    hs = word_hunks(original, edited)
    written = len(res.steers) + sum(res.skipped.values())
    assert written == (0 if not hs else 1 if hunks == "first" else len(hs))
    assert res.counts["unchanged"] == (original == edited)
    _check_written(res.steers, original, edited, hunks, complete)


@settings(max_examples=300, deadline=None)
@given(edit_pairs())
def test_applying_the_hunks_reproduces_edited(pair):
    original, edited = pair
    hs = word_hunks(original, edited)
    assert apply_hunks(original, hs) == edited
    assert (hs == []) == (original == edited)
    for h in hs:
        assert edited[h.edit_start:h.edit_end] == h.replacement
        assert original[h.orig_start:h.orig_end] != h.replacement


# ---------------------------------------------------------------------------------------------
# TRL preference rows


def test_trl_string_conversational_and_implicit_prompt_rows():
    user = [{"role": "user", "content": "Capital of France?"}]
    rows = [
        {"prompt": "Q: capital of France?\nA:", "chosen": " Paris", "rejected": " Lyon", "score_chosen": 9.0},
        {"prompt": user, "chosen": [{"role": "assistant", "content": "Paris."}],
         "rejected": [{"role": "assistant", "content": "Lyon."}]},
        {"chosen": user + [{"role": "assistant", "content": "Paris."}],
         "rejected": user + [{"role": "assistant", "content": "Lyon."}]},
    ]
    full = steers_from_preferences(rows, completions="full").steers
    assert [(s.prompt, s.prefix, s.corrected, s.rejected) for s in full] == [
        ("Q: capital of France?\nA:", "", " Paris", " Lyon"), (user, "", "Paris.", "Lyon."),
        (user, "", "Paris.", "Lyon.")]
    assert all(s.corrected_ends_turn and s.rejected_ends_turn for s in full)
    assert full[0].meta == {"score_chosen": 9.0}
    partial = steers_from_preferences(rows, completions="partial").steers
    assert not any(s.corrected_ends_turn or s.rejected_ends_turn for s in partial)


def test_trl_completions_option_is_explicit_and_bad_rows_are_counted():
    with pytest.raises(TypeError):
        steers_from_preferences([])  # no default: the caller must say full or partial
    with pytest.raises(ValueError, match="completions"):
        steers_from_preferences([], completions="yes")
    rows = [{"prompt": "p", "chosen": "same", "rejected": "same"}, {"prompt": "p", "chosen": "a"},
            {"prompt": "p", "chosen": 1, "rejected": "b"}]
    res = steers_from_preferences(rows, completions="full", on_error="skip")
    assert dict(res.skipped) == {"identical_continuations": 1, "missing_field": 1, "wrong_type": 1}


# ---------------------------------------------------------------------------------------------
# DeFacto (real data)


def _expected_defacto(rows):
    """Independent count: a row is a correction iff its summary differs from the candidate."""
    n_corr = n_none = n_same = 0
    for r in rows:
        summary = r["feedback"]["summary"]
        if not (summary or "").strip():
            n_none += 1
        elif summary.split() == r["candidate"].split():
            n_same += 1
        else:
            n_corr += 1
    return n_corr, n_none, n_same


def test_defacto_import_all_splits(defacto_dir, tmp_path):
    results = import_defacto(defacto_dir, tmp_path)
    table = {}
    for split, res in results.items():
        rows = [json.loads(x) for x in (defacto_dir / f"{split}.jsonl").read_text().splitlines() if x.strip()]
        n_corr, n_none, n_same = _expected_defacto(rows)
        assert res.counts["rows"] == len(rows) and not res.skipped
        assert (len(res.steers), res.counts["accepted_no_correction"], res.counts["accepted_unchanged"]) == (
            n_corr, n_none, n_same)  # "first": one steer per corrected row
        by_doc = {r["doc_id"]: r for r in rows}
        for s in res.steers:
            summary = by_doc[s.meta["doc_id"]]["feedback"]["summary"].strip()
            assert summary.startswith(s.prefix + s.corrected)
            assert by_doc[s.meta["doc_id"]]["article"] in s.prompt[0]["content"]
        assert list(load_steers(tmp_path / f"{split}.jsonl")) == res.steers
        all_hunks = steers_from_defacto(rows, split=split, hunks="all")
        table[split] = {**res.summary(), "steers_all_hunks": len(all_hunks.steers)}
    print("\nDeFacto import counts:", json.dumps(table, indent=1))
