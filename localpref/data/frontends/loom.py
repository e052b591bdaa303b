"""Loom trees -> steers and trajectories.

Read from socketteer/loom at commit 91ca920551120ad4508540e8da057c0b94067afc (2024-06-28):
``model.py`` (``load_tree_data``: a file is ``{"root": node, ...}``, or a bare node, or a list
of the root's children; ``node_creation_metadata``, ``update_text``, ``set_generated_nodes``,
``split_node``, ``_init_global_objects``: ``model_responses`` kept in the tree file),
``controller.py`` (``save_as_sibling``: an edit saved as a new sibling; ``duplicate``;
``apply_counterfactual_changes``), ``gpt.py`` (the response dictionary), ``util/util_tree.py``
(``new_node``). A node::

    {"id": "...", "text": "...", "children": [node, ...],
     "meta": {"source": "AI" | "prompt" | "mixed", "modified": bool, "creation_timestamp": ...,
              "origin": "split (from child <id>)"},
     "generation": {"id": <response id>, "index": i},     # AI nodes; text = start + completion + restart
     "history": [{"timestamp": ..., "text": <text before an edit>}, ...]}   # with revision history on

and at the top, ``"model_responses": {<id>: {"prompt": {"text"}, "completions": [{"text", ...}]}}``
and ``"generation_settings": {"start", "restart", ...}``. ``update_text`` turns an AI node's
source into ``"mixed"`` on the first change; a node the person typed gets ``"prompt"``.

What can be recovered: (1) a human-written child (``source: "prompt"``: typed, or an edit saved
with "Save as sibling") next to model-written siblings (``source: "AI"``) under one parent:
one steer per model sibling, the most similar first; (2) a model node the person changed in
place (``"mixed"``): its original text from ``model_responses`` (exact model output, wrapped in
the tree's ``start``/``restart``), else from the first ``history`` entry, against its text now,
through the word diff of ``from-edits``. The prefix is the text of the path from the root;
corrections along one path make one trajectory. Loom drives base models on raw text: the prompt
is a plain string (the text before the first correction on the path) and nothing ends a turn.

What is lost: a changed node with neither ``model_responses`` nor ``history`` (counted
``edited_original_lost``); a changed node that was split from its parent (its recorded completion
spans both; counted ``split_node``); nodes without ``meta.source`` (older trees) are neither side.
The memory and preamble Loom adds to a request are not rebuilt into the prompt.
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from pathlib import Path
from localpref.data.errors import SteerError
from localpref.data.frontends.common import (Candidate, FileContext, Point, edit_candidates, get, need,
                                             read_json_file, similarity, unused)

EXTENSIONS = (".json",)


def read(path: str | Path, ctx: FileContext) -> None:
    unused(ctx.result.counts, "nodes", "human_beside_model", "edited", "edited_original_lost", "unchanged")
    data = read_json_file(path)
    if isinstance(data, list):
        data = {"root": {"text": "", "children": data}}
    data = need(data, dict, "(file)")
    root = need(data["root"], dict, "root") if "root" in data else data
    tree = _Tree(ctx, responses=get(data, "model_responses", dict, "model_responses", default={}),
                 settings=get(data, "generation_settings", dict, "generation_settings", default={}))
    tree.walk(root)
    ctx.add(None, tree.points, id=f"loom/{Path(path).stem}", meta={"source": "loom", "file": ctx.file})


class _Tree:
    def __init__(self, ctx: FileContext, responses: Mapping, settings: Mapping):
        self.ctx, self.responses, self.settings = ctx, responses, settings
        self.points: list[Point] = []

    def walk(self, root: Mapping) -> None:
        """Depth first, iteratively (a long story is thousands of nodes deep)."""
        stack = [(root, "", (), "root")]
        while stack:
            node, before, path, where = stack.pop()
            before += get(node, "text", str, f"{where}.text")
            kids = [need(k, dict, f"{where}.children[{j}]")
                    for j, k in enumerate(get(node, "children", list, f"{where}.children", default=[]))]
            self.ctx.count("nodes")
            wheres = [f"{where}.children[{j}]" for j in range(len(kids))]
            texts = [get(k, "text", str, f"{w}.text") for k, w in zip(kids, wheres)]
            sources = [_source(k, w) for k, w in zip(kids, wheres)]
            model = [t for t, s in zip(texts, sources) if s == "AI"]
            for j, (kid, source) in enumerate(zip(kids, sources)):
                try:
                    if source == "prompt" and model:
                        self._beside_model(before, kid, model, path + (j,), wheres[j])
                    elif source == "mixed":
                        self._edited(before, kid, node, path + (j,), wheres[j])
                except SteerError as e:
                    self.ctx.handle(e)
            stack.extend(reversed([(kid, before, path + (j,), wheres[j]) for j, kid in enumerate(kids)]))

    def _beside_model(self, before: str, kid: Mapping, model: list[str], path: tuple, where: str) -> None:
        corrected = get(kid, "text", str, f"{where}.text")
        self.ctx.count("human_beside_model")
        if corrected in model:  # "Duplicate" left unedited: the same text on both sides
            self.ctx.count("unchanged", model.count(corrected))
            model = [m for m in model if m != corrected]
        ranked = sorted(model, key=lambda m: -similarity(m, corrected))  # stable: ties keep tree order
        label = str(kid.get("id", where))
        self.points.append(Point(path=path, candidates=[
            Candidate(prefix=before, rejected=m, corrected=corrected, label=f"{label}/vs{i}")
            for i, m in enumerate(ranked)]))

    def _edited(self, before: str, kid: Mapping, parent: Mapping, path: tuple, where: str) -> None:
        self.ctx.count("edited")
        original = self._original(kid, parent, where)
        if original is None:
            return
        text = get(kid, "text", str, f"{where}.text")
        if text == original:  # changed, then changed back
            self.ctx.count("unchanged")
            return
        self.points.append(Point(path=path, candidates=edit_candidates(
            before, original, text, hunks=self.ctx.hunks, complete=False, label=str(kid.get("id", where)))))

    def _original(self, kid: Mapping, parent: Mapping, where: str) -> str | None:
        """The model's text of a changed node: its recorded completion, else its first revision."""
        parent_meta = parent.get("meta")
        split = isinstance(parent_meta, Mapping) and parent_meta.get("origin") == f"split (from child {kid.get('id')})"
        generation = kid.get("generation")
        if isinstance(generation, Mapping) and not split and str(generation.get("id")) in self.responses:
            response = need(self.responses[str(generation["id"])], dict, f"model_responses.{generation['id']}")
            completions = get(response, "completions", list, f"model_responses.{generation['id']}.completions")
            i = get(generation, "index", int, f"{where}.generation.index")
            if not 0 <= i < len(completions):
                raise SteerError("wrong_type", f"completion index {i} out of range ({len(completions)} kept)",
                                 field=f"{where}.generation.index")
            completion = need(completions[i], dict, f"model_responses.{generation['id']}.completions[{i}]")
            text = get(completion, "text", str, f"model_responses.{generation['id']}.completions[{i}].text")
            return self._setting("start") + text + self._setting("restart")
        history = get(kid, "history", list, f"{where}.history", default=[])
        if history:
            first = need(history[0], dict, f"{where}.history[0]")
            return get(first, "text", str, f"{where}.history[0].text")
        self.ctx.count("split_node" if split else "edited_original_lost")
        return None

    def _setting(self, key: str) -> str:
        value = get(self.settings, key, str, f"generation_settings.{key}", default="")
        try:  # model.py default_post_template decodes escapes ("\\n" -> newline) before use
            return codecs.decode(value, "unicode-escape")
        except UnicodeError:
            return value


def _source(node: Mapping, where: str) -> str | None:
    """``"AI"`` (unchanged model text), ``"prompt"`` (typed), ``"mixed"`` (model text changed), or None."""
    meta = get(node, "meta", dict, f"{where}.meta", default={})
    source = get(meta, "source", str, f"{where}.meta.source", default=None)
    if source == "AI" and meta.get("modified"):
        return "mixed"  # changed without the source flip (older trees)
    return source if source in ("AI", "prompt", "mixed") else None

