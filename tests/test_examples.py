"""Built-in example steers: determinism, rule validity checked independently, held-out eval."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from localpref.data.examples import (COUNTRIES, EVAL_ONLY_FAMILIES, FAMILIES, WORDS, check_item,
                                     example_steers, pool_size, score_generation)
from localpref.data.load import validate_steer


def _sieve(limit: int) -> set[int]:
    flags = [True] * (limit + 1)
    flags[0] = flags[1] = False
    for i in range(2, int(limit ** 0.5) + 1):
        if flags[i]:
            flags[i * i::i] = [False] * len(flags[i * i::i])
    return {i for i, f in enumerate(flags) if f}


PRIMES = _sieve(5000)
SQUARES = {i * i for i in range(100)}
POWERS = {2 ** i for i in range(20)}


def reference_valid(meta: dict, item: str) -> bool:
    """The rules written again, independently of examples.py (sieve, tables of squares/powers)."""
    p, fam = meta["params"], meta["family"]
    if fam == "words_starting":
        return item.isalpha() and item[0].upper() == p["letter"]
    if fam == "countries_in":
        return item in COUNTRIES[p["continent"]]
    v = int(item)
    return {"primes_above": v in PRIMES and v > p.get("x", 0),
            "even_between": v % 2 == 0 and p.get("lo", 0) < v < p.get("hi", 0),
            "odd_between": v % 2 == 1 and p.get("lo", 0) < v < p.get("hi", 0),
            "multiples_of": v % p.get("k", 1) == 0 and v > p.get("x", 0),
            "squares_above": v in SQUARES and v > p.get("x", 0),
            "powers_of_two": v in POWERS and v > p.get("x", 0)}[fam]


@pytest.fixture(scope="module")
def train():
    return example_steers("train")


@pytest.fixture(scope="module")
def eval_():
    return example_steers("eval")


def test_sizes_and_family_balance(train, eval_):
    assert len(train) == 320 and len(eval_) == 80
    train_fams = Counter(s.meta["family"] for s in train)
    assert set(train_fams) == {f.name for f in FAMILIES} - set(EVAL_ONLY_FAMILIES)
    assert max(train_fams.values()) - min(train_fams.values()) <= 1
    assert set(Counter(s.meta["family"] for s in eval_)) == {f.name for f in FAMILIES}


def test_deterministic_and_seeded(train):
    assert example_steers("train") == train
    assert example_steers("train", n=25) == train[:25]
    other = example_steers("train", seed=1)
    assert other != train and len(other) == len(train)
    with pytest.raises(ValueError, match="only"):
        example_steers("eval", n=pool_size("eval") + 1)
    assert len(example_steers("eval", n=pool_size("eval"))) == pool_size("eval")
    with pytest.raises(ValueError, match="split"):
        example_steers("test")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrected_items_valid_rejected_invalid(seed):
    for split in ("train", "eval"):
        for s in example_steers(split, seed=seed):
            m = s.meta
            answer, j = m["answer"], m["error_index"]
            assert len(answer) == m["n_items"] and len(set(answer)) == len(answer)
            assert all(reference_valid(m, x) and check_item(m, x) for x in answer)
            assert not reference_valid(m, m["rejected_item"]) and not check_item(m, m["rejected_item"])
            # The text is the list: prefix + corrected is the valid answer, and the rejected side
            # differs in exactly the one item.
            assert s.prefix + s.corrected == ", ".join(answer)
            bad = list(answer)
            bad[j] = m["rejected_item"]
            assert s.prefix + s.rejected == ", ".join(bad)
            assert re.search(rf"\b{m['n_items']}\b", s.prompt[0]["content"])
            validate_steer(s)


def test_eval_prompts_are_held_out(train, eval_):
    train_prompts = {s.prompt[0]["content"] for s in example_steers("train", n=pool_size("train"))}
    eval_prompts = {s.prompt[0]["content"] for s in example_steers("eval", n=pool_size("eval"))}
    assert train_prompts and eval_prompts and not train_prompts & eval_prompts
    assert not {s.meta["family"] for s in train} & set(EVAL_ONLY_FAMILIES)
    # Held out by parameters too, not only by list length: no (family, params) is in both.
    key = lambda s: (s.meta["family"], tuple(sorted(s.meta["params"].items())))  # noqa: E731
    assert not {key(s) for s in train} & {key(s) for s in eval_}


def test_check_item_and_score_generation_by_hand():
    primes = {"family": "primes_above", "params": {"x": 40}, "n_items": 4}
    assert [check_item(primes, x) for x in ["41", "49", " 53.", "37", "forty-one"]] == [
        True, False, True, False, False]
    assert score_generation(primes, "41, 43, 47, 53") == {
        "n_items": 4, "n_valid": 4, "frac_valid": 1.0, "all_valid": True}
    assert score_generation(primes, "1. 41\n2. 49\n3. 53\n4. 59")["n_valid"] == 3
    assert not score_generation(primes, "41, 41, 43, 47")["all_valid"]  # repeated item
    countries = {"family": "countries_in", "params": {"continent": "South America"}, "n_items": 3}
    assert score_generation(countries, "Chile, Peru and Spain")["n_items"] == 2  # "and" inside names is kept
    assert score_generation(countries, "Chile, Peru, and Bolivia.")["all_valid"]
    words = {"family": "words_starting", "params": {"letter": "B"}, "n_items": 2}
    assert [check_item(words, x) for x in ["Ball", "bird", "cat", "b4"]] == [True, True, False, False]
    assert all(w[0] == letter.lower() for letter, ws in WORDS.items() for w in ws)


def test_spans_are_the_item_tokens(smollm2_tokenizer, eval_):
    from localpref.data.tokenize import tokenize_steers

    tokenized, skipped = tokenize_steers(eval_, smollm2_tokenizer, span="hunk")
    assert not skipped and len(tokenized) == len(eval_)
    for s, ts in zip(eval_, tokenized):
        chosen, rejected = ts.span_ids()
        # The trained-on tokens lie inside the one item that differs (SmolLM2 splits digits).
        assert smollm2_tokenizer.decode(chosen).strip() in s.meta["corrected_item"]
        assert smollm2_tokenizer.decode(rejected).strip() in s.meta["rejected_item"]
        assert 1 <= len(chosen) <= 6 and 1 <= len(rejected) <= 6
