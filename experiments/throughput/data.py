"""The steers the throughput benchmark trains on, written as files both systems read.

* DeFacto: human corrections of summaries (``../shared/data/defacto/train.jsonl``), one flat
  steer per row (the first corrected hunk), read in place with ``localpref.data.importers``.
* Trajectories: synthetic generations steered at k points each, in localpref's trajectory
  record form. Prompt: a DeFacto article cut to a random length; the assistant's answer: words of
  another article; at each of k points the answer goes on with ``corrected`` (the next 1-8
  words of the answer) where the model had written ``rejected`` (1-8 other words). So a
  trajectory's steers share the prompt and each earlier step's text; their shared prefixes run
  from about 256 to 1024 tokens and their spans from 1 to about 20 tokens.

TRL's rows for the same steers (``trl_rows``): ``prompt`` is the rendered prompt plus the
accepted prefix, ``chosen`` / ``rejected`` the two continuations (plus the end-of-turn text when
a continuation ends the turn), so TRL scores the whole continuations (DPO) where localpref scores
the span (localized); the tokens both run through the model are the same.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from localpref.data.importers import import_defacto
from localpref.data.load import write_steers
from localpref.data.schema import Steer
from localpref.data.tokenize import _Renderer

WORDS = re.compile(r"\s*\S+")


def defacto_file(defacto_dir: Path, out: Path, n: int) -> Path:
    """The first ``n`` DeFacto train steers, as a steer JSONL file."""
    steers = import_defacto(defacto_dir, None, splits=("train",), on_error="skip")["train"].steers[:n]
    write_steers(steers, out)
    return out


def trajectory_file(defacto_dir: Path, out: Path, *, generations: int, k: int, seed: int = 0) -> Path:
    """``generations`` trajectory records of ``k`` steers each (module docstring), as JSONL."""
    rng = random.Random(seed)
    articles = [json.loads(line)["article"] for line in open(defacto_dir / "train.jsonl", encoding="utf-8")]
    records = []
    while len(records) < generations:
        g = len(records)
        article, answer = rng.sample(articles, 2)
        # A prompt of about 280-680 tokens (SmolLM2 tokens run ~1.3 per word here).
        prompt_words = WORDS.findall(article)[:rng.randrange(190, 500)]
        if len(prompt_words) < 190:
            continue  # too short an article
        prompt = [{"role": "user", "content": "Summarize the article.\n\n" + "".join(prompt_words).strip()}]
        said = WORDS.findall(answer)
        # k correction points spread over the first 40-230 words of the answer.
        limit = min(rng.randrange(40, 230), len(said) - 10)
        if limit - 4 < 2 * k:
            continue  # too short an answer for k points
        points = sorted(rng.sample(range(4, limit), k))
        steps, at = [], 0
        for point in points:
            start = max(point, at)
            for _ in range(100):  # until the two continuations compete at their first token
                n_corrected, n_rejected = rng.randrange(1, 9), rng.randrange(1, 9)
                corrected = "".join(said[start:start + n_corrected])
                rejected_at = rng.randrange(len(said) - n_rejected)
                rejected = "".join(said[rejected_at:rejected_at + n_rejected])
                if corrected and not (rejected.startswith(corrected) or corrected.startswith(rejected)):
                    break
            steps.append({"accepted": "".join(said[at:start]), "rejected": rejected, "corrected": corrected})
            at = start + n_corrected
        records.append({"prompt": prompt, "steps": steps, "id": f"gen{g}"})
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return out


def trl_rows(steers: list[Steer], tokenizer: Any) -> list[dict[str, str]]:
    """TRL's {prompt, chosen, rejected} text rows for ``steers`` (module docstring)."""
    renderer = _Renderer(tokenizer)
    rows = []
    for steer in steers:
        prompt = renderer.prompt_text(steer) + steer.prefix
        chosen = steer.corrected + (renderer.end_of_turn(steer) if steer.corrected_ends_turn else "")
        rejected = steer.rejected + (renderer.end_of_turn(steer) if steer.rejected_ends_turn else "")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
