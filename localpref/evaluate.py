"""Evaluation on held-out steers, and the hook for task-specific generation evaluation.

Metrics (all under ``eval/``; sums over a mask are per pair, then averaged over pairs):

    span/reward_accuracy  share of pairs whose policy log-ratio margin on the span beats the
                          reference's: (pi_c - pi_r) - (ref_c - ref_r) > 0, i.e. DPO's implicit
                          reward ranks corrected above rejected; an exact tie counts 1/2, so
                          before training (policy == reference, every pair a tie) it is 0.5
    span/reward_ties      share of pairs whose margin is exactly 0 (all of them before training)
    span/logp_accuracy    share of pairs with log pi(corrected span) > log pi(rejected span)
    span/nll              NLL per token of the corrected span
    span/margin           mean of (pi_c - pi_r) - (ref_c - ref_r) on the span
    drift/nll             NLL per token of the whole held-out corrected completion
    drift/kl              KL(pi || ref) per token on the corrected completion's positions (needs
                          reference logits, so not with reference=precomputed)

The span metrics always use the span masks, whatever the training loss, so SFT, DPO and the
localized loss are compared on the same numbers.

Policy and reference log-probs come through the same path: ``TokenScorer``'s forward scoring the
completion tokens (the span lies inside the completion), exactly what ``reference=precomputed``
caches. Otherwise at step 0 the margin would be the difference of two roundings (under bf16,
full bf16 logits vs the fp32-accumulated span-only projection) rather than 0. Only the KL needs
full logits, of the chosen rows.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from localpref.collate import collate_padded
from localpref.log import Progress
from localpref.reference import score_batch


def _seq(logps: Tensor, mask: Tensor) -> Tensor:
    """(b, t), (b, t) -> (b,) sum of the masked log-probs, fp32."""
    return (logps * mask).sum(-1)


def _kl_sum(policy_logits: Tensor, ref_logits: Tensor, mask: Tensor) -> Tensor:
    """() sum over masked positions of KL(pi || ref), fp32. Logits (b, t, v) already predict mask's tokens."""
    p = torch.log_softmax(policy_logits[mask].float(), -1)  # (n, v) fp32: the KL is a small difference
    q = torch.log_softmax(ref_logits[mask].float(), -1)
    return (p.exp() * (p - q)).sum()


def _span_metrics(pol_c: Tensor, pol_r: Tensor, ref_c: Tensor, ref_r: Tensor, batch) -> dict[str, Tensor]:
    """Sums over the batch's pairs of the span and drift/nll metrics; log-probs (b, t) each."""
    span_c, span_r = batch.masks("span")
    comp_c, _ = batch.masks("completion")
    policy_margin = _seq(pol_c, span_c) - _seq(pol_r, span_r)  # (b,)
    margin = policy_margin - (_seq(ref_c, span_c) - _seq(ref_r, span_r))  # (b,)
    return {"span/reward_accuracy": (margin > 0).sum() + 0.5 * (margin == 0).sum(),
            "span/reward_ties": (margin == 0).sum(),
            "span/margin": margin.sum(),
            "span/logp_accuracy": (policy_margin > 0).sum(),
            "span/nll": -_seq(pol_c, span_c).sum(),
            "drift/nll": -_seq(pol_c, comp_c).sum()}


def _drift_kl(scorer, reference, batch) -> Tensor | None:
    """() KL(pi || ref) summed over the chosen completions' positions, or None without reference logits."""
    ref_logits = reference.logits(batch)  # (2b, t, v) or None
    if ref_logits is None:
        return None
    b = batch.num_pairs
    inputs = batch.chosen_inputs()
    policy_logits = scorer.logits(inputs["input_ids"], inputs["attention_mask"])  # (b, t, v)
    comp_c, _ = batch.masks("completion")
    shifted = F.pad(comp_c[:, 1:], (0, 1))  # logits at i-1 predict the token at i
    return _kl_sum(policy_logits, ref_logits[:b], shifted)


@torch.no_grad()
def evaluate(scorer, reference, examples: Sequence, pad_id: int, *, batch_size: int,
             device: torch.device, progress: Progress | None = None) -> dict[str, float]:
    """Held-out metrics (module docstring) of the policy in ``scorer`` against ``reference``;
    ``progress`` advances by the pairs of each batch."""
    if not examples:
        return {}
    was_training = scorer.training
    scorer.eval()
    sums: dict[str, float] = {}
    pairs = span_tokens = completion_tokens = 0
    for start in range(0, len(examples), batch_size):
        idx = list(range(start, min(start + batch_size, len(examples))))
        batch = collate_padded([examples[i] for i in idx], idx, pad_id).to(device)
        pol_c, pol_r = score_batch(scorer, batch, "completion")  # (b, t) each; the span is inside
        ref_c, ref_r = reference.token_logps(batch, "completion")
        metrics = _span_metrics(pol_c, pol_r, ref_c, ref_r, batch)
        kl = _drift_kl(scorer, reference, batch)
        if kl is not None:
            metrics["drift/kl"] = kl
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value)
        pairs += batch.num_pairs
        if progress is not None:
            progress.update(advance=batch.num_pairs)
        span_tokens += int(batch.masks("span")[0].sum())
        completion_tokens += int(batch.masks("completion")[0].sum())
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
