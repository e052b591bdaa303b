"""Even and odd numbers in a range, in three phrasings: the lists rules a tiny model can learn,
over a number line cut into independent clusters.

    "List 4 even numbers between 4520 and 4540. Reply with the list only, separated by commas."
    "List 4 even numbers greater than 4520 and less than 4540. ..."
    "List 4 even numbers above 4520 and below 4540. ..."

Why a family of its own: on the ``lists`` family a tiny model's greedy errors are mostly ones no
steer can teach (its first item is wrong on 73-92% of held-out prompts in every error regime:
primes above large bounds, rules it never learnt), while even/odd ranges come out right or wrong
by the rule. ``ranges`` keeps only those two rules.

**Clusters.** Prompts that share answer items are not independent: a model that gets "even numbers
between 4520 and 4540" wrong gets its other phrasings wrong too. So the number line from ``START``
is tiled into disjoint **windows** of several widths (``WIDTHS``; a window of width W holds the
even range (a, a + W) and the odd range (a + 1, a + W + 1), and the next window starts 4 past
it), and a window is the unit of everything: its split is drawn by a hash of its start (shares
``SHARES``), its prompts carry its name as ``meta["cluster"]``, and analyses resample windows,
never prompts. No number of a held-out window (item or bound) occurs in any other split's prompt
(tested). A window of the pretrain split gives every prompt (both kinds, three phrasings, three
lengths: 18); a window of train, val or heldout gives one kind and one length, drawn by its hash,
in all three phrasings (3 prompts): the "between" prompt where the rule can fire and two where it
cannot, so a cluster measures both the gain and the damage.

Units, checks and corrections are ``lists``' (``localpref.tasks.lists``): an item with its comma,
right when it has the rule's parity, lies strictly inside the range, repeats no earlier item, and
the answer stops after ``n``; the correction is the smallest valid unused number above the previous
item.

The systematic rule (``write(errors="systematic")``): **"between" is read inclusively**. When the
prompt says "between lo and hi" (one phrasing in three: ``trigger_share`` 1/3, so a systematic
answer follows the rule in 3/4 of those prompts at error rate 0.25), the answer starts with the
bound ``lo`` (which always has the rule's parity) and goes on with the right list less its last
item; "greater than" and "above" are read right. A person corrects the first item: "4520" -> "4522",
a one-token span (digits are single tokens). ``ranges_desc`` (below) has a rule whose
corrections are several tokens.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

from localpref.data.examples import FORMAT
from localpref.tasks import register
from localpref.tasks.base import Task, check_split, first_n, split_of
from localpref.tasks.lists import N_ITEMS, RULES, Lists, _int, _item

PHRASES = {  # phrasing -> prompt; the rule errs on "between" only
    "between": "List {n} {kind} numbers between {lo} and {hi}.",
    "greater": "List {n} {kind} numbers greater than {lo} and less than {hi}.",
    "above": "List {n} {kind} numbers above {lo} and below {hi}.",
}
TRIGGER = "between"
START, WINDOWS = 100, 1000  # the first window starts at 100; 1000 windows reach ~22,000
WIDTHS = (12, 16, 20, 26)  # hi - lo of a window's ranges (12 holds 5 items: the longest answer)
SHARES = {"pretrain": 0.4, "train": 0.3, "val": 0.1, "heldout": 0.2}  # of the windows, by hash
KINDS = ("even", "odd")


def _hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


@lru_cache(maxsize=None)
def windows(family: str, widths: tuple[int, ...] = WIDTHS) -> tuple[tuple[int, int, str], ...]:
    """(start a, width W, split) of each window of ``family``'s number line, in order."""
    out, a = [], START
    for _ in range(WINDOWS):
        width = widths[_hash(f"{family}/width/{a}") % len(widths)]
        out.append((a, width, split_of(f"{family}/{a}", SHARES)))
        a += width + 4  # the odd range ends at a + W + 1; a stays even
    return tuple(out)


