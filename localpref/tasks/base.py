"""The interface every task family implements, and the generic parts of verification.

An answer is a sequence of **units** (a list item, a line of a computation): what a person reads,
judges and, when it is wrong, retypes. A family says how text splits into units, whether unit
``k`` is right given the units before it, and what the right unit ``k`` is. From that, this class
derives what the steering loop needs:

    first_error(meta, text, final=...)  character offset of the first wrong unit, or None
    correct(meta, text, offset)         the corrected unit at that offset (what a person types)
    unit_stop(meta, text, offset)       where the model's rejected text ends (see ``Unit.stop``)
    verify(meta, text)                  the whole output is right

A unit is only judged once it is **complete**: its terminator has been written (a comma after a
list item, a newline after a line), or the text is final (the model ended its turn or ran out of
tokens). So ``first_error(final=False)`` can run after every generated token: ``" 4"`` is not yet
wrong, ``" 49,"`` is (when 49 breaks the rule).

**Error regimes** of the answers a tiny task model is pretrained on (``write(..., errors=)``,
``ERRORS``): ``random`` errs in one unit drawn at random, a slip no steer could teach a rule for;
``systematic`` follows one rule of the family wherever the prompt gives it a chance (the family's
``rule_fires``: a carrying addition, a bound that looks like an item), so the model learns the
rule and makes it greedily; ``mixed`` writes half its wrong answers each way. In every regime a
share ``error_rate`` of the answers (over the pretrain split) hold an error: in ``systematic`` an
answer whose prompt fires the rule follows it with probability ``rule_rate(error_rate)`` =
``error_rate / trigger_share``, which is above 1/2 (so greedy decoding picks the rule up) while
``trigger_share < 2 * error_rate``. ``systematic_error`` says which wrong units are the rule's, so
an analysis can count them.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

SPLITS = ("pretrain", "train", "val", "heldout")
# Shares of the prompts in each split (by hash). A tiny task model is pretrained on "pretrain" only,
# so steers collected on "train" are on prompts the model has never seen, like "val" and "heldout".
SPLIT_SHARES = {"pretrain": 0.5, "train": 0.3, "val": 0.1, "heldout": 0.1}
ERRORS = ("random", "systematic", "mixed")  # error regimes of pretraining answers (module docstring)


@dataclass(frozen=True)
class Task:
    """One prompt of a family. ``meta`` holds everything the verifier needs (JSON-serializable)."""

    id: str
    prompt: list[dict[str, str]]  # chat messages, rendered with the model's own template
    meta: dict[str, Any] = field(default_factory=dict)  # family, subfamily, split, parameters


@dataclass(frozen=True)
class Unit:
    """One unit of an answer: ``text[start:end]`` (its terminator included, if the family puts it there).

    ``stop`` is where the text the model wrote *while this unit was being judged* ends: just past
    the character that completed it (for a list item that is its comma). The steering loop takes
    ``text[start:stop]`` as the rejected continuation, so a wrong item ``" 4,"`` is not cut to
    ``" 4"``, which would be a token prefix of the correction ``" 47,"`` and compete with nothing.
    """

    start: int
    end: int
    stop: int
    complete: bool  # terminated, or the text is final


def units_ending_with(text: str, terminator: str, *, final: bool) -> list[Unit]:
    """Units that end with (and include) ``terminator``; the last, unterminated piece is complete
    only when the text is final. An empty text is one empty unit."""
    out, start = [], 0
    pieces = text.split(terminator)
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        end = start + len(piece) + (0 if last else len(terminator))
        out.append(Unit(start, end, end, complete=final or not last))
        start = end
    return out


def split_of(key: str, shares: dict[str, float] = SPLIT_SHARES) -> str:
    """Deterministic split of a prompt key by hash (``shares``, by default ``SPLIT_SHARES``): no
    prompt is in two splits, whatever the seed."""
    x = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    for split, share in shares.items():
        if x < share:
            return split
        x -= share
    return "heldout"  # x == 1.0 exactly


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def first_n(pool: list, family: str, split: str, n: int | None) -> list:
    """The first ``n`` of a family's ordered ``split`` pool (all for None); asking for more than the
    pool holds is an error, never a silently shorter list."""
    if n is not None and n > len(pool):
        raise ValueError(f"family {family!r} has {len(pool)} {split} prompts, {n} were asked for")
    return pool[:n]


def check_errors(errors: str) -> None:
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")


def pick_regime(errors: str, rng: random.Random) -> str:
    """``"random"`` or ``"systematic"``: how one pretraining answer errs. ``mixed`` tosses a fair coin
    (one draw of ``rng``); the other regimes draw nothing, so ``random`` samples exactly the answers
    it sampled before regimes existed (cached models and tests rely on it)."""
    check_errors(errors)
    if errors == "mixed":
        return "random" if rng.random() < 0.5 else "systematic"
    return errors


class TaskFamily:
    """Base class of a family. Subclasses set ``name`` and implement the methods that raise."""

    name: ClassVar[str]
    unit_name: ClassVar[str] = "unit"  # how reports call a unit ("item", "line")
    finite: ClassVar[bool] = True  # a fixed pool of prompts (``tasks(n=None)``: all); else n is required

    # -- what a family implements --------------------------------------------------------------

    def tasks(self, split: str, n: int | None = None, seed: int = 0) -> list[Task]:
        """``n`` prompts of ``split`` (``SPLITS``; ``n=None``: all, for a finite family), in an order
        set by ``seed``; splits share no prompt. The first ``n`` of a larger request are the same
        prompts, so a collection can be extended."""
        raise NotImplementedError

    def units(self, text: str, *, final: bool) -> list[Unit]:
        """The units of ``text`` in order; never empty (an empty text is one empty unit)."""
        raise NotImplementedError

    def unit_ok(self, meta: dict, text: str, units: list[Unit], k: int) -> bool:
        """Is complete unit ``k`` right, given that units ``0..k-1`` are?"""
        raise NotImplementedError

    def fix_unit(self, meta: dict, text: str, units: list[Unit], k: int) -> str:
        """The right unit ``k`` (terminator included where the family puts one), given units ``0..k-1``."""
        raise NotImplementedError

    def solve(self, meta: dict) -> str:
        """A whole correct answer (what a full rewrite costs)."""
        raise NotImplementedError

    def write(self, meta: dict, rng: random.Random, error_rate: float, errors: str = "random") -> str:
        """A sampled answer for pretraining a task model, erring as regime ``errors`` says (module
        docstring). ``random``: correct, or with probability ``error_rate`` holding one wrong unit
        (the rest consistent with it). ``systematic``: the family's rule wherever it fires (later
        units carry on from each wrong one), in a share ``rule_rate(error_rate)`` of the answers
        whose prompt fires it; the others are correct. ``mixed``: ``pick_regime``."""
        raise NotImplementedError

    # -- the systematic error regime (a family without a rule keeps these defaults) ----------------

    # Share of the pretrain split's prompts on which the rule fires (None: the family has no rule).
    # A constant, so ``write`` needs no pass over the split; tests check it against the split.
    trigger_share: ClassVar[float | None] = None

    def rule_fires(self, meta: dict) -> bool:
        """The prompt gives the family's systematic rule a chance to err (a right answer would differ)."""
        return False

    def systematic_error(self, meta: dict, text: str, k: int) -> bool:
        """Is wrong unit ``k`` of ``text`` (units ``0..k-1`` right) the one the family's rule writes?
        It judges the text, not where it came from: a random slip that happens to equal the rule's
        unit counts as systematic."""
        return False

    def rule_rate(self, error_rate: float) -> float:
        """Probability that a systematic-regime answer follows the rule when its prompt fires it:
        ``error_rate / trigger_share`` (at most 1), so a share ``error_rate`` of the pretrain split's
        answers err, as in the random regime."""
        if self.trigger_share is None:
            raise ValueError(f"task family {self.name!r} has no systematic rule: use errors=random")
        return min(1.0, error_rate / self.trigger_share)

    # -- derived -------------------------------------------------------------------------------

    def first_error(self, meta: dict, text: str, *, final: bool = True) -> int | None:
        """Character offset where the first wrong complete unit starts, or None."""
        units = self.units(text, final=final)
        for k, u in enumerate(units):
            if u.complete and not self.unit_ok(meta, text, units, k):
                return u.start
        return None

    def first_error_unit(self, meta: dict, text: str, *, final: bool = True) -> int | None:
        """Index of the first wrong complete unit, or None."""
        offset = self.first_error(meta, text, final=final)
        return None if offset is None else self.unit_index(text, offset)

    def unit_index(self, text: str, offset: int) -> int:
        """Index of the unit of ``text`` that holds ``offset`` (the last one for ``len(text)``)."""
        return max(k for k, u in enumerate(self.units(text, final=True)) if u.start <= offset)

    def verify(self, meta: dict, text: str) -> bool:
        """The final answer ``text`` is right."""
        return self.first_error(meta, text, final=True) is None

    def correct(self, meta: dict, text: str, offset: int, *, final: bool = True) -> str:
        """The corrected unit that replaces the one starting at ``offset`` (see ``first_error``)."""
        k, units = self._unit_at(text, offset, final)
        return self.fix_unit(meta, text, units, k)

    def unit_stop(self, meta: dict, text: str, offset: int, *, final: bool = True) -> int:
        """Where the rejected text of the unit starting at ``offset`` ends (``Unit.stop``)."""
        k, units = self._unit_at(text, offset, final)
        return units[k].stop

    def _unit_at(self, text: str, offset: int, final: bool) -> tuple[int, list[Unit]]:
        units = self.units(text, final=final)
        for k, u in enumerate(units):
            if u.start == offset:
                return k, units
        raise ValueError(f"no {self.unit_name} of family {self.name!r} starts at offset {offset} of {text!r}")
