"""Render a steer, tokenize it, and find the divergence span in token space.

Rendering (one string per side; nothing is inserted between the parts):

* Chat prompt (list of messages): ``tokenizer.apply_chat_template(messages, tokenize=False,
  add_generation_prompt=True)`` + prefix + continuation. The assistant turn stays open: no
  end-of-turn or EOS text follows a partial continuation. If ``*_ends_turn`` is set, the
  template's own end-of-turn text is appended, found by rendering the messages plus an
  assistant message holding a sentinel and taking everything after the sentinel (for
  SmolLM2 ``"<|im_end|>\\n"``; ``eos_token`` if the template renders nothing there).
  Encoded with ``add_special_tokens=False``: the template already wrote any BOS it wants.
* Plain-string prompt: prompt + prefix + continuation, the prompt used verbatim (add your own
  separator to the prompt if you want one), then ``eos_token`` if ``*_ends_turn``. Encoded
  without special tokens, then the LEADING special tokens the tokenizer adds by default (a
  Llama-style BOS) are prepended; trailing ones (EOS, SEP) never are.

Each rendered string is tokenized whole, once, so a BPE merge across the prefix/continuation
seam (prefix "for exam", continuations "ple" / "ination") lands the divergence on the merged
token (" example" vs " examination") rather than after the prefix's last token.

Positions (all indices into a side's ids; the spans themselves come from ``localpref.spans``):

* ``prompt_len``: the first assistant-completion token: the first token that covers at least
  one character after the rendered prompt, read from the fast tokenizer's character offsets
  (a token merged across the prompt/completion seam counts as completion). Slow tokenizers
  have no offsets; there the prompt is tokenized alone and the completion starts at the
  first token that differs from it (a BPE re-split inside the prompt's last word can then
  count a prompt-only token as completion).
* ``prefix_len``: the divergence, the number of leading tokens the two sides share. In
  "hunk" and "continuation" modes both spans start there; in "completion" mode they start at
  ``prompt_len`` and ``prefix_len`` still marks the divergence.
* The two sides can tokenize the END OF THE PROMPT differently: with SmolLM2, a chat prompt
  ending in "assistant\\n" followed by a continuation starting "\\n\\n" merges the prompt's
  newline and the first of those into one "\\n\\n" token on that side only (a single "\\n"
  stays a token of its own); a plain prompt "Answer: " does the same with " yes" vs "yes".
  The competing token is then prompt text on one side, which the model never chose, so such
  a steer raises ``SteerError("divergence_in_prompt")``. Otherwise ``prompt_len <= prefix_len``
  and every masked token covers completion text.
* No mask ever marks position 0: no logit predicts the token there. Without a BOS a completion
  token can sit at 0 (the prompt merges into it, or truncation dropped the whole prompt); it is
  then context only, and the masks start at 1. If the two sides already differ at position 0,
  nothing can score the competing tokens: ``SteerError("span_at_start")``.

Truncation to ``max_length`` (per side), in this order:

1. The tail after each side's span (in "hunk" mode the shared tail beyond ``context_after``; the
   other modes have none) is cut from the right first: under causal attention it never changes
   the span's log-probs.
2. Only if a span still ends past ``max_length``, tokens are dropped from the left, after a
   leading BOS which is always kept, just enough for both spans to fit (prompt first, then
   shared prefix tokens), keeping at least one token before the span.

The span is never cut: a steer whose span cannot fit raises ``SteerError("span_too_long")``.
Dropping from the left loses context the span is predicted from, so ``truncated_left`` records
it (``localpref data inspect`` shows and counts it). The completion masks cover what is kept, so
a loss on ``mask=completion`` with ``span=hunk`` sees less of the tail.

Bad steers raise ``SteerError`` (or are skipped and counted by ``tokenize_steers``):
``identical_continuations`` (same text, or different text with the same tokens, e.g. under a
lowercasing normalizer), ``prefix_continuation`` (one side's tokens are a strict prefix of the
other's, e.g. a partial corrected continuation that only deletes the rejected tail: there is
no competing token at the divergence), ``divergence_in_prompt`` and ``span_at_start`` (above),
``span_too_long``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from localpref.data.errors import OnError, SkipCounter, SteerError
from localpref.data.schema import Steer
from localpref.data.split import source_record
from localpref.spans import SPAN_MODES, common_prefix_len, interval_mask, span_bounds

_SENTINEL = "LOCALPREFSENTINEL0x7f3a"  # plain ASCII so that templates which trim content keep it
_ENCODE_BATCH = 512  # steers per batched tokenizer call in tokenize_steers


@dataclass
class TokenizedSteer:
    """One steer as two token sequences with masks; all lists of a side have the same length.

    Masks mark POSITIONS ``i`` whose token ``ids[i]`` is trained on (scored by ``logits[i-1]``).
    ``*_span_mask`` is a subset of ``*_completion_mask``, which is ``i >= max(prompt_len, 1)``:
    position 0 is never marked, since no logit predicts it.
    """

    chosen_ids: list[int]  # (t_c,) prompt + prefix + corrected continuation
    rejected_ids: list[int]  # (t_r,) prompt + prefix + rejected continuation
    chosen_span_mask: list[bool]  # (t_c,)
    rejected_span_mask: list[bool]  # (t_r,)
    chosen_completion_mask: list[bool]  # (t_c,) the assistant completion, prefix included
    rejected_completion_mask: list[bool]  # (t_r,)
    prefix_len: int  # tokens shared before the divergence (after truncation)
    prompt_len: int  # index of the first assistant-completion token (after truncation)
    id: str | None = None
    truncated_left: int = 0  # tokens dropped after the BOS to fit max_length (same on both sides)
    # Position of the source steer in the list given to tokenize_steers (which can skip steers);
    # ids need not be unique or present, so this is how a tokenized steer finds its steer.
    source_index: int | None = field(default=None, compare=False)
    # ``localpref.data.split.source_record`` of the source steer: the steers of one trajectory (or
    # of one edited answer) share it, and ``data.layout=trees`` packs them into one row.
    source_record: tuple[str, str | None] | None = field(default=None, compare=False, repr=False)

    def span_ids(self) -> tuple[list[int], list[int]]:
        """The trained-on token ids ``(chosen, rejected)``, for inspection and logging."""
        return ([t for t, m in zip(self.chosen_ids, self.chosen_span_mask) if m],
                [t for t, m in zip(self.rejected_ids, self.rejected_span_mask) if m])


@dataclass
class _Encoded:
    """One steer's two token sequences and where each one's assistant completion starts."""

    chosen: list[int]
    chosen_completion_start: int
    rejected: list[int]
    rejected_completion_start: int


class _Renderer:
    """Renders steers to text and encodes text for one tokenizer; caches per-tokenizer facts."""

    def __init__(self, tokenizer: Any):
        self.tok = tokenizer
        self._chat_eot: str | None = None
        self._plain_lead: list[int] | None = None

    def prompt_text(self, steer: Steer) -> str:
        if not steer.is_chat:
            return steer.prompt
        if not getattr(self.tok, "chat_template", None):
            raise ValueError(f"steer {steer.id!r} has a chat prompt but the tokenizer has no chat template")
        return self.tok.apply_chat_template(steer.prompt, tokenize=False, add_generation_prompt=True)

    def end_of_turn(self, steer: Steer) -> str:
        """Text that closes the assistant turn: the template's own, or ``eos_token``."""
        # Derived once per renderer, from the first chat steer that needs it: the closing text
        # of an assistant turn does not depend on the conversation in the templates we know.
        if steer.is_chat and self._chat_eot is None:
            closed = self.tok.apply_chat_template(
                steer.prompt + [{"role": "assistant", "content": _SENTINEL}], tokenize=False)
            at = closed.rfind(_SENTINEL)
            if at < 0:
                raise ValueError("cannot find where the chat template closes an assistant turn "
                                 "(the sentinel assistant message was not rendered)")
            self._chat_eot = closed[at + len(_SENTINEL):]
        eot = self._chat_eot if steer.is_chat else None
        if not eot:
            if self.tok.eos_token is None:
                raise ValueError(f"steer {steer.id!r} ends its turn but the tokenizer has no eos_token")
            eot = self.tok.eos_token
        return eot

    def texts(self, steer: Steer) -> tuple[str, str, str]:
        """``(prompt, chosen, rejected)`` rendered strings."""
        if steer.corrected == steer.rejected and steer.corrected_ends_turn == steer.rejected_ends_turn:
            raise SteerError("identical_continuations",
                             f"steer {steer.id!r}: rejected and corrected continuations are identical",
                             field="corrected")
        prompt = self.prompt_text(steer)
        chosen = prompt + steer.prefix + steer.corrected
        rejected = prompt + steer.prefix + steer.rejected
        if steer.corrected_ends_turn:
            chosen += self.end_of_turn(steer)
        if steer.rejected_ends_turn:
            rejected += self.end_of_turn(steer)
        return prompt, chosen, rejected

    def plain_lead(self) -> list[int]:
        """Leading special ids the tokenizer adds by default (found by encoding a probe)."""
        if self._plain_lead is None:
            bare = self.tok("a", add_special_tokens=False)["input_ids"]
            full = self.tok("a", add_special_tokens=True)["input_ids"]
            at = next((i for i in range(len(full) - len(bare) + 1)
                       if full[i:i + len(bare)] == bare), 0)
            self._plain_lead = list(full[:at])
        return self._plain_lead

    def encode(self, batch: list[tuple[Steer, tuple[str, str, str]]]) -> list[_Encoded]:
        """Token ids and completion starts of rendered steers, in one batched tokenizer call."""
        fast = bool(getattr(self.tok, "is_fast", False))
        per = 2 if fast else 3  # slow tokenizers also encode the prompt alone
        texts = [t for _, (p, c, r) in batch for t in ((c, r) if fast else (c, r, p))]
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=fast)
        out = []
        for k, (steer, (prompt, _, _)) in enumerate(batch):
            lead = [] if steer.is_chat else self.plain_lead()
            sides = []
            for n in range(2):
                ids = lead + list(enc["input_ids"][per * k + n])
                if fast:  # first token ending after the prompt's last character
                    ends = [0] * len(lead) + [e for _, e in enc["offset_mapping"][per * k + n]]
                    start = next((i for i, e in enumerate(ends) if e > len(prompt)), len(ids))
                else:
                    start = common_prefix_len(lead + list(enc["input_ids"][per * k + 2]), ids)
                sides.append((ids, start))
            out.append(_Encoded(*sides[0], *sides[1]))
        return out


