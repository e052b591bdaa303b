"""tokenize_steer with real tokenizers: the SmolLM2 BPE, and a byte-level BPE trained here.

Independent checks: decoding the ids gives back the rendered text (byte-level BPE is lossless);
the chat template rendered with the full assistant message is the oracle for end-of-turn text;
character offsets from the tokenizer show which tokens cover completion text.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localpref.data import Steer, SteerError, tokenize_steer, tokenize_steers
from localpref.spans import common_prefix_len

CHAT = [{"role": "user", "content": "Give an example."}]
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """Byte-level BPE trained on a tiny corpus: lowercasing, adds <bos> by default, chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["for example, the cat sat on the mat.", "for examination of the dog.",
              "the exam was hard.", "a cat and a dog sat on a mat; the end!"] * 20
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()  # makes "Hello" and "hello" the same tokens
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                  special_tokens=["<bos>", "<eos>", "<|user|>", "<|assistant|>", "<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   chat_template=TEMPLATE)


def _tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("which", ["smollm2", "bpe"])
@pytest.mark.parametrize("chat", [True, False])
def test_seam_merge_puts_divergence_on_the_merged_token(which, chat, smollm2_tokenizer, bpe_tokenizer):
    tok = smollm2_tokenizer if which == "smollm2" else bpe_tokenizer
    prompt = CHAT if chat else "Give an example. "
    steer = Steer(prompt=prompt, prefix="for exam", rejected="ple, the cat sat.",
                  corrected="ination of the cat sat.")
    ts = tokenize_steer(steer, tok)
    # precondition: the tokenizer merges across the seam
    assert _tokens(tok, tok("for example", add_special_tokens=False)["input_ids"])[-1] == "Ġexample"
    chosen_span, rejected_span = ts.span_ids()
    assert _tokens(tok, chosen_span)[0] == "Ġexamination"
    assert _tokens(tok, rejected_span)[0] == "Ġexample"
    # the hunk stops where the sides re-converge on " the cat sat."
    assert tok.decode(chosen_span) == " examination of"
    assert tok.decode(rejected_span) == " example,"
    # a naive boundary (tokens of prompt + prefix) would start one token later, after " exam"
    rendered_prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) if chat else prompt
    naive = tok(rendered_prompt + "for exam", add_special_tokens=False)["input_ids"]
    # plain prompts get the tokenizer's default leading specials (the trained BPE's <bos>)
    lead = 0 if chat else len(tok("a")["input_ids"]) - len(tok("a", add_special_tokens=False)["input_ids"])
    assert len(naive) + lead == ts.prefix_len + 1
    assert ts.prompt_len < ts.prefix_len


def test_one_word_change_trains_on_that_word(smollm2_tokenizer):
    steer = Steer(prompt=CHAT, prefix="The capital of France is",
                  rejected=" Lyon, a city on the Seine.", corrected=" Paris, a city on the Seine.")
    for mode, chosen_text, rejected_text in [
        ("hunk", " Paris", " Lyon"),
        ("continuation", " Paris, a city on the Seine.", " Lyon, a city on the Seine."),
        ("completion", "The capital of France is Paris, a city on the Seine.",
         "The capital of France is Lyon, a city on the Seine."),
    ]:
        ts = tokenize_steer(steer, smollm2_tokenizer, span=mode)
        c, r = ts.span_ids()
        assert (smollm2_tokenizer.decode(c), smollm2_tokenizer.decode(r)) == (chosen_text, rejected_text)
    ts = tokenize_steer(steer, smollm2_tokenizer, context_after=2)
    assert smollm2_tokenizer.decode(ts.span_ids()[0]) == " Paris, a"


