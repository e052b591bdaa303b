"""A chain of additions and subtractions, computed one operation per line.

Prompt: "Compute 37 + 8 + 6 - 5 one step at a time: one operation per line, then the answer."
Answer (canonical form; spaces around the symbols are optional when checking)::

    37 + 8 = 45
    45 + 6 = 51
    51 - 5 = 46
    Answer: 46

Units are lines with their newline. Line ``k < m`` (``m`` operations) must be
``a op b = c`` with ``a`` the running result after ``k`` operations, ``op b`` the ``k``-th
operation of the prompt and ``c`` the right result; line ``m`` is ``Answer: c``; after it only
blank space may follow. A line ``k < m`` must end with a newline (an answer that stops there is
wrong at that line). A prompt starts at 10..99 and adds or subtracts one-digit operands, its
running results staying in 0..99 (the answers written with an error, for pretraining, may leave
that range). With start and operands of 10..999 a 1.1M-parameter model failed the first line of
every held-out prompt; one-digit steps on two-digit numbers are what it can hope to learn.

The systematic rule (``write(errors="systematic")``): **additions never carry**. Where the units of
an addition sum to ten or more, the tens lose the carry: ``37 + 8 = 35``; later lines go on from 35
and drop their carries too (``35 + 6 = 31``, ``31 - 5 = 26``). A person corrects one line. The
prompt generator lets an addition carry with probability ``P_CARRY`` where the running value leaves
a choice (after ``x9`` every addition carries), which sets the share of prompts the rule fires on
(``Arith.trigger_share``). Random errors are a result off by 1, 2 or 10, anywhere.

Splits: a prompt goes to pretrain / train / val / heldout by a hash of its text (50/30/10/10,
``localpref.tasks.base.SPLIT_SHARES``). Chains of 2, 3 or 4 operations are trained on; chains of 5 operations are never trained on: they appear only in
``heldout`` (every fifth heldout prompt, sub-family ``unseen``), to see whether steering on short chains
carries over.
"""

from __future__ import annotations

import random
import re

from localpref.tasks import register
from localpref.tasks.base import (Task, TaskFamily, Unit, check_split, pick_regime, split_of,
                                  units_ending_with)

SEEN_OPS = (2, 3, 4)
UNSEEN_OPS = 5
MAX_VALUE = 99  # start and running results of a prompt stay in 0..MAX_VALUE
MAX_OPERAND = 9  # operands are 1..MAX_OPERAND
P_CARRY = 0.1  # chance that an addition's units carry (when the running value leaves a choice)
_LINE = re.compile(r"\s*(-?\d+)\s*([+-])\s*(-?\d+)\s*=\s*(-?\d+)\s*", re.ASCII)  # ASCII digits only
_ANSWER = re.compile(r"\s*Answer:\s*(-?\d+)\s*\.?\s*", re.ASCII)


def _carries(a: int, b: int) -> bool:
    """The units column of ``a + b`` sums to ten or more (``a, b >= 0``)."""
    return a >= 0 and a % 10 + b % 10 >= 10


def _chain(rng: random.Random, n_ops: int) -> tuple[int, list[list]]:
    """A start value and ``n_ops`` operations [op, operand] keeping every running result in
    0..MAX_VALUE; an addition carries with probability ``P_CARRY`` where both kinds of operand fit."""
    value = start = rng.randint(10, MAX_VALUE)
    ops = []
    for _ in range(n_ops):
        op = rng.choice("+-") if 0 < value < MAX_VALUE else ("+" if value == 0 else "-")
        if op == "-":
            b = rng.randint(1, min(MAX_OPERAND, value))
        else:
            fits = range(1, min(MAX_OPERAND, MAX_VALUE - value) + 1)
            carry = rng.random() < P_CARRY
            b = rng.choice([x for x in fits if _carries(value, x) == carry] or fits)
        value = value - b if op == "-" else value + b
        ops.append([op, b])
    return start, ops


def _results(meta: dict) -> list[int]:
    """Running results: ``[start, after op 1, ..., after op m]``."""
    out = [meta["start"]]
    for op, b in meta["ops"]:
        out.append(out[-1] - b if op == "-" else out[-1] + b)
    return out