def _check_args(span: str, max_length: int | None) -> None:
    if span not in SPAN_MODES:
        raise ValueError(f"span must be one of {SPAN_MODES}, got {span!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")


def _first_scored(prompt_len: int) -> int:
    """The first position a mask may mark: the first completion token, but never position 0,
    whose token no logit predicts (a completion token lands there when there is no BOS and the
    prompt merges into it, or truncation dropped the whole prompt): it is then context only."""
    return max(prompt_len, 1)


def _divergence(steer: Steer, enc: _Encoded) -> int:
    """``prefix_len``, the divergence, once the steer has competing tokens a logit can score."""
    chosen, rejected = enc.chosen, enc.rejected
    if chosen == rejected:
        raise SteerError("identical_continuations",
                         f"steer {steer.id!r}: continuations differ as text but tokenize identically",
                         field="corrected")
    prefix_len = common_prefix_len(chosen, rejected)
    if prefix_len == min(len(chosen), len(rejected)):
        shorter = "corrected" if len(chosen) < len(rejected) else "rejected"
        raise SteerError("prefix_continuation",
                         f"steer {steer.id!r}: the {shorter} sequence's tokens are a prefix of the "
                         f"other's, so no token competes at the divergence (end the turn, or "
                         f"continue the shorter text past the point of difference)", field=shorter)
    if prefix_len < max(enc.chosen_completion_start, enc.rejected_completion_start):
        raise SteerError("divergence_in_prompt",
                         f"steer {steer.id!r}: the two sides tokenize the end of the prompt "
                         f"differently (a token merges prompt text with one continuation only, "
                         f"e.g. a trailing space or newline), so one competing token is prompt "
                         f"text; move that whitespace into the prefix or the prompt", field="prefix")
    if prefix_len == 0:  # possible only without a BOS, when the first token merges prompt and completion
        raise SteerError("span_at_start",
                         f"steer {steer.id!r}: the two sides differ at their first token, which no "
                         f"logit predicts (the tokenizer adds no BOS and the first token merges "
                         f"prompt and completion text); lengthen the prompt", field="prompt")
    return prefix_len


