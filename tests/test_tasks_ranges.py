"""The ``ranges`` family (even/odd numbers in a window of the number line, three phrasings, the rule
firing on "between") and ``ranges_desc`` (the n smallest, its rule listing the largest: corrections
of several tokens).

The shared behaviour of the dial (rates of each regime, answers carrying on from the rule) is
tested with the other families in tests/test_tasks_dial.py; here: windows, clusters, splits, checks
and corrections, worked by hand.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict

import pytest

from localpref.tasks import get_family
from localpref.tasks.base import SPLITS
from localpref.tasks.ranges import windows

RANGES, DESC = get_family("ranges"), get_family("ranges_desc")


def _meta(rule: str, lo: int, phrase: str, n: int, width: int = 20) -> dict:
    return {"family": "ranges", "rule": rule, "params": {"lo": lo, "hi": lo + width}, "phrase": phrase,
            "n_items": n, "split": "train", "subfamily": "seen", "cluster": f"ranges/{lo - lo % 2}"}


@pytest.mark.parametrize("family", [RANGES, DESC])
def test_prompts_of_each_phrasing_and_the_rule_fires_on_between_only(family):
    by_phrase = {t.meta["phrase"]: t for t in family.tasks("train")}
    assert set(by_phrase) == {"between", "greater", "above"}
    text = {p: t.prompt[0]["content"] for p, t in by_phrase.items()}
    assert " numbers between " in text["between"] and " and " in text["between"]
    assert " greater than " in text["greater"] and " less than " in text["greater"]
    assert " above " in text["above"] and " below " in text["above"]
    assert all(x.endswith("Reply with the list only, separated by commas.") for x in text.values())
    assert all(("smallest" in x) == (family is DESC) for x in text.values())
    assert [family.rule_fires(by_phrase[p].meta) for p in ("between", "greater", "above")] == [True, False, False]


@pytest.mark.parametrize("family", [RANGES, DESC])
def test_windows_are_disjoint_clusters_and_no_heldout_number_is_in_another_split(family):
    spans = defaultdict(list)  # split -> [(low, high)] of the numbers its prompts mention or answer with
    clusters = defaultdict(set)
    ids = set()
    for split in SPLITS:
        tasks = family.tasks(split)
        for t in tasks:
            assert t.id not in ids
            ids.add(t.id)
            lo, hi = t.meta["params"]["lo"], t.meta["params"]["hi"]
            numbers = [int(x) for x in re.findall(r"\d+", t.prompt[0]["content"])]
            assert lo in numbers and hi in numbers
            spans[split].append((lo, hi))  # the bounds and every item lie in [lo, hi]
            clusters[split].add(t.meta["cluster"])
        per_cluster = Counter(t.meta["cluster"] for t in tasks)
        # pretrain: both kinds x 3 phrasings x 3 lengths; the others: one kind and length, 3 phrasings
        assert set(per_cluster.values()) == ({18} if split == "pretrain" else {3}), split
    held = sorted(spans["heldout"])
    for split in ("pretrain", "train", "val"):
        for lo, hi in spans[split]:  # no interval of another split meets a held-out one
            assert not any(a <= hi and lo <= b for a, b in held), (split, lo, hi)
    assert len(clusters["heldout"]) >= 150 and len(clusters["val"]) >= 40
    assert set.intersection(*clusters.values()) == set()
    starts = [a for a, _, _ in windows(family.name, family.widths)]
    assert starts == sorted(starts) and all(b - a >= min(family.widths) + 4 for a, b in zip(starts, starts[1:]))


def test_heldout_prompts_of_a_seed_are_a_prefix_and_asking_too_many_fails():
    assert RANGES.tasks("heldout", n=5, seed=1) == RANGES.tasks("heldout", seed=1)[:5]
    assert RANGES.tasks("train", n=150, seed=0) != RANGES.tasks("train", n=150, seed=1)  # a build's own subset
    with pytest.raises(ValueError, match="heldout prompts"):
        RANGES.tasks("heldout", n=100_000)


@pytest.mark.parametrize("text, k, systematic, fix", [
    ("4520, 4524, 4526, 4530", 0, True, "4522,"),      # the bound "between" counts: the rule's error
    ("4522, 4524, 4526, 4528", None, False, None),     # right
    ("4522, 4525, 4526, 4528", 1, False, " 4524,"),    # odd among the even: a random slip
    ("4522, 4524, 4526, 4540", 3, False, " 4528"),     # the upper bound is out too
    ("4522, 4524, 4526, 4528, 4530", 3, False, " 4528"),  # "4528," goes on: the answer should have stopped
    ("4522, 4524, 4524, 4528", 2, False, " 4526,"),    # a repeat
])
def test_first_error_its_kind_and_its_correction(text, k, systematic, fix):
    meta = _meta("even_between", 4520, "between", 4)
    assert RANGES.first_error_unit(meta, text) == k
    if k is None:
        return
    assert RANGES.systematic_error(meta, text, k) == systematic
    units = RANGES.units(text, final=True)
    assert RANGES.fix_unit(meta, text, units, k) == fix


def test_systematic_regime_errs_on_between_prompts_only():
    rng = random.Random(3)
    for phrase, fires in (("between", True), ("greater", False), ("above", False)):
        meta = _meta("even_between", 1120, phrase, 3)
        texts = [RANGES.write(meta, rng, 1.0, errors="systematic") for _ in range(20)]
        assert all((RANGES.first_error_unit(meta, x) == 0) == fires for x in texts), (phrase, texts)
        assert all(x.startswith("1120, ") == fires for x in texts)


# ---------------------------------------------------------------------------------------------
# ranges_desc: the n smallest, one right answer; the rule lists the largest, top down
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, k, systematic, fix", [
    ("4522, 4524, 4526", None, False, None),           # the 3 smallest
    ("4538, 4536, 4534", 0, True, "4522,"),            # the rule: the largest, descending (hi = 4540)
    ("4524, 4526, 4528", 0, False, "4522,"),           # valid numbers, but not the smallest
    ("4522, 4526, 4528", 1, False, " 4524,"),          # a gap
    ("4522, 4524, 4526,", 2, False, " 4526"),          # should have ended
])
def test_desc_first_error_and_correction(text, k, systematic, fix):
    meta = {**_meta("even_between", 4520, "between", 3, width=20), "family": "ranges_desc"}
    assert DESC.first_error_unit(meta, text) == k
    if k is not None:
        assert DESC.systematic_error(meta, text, k) == systematic
        assert DESC.fix_unit(meta, text, DESC.units(text, final=True), k) == fix


def test_desc_rule_and_its_corrections_differ_in_two_digits_or_more():
    rng = random.Random(0)
    for t in DESC.tasks("heldout"):
        meta = {**t.meta, "phrase": "between"}
        written = DESC.write(meta, rng, 1.0, errors="systematic")  # rule_rate(1.0) = 1: always the rule
        first, right = written.split(", ")[0], DESC.solve(meta).split(", ")[0]
        assert DESC.systematic_error(meta, written, 0) and DESC.first_error_unit(meta, written) == 0
        differing = sum(a != b for a, b in zip(first[::-1], right[::-1]))  # from the last digit
        assert first[-1] != right[-1] and differing >= 2, (meta["params"], first, right)
    meta = {**DESC.tasks("heldout")[0].meta, "phrase": "greater"}
    assert all(DESC.write(meta, rng, 1.0, errors="systematic") == DESC.solve(meta) for _ in range(5))
