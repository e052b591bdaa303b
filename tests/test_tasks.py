"""Task families: verifiers, correctors, solutions and splits, against hand-made cases."""

from __future__ import annotations

import random

import pytest

from localpref.tasks import family_names, get_family
from localpref.tasks.base import SPLITS
from localpref.tasks.lists import RULES

LISTS, ARITH = get_family("lists"), get_family("arith")
PRIMES_40 = {"family": "lists", "rule": "primes_above", "params": {"x": 40}, "n_items": 4}
EVEN_10 = {"family": "lists", "rule": "even_between", "params": {"lo": 10, "hi": 30}, "n_items": 3}
WORDS_B = {"family": "lists", "rule": "words_starting", "params": {"letter": "B"}, "n_items": 3}
CHAIN = {"family": "arith", "start": 37, "ops": [["+", 48], ["+", 15], ["-", 22]]}  # 85, 100, 78


def test_registry_finds_every_family_module():
    assert family_names() == ["arith", "lists", "ranges", "ranges_desc", "style"]
    with pytest.raises(ValueError, match="unknown task family 'nope'; known: arith, lists, ranges, ranges_desc, style"):
        get_family("nope")


# (text, final) -> (offset of the first wrong item, rejected text up to the stop, correction)
LIST_CASES = [
    ("41, 43, 47, 53", True, None, None, None),
    ("41, 43, 47, 53.", True, None, None, None),            # a closing period is allowed
    ("41, 43, 4", False, None, None, None),                 # " 4" may still become " 47": not judged
    ("41, 43, 49,", False, 7, " 49,", " 47,"),              # 49 = 7 * 7: the smallest prime above 43 is 47
    ("41, 43, 47, 53,", False, 11, " 53,", " 53"),          # a comma after the last item: should end
    ("41, 43", True, 3, " 43", " 43,"),                     # ended after two of four items
    ("41, 43,", True, 7, "", " 47,"),                       # an empty item at the end
    ("", True, 0, "", "41,"),                                # said nothing
    ("Here are the primes: 41, 43", True, 0, "Here are the primes: 41,", "41,"),
    ("41, 41,", False, 3, " 41,", " 43,"),                  # a repeated item is wrong
    ("41, 43, 47, 53, 59", True, 11, " 53,", " 53"),        # one item too many: wrong at the 4th comma
]


@pytest.mark.parametrize("text,final,offset,rejected,corrected", LIST_CASES)
def test_lists_first_error_and_correction(text, final, offset, rejected, corrected):
    assert LISTS.first_error(PRIMES_40, text, final=final) == offset
    if offset is not None:
        assert text[offset:LISTS.unit_stop(PRIMES_40, text, offset, final=final)] == rejected
        assert LISTS.correct(PRIMES_40, text, offset, final=final) == corrected


def test_lists_rules_and_corrections_of_other_rules():
    assert LISTS.first_error(EVEN_10, "12, 15, 20", final=True) == 3  # 15 is odd
    assert LISTS.correct(EVEN_10, "12, 15, 20", 3) == " 14,"  # the smallest even above 12
    assert LISTS.first_error(EVEN_10, "12, 30,", final=False) == 3  # 30 is not strictly below 30
    assert LISTS.first_error(WORDS_B, "ball, cat,", final=False) == 5
    assert LISTS.correct(WORDS_B, "ball, cat,", 5) == " bird,"  # first unused B word of the fixed order
    assert LISTS.verify(WORDS_B, "Bread, bottle, Butter")
    assert not LISTS.verify(WORDS_B, "bread, Bread, butter")  # repeats, whatever the case


@pytest.mark.parametrize("meta", [PRIMES_40, EVEN_10, WORDS_B])
def test_lists_solution_verifies_and_written_answers_err_once(meta):
    assert LISTS.verify(meta, LISTS.solve(meta))
    rng = random.Random(0)
    rule = RULES[meta["rule"]]
    for _ in range(20):
        assert LISTS.verify(meta, LISTS.write(meta, rng, error_rate=0.0))
        bad = LISTS.write(meta, rng, error_rate=1.0).split(", ")
        assert len(bad) == meta["n_items"]
        assert sum(not rule.valid(meta["params"], item) for item in bad) == 1  # exactly one wrong item


ARITH_CASES = [
    ("37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 78", True, None, None, None),
    ("37+48=85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 78\n", True, None, None, None),  # spacing is free
    ("37 + 48 = 85\n85 + 15 = 10", False, None, None, None),   # the line is not finished
    ("37 + 48 = 85\n85 + 15 = 110\n", False, 13, "85 + 15 = 110\n", "85 + 15 = 100\n"),
    ("37 + 48 = 85\n84 + 15 = 99\n", False, 13, "84 + 15 = 99\n", "85 + 15 = 100\n"),  # copied wrong
    ("37 + 48 = 85\n85 + 15 = 100", True, 13, "85 + 15 = 100", "85 + 15 = 100\n"),     # stopped early
    ("37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 77", True, 41, "Answer: 77", "Answer: 78"),
    ("37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 78\n100", True, 52, "100", ""),  # more after the answer
]


@pytest.mark.parametrize("text,final,offset,rejected,corrected", ARITH_CASES)
def test_arith_first_error_and_correction(text, final, offset, rejected, corrected):
    assert ARITH.first_error(CHAIN, text, final=final) == offset
    if offset is not None:
        assert text[offset:ARITH.unit_stop(CHAIN, text, offset, final=final)] == rejected
        assert ARITH.correct(CHAIN, text, offset, final=final) == corrected


def test_arith_solution_and_written_answers():
    assert ARITH.solve(CHAIN) == "37 + 48 = 85\n85 + 15 = 100\n100 - 22 = 78\nAnswer: 78"
    rng = random.Random(1)
    wrong_lines = []
    for _ in range(30):
        assert ARITH.verify(CHAIN, ARITH.write(CHAIN, rng, error_rate=0.0))
        bad = ARITH.write(CHAIN, rng, error_rate=1.0)
        wrong_lines.append(ARITH.first_error_unit(CHAIN, bad))
    assert None not in wrong_lines and set(wrong_lines) <= {0, 1, 2} and len(set(wrong_lines)) > 1


@pytest.mark.parametrize("name", ["lists", "arith"])
def test_splits_share_no_prompt_and_unseen_subfamily_is_only_held_out(name):
    family = get_family(name)
    n = None if name == "lists" else 400
    by_split = {s: family.tasks(s, n=n if s in ("pretrain", "train") else (None if n is None else 100))
                for s in SPLITS}
    prompts = {s: {t.prompt[0]["content"] for t in tasks} for s, tasks in by_split.items()}
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not prompts[a] & prompts[b], (a, b)
    for split, tasks in by_split.items():
        unseen = [t for t in tasks if t.meta["subfamily"] == "unseen"]
        assert bool(unseen) == (split == "heldout")
        assert len({t.id for t in tasks}) == len(tasks)
        assert all(family.verify(t.meta, family.solve(t.meta)) for t in tasks)
    # the order depends on the seed, the membership of a split does not
    assert [t.id for t in family.tasks("val", n=5, seed=0)] != [t.id for t in family.tasks("val", n=5, seed=1)]