def _build(steer: Steer, enc: _Encoded, *, span: str, max_length: int | None, context_after: int,
           min_match: int, bos_token_id: int | None) -> TokenizedSteer:
    """Spans, masks and truncation for one encoded steer."""
    chosen, rejected = enc.chosen, enc.rejected
    prefix_len = _divergence(steer, enc)
    # equal on both sides here: they share all tokens before the divergence, offsets included
    prompt_len = enc.chosen_completion_start
    (c_start, c_end), (r_start, r_end) = span_bounds(
        chosen, rejected, prompt_len=_first_scored(prompt_len), mode=span, context_after=context_after,
        min_match=min_match)

    dropped = 0
    if max_length is not None:
        # Keep a leading BOS: models are trained with it at position 0.
        keep = int(prompt_len > 0 and bos_token_id is not None and chosen[0] == bos_token_id)
        # The tails after the spans go first: under causal attention they never change the
        # span's log-probs, while every token on the left is context for it. So drop from the
        # left only what the spans need to end within max_length, and keep at least one token
        # before them (ids[i] is scored by logits[i - 1]); the tails are cut below.
        over = max(c_end, r_end) - max_length
        dropped = max(0, min(over, min(c_start, r_start) - max(keep, 1)))
        chosen = chosen[:keep] + chosen[keep + dropped:]
        rejected = rejected[:keep] + rejected[keep + dropped:]
        c_start, c_end, r_start, r_end = (x - dropped for x in (c_start, c_end, r_start, r_end))
        prefix_len -= dropped
        prompt_len = max(prompt_len - dropped, keep)
        if max(c_end, r_end) > max_length:
            raise SteerError("span_too_long",
                             f"steer {steer.id!r}: the span ends at token {max(c_end, r_end)} even "
                             f"after dropping {dropped} tokens from the left, past max_length="
                             f"{max_length} (span mode {span!r})")
        chosen, rejected = chosen[:max_length], rejected[:max_length]  # tails after the spans

    return TokenizedSteer(
        chosen_ids=chosen,
        rejected_ids=rejected,
        chosen_span_mask=interval_mask(len(chosen), c_start, c_end),
        rejected_span_mask=interval_mask(len(rejected), r_start, r_end),
        chosen_completion_mask=interval_mask(len(chosen), _first_scored(prompt_len), len(chosen)),
        rejected_completion_mask=interval_mask(len(rejected), _first_scored(prompt_len), len(rejected)),
        prefix_len=prefix_len,
        prompt_len=prompt_len,
        id=steer.id,
        truncated_left=dropped,
        source_record=source_record(steer),
    )


