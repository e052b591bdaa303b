"""The steering page's logic without HTTP: a trajectory steered by hand, its record, the file.

A scripted model writes a known answer, so each correction's step is known exactly: what was
accepted, what the model wrote from the correction point to where it stopped, what was typed.
The record must load with ``load_steers`` as is, and tokenize to the span the trainer will use.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scripted_lm import ScriptedLM  # noqa: E402

from localpref.data.load import load_steers  # noqa: E402
from localpref.data.tokenize import render_prompt, tokenize_steer  # noqa: E402
from localpref.page.review import delete_line, line_digest, prepare_output, review  # noqa: E402
from localpref.page.session import PageError, PageSession, Sampling, word_segments  # noqa: E402
from localpref.steering import append_records  # noqa: E402

PROMPT = [{"role": "user", "content": "Name four fruits."}]
ANSWER = "Four fruits: apple, pear, plum, fig."
PLAN = {"": ANSWER, "Four fruits: apple, kiwi": ", plum, fig."}


def session(tok, plan=PLAN, **sampling) -> PageSession:
    model = ScriptedLM(tok, render_prompt(tok, PROMPT), plan)
    return PageSession(model, tok, PROMPT, Sampling(**{"temperature": 0.0, **sampling}), model_id="scripted",
                       model_lock=threading.Lock())


def generate(s: PageSession, tokens: int | None = None) -> str:
    """Run one pass (``tokens`` steps, then a stop, or to the end); returns the text."""
    s.begin_pass()
    n = 0
    while (tokens is None or n < tokens) and s.step() is not None:
        n += 1
    s.stop_requested.set()
    assert s.step() is None  # a stopped pass samples nothing more
    s.end_pass()
    return s.text


def at_word(s: PageSession, word: str) -> int:
    return next(t["at"] for t in s.state()["live"] if t["text"].startswith(word))


def test_word_segments_cover_the_text_with_code_point_offsets():
    text = "ok 😀 two  words\n"
    segments = word_segments(text, 3)
    assert "".join(t["text"] for t in segments) == text[3:]
    assert [text[t["at"]:t["at"] + len(t["text"])] for t in segments] == [t["text"] for t in segments]
    assert segments[1] == {"at": 5, "text": "two  "}  # Python offsets: the emoji is one character


def test_correcting_a_middle_word_of_a_finished_answer(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    s = session(tok)
    assert generate(s) == ANSWER and s.state()["status"] == "ended"
    s.correct(at_word(s, "pear"), "kiwi")
    assert s.steps == [{"accepted": "Four fruits: apple, ", "rejected": "pear, plum, fig.", "corrected": "kiwi",
                        "cost": {"chars": 4, "tokens": len(tok("kiwi", add_special_tokens=False)["input_ids"])},
                        "rejected_ends_turn": True}]  # the model had ended its turn after "fig."
    assert generate(s) == "Four fruits: apple, kiwi, plum, fig."  # resumed from the correction
    record = s.record()
    assert record["steps"][1] == {"accepted": ", plum, fig."} and record["final"] == s.text
    assert record["meta"]["model"] == "scripted" and record["meta"]["temperature"] == 0.0
    assert record["meta"]["steers"] == 1 and record["meta"]["chars_typed"] == 4

    append_records(tmp_path / "s.jsonl", [record])
    (steer,) = load_steers(tmp_path / "s.jsonl")
    assert (steer.prefix, steer.rejected, steer.corrected) == ("Four fruits: apple, ", "pear, plum, fig.", "kiwi")
    chosen, rejected = tokenize_steer(steer, tok).span_ids()
    # BPE puts the space before a word into the word's token, so the spans start with it; the
    # rejected side ends with the end of turn the model wrote.
    assert tok.decode(chosen) == " kiwi"
    assert tok.decode(rejected) == " pear, plum, fig.<|im_end|>\n"


def test_stopped_mid_answer_the_rejected_side_ends_where_it_stopped(smollm2_tokenizer):
    tok = smollm2_tokenizer
    s = session(tok)
    text = generate(s, tokens=9)
    assert ANSWER.startswith(text) and "pear" in text and text != ANSWER
    assert s.state()["status"] == "stopped"
    s.correct(at_word(s, "pear"), "kiwi")
    step = s.steps[0]
    assert step["rejected"] == text[len("Four fruits: apple, "):] and "rejected_ends_turn" not in step


def test_a_correction_that_ends_the_answer_closes_the_trajectory(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    s = session(tok)
    generate(s)
    s.correct(at_word(s, "plum"), "and that is all.", ends_turn=True)
    assert s.state()["status"] == "closed" and s.text == "Four fruits: apple, pear, and that is all."
    with pytest.raises(PageError, match="ended the answer") as err:
        s.begin_pass()
    assert err.value.status == 409
    record = s.record()
    assert record["steps"][-1]["corrected_ends_turn"] and len(record["steps"]) == 1
    append_records(tmp_path / "s.jsonl", [record])
    (steer,) = load_steers(tmp_path / "s.jsonl")
    assert steer.corrected_ends_turn and steer.rejected_ends_turn


def test_the_model_ending_too_early_is_corrected_at_its_end_of_turn(smollm2_tokenizer):
    s = session(smollm2_tokenizer, plan={"": "Four fruits: apple", "Four fruits: apple, pear": "."})
    generate(s)
    end = s.state()["live"][-1]
    assert end == {"at": len("Four fruits: apple"), "text": "", "end": True}
    s.correct(end["at"], ", pear")
    assert s.steps[0]["rejected"] == "" and s.steps[0]["rejected_ends_turn"]
    assert generate(s) == "Four fruits: apple, pear."


def test_two_corrections_make_a_two_step_trajectory(smollm2_tokenizer, tmp_path):
    plan = {"": ANSWER, "Four fruits: apple, kiwi": ", plum, fig.", "Four fruits: apple, kiwi, lime": ", fig."}
    s = session(smollm2_tokenizer, plan=plan)
    generate(s)
    s.correct(at_word(s, "pear"), "kiwi")
    generate(s)
    with pytest.raises(PageError, match="outside the text written since the last correction"):
        s.correct(len("Four fruits: "), "pear")  # before the first correction: already fixed
    s.correct(at_word(s, "plum"), "lime")
    assert generate(s) == "Four fruits: apple, kiwi, lime, fig."
    append_records(tmp_path / "s.jsonl", [s.record()])
    first, second = load_steers(tmp_path / "s.jsonl")
    assert second.prefix == "Four fruits: apple, kiwi, " and (second.rejected, second.corrected) == ("plum, fig.", "lime")


@pytest.mark.parametrize("case, message", [
    ("empty", "cannot be trained on: 'corrected' is empty"),
    ("deletes_only", "prefix_continuation"),
    ("same", "identical_continuations"),
    ("at_end_not_ended", "the model wrote nothing after this point"),
    ("past_end", "outside the text"),
])
def test_corrections_that_cannot_train_are_refused_with_the_reason(smollm2_tokenizer, case, message):
    s = session(smollm2_tokenizer)
    text = generate(s, tokens=9)
    assert text == "Four fruits: apple, pear, plum," and s.state()["status"] == "stopped"
    at = at_word(s, "pear")
    at, typed = {"empty": (at, ""), "deletes_only": (at, "pear,"), "same": (at, text[at:]),
                 "at_end_not_ended": (len(text), "x"), "past_end": (len(text) + 1, "x")}[case]
    with pytest.raises(PageError, match=message) as err:
        s.correct(at, typed)
    assert err.value.status == 422 and s.steps == [] and s.text == text  # nothing changed


def test_no_correction_while_generating(smollm2_tokenizer):
    s = session(smollm2_tokenizer)
    s.begin_pass()
    s.step()
    with pytest.raises(PageError, match="stop the generation") as err:
        s.correct(0, "x")
    assert err.value.status == 409
    with pytest.raises(PageError, match="already generating"):
        s.begin_pass()


# ---------------------------------------------------------------------------------------------
# The file: preparing it, torn lines, the review, deletion


def test_a_torn_last_line_loads_with_the_skip_policy_and_is_cut_before_appending(smollm2_tokenizer, tmp_path):
    out = tmp_path / "s.jsonl"
    s = session(smollm2_tokenizer)
    generate(s)
    s.correct(at_word(s, "pear"), "kiwi")
    append_records(out, [s.record()])
    with open(out, "a") as f:
        f.write('{"prompt": [{"role": "user", "content": "Na')  # a server killed mid-write
    loaded = load_steers(out, on_error="skip")
    assert len(loaded) == 1 and dict(loaded.skipped) == {"invalid_json": 1}
    with pytest.raises(Exception, match=r"s.jsonl:2"):
        load_steers(out, on_error="raise")
    warning = prepare_output(out)  # what the server does at start
    assert "torn last line" in warning
    append_records(out, [s.record()])
    assert len(load_steers(out)) == 2  # whole lines again, nothing glued to the torn one


def test_prepare_output_refuses_what_is_not_a_steer_file(tmp_path):
    (tmp_path / "notes.txt").write_text("my notes\n")
    with pytest.raises(ValueError, match="not a steer JSONL file"):
        prepare_output(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="is a folder"):
        prepare_output(tmp_path)
    prepare_output(tmp_path / "new" / "s.jsonl")
    assert (tmp_path / "new" / "s.jsonl").read_bytes() == b""


def test_review_counts_agree_with_load_steers_and_spans_with_tokenize(smollm2_tokenizer, tmp_path):
    tok = smollm2_tokenizer
    out = tmp_path / "s.jsonl"
    s = session(tok)
    generate(s)
    s.correct(at_word(s, "pear"), "kiwi")
    generate(s)
    append_records(out, [s.record()])
    with open(out, "a") as f:
        f.write(json.dumps({"prompt": "Say hi.", "prefix": "", "rejected": "Hello", "corrected": "Hi"}) + "\n")
        f.write(json.dumps({"prompt": "x", "rejected": "a", "corrected": "a"}) + "\n")  # identical
        f.write("not json\n")
    view = review(out, tok, span="hunk", max_length=None)
    loaded = load_steers(out, on_error="skip")
    assert view["steers"] == len(loaded) == 2 and view["skipped"] == dict(loaded.skipped)
    assert [e["line"] for e in view["entries"]] == [3, 2, 1]  # newest first; line 4 is not JSON
    assert "identical" in view["entries"][0]["error"]
    shown = view["entries"][2]["steers"][0]
    ts = tokenize_steer(loaded[0], tok)
    for side, ids, mask in (("chosen", ts.chosen_ids, ts.chosen_span_mask),
                            ("rejected", ts.rejected_ids, ts.rejected_span_mask)):
        pieces = shown[f"{side}_pieces"]
        assert "".join(p for p, _ in pieces) == tok.decode(ids[ts.prompt_len:])
        assert [p for p, kind in pieces if kind == "span"] == [tok.decode([t]) for t, m in zip(ids, mask) if m]
    assert "".join(p for p, k in shown["chosen_pieces"] if k == "span") == " kiwi"


def test_delete_removes_exactly_the_line_seen(tmp_path):
    out = tmp_path / "s.jsonl"
    lines = [json.dumps({"prompt": "p", "rejected": f"r{i}", "corrected": f"c{i}"}) for i in range(3)]
    out.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(PageError, match="the file changed") as err:
        delete_line(out, 2, line_digest(lines[0].encode()))
    assert err.value.status == 409 and out.read_text().count("\n") == 3
    delete_line(out, 2, line_digest(lines[1].encode()))
    assert out.read_text() == lines[0] + "\n" + lines[2] + "\n"
    assert not list(tmp_path.glob(".*deleting"))  # the temporary file was renamed over the original
