"""Lists under a checkable rule: "List 4 prime numbers greater than 40. Reply with the list only, ...".

The rules are those of the built-in example steers (``localpref.data.examples``: primes, even and
odd numbers in a range, multiples, squares, words by first letter, countries by continent, powers
of two), over larger parameter grids. A prompt is (rule, parameters, number of items ``n``).

Units are items with their comma: ``"41,"``, ``" 43,"``, ``" 47"``. Unit ``k`` is right when its
item satisfies the rule, repeats no earlier item, ``k < n``, and it is followed by a comma exactly
when more items must come (``k < n - 1``): the last item ends the answer, so ``" 47,"`` in last
place is wrong (the model should have stopped) and ``" 43"`` ending the answer early is wrong too
(it should have gone on). The correction of item ``k`` is the smallest valid unused number above the
previous item (so the list stays ascending), or the first unused word/country of a fixed order.

The systematic rule (``write(errors="systematic")``): **a strict bound counts as an item**. "Greater
than 50" is read as "50 or more" and "between 15 and 35" as "from 15": where the bound itself
would pass the rule (``_bound``: a multiple of 5 for "multiples of 5 greater than 50", a square,
a power of two, the bound of an even/odd range, which our grids always make of the right parity;
never a prime, as the prime bounds are multiples of 10), the answer starts with the bound and goes
on with the right list less its last item: "50, 55, 60, 65". A person corrects the first item.
The grids set the share of prompts it fires on (``Lists.trigger_share``). Random errors are an
invalid item between its neighbours (never the bound), or a word or country of the wrong kind.

Splits: each (rule, parameters) goes to pretrain / train / val / heldout by a hash (50/30/10/10,
``localpref.tasks.base.SPLIT_SHARES``) with all its list lengths, since "3 primes above 40" and
"4 primes above 40" share their items; the rule ``powers_of_two`` is never trained on: all its
prompts are ``heldout`` (sub-family ``unseen``).
"""

from __future__ import annotations

import random
from dataclasses import replace

from localpref.data.examples import COUNTRIES, FAMILIES, FORMAT, WORDS, _TRANSCONTINENTAL, _int, _norm
from localpref.tasks import register
from localpref.tasks.base import (Task, TaskFamily, Unit, check_split, first_n, pick_regime, split_of,
                                  units_ending_with)

N_ITEMS = (3, 4, 5)
UNSEEN_RULES = ("powers_of_two",)  # held out whole: never in train or val

# Larger grids than the example steers' (more distinct prompts for held-out evaluation).
_GRIDS = {
    "primes_above": [{"x": x} for x in range(10, 1000, 10)],
    "even_between": [{"lo": lo, "hi": lo + 20} for lo in range(10, 500, 10)],
    "odd_between": [{"lo": lo, "hi": lo + 20} for lo in range(15, 505, 10)],
    "multiples_of": [{"k": k, "x": x} for k in range(3, 13) for x in (10, 25, 50, 100, 200)],
    "squares_above": [{"x": x} for x in range(10, 1000, 30)],
    "words_starting": [{"letter": letter} for letter in WORDS],
    "countries_in": [{"continent": c} for c in COUNTRIES],
    "powers_of_two": [{"x": x} for x in (4, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)],
}
RULES = {f.name: replace(f, grid=_GRIDS[f.name]) for f in FAMILIES}
_NUMERIC = {"primes_above", "even_between", "odd_between", "multiples_of", "squares_above", "powers_of_two"}


def _item(piece: str) -> str:
    return piece.strip().rstrip(".").strip()


def _bound(meta: dict) -> str | None:
    """The strict lower bound of a numeric rule when it would pass the rule were it inclusive
    ("multiples of 5 greater than 50": "50"; "odd numbers between 15 and 35": "15"), else None."""
    p = meta["params"]
    name = "x" if "x" in p else "lo" if "lo" in p else None
    if name is None:
        return None
    value = p[name]
    return str(value) if RULES[meta["rule"]].valid({**p, name: value - 1}, str(value)) else None


def _key(meta: dict, item: str) -> object:
    """What makes two items the same: the value for numbers ("041" is "41"), else the normalized text."""
    value = _int(item) if meta["rule"] in _NUMERIC else None
    return _norm(item) if value is None else value