def tokenize_steer(steer: Steer, tokenizer: Any, *, span: str = "hunk", max_length: int | None = None,
                   context_after: int = 0, min_match: int = 1) -> TokenizedSteer:
    """Render and tokenize one steer and mark its divergence span (see the module docstring).

    Args:
        steer: the steer.
        tokenizer: a Hugging Face tokenizer (with a chat template if the prompt is messages).
        span: "hunk" (first differing region of a token diff, default), "continuation"
            (divergence to the end of each side) or "completion" (the whole assistant
            completion, prefix included).
        max_length: longest allowed sequence per side, or None for no limit.
        context_after: extra tokens kept after each side's hunk ("hunk" mode only).
        min_match: equal tokens in a row that end a hunk (``localpref.spans.hunk_span``).

    Raises:
        SteerError: reason "identical_continuations", "prefix_continuation",
            "divergence_in_prompt", "span_at_start" or "span_too_long".
    """
    _check_args(span, max_length)
    r = _Renderer(tokenizer)
    try:
        (enc,) = r.encode([(steer, r.texts(steer))])
        return _build(steer, enc, span=span, max_length=max_length, context_after=context_after,
                      min_match=min_match, bos_token_id=tokenizer.bos_token_id)
    except SteerError as err:
        raise _located(err, steer) from None


