"""Scoring tokens with the policy, and where the reference's log-probs come from.

``TokenScorer`` is the module the loop differentiates through (and DDP/FSDP wrap): it runs the
causal LM and returns per-token log-probs aligned with the input positions. References:

* ``copy``              a frozen deep copy of the initial model (2x weights in memory);
* ``adapter_disabled``  the LoRA policy with its adapters switched off (no second copy);
* ``precomputed``       per-token log-probs of the span and completion tokens, computed once by
                        one of the above and cached on disk under
                        ``cache_root()/reflogps/<hash>``, keyed by the model's weights and the
                        tokenized data, so all runs of a sweep over one model and data share it.

All return ``(ref_chosen_logps (b, t), ref_rejected_logps (b, t))`` in the batch's layout.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from localpref.collate import collate_padded
from localpref.logprobs import token_logps
from localpref.models import cache_root


class TokenScorer(nn.Module):
    """Causal LM -> per-token log-probs of the input's own tokens at the masked positions.

    forward(input_ids (r, t), attention_mask (r, t), score_mask (r, t)) -> (r, t) float32, where
    out[:, i] = log p(input_ids[:, i] | input_ids[:, :i]) if score_mask[:, i] else 0. The shift is
    here and only here: logits[:, i-1] score ids[:, i]; position 0 has no logits and scores 0.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32"):
        super().__init__()
        self.model = model
        self.precision = precision

    def logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(r, t, v) raw logits (model dtype; autocast to bf16 when precision=bf16)."""
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def forward(self, input_ids: Tensor, attention_mask: Tensor, score_mask: Tensor) -> Tensor:
        logits = self.logits(input_ids, attention_mask)  # (r, t, v)
        scored = token_logps(logits[:, :-1], input_ids[:, 1:], score_mask[:, 1:])  # (r, t-1) fp32
        return torch.nn.functional.pad(scored, (1, 0))  # (r, t): re-align to input positions


def score_batch(scorer: nn.Module, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of the tokens in ``batch.masks(mask_kind)``: (chosen (b, t), rejected (b, t))."""
    chosen_mask, rejected_mask = batch.masks(mask_kind)
    score_mask = torch.cat([chosen_mask, rejected_mask])  # (2b, t) in the padded layout
    inputs = batch.model_inputs()
    return batch.split(scorer(inputs["input_ids"], inputs["attention_mask"], score_mask))


class ModelReference:
    """Reference log-probs from a model: a frozen copy, or the policy with LoRA disabled."""

    def __init__(self, scorer: TokenScorer, adapter_disabled: bool):
        self.scorer = scorer
        self.adapter_disabled = adapter_disabled

    def _context(self):
        return self.scorer.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext()

    @torch.no_grad()
    def token_logps(self, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
        with self._context():
            return score_batch(self.scorer, batch, mask_kind)

    @torch.no_grad()
    def logits(self, batch) -> Tensor | None:
        """(2b, t, v) reference logits (for the KL drift metric)."""
        inputs = batch.model_inputs()
        with self._context():
            return self.scorer.logits(inputs["input_ids"], inputs["attention_mask"])


def make_model_reference(kind: str, policy_model: nn.Module, precision: str) -> ModelReference:
    """A ``copy`` or ``adapter_disabled`` reference of the policy as it is now (before training)."""
    if kind == "copy":
        frozen = copy.deepcopy(policy_model).eval()
        frozen.requires_grad_(False)
        return ModelReference(TokenScorer(frozen, precision), adapter_disabled=False)
    if kind == "adapter_disabled":
        if not hasattr(policy_model, "disable_adapter"):
            raise ValueError("reference=adapter_disabled needs peft=lora (the policy has no adapters)")
        return ModelReference(TokenScorer(policy_model, precision), adapter_disabled=True)
    raise ValueError(f"no model reference of kind {kind!r}")


def _fingerprint(model: nn.Module, examples: Sequence, extra: str) -> str:
    """sha256 of the model's weights, the tokenized pairs (ids and masks) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:  # adapters are off in the reference; their (random) init must not matter
            continue
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    for e in examples:
        for seq in (e.chosen_ids, e.rejected_ids, e.chosen_span_mask, e.rejected_span_mask,
                    e.chosen_completion_mask, e.rejected_completion_mask):
            h.update(bytes(str(list(map(int, seq))), "ascii"))
    return h.hexdigest()[:24]


class PrecomputedReference:
    """Reference log-probs looked up from a cache of the span/completion tokens of every pair.

    For pair ``i`` the cache holds ``chosen/i`` and ``rejected/i``: 1-D float32 log-probs of the
    tokens at the positions where span | completion mask is True, in position order.
    """

    def __init__(self, table: dict[str, Tensor]):
        self.table = table

    def token_logps(self, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
        out = []
        for side, (span, completion), kind_mask in zip(
                ("chosen", "rejected"), zip(*(batch.masks("span"), batch.masks("completion"))),
                batch.masks(mask_kind)):
            stored = span | completion  # (b, t) the positions the cache holds, in order
            logps = torch.zeros(stored.shape, dtype=torch.float32)
            for row, i in enumerate(batch.index.tolist()):
                logps[row, stored[row].cpu()] = self.table[f"{side}/{i}"]
            out.append(logps.to(kind_mask.device) * kind_mask)
        return out[0], out[1]

    def logits(self, batch) -> None:
        return None  # no model kept: drift KL is not available with precomputed references

    @classmethod
    @torch.no_grad()
    def build(cls, reference: ModelReference, examples: Sequence, pad_id: int, *, batch_size: int,
              device: torch.device, tag: str) -> tuple["PrecomputedReference", Path]:
        """Load the cached table for (model weights, examples) or compute and store it atomically."""
        key = _fingerprint(reference.scorer.model, examples, tag)
        folder = cache_root() / "reflogps" / key
        if (folder / "logps.safetensors").exists():
            return cls(load_file(str(folder / "logps.safetensors"))), folder
        table: dict[str, Tensor] = {}
        for start in range(0, len(examples), batch_size):
            idx = list(range(start, min(start + batch_size, len(examples))))
            batch = collate_padded([examples[i] for i in idx], idx, pad_id).to(device)
            stored = tuple(s | c for s, c in zip(batch.masks("span"), batch.masks("completion")))
            scorer_mask = torch.cat(stored)  # (2b, t)
            inputs = batch.model_inputs()
            with reference._context():
                chosen, rejected = batch.split(reference.scorer(inputs["input_ids"], inputs["attention_mask"],
                                                                scorer_mask))
            for row, i in enumerate(idx):
                table[f"chosen/{i}"] = chosen[row][stored[0][row]].cpu().contiguous()
                table[f"rejected/{i}"] = rejected[row][stored[1][row]].cpu().contiguous()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".tmp-{key}-{os.getpid()}")
        tmp.mkdir(exist_ok=True)
        save_file(table, str(tmp / "logps.safetensors"))
        try:
            os.rename(tmp, folder)
        except OSError:  # a parallel run of the sweep wrote the same table first
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(table), folder
