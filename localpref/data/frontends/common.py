"""What the four front-end readers share: reading a save file, checking its fields, telling an
edit from a regeneration, and turning correction points into steer or trajectory records.

A reader walks one save file and hands ``FileContext.add`` a list of *points*, each a place
where the person's text departs from the model's, in reading order (depth first for trees).
A point holds one or more ``Candidate`` steers (the hunks of one edit, or one human text against
each model sibling). ``add`` validates every candidate (a bad one is raised or counted by
reason, never written), then chains the points that lie along one generation into a
*trajectory* record (``{"prompt", "steps": [...]}``, see ``localpref.data.load``): a point
extends a chain when it sits below the chain's last point in the tree and its prefix starts
with the text said so far (earlier corrections applied). A chain of one step is written as a
plain steer record; the other candidates of a point are plain steer records too.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localpref.data.errors import OnError, SteerError
from localpref.data.importers import WORD_RE, HunkMode, ImportResult, edit_steers
from localpref.data.load import steers_from_record
from localpref.data.schema import Prompt

# A later version (tgwui) or sibling segment (SillyTavern) counts as the person's edit of an
# earlier one when at least this share of their words align (difflib ratio, 2*matches/total).
# Neither tool marks who wrote a version: a regeneration is a fresh sample that rarely keeps
# half the words of the one it replaced, while an edit changes a few words. Erring low would
# import model-vs-model pairs as corrections; erring high drops heavy rewrites (counted).
EDIT_MIN_SIMILARITY = 0.5


@dataclass
class Candidate:
    """One steer before its prompt is attached; ``prefix`` is all text before the point
    (the assistant text for chat tools, the whole text so far for plain-text tools)."""

    prefix: str
    rejected: str
    corrected: str
    ends_turn: bool = False  # both continuations reach the end of a whole assistant turn
    label: str = ""  # where it came from, e.g. "assistant_3/v2/hunk0"; used in ids and errors


@dataclass
class Point:
    path: tuple  # position in the tool's tree; () = on the one linear text (chains with anything)
    candidates: list[Candidate]


@dataclass
class ToolResult(ImportResult):
    """``ImportResult`` plus the records written (steers and trajectories) and notes for the report."""

    records: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        trajectories = sum("steps" in r for r in self.records)
        return {**super().summary(), "records": len(self.records), "trajectories": trajectories}


@dataclass
class FileContext:
    """One input file being read: its options, and where records, counts and skips go."""

    file: str
    result: ToolResult
    on_error: OnError
    hunks: HunkMode
    partial: bool
    system: str | None = None
    line: int | None = None  # the JSONL line being read (SillyTavern), for error locations

    def count(self, key: str, n: int = 1) -> None:
        self.result.counts[key] += n

    def handle(self, err: SteerError) -> None:
        """Raise ``err`` (with this file and line) or count it, per ``on_error``."""
        self.result.skipped.handle(err.located(file=self.file, line=self.line), self.on_error)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """``messages`` after the ``--system`` message, when one was given."""
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def add(self, prompt: Prompt | None, points: list[Point], *, id: str, meta: dict[str, Any]) -> None:
        """Validate the points' candidates and append their records (see the module docstring).

        ``prompt``: the chat messages, or ``None`` for plain-text tools, whose prompt is the
        text before a chain's first point (so a chain's steps share it).
        """
        chains: list[_Chain] = []
        for point in points:
            valid = [c for c in point.candidates if self._valid(prompt, c)]
            if not valid:
                continue
            head, rest = valid[0], valid[1:]
            chain = next((ch for ch in reversed(chains) if ch.accepts(point.path, head)), None)
            if chain is None:
                chain = _Chain.start(prompt, head)
                chains.append(chain)
            chain.extend(point.path, head)
            for c in rest:
                self._write(_Chain.start(prompt, c).extend(point.path, c), id, meta)
        for chain in chains:
            self._write(chain, id, meta)

    def _valid(self, prompt: Prompt | None, c: Candidate) -> bool:
        """Whether ``c`` alone makes a steer the loader accepts; if not, raised or counted."""
        try:
            steers_from_record(_Chain.start(prompt, c).extend((), c).record("", {}))
        except SteerError as e:
            self.handle(SteerError(e.reason, f"{c.label}: {e.message}", field=e.field))
            return False
        return True

    def _write(self, chain: "_Chain", id: str, meta: dict[str, Any]) -> None:
        record = chain.record(f"{id}/{chain.labels[0]}", meta)
        try:
            steers = steers_from_record(record)  # exactly what load_steers will accept
        except SteerError as e:
            self.handle(e)
            return
        self.result.records.append(record)
        self.result.steers.extend(steers)


@dataclass
class _Chain:
    prompt: Prompt
    said: str  # the text so far, earlier corrections applied (includes the prompt for plain text)
    steps: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    last: tuple | None = None

    @classmethod
    def start(cls, prompt: Prompt | None, c: Candidate) -> "_Chain":
        """An empty chain for ``c``; for plain text (``prompt`` None) the prompt is the text before it."""
        return cls(prompt=c.prefix, said=c.prefix) if prompt is None else cls(prompt=prompt, said="")

    def accepts(self, path: tuple, c: Candidate) -> bool:
        ended = bool(self.steps) and self.steps[-1].get("corrected_ends_turn", False)
        return (not ended and self.last is not None and path[:len(self.last)] == self.last
                and c.prefix.startswith(self.said))

    def extend(self, path: tuple, c: Candidate) -> "_Chain":
        step: dict[str, Any] = {"accepted": c.prefix[len(self.said):], "rejected": c.rejected,
                                "corrected": c.corrected}
        if c.ends_turn:
            step.update(corrected_ends_turn=True, rejected_ends_turn=True)
        self.steps.append(step)
        self.labels.append(c.label)
        self.said = c.prefix + c.corrected
        self.last = path
        return self

    def record(self, id: str, meta: dict[str, Any]) -> dict[str, Any]:
        if len(self.steps) > 1:
            return {"prompt": self.prompt, "steps": self.steps, "id": id, "meta": {**meta, "at": self.labels}}
        step = self.steps[0]
        record = {"prompt": self.prompt, "prefix": step["accepted"], "rejected": step["rejected"],
                  "corrected": step["corrected"], "id": id, "meta": {**meta, "at": self.labels[0]}}
        if "corrected_ends_turn" in step:
            record.update(corrected_ends_turn=True, rejected_ends_turn=True)
        return record


# ---------------------------------------------------------------------------------------------
# Edits


def similarity(a: str, b: str) -> float:
    """Share of aligned words between two texts (difflib ratio over ``WORD_RE`` words)."""
    wa, wb = WORD_RE.findall(a), WORD_RE.findall(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def edit_base(earlier: list[str], text: str) -> int | None:
    """Index of the earlier text that ``text`` most likely edits (ties: the latest), or ``None``
    when none keeps ``EDIT_MIN_SIMILARITY`` of its words (a regeneration or a rewrite)."""
    best, best_ratio = None, EDIT_MIN_SIMILARITY
    for j, old in enumerate(earlier):
        ratio = similarity(old, text)
        if ratio >= best_ratio:
            best, best_ratio = j, ratio
    return best


def edit_candidates(before: str, original: str, edited: str, *, hunks: HunkMode, complete: bool,
                    label: str) -> list[Candidate]:
    """``edit_steers`` (the word diff of ``from-edits``) as candidates, after ``before``."""
    return [Candidate(prefix=before + s.prefix, rejected=s.rejected, corrected=s.corrected,
                      ends_turn=s.corrected_ends_turn, label=f"{label}/hunk{s.meta['hunk']}")
            for s in edit_steers(None, original, edited, hunks=hunks, complete=complete)]


# ---------------------------------------------------------------------------------------------
# Reading and checking


def read_json_file(path: str | Path) -> Any:
    """The JSON value in ``path``; a torn or non-UTF-8 file is a ``SteerError`` with the line."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise SteerError("invalid_utf8", f"not valid UTF-8 ({e.reason} at byte {e.start})", line=line) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SteerError("invalid_json", f"invalid JSON: {e.msg} (column {e.colno}); a torn or "
                         f"truncated save?", line=e.lineno) from None
    except RecursionError:  # the tools' own json writers cannot nest this deep either
        raise SteerError("invalid_json", "JSON nested too deeply to read") from None


def get(obj: Mapping, key: str, kind: type | tuple[type, ...], where: str, *, default: Any = ...) -> Any:
    """``obj[key]`` checked to be of ``kind``; errors name the field ``where``."""
    if key not in obj:
        if default is not ...:
            return default
        raise SteerError("missing_field", f"missing required field '{key}'", field=where)
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise SteerError("wrong_type", f"expected {names}, got {type(value).__name__}", field=where)
    return value


def need(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` checked to be of ``kind`` (for list items); errors name the field ``where``."""
    return get({"_": value}, "_", kind, where)


def unused(counts: Counter, *keys: str) -> None:
    """Make zero counts show in the report, so that "nothing of this kind" is visible."""
    for key in keys:
        counts[key] += 0


__all__ = ["Candidate", "Point", "ToolResult", "FileContext", "EDIT_MIN_SIMILARITY", "similarity", "edit_base",
           "edit_candidates", "read_json_file", "get", "need", "unused"]
