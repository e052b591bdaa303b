"""mikupad sessions -> steers, where the session keeps what the person replaced.

Read from lmg-anon/mikupad at commit b2a2a3e6728671b4594d5668c74b9f879dff8a3f (2025-12-27),
``mikupad.html``: ``exportSession`` (the file is one JSON object whose every value is itself
JSON-encoded, e.g. ``"prompt": "[{\\"type\\":\\"user\\",...}]"``; ``createSessionFromObject``
decodes each), ``defaultPresets.prompt``, ``joinPrompt`` (the text is the chunks' ``content``
joined), ``predict`` (each streamed token is appended as a chunk with no ``type``), the
``yieldTokens`` of the llama.cpp and KoboldCpp clients (a token chunk is ``{"content", "prob",
"completion_probabilities": [{"content": <the sampled token>, "probs": [{"tok_str", "prob"}]}]}``
when the server sends probabilities), ``onInput`` and ``switchCompletion``. The prompt::

    [{"type": "user", "content": "<typed text>"}, {"content": " Once", "prob": 0.8, ...}, ...]

What can be recovered: a token the person swapped. ``switchCompletion`` replaces a generated
chunk's ``content`` with the alternative clicked in the probability list, keeps the chunk's
``completion_probabilities`` (whose ``content`` is still the token the model sampled), drops the
chunks after it and generates again. Such a chunk (``content`` differs from
``completion_probabilities[0].content`` and is one of its ``probs``) is a steer: rejected = the
sampled token, corrected = the chosen one, one token each, after all the text before it.
Several swaps in one session make one trajectory. mikupad drives completion endpoints on raw
text, so the prompt is a plain string (the text before the first swap) and nothing ends a turn.

What cannot be recovered, and is refused: typed text. ``onInput`` keeps the chunks still at the
start and at the end of the edited text, merges everything between into one ``user`` chunk and
discards the generated chunks it overwrote, so a ``user`` chunk after generated text may be an
addition, a correction, or a chat template's turn marker, and what it replaced is gone. Such
chunks are counted (``typed_after_generation``) and nothing is imported from them. Also lost:
the tokens after a swapped token in the first sample (dropped), and the memory, world info and
author's note that mikupad splices into each request (not rebuilt into the prompt).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localpref.data.errors import SteerError
from localpref.data.frontends.common import Candidate, FileContext, Point, get, need, read_json_file, unused

EXTENSIONS = (".json",)
REFUSAL = ("mikupad does not keep the text a typed chunk replaced (onInput discards the generated chunks "
           "it overwrites), so nothing was imported from the {n} typed chunk(s) after generated text; "
           "only swapped tokens (switchCompletion keeps the sampled token) are steers")


def read(path: str | Path, ctx: FileContext) -> None:
    unused(ctx.result.counts, "sessions", "chunks", "generated_chunks", "swapped_tokens", "typed_after_generation")
    data = need(read_json_file(path), dict, "(file)")
    if "prompt" not in data:  # another tool's file, or not a save file at all
        raise SteerError("missing_field", "missing required field 'prompt' (not a session exported from mikupad?)",
                         field="prompt")
    chunks = need(_decoded(data, "prompt"), list, "prompt")
    name = _decoded(data, "name") if "name" in data else Path(path).stem
    ctx.count("sessions")
    points, text, generated = [], "", False
    for k, chunk in enumerate(chunks):
        where = f"prompt[{k}]"
        chunk = need(chunk, dict, where)
        content = get(chunk, "content", str, f"{where}.content")
        ctx.count("chunks")
        if chunk.get("type") == "user":
            ctx.count("typed_after_generation", int(generated))
        else:
            generated = True
            ctx.count("generated_chunks")
            sampled = _sampled_if_swapped(chunk, content, where)
            if sampled is not None:
                ctx.count("swapped_tokens")
                points.append(Point(path=(), candidates=[Candidate(prefix=text, rejected=sampled, corrected=content,
                                                                   label=f"chunk{k}")]))
        text += content
    ctx.add(None, points, id=f"mikupad/{Path(path).stem}", meta={"source": "mikupad", "file": ctx.file,
                                                                  "session": name})


def _decoded(data: Mapping, key: str) -> Any:
    """An exported value (a JSON string), or the value itself as stored in mikupad's database."""
    value = data[key]
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        if key == "name":
            return value
        raise SteerError("invalid_json", f"the exported value is not JSON: {e.msg} (character {e.pos}); "
                         f"a torn file?", field=key) from None


def _sampled_if_swapped(chunk: Mapping, content: str, where: str) -> str | None:
    """The token the model sampled, when the person swapped it for another (see the docstring)."""
    probabilities = get(chunk, "completion_probabilities", list, f"{where}.completion_probabilities", default=[])
    if not probabilities:
        return None
    first = need(probabilities[0], dict, f"{where}.completion_probabilities[0]")
    sampled = get(first, "content", str, f"{where}.completion_probabilities[0].content")
    probs = get(first, "probs", list, f"{where}.completion_probabilities[0].probs", default=[])
    offered = {p.get("tok_str") for p in probs if isinstance(p, Mapping)}
    return sampled if sampled != content and content in offered else None


def notes(counts: Mapping[str, int]) -> list[str]:
    n = counts.get("typed_after_generation", 0)
    return [REFUSAL.format(n=n)] if n else []