@pytest.mark.parametrize("which", ["smollm2", "bpe"])
def test_turn_stays_open_unless_it_ends(which, smollm2_tokenizer, bpe_tokenizer):
    tok = smollm2_tokenizer if which == "smollm2" else bpe_tokenizer
    steer = Steer(prompt=CHAT, prefix="sure: ", rejected="cats.", corrected="dogs.")
    closed = tok.apply_chat_template(CHAT + [{"role": "assistant", "content": "sure: dogs."}], tokenize=False)
    if which == "bpe":
        closed = closed.lower()  # its normalizer lowercases, so decoding gives lowercase text
    ts = tokenize_steer(steer, tok)
    text = tok.decode(ts.chosen_ids)
    assert closed.startswith(text) and text.endswith("sure: dogs.")  # nothing after the continuation
    assert tok.eos_token_id not in ts.chosen_ids[ts.prompt_len:]
    ended = tokenize_steer(Steer(prompt=CHAT, prefix="sure: ", rejected="cats.", corrected="dogs.",
                                 corrected_ends_turn=True), tok)
    assert tok.decode(ended.chosen_ids) == closed  # the template's own end of turn
    assert tok.decode(ended.rejected_ids) == tok.decode(ts.rejected_ids)


def test_plain_prompt_bos_and_eos(bpe_tokenizer, smollm2_tokenizer):
    steer = Steer(prompt="q: name a pet. a: ", prefix="a ", rejected="cat", corrected="dog",
                  corrected_ends_turn=True)
    ts = tokenize_steer(steer, bpe_tokenizer)
    bos, eos = bpe_tokenizer.bos_token_id, bpe_tokenizer.eos_token_id
    assert ts.chosen_ids[0] == ts.rejected_ids[0] == bos  # the tokenizer's default leading special
    assert ts.chosen_ids[-1] == eos and ts.chosen_ids.count(eos) == 1
    assert eos not in ts.rejected_ids  # the rejected continuation is partial
    assert bpe_tokenizer.decode(ts.chosen_ids) == "<bos>q: name a pet. a: a dog<eos>"
    # SmolLM2 adds no special tokens by default, so a plain prompt is encoded as is
    ts = tokenize_steer(steer, smollm2_tokenizer)
    assert smollm2_tokenizer.decode(ts.chosen_ids) == "q: name a pet. a: a dog<|im_end|>"


def test_bad_steers_raise(bpe_tokenizer, smollm2_tokenizer):
    with pytest.raises(SteerError, match="identical") as e:
        tokenize_steer(Steer(prompt=CHAT, prefix="x", rejected="same", corrected="same", id="s1"),
                       smollm2_tokenizer)
    assert e.value.reason == "identical_continuations" and "s1" in str(e.value)
    # different texts, same tokens under the lowercasing normalizer
    assert "Hello" != "hello"
    with pytest.raises(SteerError, match="tokenize identically") as e:
        tokenize_steer(Steer(prompt=CHAT, prefix="", rejected="the Cat", corrected="the cat"), bpe_tokenizer)
    assert e.value.reason == "identical_continuations"
    # a partial correction that only drops the rejected tail: nothing competes at the divergence
    with pytest.raises(SteerError) as e:
        tokenize_steer(Steer(prompt=CHAT, prefix="", rejected="the cat sat", corrected="the cat"),
                       smollm2_tokenizer)
    assert e.value.reason == "prefix_continuation" and e.value.field == "corrected"
    # ...which becomes a usable steer once the correction ends the turn there
    ts = tokenize_steer(Steer(prompt=CHAT, prefix="", rejected="the cat sat", corrected="the cat",
                              corrected_ends_turn=True), smollm2_tokenizer)
    assert _tokens(smollm2_tokenizer, ts.span_ids()[0])[0] == "<|im_end|>"
    with pytest.raises(ValueError, match="span must be"):
        tokenize_steer(Steer(prompt=CHAT, prefix="", rejected="a", corrected="b"), smollm2_tokenizer, span="x")


@pytest.mark.parametrize("prompt, rejected, corrected", [
    (CHAT, "b", "\n\nb"),  # "assistant\n" + "\n\nb" -> "\n\n", "\n", "b": a merge on the chosen side only
    ("Answer: ", "yes", " yes"),  # the prompt's trailing space merges with "yes" on one side only
])
def test_divergence_inside_the_prompt_is_reported(smollm2_tokenizer, prompt, rejected, corrected):
    tok = smollm2_tokenizer
    with pytest.raises(SteerError) as e:
        tokenize_steer(Steer(prompt=prompt, prefix="", rejected=rejected, corrected=corrected), tok)
    assert e.value.reason == "divergence_in_prompt"
    # the same texts with the whitespace in a shared prefix are fine
    ts = tokenize_steer(Steer(prompt=prompt, prefix="\n\n" if isinstance(prompt, list) else " ",
                              rejected="41", corrected="42"), tok)
    assert ts.prompt_len < ts.prefix_len
    if isinstance(prompt, list):  # a single leading "\n" stays a token of its own: no merge
        single = tokenize_steer(Steer(prompt=prompt, prefix="", rejected="b", corrected="\nb"), tok)
        assert single.prefix_len == single.prompt_len  # they differ at the first completion token


