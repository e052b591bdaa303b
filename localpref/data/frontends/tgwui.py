"""text-generation-webui chat histories -> steers.

Read from oobabooga/text-generation-webui at commit 1dcde41d03d13fc768316f4d2256a8a6dd044268
(2026-05-03), ``modules/chat.py``: ``save_history`` / ``get_history_file_path`` (files
``user_data/logs/instruct/<id>.json`` and ``user_data/logs/chat/<character>/<id>.json``, one JSON
object each), ``load_history`` (the older ``{"data", "data_visible"}`` form), ``add_message_version``,
``handle_edit_message_click``, ``chatbot_wrapper`` (regenerate, continue) and
``handle_navigate_version_click``. The file::

    {"internal": [[user_text, assistant_text], ...],   # what the model saw; row i = one exchange
     "visible":  [[...html-escaped...], ...],
     "metadata": {"user_0": {"timestamp": ...},
                  "assistant_0": {"timestamp": ..., "model_name": ...,
                                  "versions": [{"content", "visible_content", "timestamp"}, ...],
                                  "current_version_index": k}}}

Row 0 of a chat-mode log may be ``["<|BEGIN-VISIBLE-CHAT|>", greeting]``: the character card's
greeting, not model output (skipped, counted ``greeting``). ``versions`` appear when a reply is
first edited (the pre-edit text is stored as version 0, the edit appended) or regenerated (the
old reply stored, a new sample appended); Continue and regeneration keep the *current* version's
``content`` in sync with the growing reply.

What can be recovered: an assistant version that is an edit of an earlier one. The file does not
say which versions are edits and which are regenerations, nor which version an edit started
from; a version is taken as an edit of the earlier version it most resembles when they share at
least ``EDIT_MIN_SIMILARITY`` of their words (else counted ``regenerated``), and the pair goes
through the word diff of ``from-edits`` (``--hunks first|all``). The prompt is the conversation
before the reply (earlier turns at their current versions), with ``--system`` in front: the file
keeps no system prompt or character context.

What is lost: (1) after an edit, Continue appends the model's text to the edited version, and
the file keeps no mark of where the person's words ended, so model text that directly follows
an edit is read as part of the correction; (2) when the edited-from version was itself an edit,
the rejected side holds the person's earlier words; (3) a "Start reply with" text or a
"Replace last reply" message is stored like model output; (4) tool calls and attachments are
not rebuilt into the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from localpref.data.errors import SteerError
from localpref.data.frontends.common import (FileContext, Point, edit_base, edit_candidates, get, need,
                                             read_json_file, unused)

BEGIN = "<|BEGIN-VISIBLE-CHAT|>"  # modules/chat.py: the user side of a chat-mode greeting row
EXTENSIONS = (".json",)


def read(path: str | Path, ctx: FileContext) -> None:
    unused(ctx.result.counts, "messages", "edits", "regenerated", "unchanged", "no_versions")
    data = need(read_json_file(path), dict, "(file)")
    if "internal" not in data and "data" in data:  # the pre-metadata form (load_history)
        rows, metadata = get(data, "data", list, "data"), {}
    else:
        rows, metadata = get(data, "internal", list, "internal"), get(data, "metadata", dict, "metadata", default={})
    rows = [_row(row, f"internal[{i}]") for i, row in enumerate(rows)]
    for i, (user, reply) in enumerate(rows):
        if not reply and f"assistant_{i}" not in metadata:
            continue
        ctx.count("messages")
        try:
            _message(rows, metadata, i, Path(path).stem, ctx)
        except SteerError as e:
            ctx.handle(e)


def _row(row: object, where: str) -> tuple[str, str]:
    row = need(row, list, where)
    if len(row) != 2:
        raise SteerError("wrong_type", f"expected [user, assistant], got {len(row)} items", field=where)
    return need(row[0], str, f"{where}[0]"), need(row[1], str, f"{where}[1]")


def _message(rows: list[tuple[str, str]], metadata: Mapping, i: int, stem: str, ctx: FileContext) -> None:
    key = f"assistant_{i}"
    entry = need(metadata.get(key, {}), dict, f"metadata.{key}")
    versions = get(entry, "versions", list, f"metadata.{key}.versions", default=[])
    texts = [get(need(v, dict, f"metadata.{key}.versions[{k}]"), "content", str,
                 f"metadata.{key}.versions[{k}].content") for k, v in enumerate(versions)]
    if len(texts) < 2:
        ctx.count("no_versions")
        return
    if rows[i][0] == BEGIN:
        ctx.count("greeting")
        return
    points = []
    for k in range(1, len(texts)):
        j = edit_base(texts[:k], texts[k])
        if j is None:
            ctx.count("regenerated")
            continue
        if texts[j] == texts[k]:
            ctx.count("unchanged")
            continue
        ctx.count("edits")
        points.append(Point(path=(k,), candidates=edit_candidates(
            "", texts[j], texts[k], hunks=ctx.hunks, complete=not ctx.partial, label=f"{key}/v{j}-v{k}")))
    ctx.add(ctx.chat_prompt(_conversation(rows, i)), points, id=f"tgwui/{stem}",
            meta={"source": "tgwui", "file": ctx.file, "message": i})


def _conversation(rows: list[tuple[str, str]], i: int) -> list[dict[str, str]]:
    """The messages before row ``i``'s reply: earlier exchanges, then row ``i``'s user text."""
    messages = []
    for k, (user, reply) in enumerate(rows[:i + 1]):
        if user and user != BEGIN:
            messages.append({"role": "user", "content": user})
        if reply and k < i:
            messages.append({"role": "assistant", "content": reply})
    return messages
