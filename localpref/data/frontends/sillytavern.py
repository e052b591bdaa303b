"""SillyTavern chats (+ the More Flexible Continues extension's ``continueHistory``) -> steers.

Read from SillyTavern/SillyTavern at commit ba6f7b7a98cf7a5eaf4f0e81da9779a9a668ced4 (release,
2024-09-28): ``public/script.js`` (``saveChat``: the header object, then the messages;
``saveReply``: ``mes``, ``swipes``, ``swipe_id``, ``swipe_info``, ``gen_started``,
``extra.api``/``extra.model``; ``getFirstMessage``: greetings carry no generation fields;
``updateMessage``: an edit writes the new text to ``mes`` *and* ``swipes[swipe_id]``, the same
since the initial commit; ``coreChat = chat.filter(x => !x.is_system)``: hidden messages are not
sent) and ``src/endpoints/chats.js`` (``/save`` writes one JSON object per line; ``/get`` drops
lines that do not parse). And from LenAnderson/SillyTavern-MoreFlexibleContinues at commit
d417d1ee0a704fbcd90ad8963e977be05f2f3e23 (``index.js``), which stores per message::

    "continueHistory": [            # one tree per swipe
        {"mes": "<the swipe's first generated text>", "parent": [], "active": [0, 1, ...],
         "swipes": [                # children: what followed this segment
             {"mes": "<a continue, or an edited tail>", "parent": [0], "swipes": [...]}, ...]}]

``onMessageDone`` adds each Continue's new text as a child of the current segment; "regenerate
last continue" adds a new sample as a sibling of the segment; ``onMessageEdited`` finds the first
segment on the active path that the edited message no longer starts with and adds a sibling
holding the edited text from that segment's start to the end of the message (text appended at
the very end becomes a child; an edited first segment becomes a new entry of the top list). The
fork kawaii-wolf/SillyTavern-MoreFlexibleContinues (``index.js`` at commit
1d05a3ed66b1b2ecd5c2088899c0ac997c6cf9d2) instead wraps an edited first segment in a new top
entry with empty ``mes`` whose children are the old and the edited segment. Both shapes read the
same here: only the nesting is used (``parent``/``active`` indices are not needed).

What can be recovered: an edited segment. A later sibling is taken as the person's edit of the
earlier sibling it most resembles (compared with that sibling's text plus its newest
continuation, which is what was on screen) when they share ``EDIT_MIN_SIMILARITY`` of their
words; else it is a regenerated continue (counted ``regenerated``, not imported: both sides are
model samples). The pair goes through the word diff of ``from-edits`` after the text of the
segments above it. Edits along one path of continues become one trajectory. The prompt is the
chat before the message (user messages as ``user``, narrator messages as ``system``, others as
``assistant``; hidden ``is_system`` messages left out), with ``--system`` in front.

What is lost: without ``continueHistory`` nothing: core SillyTavern overwrites the swipe it
edits, and other swipes are fresh samples, not corrections (counted ``no_continue_history``).
The tree does not mark who wrote a segment, so an edited segment that is continued holds the
model's continuation in its text, and text the person appended at the end reads as accepted
text. Character names and the character card are not rebuilt into the prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localpref.data.errors import SteerError
from localpref.data.frontends.common import FileContext, Point, edit_base, edit_candidates, get, need, unused
from localpref.data.load import iter_jsonl

EXTENSIONS = (".jsonl",)


def read(path: str | Path, ctx: FileContext) -> None:
    unused(ctx.result.counts, "messages", "no_continue_history", "edits", "regenerated", "unchanged")
    messages: list[tuple[int, Mapping[str, Any]]] = []
    for line, obj in iter_jsonl(path, on_error=ctx.on_error, skipped=ctx.result.skipped):
        ctx.line = line
        try:
            obj = need(obj, dict, "(line)")
            if "mes" not in obj and ("user_name" in obj or "chat_metadata" in obj):
                continue  # the header line (group chats have none)
            get(obj, "mes", str, "mes")
            for flag in ("is_user", "is_system"):
                get(obj, flag, bool, flag, default=False)
            messages.append((line, obj))
        except SteerError as e:
            ctx.handle(e)
    for k, (line, message) in enumerate(messages):
        if message.get("is_user") or message.get("is_system"):
            continue
        ctx.line = line
        ctx.count("messages")
        try:
            _message(messages, k, Path(path).stem, ctx)
        except SteerError as e:
            ctx.handle(e)
    ctx.line = None


def _message(messages: list[tuple[int, Mapping[str, Any]]], k: int, stem: str, ctx: FileContext) -> None:
    line, message = messages[k]
    history = get(message, "continueHistory", list, "continueHistory", default=None)
    if history is None:
        ctx.count("no_continue_history")
        return
    extra = get(message, "extra", dict, "extra", default={})
    if "gen_started" not in message and "api" not in extra and "model" not in extra:
        ctx.count("not_generated")  # a greeting, or a message the person sent as the character
        return
    points: list[Point] = []
    roots = [(r, root) for r, root in enumerate(history) if root is not None]  # null: swipe without a tree
    _walk([root for _, root in roots], [f"continueHistory[{r}]" for r, _ in roots], ctx, points)
    if not points:  # the usual case: the extension puts a one-segment tree on every message
        return
    prompt = ctx.chat_prompt([_as_message(m) for _, m in messages[:k] if not m.get("is_system")])
    ctx.add(prompt, points, id=f"sillytavern/{stem}/line{line}",
            meta={"source": "sillytavern", "file": ctx.file, "line": line})


def _as_message(m: Mapping[str, Any]) -> dict[str, str]:
    narrator = isinstance(m.get("extra"), Mapping) and m["extra"].get("type") == "narrator"
    role = "user" if m.get("is_user") else "system" if narrator else "assistant"
    return {"role": role, "content": m["mes"]}


def _node(node: Any, where: str) -> tuple[str, list]:
    node = need(node, dict, where)
    return get(node, "mes", str, f"{where}.mes"), get(node, "swipes", list, f"{where}.swipes", default=[])


def _branch(node: Any, where: str) -> str:
    """The segment's text followed by its newest continuation, down to a leaf."""
    parts = []
    while node is not None:
        text, kids = _node(node, where)
        parts.append(text)
        node, where = (kids[-1], f"{where}.swipes[{len(kids) - 1}]") if kids else (None, where)
    return "".join(parts)


