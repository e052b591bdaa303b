"""A scripted causal LM for tests: it writes exactly what a plan says, token by token, through the
same interface (``model(input_ids, past_key_values, use_cache)``) as a real one, keeping what each
row has seen in the real ``DynamicCache`` the caller passes, so cropping it and dropping rows act as
on a real model.

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


PAD = -1.0  # what a left-padding position holds in the cache: no token


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
        """Append the new ids to layer 0 of ``past_key_values`` as keys ``(b, 1, t, 1)`` (float holds
        ids below 2**24 exactly), read back each row's ids so far, and put all the mass on the plan's
        next token."""
        b, t = input_ids.shape
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, -t:].bool()
        new = torch.where(mask, input_ids, PAD).float()[:, None, :, None]  # left padding is not context
        seen, _ = past_key_values.update(new, new, 0)  # (b, 1, all t, 1)
        logits = torch.full((b, t, len(self.tok)), -1e4)
        for r in range(b):
            ids = [int(i) for i in seen[r, 0, :, 0].tolist() if i != PAD]
            logits[r, -1, self.next_token(ids)] = 0.0
        self.calls += 1
        return SimpleNamespace(logits=logits)
