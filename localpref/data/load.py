"""Loading steers from JSONL files, HF ``datasets`` datasets or plain rows, with validation.

A steer record (one JSON object per line)::

    {"prompt": "..." | [{"role": "user", "content": "..."}, ...],
     "prefix": "...",            # accepted assistant text before the correction point; may be "" or absent
     "rejected": "...",          # the model's continuation from that point
     "corrected": "...",         # the person's continuation from that point
     "id": "...",                # optional (a string or an integer, stored as a string)
     "corrected_ends_turn": false, "rejected_ends_turn": false,   # optional; continuations are partial
     "meta": {...}}              # optional, free dict, carried through untouched

A trajectory record (one generation steered at several successive points)::

    {"prompt": ..., "id": "...", "meta": {...},
     "steps": [{"accepted": "...", "rejected": "...", "corrected": "..."},   # a correction point
               {"accepted": "..."},                                         # accepted text only
               ...]}

expands into one steer per step that has ``rejected``/``corrected``; its prefix is everything the
assistant has said so far with the earlier *corrections* applied (``accepted_0 + corrected_0 +
... + accepted_k``), and its id is ``"{id}/step{k}"`` (``None`` without a record id). A step may
carry ``corrected_ends_turn``/``rejected_ends_turn`` (only the last step's correction may end the
turn) and ``cost`` (an object of non-negative numbers, e.g. ``{"chars": 4, "tokens": 2}``: what the
correction took to type). Optional ``final`` (the assistant text after all steps; it must equal the
steps' accepted and corrected text joined, else ``inconsistent_final``) and ``verified`` (bool) are
what ``localpref steer collect`` writes; both are checked and otherwise carried along.

Policy (documented outcomes, each a ``SteerError`` reason):

* blank lines are skipped silently (they are common at the end of files);
* ``invalid_utf8``: a line that is not UTF-8; ``line_too_long``: a line over ``max_line_bytes``
  (default ``MAX_LINE_BYTES`` = 10 MiB; the rest of the line is read and discarded in chunks, never
  held in memory); ``invalid_json``: a line that is not JSON; ``wrong_type``: not a JSON object, or
  a field of the wrong type; ``missing_field``; ``unknown_field``: unknown keys are an error, not
  ignored, so that a typo (``"corected"``) cannot silently drop data;
* ``non_string_content``: a chat message whose content is not a string (e.g. multimodal parts);
  ``unknown_role``; ``empty_prompt``: an empty or whitespace-only prompt or message list;
  ``assistant_last``: chat prompts end with a non-assistant message (accepted assistant text goes
  in ``prefix``); ``no_user_message``: a chat prompt needs a user message with text (a system
  message alone is not a prompt);
* ``identical_continuations``: rejected and corrected are the same text with the same end-of-turn
  flags; ``empty_continuation``: an empty continuation that does not end the turn (nothing to score).
  Token-level problems (identical after tokenization, span longer than ``max_length``) are found by
  ``localpref.data.tokenize``.

``on_error="raise"`` raises the first ``SteerError``; ``"skip"`` drops the record and counts it by
reason in ``SteerList.skipped``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from localpref.data.errors import OnError, SkipCounter, SteerError
from localpref.data.schema import ROLES, Steer

MAX_LINE_BYTES = 10 * 1024 * 1024  # 10 MiB: far above any real steer, small enough to never OOM
_CHUNK = 1 << 20  # how much of an over-long line is read at a time while discarding it

STEER_FIELDS = ("prompt", "prefix", "rejected", "corrected", "id", "corrected_ends_turn",
                "rejected_ends_turn", "meta")
TRAJECTORY_FIELDS = ("prompt", "steps", "id", "meta", "final", "verified")
STEP_FIELDS = ("accepted", "rejected", "corrected", "corrected_ends_turn", "rejected_ends_turn", "cost")


class SteerList(list):
    """A list of ``Steer`` with where it came from and what was skipped (by reason)."""

    def __init__(self, steers: Iterable[Steer] = (), *, source: str | None = None,
                 skipped: SkipCounter | None = None, accepted: int = 0):
        super().__init__(steers)
        self.source = source
        self.skipped = skipped if skipped is not None else SkipCounter()
        self.accepted = accepted  # trajectories with no correction: valid, but nothing to train on


# ---------------------------------------------------------------------------------------------
# Reading raw records


def iter_jsonl(path: str | os.PathLike, *, on_error: OnError = "raise", skipped: SkipCounter | None = None,
               max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, parsed_json)`` for each non-blank line of a JSONL file (1-based lines).

    Bad lines raise ``SteerError`` or, under ``on_error="skip"``, are counted in ``skipped``.
    The value is whatever JSON the line holds; callers check that it is an object.
    """
    skipped = skipped if skipped is not None else SkipCounter()
    file = str(path)
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(max_line_bytes + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # discard the rest of this line
                    raw = f.readline(_CHUNK)
                skipped.handle(SteerError("line_too_long", f"line longer than {max_line_bytes} bytes",
                                          file=file, line=lineno), on_error)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                skipped.handle(SteerError("invalid_utf8", f"not valid UTF-8 ({e.reason} at byte {e.start})",
                                          file=file, line=lineno), on_error)
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text)
            except json.JSONDecodeError as e:
                skipped.handle(SteerError("invalid_json", f"invalid JSON: {e.msg} (column {e.colno})",
                                          file=file, line=lineno), on_error)


