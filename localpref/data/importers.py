"""Turning other kinds of feedback into steers: edited outputs, TRL preference pairs, DeFacto.

Each importer is a pure function of rows (``steers_from_*``) returning an ``ImportResult`` (the
steers, counts, and skips by reason), plus a file-level wrapper (``import_*``) that reads JSONL
with the loader's error reporting (file, line, field) and writes steer JSONL.

Edits ``{prompt, original, edited}`` (``original``: the model's output, ``edited``: the person's
version) are diffed at the *word* level: a text is split into words, each with the whitespace
before it, and single punctuation characters (``WORD_RE``), and ``difflib.SequenceMatcher``
(``autojunk=False``) aligns the two word sequences. Each non-equal opcode is a *hunk*. Word
boundaries (rather than characters) keep the correction point where a BPE tokenizer would also
split ("facing| delays"), so the prefix tokenizes the same way inside the full sequence.

For hunk ``k`` the steer is (``next``: hunk ``k+1``, or the end of both texts)::

    prefix    = edited[: hunk.edit_start]                  # earlier hunks applied (== original for k=0)
    rejected  = original[hunk.orig_start : next.orig_start] # the model's text: its hunk + the equal tail
    corrected = edited[hunk.edit_start : next.edit_start]   # the person's text: their hunk + the same tail

so ``prefix + corrected == edited[: next.edit_start]`` is a prefix of ``edited``, both
continuations share the equal stretch up to the next difference (the tokenizer's span is the hunk),
and they end the turn only when they reach the end of the texts and the texts are complete
outputs (``complete=True``, the default). ``hunks="first"`` writes one steer per row (the first
difference: where a person would have stopped the generation); ``hunks="all"`` writes one per hunk.
Doubt: for ``k > 0`` the rejected text is what the model wrote after *its own* earlier text, not
after the corrected prefix; we take it as the best available guess of what it would have said.
"""

from __future__ import annotations

import difflib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from localpref.data.errors import OnError, SkipCounter, SteerError
from localpref.data.load import check_str, iter_jsonl, validate_prompt, validate_steer, write_steers
from localpref.data.schema import Steer

HunkMode = Literal["first", "all"]
WORD_RE = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")  # a word or one punctuation mark, with its leading space

DEFACTO_INSTRUCTION = "Summarize the following article in one sentence.\n\nArticle: {article}"


@dataclass(frozen=True)
class Hunk:
    """One difference: ``original[orig_start:orig_end]`` became ``edited[edit_start:edit_end]``."""

    orig_start: int
    orig_end: int
    edit_start: int
    edit_end: int
    replacement: str  # == edited[edit_start:edit_end]


@dataclass
class ImportResult:
    steers: list[Steer] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # rows, steers, unchanged, no_correction, ...
    skipped: SkipCounter = field(default_factory=SkipCounter)

    def summary(self) -> dict[str, Any]:
        return {**dict(self.counts), "steers": len(self.steers), "skipped": dict(self.skipped)}


# ---------------------------------------------------------------------------------------------
# Word-level diff


def _words(text: str) -> tuple[list[str], list[int]]:
    """Split into word tokens (``"".join(words) == text``) and their start offsets (+ the end)."""
    words = WORD_RE.findall(text)
    offsets = [0]
    for w in words:
        offsets.append(offsets[-1] + len(w))
    return words, offsets


def word_hunks(original: str, edited: str) -> list[Hunk]:
    """The word-level differences turning ``original`` into ``edited``, in order."""
    a, oa = _words(original)
    b, ob = _words(edited)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [Hunk(oa[i1], oa[i2], ob[j1], ob[j2], edited[ob[j1]:ob[j2]])
            for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]


def apply_hunks(original: str, hunks: Iterable[Hunk]) -> str:
    """Replace each hunk's stretch of ``original`` by its replacement (hunks in order)."""
    out, pos = [], 0
    for h in hunks:
        out += [original[pos:h.orig_start], h.replacement]
        pos = h.orig_end
    return "".join(out) + original[pos:]


def edit_steers(prompt: Any, original: str, edited: str, *, hunks: HunkMode = "first", complete: bool = True,
                id: str | None = None, meta: dict[str, Any] | None = None) -> list[Steer]:
    """Steers from one edited output (see the module docstring); ``[]`` when nothing changed.

    Not validated here: callers run ``validate_steer`` so that a bad steer is counted, not lost.
    """
    if hunks not in ("first", "all"):
        raise ValueError(f"hunks must be 'first' or 'all', got {hunks!r}")
    hs = word_hunks(original, edited)
    steers = []
    for k, h in enumerate(hs[:1] if hunks == "first" else hs):
        last = k + 1 == len(hs)
        a_end = len(original) if last else hs[k + 1].orig_start
        b_end = len(edited) if last else hs[k + 1].edit_start
        steers.append(Steer(
            prompt=prompt, prefix=edited[:h.edit_start], rejected=original[h.orig_start:a_end],
            corrected=edited[h.edit_start:b_end], id=None if id is None else f"{id}/hunk{k}",
            corrected_ends_turn=last and complete, rejected_ends_turn=last and complete,
            meta={**(meta or {}), "hunk": k, "n_hunks": len(hs)}))
    return steers


