"""Evaluation on held-out steers, and the hook for task-specific generation evaluation.

Metrics (all under ``eval/``; sums over a mask are per pair, then averaged over pairs):

    span/reward_accuracy  share of pairs whose policy log-ratio margin on the span beats the
                          reference's: (pi_c - pi_r) - (ref_c - ref_r) > 0, i.e. DPO's implicit
                          reward ranks corrected above rejected
    span/logp_accuracy    share of pairs with log pi(corrected span) > log pi(rejected span)
    span/nll              NLL per token of the corrected span
    span/margin           mean of (pi_c - pi_r) - (ref_c - ref_r) on the span
    drift/nll             NLL per token of the whole held-out corrected completion
    drift/kl              KL(pi || ref) per token on the corrected completion's positions (needs
                          reference logits, so not with reference=precomputed)

The span metrics always use the span masks, whatever the training loss, so SFT, DPO and the
localized loss are compared on the same numbers.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from localpref.collate import collate_padded
from localpref.logprobs import token_logps


def _seq(logps: Tensor, mask: Tensor) -> Tensor:
    """(b, t), (b, t) -> (b,) sum of the masked log-probs, fp32."""
    return (logps * mask).sum(-1)


def _scored(logits: Tensor, batch) -> Tensor:
    """(2b, t, v) logits -> (2b, t) log-probs of the span|completion tokens (0 elsewhere)."""
    mask = torch.cat([s | c for s, c in zip(batch.masks("span"), batch.masks("completion"))])
    ids = batch.labels()
    return F.pad(token_logps(logits[:, :-1], ids[:, 1:], mask[:, 1:]), (1, 0))


def _kl_sum(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """() sum over masked positions of KL(pi || ref), fp32. Logits (b, t, v) already predict mask's tokens."""
    p = torch.log_softmax(policy_logits[mask].float(), -1)  # (n, v) fp32: the KL is a small difference
    q = torch.log_softmax(ref_logits[mask].float(), -1)
    return (p.exp() * (p - q)).sum()


@torch.no_grad()
def evaluate(scorer, reference, examples: Sequence, pad_id: int, *, batch_size: int,
             device: torch.device) -> dict[str, float]:
    """Held-out metrics (module docstring) of the policy in ``scorer`` against ``reference``."""
    if not examples:
        return {}
    was_training = scorer.training
    scorer.eval()
    sums: dict[str, float] = {}
    pairs = span_tokens = completion_tokens = 0

    def add(key: str, value: Tensor) -> None:
        sums[key] = sums.get(key, 0.0) + float(value)

    for start in range(0, len(examples), batch_size):
        idx = list(range(start, min(start + batch_size, len(examples))))
        batch = collate_padded([examples[i] for i in idx], idx, pad_id).to(device)
        inputs = batch.model_inputs()
        policy_logits = scorer.logits(inputs["input_ids"], inputs["attention_mask"])  # (2b, t, v)
        pol_c, pol_r = batch.split(_scored(policy_logits, batch))
        ref_logits = reference.logits(batch)
        if ref_logits is not None:
            ref_c, ref_r = batch.split(_scored(ref_logits, batch))
        else:  # precomputed: the cache holds exactly the span|completion tokens
            ref_c, ref_r = (s + c * ~sm for s, c, sm in zip(reference.token_logps(batch, "span"),
                                                             reference.token_logps(batch, "completion"),
                                                             batch.masks("span")))
        span_c, span_r = batch.masks("span")
        comp_c, _ = batch.masks("completion")
        margin = (_seq(pol_c, span_c) - _seq(pol_r, span_r)) - (_seq(ref_c, span_c) - _seq(ref_r, span_r))  # (b,)
        add("span/reward_accuracy", (margin > 0).sum())
        add("span/margin", margin.sum())
        add("span/logp_accuracy", (_seq(pol_c, span_c) > _seq(pol_r, span_r)).sum())
        add("span/nll", -_seq(pol_c, span_c).sum())
        add("drift/nll", -_seq(pol_c, comp_c).sum())
        if ref_logits is not None:
            # logits at i-1 predict the token at i: shift the mask left by one.
            shifted = F.pad(comp_c[:, 1:], (0, 1))
            b = batch.num_pairs
            add("drift/kl", _kl_sum(policy_logits[:b], ref_logits[:b], shifted))
        pairs += batch.num_pairs
        span_tokens += int(span_c.sum())
        completion_tokens += int(comp_c.sum())
    scorer.train(was_training)
    per_token = {"span/nll": span_tokens, "drift/nll": completion_tokens, "drift/kl": completion_tokens}
    return {k: v / max(per_token.get(k, pairs), 1) for k, v in sums.items()}


def load_hook(spec: str) -> Callable[..., dict[str, Any]]:
    """``"package.module:function"`` -> the function. Called as ``fn(model, tokenizer, steers, cfg)``.

    The hook generates from held-out prompts and scores the outputs with a task-specific check
    (the experiments issue plugs in e.g. "are all listed numbers prime"); its metrics are logged
    under ``eval/generation/``. It runs on rank 0 with the unwrapped model in eval mode.
    """
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"generation_eval must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)