def iter_records(source: Any, *, on_error: OnError = "raise",
                 skipped: SkipCounter | None = None) -> tuple[str, Iterator[tuple[int, Any]]]:
    """``(source_name, (line, record) iterator)`` for a JSONL path, an HF dataset or rows of dicts.

    For datasets and in-memory rows the "line" is the 1-based row number, and keys whose value is
    ``None`` are dropped: ``datasets`` fills columns missing from a row with ``None``.
    """
    if isinstance(source, (str, os.PathLike)):
        return str(source), iter_jsonl(source, on_error=on_error, skipped=skipped)
    name = f"<{type(source).__name__}>"
    try:
        import datasets

        if isinstance(source, datasets.Dataset):
            name = f"<Dataset {source.info.dataset_name or source.split or ''}>".replace(" >", ">")
    except ImportError:  # datasets is a dependency, but rows of dicts need nothing
        pass

    def rows() -> Iterator[tuple[int, Any]]:
        for i, row in enumerate(source, 1):
            if isinstance(row, Mapping):
                row = {k: v for k, v in row.items() if v is not None}
            yield i, row

    return name, rows()


# ---------------------------------------------------------------------------------------------
# Validation


def check_str(rec: Mapping, key: str, *, required: bool = True, default: str = "") -> str:
    """``rec[key]`` as a string; SteerError (missing_field / wrong_type) naming the field."""
    if key not in rec:
        if required:
            raise SteerError("missing_field", f"missing required field '{key}'", field=key)
        return default
    if not isinstance(rec[key], str):
        raise SteerError("wrong_type", f"expected a string, got {type(rec[key]).__name__}", field=key)
    return rec[key]


def _check_bool(rec: Mapping, key: str) -> bool:
    value = rec.get(key, False)
    if not isinstance(value, bool):
        raise SteerError("wrong_type", f"expected true/false, got {type(value).__name__}", field=key)
    return value


def _check_keys(rec: Mapping, allowed: tuple[str, ...], where: str = "") -> None:
    unknown = sorted(set(rec) - set(allowed))
    if unknown:
        raise SteerError("unknown_field", f"unknown field(s) {unknown}; allowed: {list(allowed)}",
                         field=f"{where}{unknown[0]}")


