"""The steering loop, its generation engine and its evaluation.

A scripted model (``tests/scripted_lm.py``) makes a known error at a known place: the steer the
loop writes must be exactly that error and its fix, and the file must load and tokenize as is.
The generation engine is checked against ``transformers``' own greedy ``generate``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from scripted_lm import ScriptedLM  # noqa: E402

from localpref.data.load import load_steers  # noqa: E402
from localpref.data.tokenize import render_prompt, tokenize_steer  # noqa: E402
from localpref.generation import TurnWriter  # noqa: E402
from localpref.steering import read_records, run_tasks, steer_task, summarize  # noqa: E402
from localpref.tasks import Task, get_family  # noqa: E402

LISTS, ARITH = get_family("lists"), get_family("arith")
PRIMES = Task("t/primes40", [{"role": "user", "content": "List 4 prime numbers greater than 40."}],
              {"family": "lists", "rule": "primes_above", "params": {"x": 40}, "n_items": 4, "subfamily": "seen"})


def scripted(tokenizer, task: Task, plan: dict[str, str]) -> ScriptedLM:
    return ScriptedLM(tokenizer, render_prompt(tokenizer, task.prompt), plan)


def test_known_error_becomes_exactly_that_steer(smollm2_tokenizer, tmp_path):
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 49, 53", "41, 43, 47,": " 53"})
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=3)
    assert record["steps"] == [
        {"accepted": "41, 43,", "rejected": " 49,", "corrected": " 47,", "cost": {"chars": 4, "tokens": 4}},
        {"accepted": " 53"}]
    assert record["final"] == "41, 43, 47, 53" and record["verified"]
    meta = record["meta"]
    assert meta["original"] == "41, 43, 49, 53" and meta["first_error"] == {"offset": 7, "unit": 2}
    assert meta["steers"] == 1 and meta["stopped"] == "verified"

    (tmp_path / "t.jsonl").write_text(json.dumps(record) + "\n")
    (steer,) = load_steers(tmp_path / "t.jsonl")
    assert (steer.prefix, steer.rejected, steer.corrected) == ("41, 43,", " 49,", " 47,")
    tok = tokenize_steer(steer, smollm2_tokenizer)
    chosen, rejected = tok.span_ids()
    assert smollm2_tokenizer.decode(chosen) == "7" and smollm2_tokenizer.decode(rejected) == "9"


def test_stopping_early_costs_no_more_than_the_wrong_unit(smollm2_tokenizer):
    # After the correction the model errs again; generation must stop right after the wrong item's
    # comma, not write the rest: the second rejected side is " 50," and nothing after it.
    plan = {"": "41, 43, 49, 53", "41, 43, 47,": " 50, 53, 59, 61, 67", "41, 43, 47, 53": ""}
    model = scripted(smollm2_tokenizer, PRIMES, plan)
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=3)
    steps = [(s.get("accepted"), s.get("rejected"), s.get("corrected")) for s in record["steps"]]
    assert steps == [("41, 43,", " 49,", " 47,"), ("", " 50,", " 53")]
    assert record["steps"][1]["corrected_ends_turn"] and record["final"] == "41, 43, 47, 53"
    assert record["verified"]


def test_model_ending_early_is_a_rejected_end_of_turn(smollm2_tokenizer, tmp_path):
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43", "41, 43,": " 47, 53"})
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=2)
    first = record["steps"][0]
    assert (first["accepted"], first["rejected"], first["corrected"]) == ("41,", " 43", " 43,")
    assert first["rejected_ends_turn"] and "corrected_ends_turn" not in first
    assert record["final"] == "41, 43, 47, 53" and record["verified"]
    (tmp_path / "t.jsonl").write_text(json.dumps(record) + "\n")
    (steer,) = load_steers(tmp_path / "t.jsonl")
    chosen, rejected = tokenize_steer(steer, smollm2_tokenizer).span_ids()
    assert smollm2_tokenizer.decode(chosen) == "," and smollm2_tokenizer.decode(rejected) == "<|im_end|>\n"  # the turn closes with "<|im_end|>\n"


def test_an_answer_cut_off_by_max_new_tokens_goes_on(smollm2_tokenizer):
    # "41, 43" cut off after two items is unfinished, not too short: no steer; the model goes on
    # from its own text (pass after pass of 6 tokens) and finishes the right answer unsteered.
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 47, 53"})
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=2, max_new_tokens=6)
    meta = record["meta"]
    assert meta["original"] == "41, 43, 47, 53" and meta["original_ended"] and meta["continuations"] >= 1
    assert meta["steers"] == 0 and meta["stopped"] == "verified" and record["verified"]
    assert meta["first_error"] is None and meta["max_task_tokens"] == 24  # default: 4 passes' worth
    assert summarize([record])["pass_rate"] == 1.0


def test_only_the_task_token_cap_ends_a_task_unverified(smollm2_tokenizer):
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 47, 53"})
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=2, max_new_tokens=6, max_task_tokens=6)
    meta = record["meta"]
    assert meta["original"] == "41, 43" and not meta["original_ended"] and meta["continuations"] == 0
    assert meta["steers"] == 0 and meta["stopped"] == "token_cap" and not record["verified"]
    assert meta["first_error"] == {"offset": 6, "unit": 1}  # cut off: it did not pass
    s = summarize([record])
    assert s["token_capped"] == 1 and s["steers_to_verify"] == 3  # budget + 1
    with pytest.raises(ValueError, match="at least max_new_tokens"):
        steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=2, max_new_tokens=6, max_task_tokens=5)


RAMBLE = " ".join(str(x) for x in range(41, 400))  # never completes a list item: no unit to judge


@pytest.mark.parametrize("batch_size", [1, 4])
def test_a_model_that_rambles_cannot_improve_the_headline(smollm2_tokenizer, batch_size):
    # Four prompts. An honest model: two right answers, two answers wrong on every item (budget 2
    # spent, unverified). A rambler: the same two right answers, and on the two hard prompts it
    # writes numbers without ever finishing an item until the token cap. The old ratio of sums
    # (steers per verified output) scored the rambler better (0 / 2 against 4 / 2); the headline
    # counts every unverified task as budget + 1 and cannot.
    tasks = [Task(f"t/{i}", PRIMES.prompt, PRIMES.meta) for i in range(4)]
    right, wrong = {"": "41, 43, 47, 53"}, {"": "40, 40, 40, 40", "41,": " 40, 40, 40", "41, 43,": " 40, 40"}
    settings = dict(budget=2, max_new_tokens=8, max_task_tokens=32, show_progress=False, batch_size=batch_size)

    def steer(plans):  # one scripted model per prompt (the scripted LM knows one prompt's plan)
        return [run_tasks(scripted(smollm2_tokenizer, PRIMES, plan), smollm2_tokenizer, LISTS, [t], **settings)[0]
                for t, plan in zip(tasks, plans)]

    honest = summarize(steer([right, right, wrong, wrong]))
    rambler_records = steer([right, right, {"": RAMBLE}, {"": RAMBLE}])
    rambler = summarize(rambler_records)
    assert [r["meta"]["stopped"] for r in rambler_records] == ["verified", "verified", "token_cap", "token_cap"]
    assert all(r["meta"]["new_tokens"] >= 32 for r in rambler_records[2:])  # it went on to the cap
    assert rambler["token_capped"] == 2 and honest["token_capped"] == 0
    assert rambler["steers_per_verified"] < honest["steers_per_verified"]  # the old figure is fooled ...
    assert honest["steers_to_verify"] == rambler["steers_to_verify"] == pytest.approx((0 + 0 + 3 + 3) / 4)
    lo, hi = rambler["steers_to_verify_ci"]
    assert 0 <= lo <= 1.5 <= hi <= 3


def test_budget_is_a_hard_limit(smollm2_tokenizer):
    model = scripted(smollm2_tokenizer, PRIMES, {"": "40, 40, 40, 40", "41,": " 40, 40, 40", "41, 43,": " 40, 40"})
    record = steer_task(model, smollm2_tokenizer, LISTS, PRIMES, budget=2)
    assert record["meta"]["steers"] == 2 and not record["verified"]
    assert record["meta"]["stopped"] == "budget"
    assert record["final"] == "41, 43, 40,"  # corrections applied, the last wrong unit left as written


def test_arith_line_steer(smollm2_tokenizer):
    meta = {"family": "arith", "start": 37, "ops": [["+", 48], ["+", 15]], "subfamily": "seen"}
    task = Task("t/arith", [{"role": "user", "content": "Compute 37 + 48 + 15."}], meta)
    plan = {"": "37 + 48 = 85\n85 + 15 = 110\nAnswer: 110", "37 + 48 = 85\n85 + 15 = 100\n": "Answer: 100"}
    record = steer_task(scripted(smollm2_tokenizer, task, plan), smollm2_tokenizer, ARITH, task, budget=2)
    first = record["steps"][0]
    assert (first["rejected"], first["corrected"]) == ("85 + 15 = 110\n", "85 + 15 = 100\n")
    assert record["verified"] and record["meta"]["first_error"]["unit"] == 1


def tiny_random_model(tokenizer, seed=0):
    from transformers import AutoModelForCausalLM

    from localpref.models import tiny_llama_config

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_llama_config(vocab_size=len(tokenizer), hidden_size=32,
                                                              num_heads=2, intermediate_size=64)).eval()


def test_turn_writer_greedy_equals_transformers_generate(smollm2_tokenizer):
    tok = smollm2_tokenizer
    model = tiny_random_model(tok)
    writer = TurnWriter(model, tok, PRIMES.prompt, max_new_tokens=12)
    while not writer.done:
        writer.step()
    ids = torch.tensor([tok(render_prompt(tok, PRIMES.prompt), add_special_tokens=False)["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert writer.text == theirs and writer.new_tokens == 12


def test_resume_reuses_the_cache_and_equals_a_fresh_writer(smollm2_tokenizer):
    tok = smollm2_tokenizer
    model = tiny_random_model(tok, seed=1)
    writer = TurnWriter(model, tok, PRIMES.prompt, max_new_tokens=8)
    for _ in range(6):
        writer.step()
    prompt_tokens = len(writer.ids) - 6
    writer.set_text("41, 43, 47,")  # a correction spliced in; the cache keeps the prompt's tokens
    before = writer.forwarded_tokens
    for _ in range(5):
        writer.step()
    fed_after_resume = writer.forwarded_tokens - before
    fresh = TurnWriter(model, tok, PRIMES.prompt, max_new_tokens=8)
    fresh.set_text("41, 43, 47,")
    for _ in range(5):
        fresh.step()
    assert writer.text == fresh.text
    assert fed_after_resume < fresh.forwarded_tokens - prompt_tokens + 5  # the prompt was not fed again


def test_sampling_is_reproducible_by_seed(smollm2_tokenizer):
    model = tiny_random_model(smollm2_tokenizer)
    texts = []
    for seed in (3, 3, 4):
        w = TurnWriter(model, smollm2_tokenizer, PRIMES.prompt, temperature=1.0, seed=seed, max_new_tokens=10)
        while not w.done:
            w.step()
        texts.append(w.text)
    assert texts[0] == texts[1] != texts[2]


def test_collection_appends_and_resumes(smollm2_tokenizer, tmp_path):
    tasks = [Task(f"t/{i}", PRIMES.prompt, PRIMES.meta) for i in range(3)]
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 49, 53", "41, 43, 47,": " 53"})
    out = tmp_path / "c.jsonl"
    run_tasks(model, smollm2_tokenizer, LISTS, tasks[:2], out=out, budget=2, show_progress=False)
    with open(out, "a") as f:
        f.write('{"id": "t/2", "prompt": [')  # a run killed mid-write leaves a torn line
    calls = model.calls
    records = run_tasks(model, smollm2_tokenizer, LISTS, tasks, out=out, budget=2, show_progress=False)
    assert [r["id"] for r in records] == ["t/0", "t/1", "t/2"]
    assert model.calls > calls  # t/2 was generated now ...
    assert [r["id"] for r in read_records(out)] == ["t/0", "t/1", "t/2"]  # ... t/0, t/1 were not redone
    assert len(load_steers(out)) == 3  # the file loads as it is: one steer per trajectory


def test_summary_against_a_hand_count():
    def rec(first_unit, steers, verified, chars, stopped=None):
        return {"verified": verified, "steps": [{"cost": {"chars": chars}}] if steers else [],
                "meta": {"first_error": None if first_unit is None else {"unit": first_unit},
                         "steers": steers, "budget": 3, "new_tokens": 10, "seconds": 1.0,
                         "stopped": stopped or ("verified" if verified else "budget")}}

    records = [rec(None, 0, True, 0), rec(1, 1, True, 4), rec(2, 2, True, 6), rec(0, 3, False, 9),
               rec(0, 0, False, 0, "token_cap")]
    s = summarize(records)
    assert s["pass_rate"] == 0.2 and s["verified_within_budget"] == 0.6
    # every task counts: 0, 1, 2 steers verified; two unverified tasks count budget + 1 = 4 each
    assert s["steers_to_verify"] == pytest.approx((0 + 1 + 2 + 4 + 4) / 5)
    assert s["token_capped"] == 1
    assert s["steers_per_verified"] == pytest.approx(6 / 3)  # all steers, the unverified tasks' too
    assert s["steers_per_task"] == pytest.approx(6 / 5)
    assert s["first_error_unit"] == pytest.approx(3 / 4)
    for key, value in (("steers_per_verified", 2.0), ("steers_to_verify", 2.2)):
        lo, hi = s[f"{key}_ci"]
        assert lo <= value <= hi
    with pytest.raises(ValueError, match="another budget"):
        summarize(records, budget=4)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_batched_steering_equals_one_prompt_at_a_time(smollm2_tokenizer, temperature):
    # Left padding, position ids, rows leaving the batch and per-row generators must not change
    # what any row writes: the records match those of one TurnWriter per task.
    model = tiny_random_model(smollm2_tokenizer, seed=2)
    tasks = LISTS.tasks("val", n=5)
    settings = dict(budget=2, temperature=temperature, seed=7, max_new_tokens=10, show_progress=False)
    one = run_tasks(model, smollm2_tokenizer, LISTS, tasks, batch_size=1, **settings)
    batched = run_tasks(model, smollm2_tokenizer, LISTS, tasks, batch_size=4, **settings)
    strip = lambda r: {**r, "meta": {k: v for k, v in r["meta"].items() if k not in ("seconds", "forwarded_tokens")}}  # noqa: E731
    assert [strip(r) for r in batched] == [strip(r) for r in one]
    assert all(r["meta"]["new_tokens"] >= 10 for r in one)  # every row was generated, past the prompt
    # the correction path, batched: a scripted model errs at known places, so steers are made
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 49, 53", "41, 43, 47,": " 50, 53", "41, 43, 47, 53": ""})
    tasks = [Task(f"t/{i}", PRIMES.prompt, PRIMES.meta) for i in range(3)]
    one = run_tasks(model, smollm2_tokenizer, LISTS, tasks, batch_size=1, **{**settings, "max_new_tokens": 24})
    batched = run_tasks(model, smollm2_tokenizer, LISTS, tasks, batch_size=3, **{**settings, "max_new_tokens": 24})
    assert [strip(r) for r in batched] == [strip(r) for r in one]
    assert [r["meta"]["steers"] for r in batched] == [2, 2, 2] and all(r["verified"] for r in batched)


def test_resuming_with_other_settings_is_an_error(smollm2_tokenizer, tmp_path):
    model = scripted(smollm2_tokenizer, PRIMES, {"": "41, 43, 47, 53"})
    out = tmp_path / "c.jsonl"
    run_tasks(model, smollm2_tokenizer, LISTS, [PRIMES], out=out, budget=2, show_progress=False)
    with pytest.raises(ValueError, match="other settings .*budget 2 there, 3 now"):
        run_tasks(model, smollm2_tokenizer, LISTS, [PRIMES], out=out, budget=3, show_progress=False)
    # a file of the earlier loop (no max_task_tokens: a pass out of tokens ended the task) is not resumed
    old = [json.loads(line) for line in out.read_text().splitlines()]
    for r in old:
        del r["meta"]["max_task_tokens"]
    out.write_text("".join(json.dumps(r) + "\n" for r in old))
    with pytest.raises(ValueError, match="max_task_tokens None there, 512 now"):
        run_tasks(model, smollm2_tokenizer, LISTS, [PRIMES], out=out, budget=2, show_progress=False)


@pytest.mark.parametrize("setting, value, message", [
    ("temperature", float("nan"), "temperature: nan is not a number"),
    ("temperature", float("inf"), "temperature: inf is not a finite number"),
    ("top_p", float("nan"), "top_p: nan is not a number"),
    ("temperature", -1.0, "need temperature >= 0"),
])
def test_sampling_settings_that_are_not_numbers_are_refused(smollm2_tokenizer, setting, value, message):
    # NaN passed `temperature < 0` and reached the softmax; both generation paths refuse it up front.
    model = tiny_random_model(smollm2_tokenizer, seed=0)
    with pytest.raises(ValueError, match=message):
        TurnWriter(model, smollm2_tokenizer, "Hi", **{setting: value})
    for batch_size in (1, 2):
        with pytest.raises(ValueError, match=message):
            run_tasks(model, smollm2_tokenizer, LISTS, LISTS.tasks("val", n=2), batch_size=batch_size,
                      budget=1, show_progress=False, **{setting: value})
