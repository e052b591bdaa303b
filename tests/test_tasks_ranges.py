"""The ``ranges`` family: lists' even/odd ranges in three phrasings, the rule firing on "between".

The shared behaviour of the dial (rates of each regime, answers carrying on from the rule) is
tested with the other families in tests/test_tasks_dial.py; here: prompts, splits, checks and
corrections, worked by hand.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from localpref.tasks import get_family
from localpref.tasks.base import SPLITS

RANGES = get_family("ranges")


def _meta(rule: str, lo: int, phrase: str, n: int) -> dict:
    return {"family": "ranges", "rule": rule, "params": {"lo": lo, "hi": lo + 20}, "phrase": phrase,
            "n_items": n, "split": "train", "subfamily": "seen"}


def test_prompts_of_each_phrasing_and_the_rule_fires_on_between_only():
    tasks = RANGES.tasks("train")
    by_phrase = {t.meta["phrase"]: t for t in tasks}
    assert set(by_phrase) == {"between", "greater", "above"}
    text = {p: t.prompt[0]["content"] for p, t in by_phrase.items()}
    assert " numbers between " in text["between"] and " and " in text["between"]
    assert " greater than " in text["greater"] and " less than " in text["greater"]
    assert " above " in text["above"] and " below " in text["above"]
    assert all(x.endswith("Reply with the list only, separated by commas.") for x in text.values())
    assert [RANGES.rule_fires(by_phrase[p].meta) for p in ("between", "greater", "above")] == [True, False, False]


def test_splits_keep_each_range_whole_and_share_nothing():
    where: dict[tuple, set] = defaultdict(set)
    ids = set()
    for split in SPLITS:
        tasks = RANGES.tasks(split)
        assert tasks, split
        for t in tasks:
            assert t.id not in ids
            ids.add(t.id)
            where[(t.meta["rule"], t.meta["params"]["lo"])].add(split)
    assert all(len(s) == 1 for s in where.values())  # every phrasing and length of a range in one split
    assert len(where) == 99 + 99 and len(ids) == 198 * 3 * 3
    assert RANGES.tasks("heldout", n=5, seed=1) == RANGES.tasks("heldout", seed=1)[:5]
    with pytest.raises(ValueError, match="heldout prompts"):
        RANGES.tasks("heldout", n=10_000)


@pytest.mark.parametrize("text, k, systematic, fix", [
    ("40, 44, 46, 50", 0, True, "42,"),            # the bound "between" counts: the rule's error
    ("42, 44, 46, 48", None, False, None),         # right
    ("42, 45, 46, 48", 1, False, " 44,"),          # odd among the even: a random slip
    ("42, 44, 46, 60", 3, False, " 48"),           # the upper bound is out too
    ("42, 44, 46, 48, 50", 3, False, " 48"),       # "48," goes on: the answer should have stopped
    ("42, 44, 44, 48", 2, False, " 46,"),          # a repeat
])
def test_first_error_its_kind_and_its_correction(text, k, systematic, fix):
    meta = _meta("even_between", 40, "between", 4)
    assert RANGES.first_error_unit(meta, text) == k
    if k is None:
        return
    assert RANGES.systematic_error(meta, text, k) == systematic
    units = RANGES.units(text, final=True)
    assert RANGES.fix_unit(meta, text, units, k) == fix


def test_odd_ranges_start_at_an_odd_bound_and_solve_passes():
    meta = _meta("odd_between", 15, "greater", 5)
    assert RANGES.solve(meta) == "17, 19, 21, 23, 25"
    assert RANGES.first_error_unit(meta, RANGES.solve(meta)) is None
    assert RANGES.first_error_unit(meta, "15, 17, 19, 21, 23") == 0  # the bound is wrong in every phrasing
    assert RANGES.systematic_error(meta, "15, 17, 19, 21, 23", 0)


def test_systematic_regime_errs_on_between_prompts_only():
    rng = random.Random(3)
    for phrase, fires in (("between", True), ("greater", False), ("above", False)):
        meta = _meta("even_between", 120, phrase, 3)
        texts = [RANGES.write(meta, rng, 1.0, errors="systematic") for _ in range(20)]
        assert all((RANGES.first_error_unit(meta, x) == 0) == fires for x in texts), (phrase, texts)
        assert all(x.startswith("120, ") == fires for x in texts)
