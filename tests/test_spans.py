"""Divergence spans on hand-written token sequences (no tokenizer).

Expected spans are derived by hand in the comments; the property tests build sequences whose
diff has only one correct answer (disjoint token alphabets) and compare against it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localpref.spans import common_prefix_len, hunk_span, interval_mask, span_bounds


def test_common_prefix_len():
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([5], [6]) == 0
    assert common_prefix_len([1, 2, 3], [1, 2, 3]) == 3


@pytest.mark.parametrize("chosen, rejected, expected", [
    # one token replaced in shared context: just that token on each side
    ([1, 2, 3, 9, 5, 6], [1, 2, 3, 8, 5, 6], (4, 4)),
    # 3 tokens replace 1, then re-converge on [5, 6]
    ([1, 2, 7, 7, 7, 5, 6], [1, 2, 8, 5, 6], (5, 3)),
    # pure insertion [7, 8] on the chosen side: the rejected side keeps the token that
    # competes with 7 at position 2, which is its 3
    ([1, 2, 7, 8, 3, 4], [1, 2, 3, 4], (4, 3)),
    # pure deletion: the mirror image
    ([1, 2, 3, 4], [1, 2, 7, 8, 3, 4], (3, 4)),
    # no shared tail at all: everything after the divergence
    ([1, 2, 3], [1, 2, 4, 5], (3, 4)),
    # two separate changes: only the first region (min_match=1)
    ([1, 9, 2, 3, 8, 4], [1, 7, 2, 3, 6, 4], (2, 2)),
])
def test_hunk_span_hand_cases(chosen, rejected, expected):
    start = common_prefix_len(chosen, rejected)
    assert hunk_span(chosen, rejected, start) == expected


def test_min_match_absorbs_short_coincidental_matches():
    # tails after the divergence at 1:  chosen  10 11 5 12 13 20 21 22
    #                                   rejected 30 31 5 32   20 21 22
    # The lone shared 5 ends the hunk under min_match=1; with min_match=2 it is absorbed and
    # the hunk runs to the shared tail [20, 21, 22], which always ends it.
    chosen = [0, 10, 11, 5, 12, 13, 20, 21, 22]
    rejected = [0, 30, 31, 5, 32, 20, 21, 22]
    assert hunk_span(chosen, rejected, 1) == (3, 3)
    assert hunk_span(chosen, rejected, 1, min_match=2) == (6, 5)
    # two changes separated by a 2-token match [2, 3]: merged only when min_match > 2
    c, r = [1, 9, 2, 3, 8, 4], [1, 7, 2, 3, 6, 4]
    assert hunk_span(c, r, 1, min_match=2) == (2, 2)
    assert hunk_span(c, r, 1, min_match=3) == (5, 5)


def test_context_after_is_clipped():
    c, r = [1, 2, 3, 9, 5, 6], [1, 2, 3, 8, 5, 6, 7]
    assert hunk_span(c, r, 3, context_after=1) == (5, 5)
    assert hunk_span(c, r, 3, context_after=10) == (6, 7)


@pytest.mark.parametrize("start", [0, 1, 3, 4])
def test_hunk_span_rejects_a_start_that_is_not_the_divergence(start):
    # divergence is at 2; 3 is past it, 4 is past the end of rejected
    with pytest.raises(ValueError):
        hunk_span([1, 2, 3, 4, 5], [1, 2, 9, 4], start)


def test_span_bounds_modes():
    prompt_len = 2  # tokens 0, 1 are the prompt; 2 is shared assistant prefix
    c, r = [1, 2, 3, 9, 5, 6], [1, 2, 3, 8, 8, 5, 6]
    assert span_bounds(c, r, prompt_len=prompt_len) == ((3, 4), (3, 5))
    assert span_bounds(c, r, prompt_len=prompt_len, mode="continuation") == ((3, 6), (3, 7))
    assert span_bounds(c, r, prompt_len=prompt_len, mode="completion") == ((2, 6), (2, 7))
    with pytest.raises(ValueError, match="span mode"):
        span_bounds(c, r, prompt_len=prompt_len, mode="diff")
    with pytest.raises(ValueError, match="prompt_len"):
        span_bounds(c, r, prompt_len=4)
    with pytest.raises(ValueError, match="prefix"):
        span_bounds([1, 2, 3], [1, 2, 3, 4], prompt_len=1)
    assert interval_mask(5, 1, 3) == [False, True, True, False, False]


shared = st.lists(st.integers(0, 9), max_size=8)  # context tokens
chosen_only = st.lists(st.integers(100, 109), max_size=5)  # alphabets disjoint from each other
rejected_only = st.lists(st.integers(200, 209), max_size=5)  # and from the context


@settings(max_examples=300, deadline=None)
@given(head=shared, x=chosen_only, y=rejected_only, tail=shared, context_after=st.integers(0, 3))
def test_hunk_is_exactly_the_edit(head, x, y, tail, context_after):
    """head + x + tail vs head + y + tail: the hunk is x vs y (an empty side keeps one token)."""
    if not (x or y) or not ((x and y) or tail):
        return  # identical, or no token competes at the divergence
    chosen, rejected = head + x + tail, head + y + tail
    start = common_prefix_len(chosen, rejected)
    assert start == len(head)
    c_end, r_end = hunk_span(chosen, rejected, start, context_after=context_after)
    assert c_end == min(len(chosen), start + max(len(x), 1) + context_after)
    assert r_end == min(len(rejected), start + max(len(y), 1) + context_after)


@settings(max_examples=300, deadline=None)
@given(chosen=st.lists(st.integers(0, 4), min_size=1, max_size=12),
       rejected=st.lists(st.integers(0, 4), min_size=1, max_size=12), min_match=st.integers(1, 3))
def test_hunk_invariants_on_random_sequences(chosen, rejected, min_match):
    start = common_prefix_len(chosen, rejected)
    if start >= min(len(chosen), len(rejected)):
        return
    c_end, r_end = hunk_span(chosen, rejected, start, min_match=min_match)
    assert start < c_end <= len(chosen) and start < r_end <= len(rejected)
    # a larger min_match can only extend the hunk
    c1, r1 = hunk_span(chosen, rejected, start, min_match=1)
    assert c_end >= c1 and r_end >= r1
    # after the first region the sides re-converge: the next tokens agree (unless a side was
    # padded to one token because its region was empty, or a side has ended)
    padded = c1 == start + 1 or r1 == start + 1  # cannot tell a 1-token edit from padding
    if c1 < len(chosen) and r1 < len(rejected) and not padded:
        assert chosen[c1] == rejected[r1]