def test_truncation_drops_prompt_from_the_left_and_keeps_bos(bpe_tokenizer):
    tok = bpe_tokenizer
    steer = Steer(prompt="the cat sat on the mat. " * 6, prefix="for exam",
                  rejected="ple, the end!", corrected="ination of the dog.")
    # "continuation": the spans run to the end of each side, so there is no tail to cut first
    full = tokenize_steer(steer, tok, span="continuation")
    over = max(len(full.chosen_ids), len(full.rejected_ids)) - 20
    assert 0 < over < full.prompt_len - 1  # only prompt tokens need to go
    ts = tokenize_steer(steer, tok, span="continuation", max_length=20)
    assert ts.truncated_left == over
    assert max(len(ts.chosen_ids), len(ts.rejected_ids)) == 20
    assert ts.chosen_ids[0] == tok.bos_token_id  # BOS kept, the next `over` tokens dropped
    assert ts.chosen_ids[1:] == full.chosen_ids[1 + over:]
    assert ts.span_ids() == full.span_ids()
    assert (ts.prompt_len, ts.prefix_len) == (full.prompt_len - over, full.prefix_len - over)
    assert sum(ts.chosen_completion_mask) == sum(full.chosen_completion_mask)


def test_truncation_cuts_tail_after_hunk_then_raises(smollm2_tokenizer):
    tok = smollm2_tokenizer
    tail = " and then the cat sat on the mat for a long while" * 3
    steer = Steer(prompt="Q:", prefix=" The answer is", rejected=" 41" + tail, corrected=" 42" + tail)
    full = tokenize_steer(steer, tok)
    hunk_end = full.chosen_span_mask.index(True) + sum(full.chosen_span_mask)
    # The tail goes first: at max_length=hunk_end nothing on the left is dropped.
    ts = tokenize_steer(steer, tok, max_length=hunk_end)
    assert ts.truncated_left == 0 and ts.chosen_ids == full.chosen_ids[:hunk_end]
    # No BOS to keep (SmolLM2 adds none to plain text): the prompt and the shared prefix go, all
    # but the one token the first span token is predicted from (logits[i - 1] score ids[i]).
    ts = tokenize_steer(steer, tok, max_length=hunk_end - full.prefix_len + 1)
    assert ts.span_ids() == full.span_ids()
    assert ts.truncated_left == full.prefix_len - 1
    assert ts.chosen_ids[0] == full.chosen_ids[full.prefix_len - 1] and not ts.chosen_span_mask[0]
    assert ts.chosen_ids == full.chosen_ids[full.prefix_len - 1:hunk_end]
    # the shared prefix may go too, but never the span; continuation spans do not fit
    with pytest.raises(SteerError) as e:
        tokenize_steer(steer, tok, span="continuation", max_length=hunk_end)
    assert e.value.reason == "span_too_long"
    with pytest.raises(SteerError, match="max_length=2"):
        tokenize_steer(Steer(prompt="Q:", prefix="", rejected=" a b c", corrected=" x y z"), tok,
                       span="continuation", max_length=2)