def _line(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {a - b if op == '-' else a + b}"


@register
class Arith(TaskFamily):
    name = "arith"
    unit_name = "line"
    finite = False  # chains are drawn at random: ask for n of them
    # Measured on 20,000 pretrain prompts (tests/test_tasks_dial.py checks it): with P_CARRY = 0.1 the
    # rule fires on 32% of prompts, so at error_rate 0.25 a systematic answer follows it in 78% of them.
    trigger_share = 0.32

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        check_split(split)
        if n is None:
            raise ValueError("family 'arith' draws its prompts at random: give n")
        rng = random.Random(f"arith/{split}/{seed}")
        out, seen = [], set()
        while len(out) < n:
            unseen = split == "heldout" and len(out) % 5 == 4  # a fifth of heldout: never-trained lengths
            n_ops = UNSEEN_OPS if unseen else rng.choice(SEEN_OPS)
            start, ops = _chain(rng, n_ops)
            expr = f"{start} " + " ".join(f"{op} {b}" for op, b in ops)
            text = f"Compute {expr} one step at a time: one operation per line, then the answer."
            if text in seen or (not unseen and split_of(f"arith/{text}") != split):
                continue  # chains of UNSEEN_OPS operations exist only in heldout
            seen.add(text)
            meta = {"family": self.name, "start": start, "ops": ops, "split": split,
                    "subfamily": "unseen" if unseen else "seen"}
            out.append(Task(f"arith/{split}/{expr.replace(' ', '')}", [{"role": "user", "content": text}], meta))
        return out

    def units(self, text: str, *, final: bool) -> list[Unit]:
        return units_ending_with(text, "\n", final=final)

    def unit_ok(self, meta: dict, text: str, units: list[Unit], k: int) -> bool:
        body = text[units[k].start:units[k].end]
        m, results = len(meta["ops"]), _results(meta)
        if k > m:
            return not body.strip()  # only blank space after the answer
        if k == m:
            match = _ANSWER.fullmatch(body)
            return bool(match) and int(match.group(1)) == results[m]
        match = _LINE.fullmatch(body)
        if not match or not body.endswith("\n"):
            return False
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        return [a, op, b, c] == [results[k], *meta["ops"][k], results[k + 1]]

    def fix_unit(self, meta: dict, text: str, units: list[Unit], k: int) -> str:
        m, results = len(meta["ops"]), _results(meta)
        if k > m:
            return ""
        if k == m:
            return f"Answer: {results[m]}"
        return _line(results[k], *meta["ops"][k]) + "\n"

    def solve(self, meta: dict) -> str:
        results = _results(meta)
        lines = [_line(results[k], op, b) for k, (op, b) in enumerate(meta["ops"])]
        return "\n".join([*lines, f"Answer: {results[-1]}"])

    def write(self, meta: dict, rng: random.Random, error_rate: float, errors: str = "random") -> str:
        """Random: correct, or one wrong result; systematic: additions drop their carry (module
        docstring). Later lines carry on from a wrong value."""
        if pick_regime(errors, rng) == "random":
            return self._write_random(meta, rng, error_rate)
        rule = self.rule_fires(meta) and rng.random() < self.rule_rate(error_rate)
        value, lines = meta["start"], []
        for op, b in meta["ops"]:
            c = value - b if op == "-" else value + b
            if rule and op == "+" and _carries(value, b):
                c -= 10  # the carry into the tens is dropped
            lines.append(f"{value} {op} {b} = {c}")
            value = c
        return "\n".join([*lines, f"Answer: {value}"])

    def _write_random(self, meta: dict, rng: random.Random, error_rate: float) -> str:
        ops = meta["ops"]
        wrong = rng.randrange(len(ops)) if rng.random() < error_rate else -1
        value, lines = meta["start"], []
        for k, (op, b) in enumerate(ops):
            c = value - b if op == "-" else value + b
            if k == wrong:  # a wrong result (it may go negative; later lines carry on from it)
                c += rng.choice([-10, -2, -1, 1, 2, 10])
            lines.append(f"{value} {op} {b} = {c}")
            value = c
        return "\n".join([*lines, f"Answer: {value}"])

    def rule_fires(self, meta: dict) -> bool:
        results = _results(meta)
        return any(op == "+" and _carries(results[k], b) for k, (op, b) in enumerate(meta["ops"]))

    def systematic_error(self, meta: dict, text: str, k: int) -> bool:
        """Line ``k`` adds the right numbers and writes the sum less the carry (``37 + 48 = 75``)."""
        units, results = self.units(text, final=True), _results(meta)
        if k >= min(len(units), len(meta["ops"])):
            return False
        match = _LINE.fullmatch(text[units[k].start:units[k].end])
        if not match:
            return False
        a, op, b, c = int(match.group(1)), match.group(2), int(match.group(3)), int(match.group(4))
        return ([a, op, b] == [results[k], *meta["ops"][k]] and op == "+" and _carries(a, b)
                and c == a + b - 10)