# ---------------------------------------------------------------------------------------------
# Row converters: one raw row -> steers, raising SteerError (with the field) on bad input


def _id_and_meta(row: Mapping, known: tuple[str, ...], line: int) -> tuple[str, dict[str, Any]]:
    """The row's id (or ``row{line}``) and its meta, with unknown columns carried into meta."""
    rid = row.get("id", f"row{line}")
    if not isinstance(rid, (str, int)) or isinstance(rid, bool):
        raise SteerError("wrong_type", f"expected a string or integer id, got {type(rid).__name__}", field="id")
    meta = row.get("meta", {})
    if not isinstance(meta, Mapping):
        raise SteerError("wrong_type", f"expected an object, got {type(meta).__name__}", field="meta")
    extra = {k: v for k, v in row.items() if k not in (*known, "id", "meta")}
    return str(rid), {**extra, **meta}


def _edit_row(row: Mapping, line: int, counts: Counter, *, hunks: HunkMode, complete: bool) -> list[Steer]:
    prompt = validate_prompt(row["prompt"]) if "prompt" in row else check_str(row, "prompt")
    original, edited = check_str(row, "original"), check_str(row, "edited")
    rid, meta = _id_and_meta(row, ("prompt", "original", "edited"), line)
    steers = edit_steers(prompt, original, edited, hunks=hunks, complete=complete, id=rid, meta=meta)
    counts["unchanged"] += not steers
    return steers


def _completion(value: Any, key: str) -> str:
    """A TRL completion: a string, or a one-message assistant turn."""
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], Mapping)
            and value[0].get("role") == "assistant"):
        if not isinstance(value[0].get("content"), str):
            raise SteerError("non_string_content", "message content must be a string", field=f"{key}[0].content")
        return value[0]["content"]
    raise SteerError("wrong_type", "expected a string or a single assistant message", field=key)


def _preference_row(row: Mapping, line: int, counts: Counter, *, completions: str) -> list[Steer]:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise SteerError("missing_field", f"missing required field '{key}'", field=key)
    chosen, rejected = row["chosen"], row["rejected"]
    if "prompt" in row:
        prompt = validate_prompt(row["prompt"])
    else:  # TRL's implicit-prompt form: both conversations share the prompt messages
        if not (isinstance(chosen, list) and isinstance(rejected, list)) or len(chosen) < 2:
            raise SteerError("missing_field", "no 'prompt', and chosen/rejected are not conversations",
                             field="prompt")
        if chosen[:-1] != rejected[:-1]:
            raise SteerError("wrong_type", "chosen and rejected conversations differ before the last "
                             "message", field="rejected")
        prompt = validate_prompt(chosen[:-1])
        chosen, rejected = chosen[-1:], rejected[-1:]
    rid, meta = _id_and_meta(row, ("prompt", "chosen", "rejected"), line)
    full = completions == "full"
    return [Steer(prompt=prompt, prefix="", rejected=_completion(rejected, "rejected"),
                  corrected=_completion(chosen, "chosen"), id=rid, corrected_ends_turn=full,
                  rejected_ends_turn=full, meta=meta)]


def _defacto_row(row: Mapping, line: int, counts: Counter, *, hunks: HunkMode, split: str) -> list[Steer]:
    article, candidate = check_str(row, "article"), check_str(row, "candidate")
    feedback = row.get("feedback")
    if not isinstance(feedback, Mapping):
        raise SteerError("wrong_type" if "feedback" in row else "missing_field", "expected an object",
                         field="feedback")
    summary = feedback.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise SteerError("wrong_type", f"expected a string, got {type(summary).__name__}", field="feedback.summary")
    if not summary or not summary.strip():
        counts["accepted_no_correction"] += 1
        return []
    # Whitespace at the ends is annotation noise, not a correction.
    candidate, summary = candidate.strip(), summary.strip()
    if " ".join(candidate.split()) == " ".join(summary.split()):
        counts["accepted_unchanged"] += 1
        return []
    meta = {"source": "defacto", "split": split, "doc_id": row.get("doc_id"),
            **{k: row.get(k) for k in ("has_error", "intrinsic_error", "extrinsic_error")},
            **{k: feedback.get(k) for k in ("instruction", "explanation")}}
    prompt = [{"role": "user", "content": DEFACTO_INSTRUCTION.format(article=article)}]
    return edit_steers(prompt, candidate, summary, hunks=hunks, complete=True,
                       id=f"defacto/{split}/{row.get('doc_id', f'row{line}')}", meta=meta)


# ---------------------------------------------------------------------------------------------
# Driver and public functions

RowConverter = Callable[[Mapping, int, Counter], list[Steer]]


