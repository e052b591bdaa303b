"""Even and odd numbers in a range, in three phrasings: the lists rules a tiny model can learn.

    "List 4 even numbers between 40 and 60. Reply with the list only, separated by commas."
    "List 4 even numbers greater than 40 and less than 60. ..."
    "List 4 even numbers above 40 and below 60. ..."

Why a family of its own: on the ``lists`` family a tiny model's greedy errors are mostly ones no
steer can teach. Its first item is wrong on 73-92% of held-out prompts in every error regime
(primes above large bounds, multiples and squares it never learnt, the never-trained powers of
two), while the even/odd ranges come out right or wrong by the rule (tiny-lists, random regime:
pass 69% / 55% on even / odd ranges of the train and held-out splits, against 0-37% on the other
rules; measured with ``localpref.tasks.pretrain.greedy_answers``). ``ranges`` keeps only those two
rules, over more bounds, so the dial's errors are the regime's and not a capability's.

Units, checks and corrections are ``lists``' (``localpref.tasks.lists``): an item with its comma,
right when it has the rule's parity, lies strictly inside the range, repeats no earlier item, and the
answer stops after ``n``; the correction is the smallest valid unused number above the previous item.

The systematic rule (``write(errors="systematic")``): **"between" is read inclusively**. When the
prompt says "between lo and hi" (one phrasing in three: ``trigger_share`` 1/3, so a systematic
answer follows the rule in 3/4 of those prompts at error rate 0.25), the answer starts with the bound
``lo`` (which always has the rule's parity) and goes on with the right list less its last item;
"greater than" and "above" are read right. A person corrects the first item. Random errors are an
invalid item between its neighbours (``lists``' ``bad``).

Splits: each (rule, lo) goes to pretrain / train / val / heldout by a hash (50/30/10/10) with all its
phrasings and lengths (they share their items). There is no unseen sub-family: every held-out prompt
is of a kind pretraining saw, with bounds it did not.
"""

from __future__ import annotations

import random

from localpref.data.examples import FORMAT
from localpref.tasks import register
from localpref.tasks.base import Task, check_split, first_n, split_of
from localpref.tasks.lists import N_ITEMS, Lists

PHRASES = {  # phrasing -> prompt; the rule errs on "between" only
    "between": "List {n} {kind} numbers between {lo} and {hi}.",
    "greater": "List {n} {kind} numbers greater than {lo} and less than {hi}.",
    "above": "List {n} {kind} numbers above {lo} and below {hi}.",
}
TRIGGER = "between"
# Bounds: even ranges from 10, odd ones from 15, in steps of 10 up to ~1000; each 20 wide (9 items).
GRIDS = {"even_between": range(10, 1000, 10), "odd_between": range(15, 1005, 10)}
WIDTH = 20


@register
class Ranges(Lists):
    name = "ranges"
    unit_name = "item"
    trigger_share = 1 / 3  # one phrasing in three, every bound (tests/test_tasks_ranges.py checks it)

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        check_split(split)
        pool = []
        for rule, bounds in GRIDS.items():
            kind = rule.split("_")[0]
            for lo in bounds:
                if split_of(f"ranges/{rule}/{lo}") != split:  # all phrasings and lengths of a range together
                    continue
                params = {"lo": lo, "hi": lo + WIDTH}
                for phrase, template in PHRASES.items():
                    for n_items in N_ITEMS:
                        text = template.format(n=n_items, kind=kind, **params) + FORMAT
                        meta = {"family": self.name, "rule": rule, "params": dict(params), "phrase": phrase,
                                "n_items": n_items, "split": split, "subfamily": "seen"}
                        pool.append(Task(f"ranges/{rule}/{phrase}/{lo}-{lo + WIDTH}/n{n_items}",
                                         [{"role": "user", "content": text}], meta))
        random.Random(f"ranges/{split}/{seed}").shuffle(pool)
        return first_n(pool, self.name, split, n)

    # ``write`` is lists': the bound first wherever ``rule_fires``, which here means "between"

    def rule_fires(self, meta: dict) -> bool:
        return meta["phrase"] == TRIGGER
