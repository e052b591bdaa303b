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
full bf16 logits vs the fp32-accumulated span-only projection) rather than 0.

Cost: one policy forward and one reference forward per batch, in the training layout
(``data.layout``: shared tokens once), with no logits but those of scored tokens. The KL reads
the rows the head sees at the chosen completion tokens from the same two forwards and projects
them through lm_head a chunk of rows at a time (a ``(rows, v)`` fp32 block under
``logprobs.CHUNK_BYTES``). The reference never changes, so ``reference_cache`` (a dict the caller
keeps) holds its outputs from the first evaluation for the later ones (rows only while they
fit in ``CACHE_BYTES``); from then on an evaluation is one policy forward. Before training the
policy computes exactly what the reference computes (``ModelReference.is_policy``: LoRA B all
zero, or a copy equal to the policy), so that first evaluation is one forward too.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from localpref.log import Progress
from localpref.logprobs import CHUNK_BYTES
from localpref.packing import collate, groups
from localpref.reference import score_and_keep

CACHE_BYTES = 1 << 30
"""Most bytes of reference rows ``evaluate`` keeps between evaluations (1 GiB)."""


def _seq(logps: Tensor, mask: Tensor) -> Tensor:
    """(b, t), (b, t) -> (b,) sum of the masked log-probs, fp32."""
    return (logps * mask).sum(-1)


def _kl_rows(policy_head: Callable[[Tensor], Tensor], reference_head: Callable[[Tensor], Tensor],
             policy_rows: Tensor, ref_rows: Tensor) -> Tensor:
    """(n,) KL(pi || ref) of the next-token distributions that each side's own head makes of its
    (n, d) rows, fp32.

    fp32 because the KL is a small difference of large terms. Computed a chunk of rows at a time,
    so that no more than a ``CHUNK_BYTES`` (rows, v) block of each side is alive.
    """
    v = policy_head(policy_rows[:1]).shape[-1]
    step = max(1, CHUNK_BYTES // (4 * v))
    out = []
    for s in range(0, policy_rows.shape[0], step):
        p = torch.log_softmax(policy_head(policy_rows[s:s + step]), -1)  # (rows, v) fp32
        q = torch.log_softmax(reference_head(ref_rows[s:s + step].to(policy_rows.device)), -1)
        out.append((p.exp() * (p - q)).sum(-1))
    return torch.cat(out) if out else policy_rows.new_zeros(0, dtype=torch.float32)


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


def _drift_kl(scorer, reference, policy_rows: Tensor, ref_rows: Tensor, batch, keep: Tensor) -> Tensor:
    """() KL(pi || ref) summed over each pair's chosen completion tokens (the distributions that
    predict them); rows (n_keep, d) of the row tokens ``keep`` (r, t) marks, in row-major order."""
    kl = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device)
    head = lambda rows: scorer(project=rows)  # noqa: E731
    kl = kl.masked_scatter(keep, _kl_rows(head, reference.project, policy_rows, ref_rows))  # (r, t)
    comp_c, _ = batch.masks("completion")
    # A row token shared by several pairs' chosen completions counts once per pair, as unpacked.
    return torch.where(comp_c, batch.split(kl)[0], 0.0).sum()


def _reference_outputs(reference, batch, keep: Tensor, cache: dict | None, key: int, policy_outputs=None):
    """(ref_c (b, t), ref_r (b, t), rows (n_keep, d) or None) of one evaluation batch, cached;
    ``policy_outputs`` (the policy's, when it is still the reference) stand in for a forward."""
    if cache is not None and key in cache:
        ref_c, ref_r, rows = cache[key]
        device = keep.device
        return ref_c.to(device), ref_r.to(device), rows if rows is None else rows.to(device)
    ref_c, ref_r, rows = policy_outputs or reference.score_and_keep(batch, "completion", keep)
    if cache is not None:
        held = sum(x.numel() * x.element_size() for _, _, x in cache.values() if x is not None)
        if rows is None or held + rows.numel() * rows.element_size() <= CACHE_BYTES:
            cache[key] = (ref_c.cpu(), ref_r.cpu(), None if rows is None else rows.cpu())
    return ref_c, ref_r, rows


@torch.no_grad()
def evaluate(scorer, reference, examples: Sequence, pad_id: int, *, batch_size: int, device: torch.device,
             layout: str = "unpacked", progress: Progress | None = None,
             reference_cache: dict | None = None) -> dict[str, float]:
    """Held-out metrics (module docstring) of the policy in ``scorer`` against ``reference``;
    batches of ``batch_size`` pairs in ``layout``; ``progress`` advances by the pairs of each
    batch; ``reference_cache``: a dict kept across evaluations of the same examples and layout."""
    if not examples:
        return {}
    was_training = scorer.training
    scorer.eval()
    sums: dict[str, float] = {}
    pairs = span_tokens = completion_tokens = 0
    # Batches of similar lengths (a trajectory's steers stay together): the sums do not depend on
    # the order, the padding does.
    parts = sorted(groups(examples, "trees"), key=lambda g: max(len(examples[i].chosen_ids) for i in g))
    order = [i for g in parts for i in g]
    n_batches = -(-len(examples) // batch_size)
    # Before training the policy is the reference (LoRA B = 0, or a copy not yet moved): its own
    # forward gives the reference's outputs, exactly, and fills the cache for later evaluations.
    same = (reference_cache is None or len(reference_cache) < n_batches) and reference.is_policy(scorer)
    for key, start in enumerate(range(0, len(examples), batch_size)):
        idx = order[start:start + batch_size]
        batch = collate(examples, idx, pad_id, layout=layout).to(device)
        comp_c, comp_r = batch.masks("completion")
        keep = batch.to_rows(comp_c, torch.zeros_like(comp_r))  # (r, t): the chosen completions' tokens
        pol_c, pol_r, pol_rows = score_and_keep(scorer, batch, "completion", keep)  # the span is inside
        ref_c, ref_r, ref_rows = _reference_outputs(reference, batch, keep, reference_cache, key,
                                                    (pol_c, pol_r, pol_rows) if same else None)
        metrics = _span_metrics(pol_c, pol_r, ref_c, ref_r, batch)
        if ref_rows is not None:
            metrics["drift/kl"] = _drift_kl(scorer, reference, pol_rows, ref_rows, batch, keep)
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        pairs += batch.num_pairs
        if progress is not None:
            progress.update(advance=batch.num_pairs)
        span_tokens += int(batch.masks("span")[0].sum())
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