def test_truncation_cuts_the_untrained_tail_before_the_context(smollm2_tokenizer):
    # Tokens after a hunk never influence the span's log-probs (causal attention), the prompt and
    # prefix do: the shared tail must go first. Here all of it fits once the tail is cut.
    tok = smollm2_tokenizer
    chat = [{"role": "user", "content": "List the numbers from 1 to 24, in order."}]
    tail = "".join(f", {i}" for i in range(4, 24))  # 20 shared list items after the edit
    steer = Steer(prompt=chat, prefix="1, 2, ", rejected="4" + tail, corrected="3" + tail)
    full = tokenize_steer(steer, tok)
    hunk_end = full.chosen_span_mask.index(True) + sum(full.chosen_span_mask)
    assert hunk_end <= 80 < len(full.chosen_ids)
    ts = tokenize_steer(steer, tok, max_length=80)
    assert ts.truncated_left == 0 and ts.prompt_len == full.prompt_len  # the whole context stays
    assert ts.chosen_ids == full.chosen_ids[:80] and ts.rejected_ids == full.rejected_ids[:80]
    assert ts.span_ids() == full.span_ids()
    # Shorter still: the tail is gone, then prompt tokens go from the left, just enough for the span.
    ts = tokenize_steer(steer, tok, max_length=hunk_end - 10)
    assert ts.truncated_left == 10 and len(ts.chosen_ids) == hunk_end - 10
    assert ts.chosen_ids[0] == tok.bos_token_id  # SmolLM2's BOS is "<|im_start|>": it stays
    assert ts.chosen_ids == full.chosen_ids[:1] + full.chosen_ids[11:hunk_end]
    assert ts.span_ids() == full.span_ids()


def test_no_mask_ever_marks_position_zero(smollm2_tokenizer):
    # SmolLM2 adds no BOS to plain text: truncation that drops the whole prompt leaves a completion
    # token at position 0, which no logit predicts; collating it used to raise at the first eval.
    from localpref.collate import collate_padded

    tok = smollm2_tokenizer
    steer = Steer(prompt="Count 0:", prefix=" one two three four five six", rejected=" seven eight",
                  corrected=" nine eight")
    full = tokenize_steer(steer, tok)
    for span in ("hunk", "continuation"):
        for max_length in range(4, len(full.chosen_ids) + 1):
            kept, skipped = tokenize_steers([steer], tok, span=span, max_length=max_length, on_error="skip")
            if skipped:
                assert dict(skipped) == {"span_too_long": 1}
                continue
            (ts,) = kept
            assert ts.span_ids() == tokenize_steer(steer, tok, span=span).span_ids()
            for mask in (ts.chosen_span_mask, ts.rejected_span_mask, ts.chosen_completion_mask,
                         ts.rejected_completion_mask):
                assert not mask[0], (span, max_length)
            collate_padded([ts], [0], tok.pad_token_id)
            if ts.prompt_len == 0:  # the whole prompt went: the first kept token is context only
                assert ts.chosen_completion_mask == [i >= 1 for i in range(len(ts.chosen_ids))]
    # With no BOS a prompt can merge with both continuations into their first token ("a" + "nd" /
    # "re" -> "and" / "are"): the competing tokens sit at position 0, so the steer is bad input.
    for span in ("hunk", "completion"):
        with pytest.raises(SteerError) as e:
            tokenize_steer(Steer(prompt="a", prefix="", rejected="nd", corrected="re"), tok, span=span)
        assert e.value.reason == "span_at_start"


def test_tokenize_steers_policy_and_batching_match_single(smollm2_tokenizer):
    tok = smollm2_tokenizer
    good = [Steer(prompt=CHAT, prefix="p", rejected=f" {i}", corrected=f" {i + 1}!", id=f"g{i}")
            for i in range(3)] + [Steer(prompt="plain:", prefix="", rejected="a", corrected="b", id="g3")]
    bad = [Steer(prompt=CHAT, prefix="", rejected="x", corrected="x", id="b0"),
           Steer(prompt=CHAT, prefix="", rejected="a b", corrected="a", id="b1"),
           Steer(prompt="Q:" * 50, prefix="", rejected=" no" * 50, corrected=" yes" * 50, id="b2")]
    steers = [bad[0], good[0], good[1], bad[1], good[2], bad[2], good[3]]
    out, skipped = tokenize_steers(steers, tok, span="continuation", max_length=40, on_error="skip")
    assert [t.id for t in out] == ["g0", "g1", "g2", "g3"]
    assert dict(skipped) == {"identical_continuations": 1, "prefix_continuation": 1, "span_too_long": 1}
    assert out == [tokenize_steer(s, tok, span="continuation", max_length=40) for s in good]
    assert [t.source_index for t in out] == [1, 2, 4, 6]  # positions in `steers`, past the skipped ones
    with pytest.raises(SteerError):
        tokenize_steers(steers, tok, on_error="raise")