@register
class Ranges(Lists):
    name = "ranges"
    unit_name = "item"
    trigger_share = 1 / 3  # one phrasing in three, every window (tests/test_tasks_ranges.py checks it)
    phrases = PHRASES
    widths = WIDTHS

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        check_split(split)
        pool = []
        for a, width, where in windows(self.name, self.widths):
            if where != split:
                continue
            h = _hash(f"{self.name}/draw/{a}")
            kinds = KINDS if split == "pretrain" else (KINDS[h % 2],)
            lengths = N_ITEMS if split == "pretrain" else (N_ITEMS[(h // 2) % len(N_ITEMS)],)
            for kind in kinds:
                lo = a if kind == "even" else a + 1
                params = {"lo": lo, "hi": lo + width}
                for phrase, template in self.phrases.items():
                    for n_items in lengths:
                        text = template.format(n=n_items, kind=kind, **params) + FORMAT
                        meta = {"family": self.name, "rule": f"{kind}_between", "params": dict(params),
                                "phrase": phrase, "n_items": n_items, "split": split, "subfamily": "seen",
                                "cluster": f"{self.name}/{a}"}
                        pool.append(Task(f"{self.name}/{kind}/{phrase}/{lo}-{lo + width}/n{n_items}",
                                         [{"role": "user", "content": text}], meta))
        random.Random(f"{self.name}/{split}/{seed}").shuffle(pool)
        return first_n(pool, self.name, split, n)

    # ``write`` is lists': the bound first wherever ``rule_fires``, which here means "between"

    def rule_fires(self, meta: dict) -> bool:
        return meta["phrase"] == TRIGGER


DESC_PHRASES = {  # the n smallest: one right answer, so reading "smallest" as "largest" is an error
    "between": "List the {n} smallest {kind} numbers between {lo} and {hi}.",
    "greater": "List the {n} smallest {kind} numbers greater than {lo} and less than {hi}.",
    "above": "List the {n} smallest {kind} numbers above {lo} and below {hi}.",
}


DESC_WIDTHS = (16, 20, 26, 30)  # W - 4 in {12, 16, 22, 26}: the rule's first item and the right one differ in >= 2 digits


@register
class RangesDesc(Ranges):
    """``ranges`` asking for the ``n`` smallest numbers, with a rule whose corrections are several tokens.

        "List the 4 smallest even numbers between 4520 and 4546. Reply with the list only, ..."

    The answer is unique (the k-th item must be the k-th smallest valid number: lo + 2(k + 1)), so
    ``unit_ok`` and ``fix_unit`` check and give exactly that. The systematic rule: **for
    "between", the model lists the largest numbers, from the top down** (hi - 2, hi - 4, ...); the
    other phrasings are read right. A person corrects the first item, "4542" -> "4522" (hi =
    4546): the two differ by W - 4, which for every width here (``DESC_WIDTHS``) is at least 10
    and not a multiple of 10, so their last two digits (or more) differ and the corrected and
    rejected spans are two to four tokens, not one (digits are single tokens): the DPO-family
    losses move more than two logits. Random errors are lists' (an invalid item).
    """

    name = "ranges_desc"
    phrases = DESC_PHRASES
    widths = DESC_WIDTHS

    def _kth(self, meta: dict, k: int) -> int:
        return meta["params"]["lo"] + 2 * (k + 1)  # lo has the rule's parity

    def unit_ok(self, meta: dict, text: str, units, k: int) -> bool:
        if not super().unit_ok(meta, text, units, k):
            return False
        return _int(_item(text[units[k].start:units[k].end].rstrip(","))) == self._kth(meta, k)

    def fix_unit(self, meta: dict, text: str, units, k: int) -> str:
        n = meta["n_items"]
        if k >= n:
            return ""  # an item too many: the answer should have ended before it
        return ("" if k == 0 else " ") + str(self._kth(meta, k)) + ("," if k < n - 1 else "")

    def solve(self, meta: dict) -> str:
        return ", ".join(str(self._kth(meta, k)) for k in range(meta["n_items"]))

    def write(self, meta: dict, rng: random.Random, error_rate: float, errors: str = "random") -> str:
        """Random: lists' (one invalid item); systematic: the n largest, descending, where the rule fires."""
        from localpref.tasks.base import pick_regime

        regime = pick_regime(errors, rng)
        n, hi = meta["n_items"], meta["params"]["hi"]
        if regime == "systematic":
            if self.rule_fires(meta) and rng.random() < self.rule_rate(error_rate):
                return ", ".join(str(hi - 2 * (k + 1)) for k in range(n))
            return self.solve(meta)
        items = self.solve(meta).split(", ")
        if rng.random() < error_rate:
            j = rng.randrange(n)
            items[j] = RULES[meta["rule"]].bad(meta["params"], items, j, rng)
        return ", ".join(items)

    def systematic_error(self, meta: dict, text: str, k: int) -> bool:
        """Item ``k`` is the rule's: the (k+1)-th largest valid number (hi - 2(k + 1)), not the smallest."""
        units = self.units(text, final=True)
        if k >= min(len(units), meta["n_items"]):
            return False
        value = _int(_item(text[units[k].start:units[k].end].rstrip(",")))
        return value == meta["params"]["hi"] - 2 * (k + 1) and value != self._kth(meta, k)
