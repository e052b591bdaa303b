"""A scripted causal LM for tests: it writes exactly what a plan says, token by token, through the
same interface (``model(input_ids, past_key_values, use_cache)``) and cache cropping as a real one.

``plan`` maps "assistant text so far" to "what the model writes from there, then it ends the
turn". At each step the longest key the current text starts with (and is consistent with) decides
the next token: the first token of the plan's remaining text, or the end of turn when nothing
remains. So ``{"": "41, 43, 49, 53", "41, 43, 47,": " 53"}`` makes a known error (49) at a known
place, and after the correction "47," it goes on with " 53".
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


class ScriptedCache:
    """Holds the ids each row has seen; ``crop(-k)`` forgets the last ``k`` (one row) and
    ``batch_select_indices`` keeps some rows, like ``DynamicCache``."""

    def __init__(self, rows: int):
        self.rows: list[list[int]] = [[] for _ in range(rows)]

    def crop(self, n: int) -> None:
        (ids,) = self.rows
        self.rows = [ids[:n] if n >= 0 else ids[:len(ids) + n]]

    def batch_select_indices(self, indices) -> None:
        self.rows = [self.rows[i] for i in indices.tolist()]


class ScriptedLM(nn.Module):
    def __init__(self, tokenizer, prompt_text: str, plan: dict[str, str]):
        super().__init__()
        self.tok, self.prompt_text, self.plan = tokenizer, prompt_text, plan
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.generation_config = SimpleNamespace(eos_token_id=tokenizer.eos_token_id)
        self.calls = 0  # forwards run
        self._dummy = nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self._dummy.device

    def next_token(self, ids: list[int]) -> int:
        full = self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert full.startswith(self.prompt_text), "the writer must render the prompt as the plan expects"
        text = full[len(self.prompt_text):]
        keys = [k for k in self.plan if text.startswith(k) and (k + self.plan[k]).startswith(text)]
        if not keys:
            raise AssertionError(f"the plan does not say what to write after {text!r}")
        key = max(keys, key=len)
        rest = (key + self.plan[key])[len(text):]
        if not rest:
            return self.tok.eos_token_id
        return self.tok(rest, add_special_tokens=False)["input_ids"][0]

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=True, **_):
        b, t = input_ids.shape
        cache = past_key_values if past_key_values is not None else ScriptedCache(b)
        mask = attention_mask[:, -t:] if attention_mask is not None else torch.ones_like(input_ids)
        logits = torch.full((b, t, len(self.tok)), -1e4)
        for r in range(b):
            cache.rows[r] += input_ids[r][mask[r].bool()].tolist()  # left padding is not context
            logits[r, -1, self.next_token(cache.rows[r])] = 0.0
        self.calls += 1
        return SimpleNamespace(logits=logits, past_key_values=cache)