class _NoOffsets:
    """A tokenizer seen as slow: no character offsets, so the prompt is compared in token space."""

    is_fast = False

    def __init__(self, tok):
        self._tok = tok

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __call__(self, texts, **kw):
        assert not kw.get("return_offsets_mapping")
        return self._tok(texts, **kw)


@pytest.mark.parametrize("prompt", [CHAT, "Give an example. ", "Give an example"])
def test_slow_tokenizer_path_agrees_with_offsets(smollm2_tokenizer, bpe_tokenizer, prompt):
    for tok in (smollm2_tokenizer, bpe_tokenizer):
        for prefix, rejected, corrected in [("for exam", "ple, a cat", "ination of it"),
                                            ("", "a cat", "the dog"), ("x", "\n\nfoo", "\nbar")]:
            steer = Steer(prompt=prompt, prefix=prefix, rejected=rejected, corrected=corrected,
                          corrected_ends_turn=True)
            fast = tokenize_steer(steer, tok, span="completion")
            assert tokenize_steer(steer, _NoOffsets(tok), span="completion") == fast


# ---- properties over random texts -------------------------------------------------------------

# letters that merge ("exampl"), spaces and newlines (pre-tokenizer lookahead), multi-byte chars
# (a byte-level token can hold part of one), and "Ω"/"ω" (the same tokens after lowercasing)
texts = st.text(alphabet="ab exampl,.\n\téΩω🙂", max_size=12)


def _check_properties(tok, steer: Steer, span: str, prompt_text: str, lead: int) -> None:
    """Properties of one steer; ``lead``: special tokens prepended to a plain prompt (a BOS)."""
    chosen_text = prompt_text + steer.prefix + steer.corrected
    rejected_text = prompt_text + steer.prefix + steer.rejected
    encs = [tok(t, add_special_tokens=False, return_offsets_mapping=True) for t in (chosen_text, rejected_text)]
    c, r = (e["input_ids"] for e in encs)
    try:
        ts = tokenize_steer(steer, tok, span=span)
    except SteerError as e:
        # errors only where the steer really has no competing completion tokens
        if e.reason == "identical_continuations":
            assert c == r
        elif e.reason == "divergence_in_prompt":  # a competing token lies inside the prompt text
            p = common_prefix_len(c, r)
            assert min(encs[0]["offset_mapping"][p][1], encs[1]["offset_mapping"][p][1]) <= len(prompt_text)
        else:
            assert e.reason == "prefix_continuation" and c != r
            assert common_prefix_len(c, r) == min(len(c), len(r))
        return
    assert steer.corrected != steer.rejected  # masks non-empty => texts differ (and below: non-empty)
    p = ts.prefix_len
    assert ts.chosen_ids[:p] == ts.rejected_ids[:p] and ts.chosen_ids[p] != ts.rejected_ids[p]
    for ids, span_mask, completion_mask, enc in [
        (ts.chosen_ids, ts.chosen_span_mask, ts.chosen_completion_mask, encs[0]),
        (ts.rejected_ids, ts.rejected_span_mask, ts.rejected_completion_mask, encs[1]),
    ]:
        assert len(ids) == len(span_mask) == len(completion_mask)
        assert any(span_mask) and not any(s and not c for s, c in zip(span_mask, completion_mask))
        first = max(ts.prompt_len, 1)  # position 0 is never masked: no logit predicts it
        assert completion_mask == [i >= first for i in range(len(ids))]
        assert span_mask[first if span == "completion" else p]
        # nothing outside the assistant completion is masked: every completion token covers
        # at least one character after the rendered prompt (leading specials: none)
        assert ids[lead:] == enc["input_ids"] and not any(completion_mask[:lead])
        assert all(end > len(prompt_text) for (_, end), m in zip(enc["offset_mapping"], completion_mask[lead:]) if m)


