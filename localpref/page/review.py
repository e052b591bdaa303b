"""The steer file behind the page: preparing it, the review view's data, deleting a record.

Saving is ``localpref.steering.append_records`` (whole lines, flushed and fsynced), as for
``localpref steer collect``. Deleting a record rewrites the file without that line through a
temporary file and an atomic rename, so a killed server leaves either the old file or the new one. A record is named by its line number
and a digest of the line's bytes, so a delete never removes a line the person did not see (the
file changed: 409).

The review lists records with, for each steer, the tokens it trains on, computed by the same
code as ``localpref data inspect``: ``tokenize_steer`` with the page's tokenizer, span mode and
``max_length``, drawn by ``localpref.data.inspect.side_pieces``. Records are read the way
``load_steers(path, on_error="skip")`` reads them (``iter_jsonl`` then ``steers_from_record``),
one at a time so that each bad record shows its own error; skipped lines are counted by reason.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from localpref.data.errors import SkipCounter, SteerError
from localpref.data.inspect import side_pieces, span_listing
from localpref.data.load import is_steer_file_or_absent, iter_jsonl, steers_from_record
from localpref.data.schema import Steer
from localpref.data.tokenize import tokenize_steer
from localpref.page.session import PageError


def prepare_output(path: Path) -> str | None:
    """Make ``path`` ready to append to; returns a warning to print, or None.

    A torn last line (a server killed mid-write) is cut so that appending stays line-aligned.
    """
    from localpref.steering import _drop_torn_tail

    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a .jsonl file")
    if not is_steer_file_or_absent(path):
        raise ValueError(f"--out {path} exists and is not a steer JSONL file; refusing to append to it")
    path.parent.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size if path.exists() else 0
    _drop_torn_tail(path)  # shared with the steering loop's resumable output
    path.touch()
    cut = size - path.stat().st_size
    return f"cut a torn last line ({cut} bytes: a write was interrupted) from {path}" if cut else None


def line_digest(raw: bytes) -> str:
    """What names a line for deletion: the first 16 hex digits of the SHA-256 of its bytes."""
    return hashlib.sha256(raw.rstrip(b"\r\n")).hexdigest()[:16]


def _steer_view(steer: Steer, tokenizer: Any, span: str, max_length: int | None) -> dict[str, Any]:
    view: dict[str, Any] = {"id": steer.id, "step": steer.meta.get("step"), "prefix": steer.prefix,
                            "rejected": steer.rejected, "corrected": steer.corrected}
    try:
        ts = tokenize_steer(steer, tokenizer, span=span, max_length=max_length)
    except SteerError as e:
        return {**view, "error": e.message, "reason": e.reason}
    for side, ids, mask in (("chosen", ts.chosen_ids, ts.chosen_span_mask),
                            ("rejected", ts.rejected_ids, ts.rejected_span_mask)):
        view[f"{side}_pieces"] = side_pieces(tokenizer, ids, mask, ts.prompt_len, ts.prefix_len)
        view[f"{side}_span"] = span_listing(tokenizer, ids, mask)
    view["truncated_left"] = ts.truncated_left
    return view


def review(path: Path, tokenizer: Any, *, span: str, max_length: int | None, limit: int = 100) -> dict[str, Any]:
    """The last ``limit`` records of ``path`` (newest first) with their steers' spans, and counts
    over the whole file: records, steers, records without corrections, skipped lines by reason."""
    skipped = SkipCounter()
    raws = path.read_bytes().split(b"\n") if path.exists() else []
    parsed: list[tuple[int, Any, list[Steer] | SteerError]] = []
    for line, rec in iter_jsonl(path, on_error="skip", skipped=skipped) if path.exists() else ():
        try:
            parsed.append((line, rec, steers_from_record(rec)))
        except SteerError as e:
            skipped[e.reason] += 1
            parsed.append((line, rec, e.located(file=str(path), line=line)))
    entries = []
    for line, rec, result in reversed(parsed[-limit:] if limit else []):
        entry: dict[str, Any] = {"line": line, "digest": line_digest(raws[line - 1])}
        if isinstance(result, SteerError):
            entries.append({**entry, "error": str(result)})
            continue
        entry.update(id=rec.get("id"), prompt=rec["prompt"], meta=rec.get("meta", {}),
                     final=rec.get("final"), steers=[_steer_view(s, tokenizer, span, max_length) for s in result])
        entries.append(entry)
    loaded = [r for _, _, r in parsed if not isinstance(r, SteerError)]
    return {"file": str(path), "span": span, "max_length": max_length, "records": len(parsed),
            "valid_records": len(loaded), "steers": sum(len(r) for r in loaded),
            "without_corrections": sum(not r for r in loaded), "skipped": dict(skipped),
            "shown": len(entries), "entries": entries}


def delete_line(path: Path, line: int, digest: str) -> None:
    """Remove line ``line`` (1-based) if its digest is ``digest``; atomic (module docstring)."""
    lines = path.read_bytes().split(b"\n") if path.exists() else []
    if not (1 <= line <= len(lines) and lines[line - 1].strip() and line_digest(lines[line - 1]) == digest):
        raise PageError(409, f"line {line} of {path} is not the record you saw (the file changed): reload the review")
    del lines[line - 1]
    tmp = path.with_name(f".{path.name}.deleting")
    with open(tmp, "wb") as f:
        f.write(b"\n".join(lines))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
