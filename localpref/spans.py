"""Divergence spans on token-id sequences: where a chosen and a rejected sequence compete.

Pure functions on plain ``list[int]`` token ids; no tokenizer, no tensors. Rendering and
tokenizing a steer lives in ``localpref/data/tokenize.py``, which calls these.

Conventions, used throughout:

* ``chosen`` and ``rejected`` are whole token sequences (prompt + assistant completion) of
  lengths ``t_c`` and ``t_r``. Indices are token POSITIONS in them.
* A span is a half-open interval ``[start, end)`` of positions whose tokens are trained on
  (the loss later scores ``ids[i]`` with ``logits[i - 1]``).
* ``start`` (the divergence point, called ``prefix_len`` elsewhere) is the number of leading
  tokens the two sequences share: ``chosen[:start] == rejected[:start]`` and
  ``chosen[start] != rejected[start]``. Both spans start there.

The hunk rule (the default span):

1. Take the two tails after the divergence, ``chosen[start:]`` and ``rejected[start:]``, and
   diff them with ``difflib.SequenceMatcher(autojunk=False)`` (Ratcliff/Obershelp: longest
   common block first, recursively; not a minimal edit script, but deterministic and fast).
2. The hunk is the FIRST differing region of that diff: it ends where the tails re-converge.
   By default (``min_match=1``) any run of equal tokens counts as re-convergence, so a steer
   that changes one word trains on that word only, even if a later word also changed.
   With ``min_match=k`` an equal run shorter than ``k`` tokens between two differing regions
   is absorbed into the hunk (re-convergence must last ``k`` tokens); an equal run that
   reaches the end of both tails is the shared tail and always ends the hunk.
3. Each side keeps at least one token. A pure insertion or deletion leaves one side's region
   empty; that side then keeps the single token it has at ``start``, the token that competes
   with the other side's first token at that point.
4. ``context_after`` extra tokens are added after each side's hunk (clipped to the sequence).
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Sequence

SPAN_MODES = ("hunk", "continuation", "completion")


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading positions where ``a`` and ``b`` hold the same token."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def hunk_span(chosen: Sequence[int], rejected: Sequence[int], start: int, *,
              context_after: int = 0, min_match: int = 1) -> tuple[int, int]:
    """End positions ``(chosen_end, rejected_end)`` of the first differing region after ``start``.

    Args:
        chosen: token ids, length ``t_c``.
        rejected: token ids, length ``t_r``.
        start: the divergence point; both sequences must have a token there and the tokens
            must differ (``start == common_prefix_len(chosen, rejected) < min(t_c, t_r)``).
        context_after: extra tokens kept after each side's hunk.
        min_match: equal tokens needed in a row to count as re-convergence (see module doc).

    Returns:
        Exclusive ends; the spans are ``chosen[start:chosen_end]`` and
        ``rejected[start:rejected_end]``, each holding at least one token.
    """
    if not (0 <= start < len(chosen) and start < len(rejected)):
        raise ValueError(f"start={start} must index a token of both sequences "
                         f"(lengths {len(chosen)}, {len(rejected)})")
    if chosen[:start] != rejected[:start] or chosen[start] == rejected[start]:
        raise ValueError(f"start={start} is not the divergence point of the two sequences")
    if min_match < 1 or context_after < 0:
        raise ValueError(f"need min_match >= 1 and context_after >= 0, got {min_match}, {context_after}")
    c_tail, r_tail = list(chosen[start:]), list(rejected[start:])
    ops = SequenceMatcher(None, c_tail, r_tail, autojunk=False).get_opcodes()
    c_end = r_end = 0  # ends of the hunk, relative to start
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            # the first op is never "equal" (the tails differ at 0), so the hunk is set by now
            shared_tail = i2 == len(c_tail) and j2 == len(r_tail)
            if shared_tail or i2 - i1 >= min_match:
                break
            continue  # a short coincidental match inside a rewrite: keep going
        c_end, r_end = i2, j2
    # Pure insertion/deletion: the empty side keeps the token competing at the divergence.
    c_end, r_end = max(c_end, 1), max(r_end, 1)
    c_end = min(len(c_tail), c_end + context_after)
    r_end = min(len(r_tail), r_end + context_after)
    return start + c_end, start + r_end


def span_bounds(chosen: Sequence[int], rejected: Sequence[int], *, prompt_len: int,
                mode: str = "hunk", context_after: int = 0,
                min_match: int = 1) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((chosen_start, chosen_end), (rejected_start, rejected_end))`` for a span ``mode``.

    * ``"hunk"``: ``[divergence, hunk end)`` per ``hunk_span``.
    * ``"continuation"``: ``[divergence, end of sequence)``.
    * ``"completion"``: ``[prompt_len, end of sequence)``: the whole assistant completion,
      shared prefix included (what plain DPO, or SFT on the chosen side, trains on).

    The sequences must differ at a position both of them have (the caller reports identical
    or prefix-of-each-other sequences as bad input before calling this).
    """
    start = common_prefix_len(chosen, rejected)
    if start >= min(len(chosen), len(rejected)):
        raise ValueError("one sequence is a prefix of the other: no competing tokens")
    if not 0 <= prompt_len <= start:
        raise ValueError(f"prompt_len={prompt_len} must lie in [0, divergence={start}]")
    if mode == "hunk":
        c_end, r_end = hunk_span(chosen, rejected, start, context_after=context_after,
                                 min_match=min_match)
        return (start, c_end), (start, r_end)
    if mode == "continuation":
        return (start, len(chosen)), (start, len(rejected))
    if mode == "completion":
        return (prompt_len, len(chosen)), (prompt_len, len(rejected))
    raise ValueError(f"span mode must be one of {SPAN_MODES}, got {mode!r}")


def interval_mask(length: int, start: int, end: int) -> list[bool]:
    """``[start <= i < end for i in range(length)]``."""
    return [start <= i < end for i in range(length)]