spans = st.sampled_from(["hunk", "continuation", "completion"])
fixture_ok = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fixture_ok
@given(prefix=texts, rejected=texts, corrected=texts, span=spans)
def test_properties_smollm2_chat(smollm2_tokenizer, prefix, rejected, corrected, span):
    tok = smollm2_tokenizer
    steer = Steer(prompt=CHAT, prefix=prefix, rejected=rejected, corrected=corrected)
    if rejected == corrected:
        with pytest.raises(SteerError, match="identical"):
            tokenize_steer(steer, tok, span=span)
        return
    _check_properties(tok, steer, span, tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True), 0)


@fixture_ok
@given(prompt=texts, prefix=texts, rejected=texts, corrected=texts, span=spans, chat=st.booleans())
def test_properties_trained_bpe(bpe_tokenizer, prompt, prefix, rejected, corrected, span, chat):
    """Chat prompts (ending in a special token) and random plain prompts (merging with the prefix)."""
    tok = bpe_tokenizer
    steer = Steer(prompt=CHAT if chat else prompt, prefix=prefix, rejected=rejected, corrected=corrected)
    if rejected == corrected:
        with pytest.raises(SteerError, match="identical"):
            tokenize_steer(steer, tok, span=span)
        return
    prompt_text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True) if chat else prompt
    _check_properties(tok, steer, span, prompt_text, lead=0 if chat else 1)


@fixture_ok
@given(prompt=texts, prefix=texts, rejected=texts, corrected=texts, span=spans, max_length=st.integers(1, 16))
def test_truncation_properties(bpe_tokenizer, prompt, prefix, rejected, corrected, span, max_length):
    """Against the documented rule: cut the tails after the spans, then drop after the BOS just
    enough for the spans to fit (never into the span, keeping one token before it)."""
    steer = Steer(prompt=prompt, prefix=prefix, rejected=rejected, corrected=corrected)
    try:
        full = tokenize_steer(steer, bpe_tokenizer, span=span)
    except SteerError:
        return
    start = full.chosen_span_mask.index(True)
    ends = [len(m) - m[::-1].index(True) for m in (full.chosen_span_mask, full.rejected_span_mask)]
    drop = max(0, min(max(ends) - max_length, start - 1))
    if max(ends) - drop > max_length:
        with pytest.raises(SteerError) as e:
            tokenize_steer(steer, bpe_tokenizer, span=span, max_length=max_length)
        assert e.value.reason == "span_too_long"
        return
    ts = tokenize_steer(steer, bpe_tokenizer, span=span, max_length=max_length)
    assert ts.truncated_left == drop and ts.span_ids() == full.span_ids()
    assert not ts.chosen_span_mask[0] and not ts.rejected_span_mask[0]  # a token to predict it from
    kept = lambda xs: (xs[:1] + xs[1 + drop:])[:max_length]  # noqa: E731  (positions that survive)
    assert ts.chosen_ids == kept(full.chosen_ids) and ts.rejected_ids == kept(full.rejected_ids)
    assert ts.chosen_ids[0] == bpe_tokenizer.bos_token_id  # the trained tokenizer's <bos> is always kept
    assert ts.chosen_completion_mask == kept(full.chosen_completion_mask)
    assert ts.rejected_span_mask == kept(full.rejected_span_mask)
    assert ts.prefix_len == full.prefix_len - drop


def test_tokenization_errors_name_the_file_and_line(tmp_path, smollm2_tokenizer):
    """Errors found only at tokenization still point at the JSONL line the steer came from."""
    import json

    from localpref.data import load_steers, tokenize_steers

    path = tmp_path / "steers.jsonl"
    rows = [{"prompt": "Q:", "rejected": " a b", "corrected": " x b"},
            {"prompt": "Q:", "rejected": " a b c d e f", "corrected": " x y z w v u", "id": "long"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    steers = load_steers(path)
    with pytest.raises(SteerError) as e:
        tokenize_steers(steers, smollm2_tokenizer, span="continuation", max_length=3)
    assert e.value.reason == "span_too_long" and (e.value.file, e.value.line) == (str(path), 2)
    assert f"{path}:2" in str(e.value)
    kept, skipped = tokenize_steers(steers, smollm2_tokenizer, span="continuation", max_length=3,
                                    on_error="skip")
    assert len(kept) == 1 and skipped == {"span_too_long": 1}