def drop_unread_tail(steer: TokenizedSteer, mask: str) -> TokenizedSteer:
    """``steer`` with each side cut just after the last token ``mask`` ("span" | "completion") marks.

    A loss on ``mask`` reads the log-probs of the marked tokens only, and under causal attention a
    token's log-prob depends on the tokens before it alone, so the tokens after a side's last marked
    one change no loss value and no gradient: training need not run them. In ``hunk`` mode that is
    the shared tail after each side's hunk (the rest of a DeFacto summary after the edit, the
    comma after a corrected list item); ``continuation`` spans and ``completion`` masks run to the
    end, so nothing is cut there. A side with nothing marked (the empty rejected span of an
    insertion) keeps the shared prefix, so a packed layout still shares it. Evaluation keeps whole
    sequences: its drift metrics read the completion.
    """
    if mask not in ("span", "completion"):
        raise ValueError(f"mask must be 'span' or 'completion', got {mask!r}")
    cut = {}
    for side in ("chosen", "rejected"):
        marked = getattr(steer, f"{side}_{mask}_mask")
        last = max((i for i, m in enumerate(marked) if m), default=-1)
        cut[side] = min(len(marked), max(last + 1, steer.prefix_len, 1))
    if all(cut[side] == len(getattr(steer, f"{side}_ids")) for side in cut):
        return steer
    return replace(steer, **{f"{side}_{part}": getattr(steer, f"{side}_{part}")[:cut[side]]
                             for side in cut for part in ("ids", "span_mask", "completion_mask")})


def _located(err: SteerError, steer: Steer) -> SteerError:
    """The error with the file and line the steer was loaded from (if it was loaded from one)."""
    return err.located(file=steer.origin[0], line=steer.origin[1]) if steer.origin else err


def tokenize_steers(steers: Iterable[Steer], tokenizer: Any, *, span: str = "hunk",
                    max_length: int | None = None, context_after: int = 0, min_match: int = 1,
                    on_error: OnError = "raise") -> tuple[list[TokenizedSteer], SkipCounter]:
    """``tokenize_steer`` over many steers, with one batched tokenizer call per 512 steers.

    Returns the tokenized steers (in input order, bad ones left out under ``on_error="skip"``,
    each with ``source_index``: its steer's position in ``steers``) and a fresh ``SkipCounter``
    of the steers skipped here, by reason (load-time skips are counted separately by
    ``load_steers``).
    """
    _check_args(span, max_length)
    r = _Renderer(tokenizer)
    skipped = SkipCounter()
    rendered: list[tuple[Steer, tuple[str, str, str]]] = []
    index: list[int] = []  # position in `steers` of each rendered steer
    for i, steer in enumerate(steers):
        try:
            rendered.append((steer, r.texts(steer)))
            index.append(i)
        except SteerError as err:
            skipped.handle(_located(err, steer), on_error)
    out: list[TokenizedSteer] = []
    for lo in range(0, len(rendered), _ENCODE_BATCH):
        batch = rendered[lo:lo + _ENCODE_BATCH]
        for (steer, _), enc, i in zip(batch, r.encode(batch), index[lo:lo + _ENCODE_BATCH]):
            try:
                ts = _build(steer, enc, span=span, max_length=max_length, context_after=context_after,
                            min_match=min_match, bos_token_id=tokenizer.bos_token_id)
            except SteerError as err:
                skipped.handle(_located(err, steer), on_error)
                continue
            ts.source_index = i
            out.append(ts)
    return out, skipped


# ---------------------------------------------------------------------------------------------
# The same rendering for code that writes text rather than tokenizing steers (generation,
# pretraining task models): a model must see exactly what it is trained on.


def render_prompt(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The prompt as rendered for a steer: chat messages through the chat template with the
    assistant turn opened, or a plain string verbatim (its leading special ids are separate,
    see ``leading_special_ids``)."""
    return _Renderer(tokenizer).prompt_text(Steer(prompt=prompt, prefix="", rejected="", corrected=""))


def end_of_turn_text(tokenizer: Any, prompt: str | list[dict[str, str]]) -> str:
    """The text that closes an assistant turn after ``prompt`` (the template's own, or EOS)."""
    return _Renderer(tokenizer).end_of_turn(Steer(prompt=prompt, prefix="", rejected="", corrected=""))


def leading_special_ids(tokenizer: Any, prompt: str | list[dict[str, str]]) -> list[int]:
    """Special ids put before a rendered prompt: none for chat prompts (the template writes its
    own BOS), the tokenizer's default leading ids (a Llama-style BOS) for plain strings."""
    return [] if isinstance(prompt, list) else _Renderer(tokenizer).plain_lead()