def _walk(roots: list, where: list[str], ctx: FileContext, points: list[Point]) -> None:
    """Depth first over the trees, a list of sibling segments at a time (iteratively).

    The top list (one tree per swipe) is read like any other: swipes are fresh samples and
    read as ``regenerated``; an edited first segment (added there by the extension's
    ``onMessageEdited`` at the commit above) reads as an edit.
    """
    stack = [(roots, "", (), where)]
    while stack:
        nodes, before, path, wheres = stack.pop()
        segments = [_node(n, w) for n, w in zip(nodes, wheres)]
        for j, (text, kids) in enumerate(segments):
            if j > 0:
                _alternative(nodes[:j], wheres, before, text, kids, path + (j,), wheres[j], ctx, points)
            stack.append((kids, before + text, path + (j,), [f"{wheres[j]}.swipes[{i}]" for i in range(len(kids))]))
        # a stack pops the last pushed first: put the first segment's subtree on top
        stack[len(stack) - len(segments):] = reversed(stack[len(stack) - len(segments):])


def _alternative(earlier_nodes: list, wheres: list[str], before: str, text: str, kids: list, path: tuple,
                 where: str, ctx: FileContext, points: list[Point]) -> None:
    """A later sibling segment: the person's edit of an earlier one, or a regenerated sample."""
    earlier = [_branch(n, w) for n, w in zip(earlier_nodes, wheres)]
    base = edit_base(earlier, text)
    if base is None:
        ctx.count("regenerated")
    elif earlier[base] == text:
        ctx.count("unchanged")
    else:
        ctx.count("edits")
        points.append(Point(path=path, candidates=edit_candidates(
            before, earlier[base], text, hunks=ctx.hunks, complete=not ctx.partial and not kids,
            label=where.replace("continueHistory", "ch"))))