@register
class Lists(TaskFamily):
    name = "lists"
    unit_name = "item"
    # 180 of the 480 pretrain prompts (every even/odd range, multiples of k above a multiple of k);
    # tests/test_tasks_dial.py checks it. At error_rate 0.25 a systematic answer follows the rule in 2/3.
    trigger_share = 0.375

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        check_split(split)
        pool = []
        for rule in RULES.values():
            for params in rule.grid:
                for n_items in N_ITEMS:
                    text = rule.prompt(params, n_items) + FORMAT
                    unseen = rule.name in UNSEEN_RULES
                    # by rule and parameters, not n: "3 primes above 40" and "4 primes above 40"
                    # share their items, so they must share a split
                    where = "heldout" if unseen else split_of(f"lists/{rule.name}/{sorted(params.items())}")
                    if where == split:
                        meta = {"family": self.name, "rule": rule.name, "params": dict(params),
                                "n_items": n_items, "split": split, "subfamily": "unseen" if unseen else "seen"}
                        key = "-".join(str(v) for v in params.values())
                        pool.append(Task(f"lists/{rule.name}/{key}/n{n_items}",
                                         [{"role": "user", "content": text}], meta))
        random.Random(f"lists/{split}/{seed}").shuffle(pool)
        return first_n(pool, self.name, split, n)

    def units(self, text: str, *, final: bool) -> list[Unit]:
        return units_ending_with(text, ",", final=final)

    def _items(self, text: str, units: list[Unit], k: int) -> list[str]:
        return [_item(text[u.start:u.end].rstrip(",")) for u in units[:k]]

    def unit_ok(self, meta: dict, text: str, units: list[Unit], k: int) -> bool:
        n, u = meta["n_items"], units[k]
        body = text[u.start:u.end]
        item, has_comma = _item(body.rstrip(",")), body.endswith(",")
        if k >= n or has_comma != (k < n - 1):
            return False
        earlier = {_key(meta, x) for x in self._items(text, units, k)}
        return RULES[meta["rule"]].valid(meta["params"], item) and _key(meta, item) not in earlier

    def fix_unit(self, meta: dict, text: str, units: list[Unit], k: int) -> str:
        n = meta["n_items"]
        if k >= n:
            return ""  # an item too many: the answer should have ended before it
        item = self._next_item(meta, self._items(text, units, k))
        return ("" if k == 0 else " ") + item + ("," if k < n - 1 else "")

    def _next_item(self, meta: dict, earlier: list[str]) -> str:
        rule, p = meta["rule"], meta["params"]
        used = {_key(meta, x) for x in earlier}
        if rule in _NUMERIC:
            nums = [v for v in map(_int, earlier) if v is not None]
            floor = p.get("x", p.get("lo", 0))
            lo = max([floor, *nums]) if nums else floor
            top = p["hi"] if "hi" in p else 2 * max(lo, floor) + 10_000  # past any gap of our grids
            for start in (lo, floor):  # ascending if possible, else any unused valid number
                for v in range(start + 1, top):
                    if RULES[rule].valid(p, str(v)) and v not in used:
                        return str(v)
            raise ValueError(f"no valid unused item for {meta}")  # the grids always have room
        pool = (WORDS[p["letter"]] if rule == "words_starting" else
                [c for c in COUNTRIES[p["continent"]] if c not in _TRANSCONTINENTAL])
        return next(w for w in pool if _norm(w) not in used)

    def solve(self, meta: dict) -> str:
        items: list[str] = []
        for _ in range(meta["n_items"]):
            items.append(self._next_item(meta, items))
        return ", ".join(items)

    def write(self, meta: dict, rng: random.Random, error_rate: float, errors: str = "random") -> str:
        """Random: one invalid item at a random place; systematic: the bound first (module docstring)."""
        regime = pick_regime(errors, rng)
        rule, n = RULES[meta["rule"]], meta["n_items"]
        items = rule.answer(meta["params"], n, rng)
        if rule.name not in _NUMERIC:
            rng.shuffle(items)
        if regime == "random":
            if rng.random() < error_rate:
                j = rng.randrange(n)
                items[j] = rule.bad(meta["params"], items, j, rng)
        elif self.rule_fires(meta) and rng.random() < self.rule_rate(error_rate):
            items = [_bound(meta), *items[:-1]]  # the rest of the list goes on above the bound
        return ", ".join(items)

    def rule_fires(self, meta: dict) -> bool:
        return _bound(meta) is not None

    def systematic_error(self, meta: dict, text: str, k: int) -> bool:
        """Item ``k`` is the strict bound (``_bound``), wherever it stands."""
        units, bound = self.units(text, final=True), _bound(meta)
        if bound is None or k >= min(len(units), meta["n_items"]):
            return False
        return _key(meta, _item(text[units[k].start:units[k].end].rstrip(","))) == int(bound)