def validate_prompt(prompt: Any, field: str = "prompt") -> str | list[dict[str, str]]:
    """Check a prompt (a non-empty string, or chat messages with a user message, ending with a
    non-assistant turn)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise SteerError("empty_prompt", "the prompt is empty", field=field)
        return prompt
    if not isinstance(prompt, list):
        raise SteerError("wrong_type", f"expected a string or a list of messages, got "
                         f"{type(prompt).__name__}", field=field)
    if not prompt:
        raise SteerError("empty_prompt", "the prompt has no messages", field=field)
    messages = []
    for i, m in enumerate(prompt):
        where = f"{field}[{i}]"
        if not isinstance(m, Mapping):
            raise SteerError("wrong_type", f"a message must be an object, got {type(m).__name__}", field=where)
        for key in ("role", "content"):
            if key not in m:
                raise SteerError("missing_field", f"message without '{key}'", field=f"{where}.{key}")
        _check_keys(m, ("role", "content"), f"{where}.")
        if m["role"] not in ROLES:
            raise SteerError("unknown_role", f"unknown role {m['role']!r}; expected one of {list(ROLES)}",
                             field=f"{where}.role")
        if not isinstance(m["content"], str):
            raise SteerError("non_string_content", f"message content must be a string, got "
                             f"{type(m['content']).__name__} (multimodal parts are not supported)",
                             field=f"{where}.content")
        messages.append({"role": m["role"], "content": m["content"]})
    if not any(m["content"].strip() for m in messages):
        raise SteerError("empty_prompt", "every message of the prompt is empty", field=field)
    if messages[-1]["role"] == "assistant":
        raise SteerError("assistant_last", "the prompt ends with an assistant message; put accepted "
                         "assistant text in 'prefix'", field=f"{field}[{len(messages) - 1}].role")
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise SteerError("no_user_message", "the prompt has no user message with text (a system message "
                         "alone is not a prompt)", field=field)
    return messages


def _check_encodable(text: str, field: str) -> None:
    # JSON escapes can smuggle lone surrogates ("\ud800") into a str that is valid JSON but not
    # valid UTF-8; they would fail later, far from the line that holds them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SteerError("invalid_utf8", f"text is not encodable as UTF-8 ({e.reason})", field=field) from None


def validate_steer(steer: Steer) -> Steer:
    """Check the text-level invariants of a constructed steer; return it unchanged."""
    for name in ("prefix", "rejected", "corrected"):
        if not isinstance(getattr(steer, name), str):
            raise SteerError("wrong_type", f"expected a string, got {type(getattr(steer, name)).__name__}",
                             field=name)
        _check_encodable(getattr(steer, name), name)
    validate_prompt(steer.prompt)
    if isinstance(steer.prompt, str):
        _check_encodable(steer.prompt, "prompt")
    else:
        for i, m in enumerate(steer.prompt):
            _check_encodable(m["content"], f"prompt[{i}].content")
    if (steer.rejected, steer.rejected_ends_turn) == (steer.corrected, steer.corrected_ends_turn):
        raise SteerError("identical_continuations", "rejected and corrected are identical", field="corrected")
    for name in ("rejected", "corrected"):
        if getattr(steer, name) == "" and not getattr(steer, f"{name}_ends_turn"):
            raise SteerError("empty_continuation", f"'{name}' is empty and does not end the turn, so it "
                             f"has no tokens to score", field=name)
    return steer


def _check_id(rec: Mapping) -> str | None:
    rid = rec.get("id")
    if rid is None or isinstance(rid, str):
        return rid
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    raise SteerError("wrong_type", f"expected a string or integer id, got {type(rid).__name__}", field="id")


def _check_meta(rec: Mapping) -> dict[str, Any]:
    meta = rec.get("meta", {})
    if not isinstance(meta, Mapping):
        raise SteerError("wrong_type", f"expected an object, got {type(meta).__name__}", field="meta")
    return dict(meta)


def steers_from_record(rec: Any) -> list[Steer]:
    """Validate one record (steer or trajectory) and return its steers (errors carry the field)."""
    if not isinstance(rec, Mapping):
        raise SteerError("wrong_type", f"a record must be a JSON object, got {type(rec).__name__}")
    if "steps" in rec:
        return _steers_from_trajectory(rec)
    _check_keys(rec, STEER_FIELDS)
    for key in ("prompt", "rejected", "corrected"):
        if key not in rec:
            raise SteerError("missing_field", f"missing required field '{key}'", field=key)
    steer = Steer(prompt=validate_prompt(rec["prompt"]), prefix=check_str(rec, "prefix", required=False),
                  rejected=check_str(rec, "rejected"), corrected=check_str(rec, "corrected"),
                  id=_check_id(rec), corrected_ends_turn=_check_bool(rec, "corrected_ends_turn"),
                  rejected_ends_turn=_check_bool(rec, "rejected_ends_turn"), meta=_check_meta(rec))
    return [validate_steer(steer)]


def _steers_from_trajectory(rec: Mapping) -> list[Steer]:
    _check_keys(rec, TRAJECTORY_FIELDS)
    if "prompt" not in rec:
        raise SteerError("missing_field", "missing required field 'prompt'", field="prompt")
    prompt, rid, meta = validate_prompt(rec["prompt"]), _check_id(rec), _check_meta(rec)
    steps = rec["steps"]
    if not isinstance(steps, list):
        raise SteerError("wrong_type", f"expected a list of steps, got {type(steps).__name__}", field="steps")
    said, steers = "", []  # `said`: the assistant text so far, earlier corrections applied
    for k, step in enumerate(steps):
        where = f"steps[{k}]"
        if not isinstance(step, Mapping):
            raise SteerError("wrong_type", f"a step must be an object, got {type(step).__name__}", field=where)
        _check_keys(step, STEP_FIELDS, f"{where}.")
        try:
            said += check_str(step, "accepted", required=False)
            has = [key in step for key in ("rejected", "corrected")]
            if any(has) and not all(has):
                missing = "corrected" if has[0] else "rejected"
                raise SteerError("missing_field", f"a step with one of rejected/corrected needs both",
                                 field=missing)
            if not all(has):
                _check_cost(step, where)
                continue
            steer = Steer(prompt=prompt, prefix=said, rejected=check_str(step, "rejected"),
                          corrected=check_str(step, "corrected"),
                          id=None if rid is None else f"{rid}/step{k}",
                          corrected_ends_turn=_check_bool(step, "corrected_ends_turn"),
                          rejected_ends_turn=_check_bool(step, "rejected_ends_turn"),
                          meta={**meta, "step": k})
            validate_steer(steer)
        except SteerError as e:
            raise SteerError(e.reason, e.message, field=f"{where}.{e.field}" if e.field else where) from None
        if steer.corrected_ends_turn and k != len(steps) - 1:
            raise SteerError("wrong_type", "only the last step's correction may end the turn",
                             field=f"{where}.corrected_ends_turn")
        _check_cost(step, where)
        steers.append(steer)
        said += steer.corrected
    _check_final(rec, said)
    return steers


def _check_cost(step: Mapping, where: str) -> None:
    cost = step.get("cost", {})
    if not isinstance(cost, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in cost.values()):
        raise SteerError("wrong_type", "expected an object of non-negative numbers", field=f"{where}.cost")


def _check_final(rec: Mapping, said: str) -> None:
    """``final`` / ``verified`` of a collected trajectory: typed, and ``final`` the text the steps spell."""
    if "verified" in rec and not isinstance(rec["verified"], bool):
        raise SteerError("wrong_type", f"expected true/false, got {type(rec['verified']).__name__}", field="verified")
    if "final" in rec:
        final = check_str(rec, "final")
        if final != said:
            raise SteerError("inconsistent_final", f"'final' is not the steps' accepted and corrected text "
                             f"joined ({len(final)} vs {len(said)} characters)", field="final")


# ---------------------------------------------------------------------------------------------
# Public entry points


def load_steers(source: Any, *, on_error: OnError = "raise", max_line_bytes: int = MAX_LINE_BYTES) -> SteerList:
    """Load validated steers (trajectories expanded) from a JSONL path, an HF dataset or dict rows.

    Raises ``SteerError`` naming file, line and field (``on_error="raise"``), or skips bad
    records and counts them by reason in ``result.skipped`` (``on_error="skip"``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    skipped = SkipCounter()
    if isinstance(source, (str, os.PathLike)):
        name, records = str(source), iter_jsonl(source, on_error=on_error, skipped=skipped,
                                                max_line_bytes=max_line_bytes)
    else:
        name, records = iter_records(source, on_error=on_error, skipped=skipped)
    out = SteerList(source=name, skipped=skipped)
    for line, rec in records:
        try:
            steers = steers_from_record(rec)
        except SteerError as e:
            skipped.handle(e.located(file=name, line=line), on_error)
            continue
        out.accepted += not steers
        for steer in steers:
            steer.origin = (name, line)
        out.extend(steers)
    return out


def is_steer_file_or_absent(path: str | os.PathLike) -> bool:
    """True when ``path`` is absent, empty, or its first non-blank line is a steer or trajectory
    record: a JSON object with ``prompt`` and either ``steps`` or ``rejected`` and ``corrected``.

    What commands check before they append to or replace an output file, so that a save file of
    another tool named as the output by mistake (a mikupad session also has a ``prompt``) is never
    written over. The record itself is not validated: a steer file whose first record is bad is
    still a steer file.
    """
    path = Path(path)
    if not path.is_file():
        return not path.exists()
    with open(path, "rb") as f:
        first = b""
        while not first and (line := f.readline(1 << 20)):
            first = line.strip()
    if not first:
        return True
    try:
        record = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and "prompt" in record and (
        "steps" in record or ("rejected" in record and "corrected" in record))


def write_steers(steers: Iterable[Steer], path: str | os.PathLike) -> int:
    """Write steers as JSONL (UTF-8, one record per line); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for steer in steers:
            f.write(json.dumps(steer.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
