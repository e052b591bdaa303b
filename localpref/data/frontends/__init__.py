"""Steers from the save files of the front ends people already steer in.

``import_tool(tool, inputs, out)`` reads text-generation-webui chat logs (``tgwui``), SillyTavern
chats (``sillytavern``), Loom trees (``loom``) or mikupad sessions (``mikupad``) and writes steer
JSONL: plain steer records, and trajectory records (``{"prompt", "steps": [...]}``, see
``localpref.data.load``) where one generation was corrected at several points along one path.
Each tool has its own module, whose docstring names the repository, files and commit its format
was read from, and says what the format can and cannot give:

==============  ==========================================  ==============================================
tool            a steer comes from                          not recoverable
==============  ==========================================  ==============================================
tgwui           an assistant ``version`` that edits an      which version an edit started from, where an
                earlier one (word diff, as ``from-edits``)  edit ends when Continue followed it
sillytavern     an edited segment in the More Flexible      any edit without the extension: core
                Continues ``continueHistory`` tree          SillyTavern overwrites the swipe it edits
loom            a typed child beside model siblings; a      a changed node with no recorded completion
                changed model node vs its recorded text     and no revision history
mikupad         a swapped token (the sampled one is kept)   typed text: what it replaced is discarded
==============  ==========================================  ==============================================

The guarantees are those of the other importers: ``prefix + corrected`` is a prefix of the
person's text; nothing empty, nothing unchanged (``validate_steer``); every record is checked
with the loader's own ``steers_from_record`` before it is written; bad input raises a
``SteerError`` naming file, line (for JSONL and torn JSON) and field, or is counted by reason
under ``on_error="skip"``. Chat prompts are chat messages (earlier turns, and ``system`` when
given, since no tool here saves the system prompt in the chat file), rendered by the model's
own template; Loom and mikupad drive raw-text models, so their prompts are plain strings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

from localpref.data.errors import OnError, SteerError
from localpref.data.frontends import loom, mikupad, sillytavern, tgwui
from localpref.data.frontends.common import FileContext, ToolResult
from localpref.data.importers import HunkMode

TOOLS: dict[str, ModuleType] = {"tgwui": tgwui, "sillytavern": sillytavern, "loom": loom, "mikupad": mikupad}
SKIP_DIRS = ("backups",)  # Loom and SillyTavern keep older copies of the same files there

NOTES: dict[str, Callable[[dict], list[str]]] = {
    "mikupad": mikupad.notes,
    "sillytavern": lambda c: [
        f"{c['no_continue_history']} message(s) without the More Flexible Continues continueHistory: "
        f"SillyTavern writes an edit over the swipe it edits, so no edit can be recovered from them"]
    if c.get("no_continue_history") else [],
    "tgwui": lambda c: [
        f"{c['regenerated']} version(s) share too little with any earlier version to be an edit of it "
        f"(regenerations or rewrites), so they were not imported"] if c.get("regenerated") else [],
}


def expand_inputs(inputs: Iterable[str | os.PathLike], extensions: tuple[str, ...]) -> list[Path]:
    """Files as given, and the matching files under folders (sorted, ``backups`` folders skipped)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in extensions
                            and not set(p.relative_to(item).parts[:-1]) & set(SKIP_DIRS))
        else:
            files.append(item)
    return files


def import_tool(tool: str, inputs: Iterable[str | os.PathLike], out_path: str | os.PathLike | None, *,
                partial: bool = False, hunks: HunkMode = "first", system: str | None = None,
                on_error: OnError = "raise") -> ToolResult:
    """Read ``tool``'s save files (or folders of them) and write steer JSONL to ``out_path``.

    ``partial``: replies may stop mid-answer, so never end the assistant turn (chat tools; Loom
    and mikupad never end one). ``hunks``: for edits, the first difference only or one steer
    per difference (as ``from-edits``). ``system``: a system message put before every chat prompt.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool must be one of {sorted(TOOLS)}, got {tool!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if hunks not in ("first", "all"):
        raise ValueError(f"hunks must be 'first' or 'all', got {hunks!r}")
    module = TOOLS[tool]
    result = ToolResult()
    for path in expand_inputs(inputs, module.EXTENSIONS):
        result.counts["files"] += 1
        ctx = FileContext(file=str(path), result=result, on_error=on_error, hunks=hunks, partial=partial,
                          system=system)
        try:
            module.read(path, ctx)
        except SteerError as e:  # the file as a whole (torn JSON, wrong top-level shape)
            ctx.handle(e)
    result.notes = NOTES.get(tool, lambda c: [])(result.counts)
    if out_path is not None:
        write_records(result.records, out_path)
    return result


def write_records(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Write steer and trajectory records as JSONL (UTF-8); returns how many were written.

    Through a temporary file renamed into place, so a run that fails midway leaves ``path`` as it
    was. Whether ``path`` may be replaced at all is the caller's to decide (``data from-tool``
    refuses an existing steer file unless ``--force``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


__all__ = ["TOOLS", "ToolResult", "import_tool", "expand_inputs", "write_records"]