def _convert(numbered_rows: Iterable[tuple[int, Any]], convert: RowConverter, *, file: str,
             on_error: OnError, result: ImportResult | None = None) -> ImportResult:
    result = result if result is not None else ImportResult()
    for line, row in numbered_rows:
        result.counts["rows"] += 1
        try:
            if not isinstance(row, Mapping):
                raise SteerError("wrong_type", f"a row must be a JSON object, got {type(row).__name__}")
            steers = convert(row, line, result.counts)
        except SteerError as e:
            result.skipped.handle(e.located(file=file, line=line), on_error)
            continue
        for steer in steers:  # one bad hunk does not cost the row's other steers
            try:
                result.steers.append(validate_steer(steer))
            except SteerError as e:
                result.skipped.handle(e.located(file=file, line=line), on_error)
    return result


def _numbered(rows: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    return enumerate(rows, 1)


def _check_option(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def steers_from_edits(rows: Iterable[Mapping], *, hunks: HunkMode = "first", complete: bool = True,
                      on_error: OnError = "raise", file: str = "<rows>") -> ImportResult:
    """``{prompt, original, edited[, id, meta, ...]}`` rows -> one steer per edit hunk.

    ``complete``: the texts are whole assistant turns, so a continuation that reaches their end
    ends the turn. Rows with no difference are counted as ``unchanged``.
    """
    _check_option("hunks", hunks, ("first", "all"))
    conv = lambda row, line, counts: _edit_row(row, line, counts, hunks=hunks, complete=complete)  # noqa: E731
    return _convert(_numbered(rows), conv, file=file, on_error=on_error)


def steers_from_preferences(rows: Iterable[Mapping], *, completions: Literal["full", "partial"],
                            on_error: OnError = "raise", file: str = "<rows>") -> ImportResult:
    """TRL-style ``{prompt, chosen, rejected}`` rows (strings or conversational) -> steers.

    ``completions`` must be given: ``"full"`` if chosen/rejected are whole assistant turns (the
    steer's continuations end the turn), ``"partial"`` if they stop mid-answer. Extra columns
    (scores, ids of other kinds) are carried into ``meta``.
    """
    _check_option("completions", completions, ("full", "partial"))
    conv = lambda row, line, counts: _preference_row(row, line, counts, completions=completions)  # noqa: E731
    return _convert(_numbered(rows), conv, file=file, on_error=on_error)


def steers_from_defacto(rows: Iterable[Mapping], *, split: str = "train", hunks: HunkMode = "first",
                        on_error: OnError = "raise", file: str = "<rows>") -> ImportResult:
    """DeFacto rows -> steers: ``candidate`` (the model's summary) edited into ``feedback.summary``.

    The prompt asks for a one-sentence summary of ``article``. Rows without a corrected summary
    are counted as ``accepted_no_correction``, rows whose summary equals the candidate (up to
    whitespace) as ``accepted_unchanged``.
    """
    _check_option("hunks", hunks, ("first", "all"))
    conv = lambda row, line, counts: _defacto_row(row, line, counts, hunks=hunks, split=split)  # noqa: E731
    return _convert(_numbered(rows), conv, file=file, on_error=on_error)


def _import_file(in_path: str | os.PathLike, out_path: str | os.PathLike | None, convert: RowConverter,
                 on_error: OnError) -> ImportResult:
    result = ImportResult()
    rows = iter_jsonl(in_path, on_error=on_error, skipped=result.skipped)
    _convert(rows, convert, file=str(in_path), on_error=on_error, result=result)
    if out_path is not None:
        write_steers(result.steers, out_path)
    return result


def import_edits(in_path: str | os.PathLike, out_path: str | os.PathLike | None, *, hunks: HunkMode = "first",
                 complete: bool = True, on_error: OnError = "raise") -> ImportResult:
    """``steers_from_edits`` over a JSONL file, writing steer JSONL to ``out_path``."""
    _check_option("hunks", hunks, ("first", "all"))
    return _import_file(in_path, out_path, lambda row, line, counts: _edit_row(
        row, line, counts, hunks=hunks, complete=complete), on_error)


def import_preferences(in_path: str | os.PathLike, out_path: str | os.PathLike | None, *,
                       completions: Literal["full", "partial"], on_error: OnError = "raise") -> ImportResult:
    """``steers_from_preferences`` over a JSONL file, writing steer JSONL to ``out_path``."""
    _check_option("completions", completions, ("full", "partial"))
    return _import_file(in_path, out_path, lambda row, line, counts: _preference_row(
        row, line, counts, completions=completions), on_error)


def import_defacto(defacto_dir: str | os.PathLike, out_dir: str | os.PathLike | None, *,
                   splits: Iterable[str] = ("train", "val", "test"), hunks: HunkMode = "first",
                   on_error: OnError = "raise") -> dict[str, ImportResult]:
    """Each ``{defacto_dir}/{split}.jsonl`` -> ``{out_dir}/{split}.jsonl``; results by split."""
    _check_option("hunks", hunks, ("first", "all"))
    results = {}
    for split in splits:
        out = None if out_dir is None else Path(out_dir) / f"{split}.jsonl"
        results[split] = _import_file(Path(defacto_dir) / f"{split}.jsonl", out, lambda row, line, counts, s=split:
                                      _defacto_row(row, line, counts, hunks=hunks, split=s), on_error)
    return results
