"""Localized preference losses, and the SFT and DPO baselines, as pure functions.

Axis letters used in shapes: ``b`` pairs in the (micro-)batch, ``t`` token positions.

Inputs are per-token log-probs ``(b, t)`` (from ``localpref.logprobs.token_logps``) and boolean
masks ``(b, t)`` marking the tokens a loss is about. For a steer the masks cover the divergence
span (the human's corrected tokens on the chosen side, the model's rejected tokens on the other);
plain DPO is the same call with the completion masks. Nothing else differs between the methods.

Notation (Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290), with
``y_w`` the chosen span, ``y_l`` the rejected span, ``S(m)`` the tokens of a mask:

    log_ratio_w = sum_{i in S(m_w)} [log pi(y_w,i | .) - log pi_ref(y_w,i | .)]     (per pair)
    h           = log_ratio_w - log_ratio_l
    reward_w    = beta * log_ratio_w           (DPO's implicit reward, Sec. 5)

With ``aggregation="mean"`` every ``sum`` over span tokens becomes a mean over them (length
normalization, as IPO in TRL and SimPO use). Losses come back per pair together with their sum
and the pair count: the training loop divides the summed losses by the GLOBAL pair count (all
micro-batches, all ranks), so gradient accumulation and data parallelism give exactly the
gradient of one big batch. No ``.mean()`` over the batch happens here.

Empty spans: a pair whose chosen and rejected masks are both empty raises ``ValueError`` (there
is nothing to compare; the data layer never emits one). Under ``aggregation="sum"`` one empty
side is allowed and its log-ratio is the empty sum, 0 (an insertion-only edit has no rejected
tokens). Under ``aggregation="mean"`` any empty side raises, since a mean over no tokens is
undefined; so does an empty SFT-anchor mask when ``sft_weight > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LossType = Literal["sigmoid", "ipo", "hinge", "robust", "apo_zero", "simpo", "dpop", "cal_dpo"]
Aggregation = Literal["sum", "mean"]

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge", "robust", "apo_zero", "simpo", "dpop",
                               "cal_dpo")
REFERENCE_FREE: frozenset[str] = frozenset({"simpo"})


@dataclass(frozen=True)
class PreferenceOutput:
    """What ``preference_loss`` returns. Shapes: ``b`` pairs."""

    losses: Tensor  # (b,) per-pair loss, differentiable
    chosen_rewards: Tensor  # (b,) beta * chosen log-ratio (SimPO: beta * policy logps), detached
    rejected_rewards: Tensor  # (b,) detached
    sum: Tensor  # () losses.sum(), differentiable: divide by the global count
    count: int  # number of pairs b in this (micro-)batch
    chosen_tokens: Tensor  # (b,) int64 tokens in each chosen mask
    rejected_tokens: Tensor  # (b,) int64 tokens in each rejected mask
    policy_chosen_seq_logps: Tensor  # (b,) sum of policy log-probs over the chosen mask, detached
    policy_rejected_seq_logps: Tensor  # (b,) same for the rejected mask, detached


@dataclass(frozen=True)
class SFTOutput:
    """What ``sft_loss`` returns: a summed NLL and the token count to divide it by (globally)."""

    sum: Tensor  # () sum of -log p over the mask, differentiable
    count: Tensor  # () int64 number of masked tokens


def _check(name: str, logps: Tensor | None, mask: Tensor) -> None:
    if mask.dtype != torch.bool or mask.ndim != 2:
        raise ValueError(f"{name} mask must be a bool (b, t) tensor, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    if logps is not None and logps.shape != mask.shape:
        raise ValueError(f"{name} log-probs {tuple(logps.shape)} and mask {tuple(mask.shape)} "
                         "must have the same (b, t) shape")


def _masked_sum(logps: Tensor, mask: Tensor) -> Tensor:
    """sum_t logps[b, t] over mask[b, t] -> (b,), in at least fp32 (masks can be long)."""
    # torch.where, not logps * mask: a -inf or NaN outside the mask must not leak into the sum
    # (0 * -inf = NaN), and the gradient outside the mask is then exactly zero.
    acc = torch.promote_types(logps.dtype, torch.float32)
    return torch.where(mask, logps.to(acc), 0.0).sum(-1)


def _aggregate(logps: Tensor, mask: Tensor, tokens: Tensor, aggregation: Aggregation) -> Tensor:
    """Per-pair span log-prob: the sum over the mask, or (``"mean"``) that sum / token count."""
    total = _masked_sum(logps, mask)  # (b,)
    return total if aggregation == "sum" else total / tokens.clamp_min(1)


def _check_spans(chosen_tokens: Tensor, rejected_tokens: Tensor, aggregation: str) -> None:
    both_empty = (chosen_tokens == 0) & (rejected_tokens == 0)
    if bool(both_empty.any()):
        rows = both_empty.nonzero().flatten().tolist()
        raise ValueError(f"pairs {rows} have empty chosen AND rejected masks: nothing to compare")
    if aggregation == "mean":
        one_empty = (chosen_tokens == 0) | (rejected_tokens == 0)
        if bool(one_empty.any()):
            rows = one_empty.nonzero().flatten().tolist()
            raise ValueError(f"pairs {rows} have an empty chosen or rejected mask; "
                             "aggregation='mean' is undefined over zero tokens")


def preference_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    beta: float = 0.1,
    loss_type: LossType = "sigmoid",
    aggregation: Aggregation = "sum",
    label_smoothing: float = 0.0,
    ipo_tau: float | None = None,
    simpo_gamma: float = 0.5,
    dpop_lambda: float = 50.0,
    sft_weight: float = 0.0,
    policy_chosen_nll_mask: Tensor | None = None,
) -> PreferenceOutput:
    """Per-pair preference loss over the masked tokens of a chosen and a rejected sequence.

    Args:
        policy_chosen_logps, policy_rejected_logps: (b, t) per-token log-probs of the policy.
        ref_chosen_logps, ref_rejected_logps: (b, t) the same under the frozen reference, or
            None for the reference-free ``"simpo"`` (which requires None).
        chosen_mask, rejected_mask: (b, t) bool; the divergence span (localized loss) or the
            whole completion (sequence-level DPO). The two sides may have different ``t``.
        beta: inverse temperature of the implicit reward (DPO's beta; SimPO's beta).
        loss_type: "sigmoid" | "ipo" | "hinge" | "robust" | "apo_zero" | "simpo" | "dpop" |
            "cal_dpo" (equations below; Cal-DPO's sigmoid takes h without beta, whose only role
            there is the calibration target 1 / (2 beta)).
        aggregation: "sum" (default, the papers' sequence log-probs) or "mean" (per pair, the
            average over its span tokens: length normalization).
        label_smoothing: epsilon, the assumed rate of flipped labels: conservative DPO when
            used with "sigmoid", robust DPO with "robust" (must be in [0, 0.5) there).
        ipo_tau: IPO's tau; None means ``beta`` (as in TRL).
        simpo_gamma: SimPO's target reward margin gamma.
        dpop_lambda: DPOP's lambda, the weight of the penalty on a negative chosen log-ratio
            (>= 0; 0 is DPO). 50 is the Smaug paper's value.
        sft_weight: weight alpha of an SFT anchor added to each pair's loss (RPO, see below).
        policy_chosen_nll_mask: (b, t) bool tokens of the anchor; None means ``chosen_mask``
            (pass the whole corrected completion's mask to anchor on all of it).

    Returns:
        PreferenceOutput; ``.sum / global_count`` is the batch loss.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if aggregation not in ("sum", "mean"):
        raise ValueError(f"aggregation must be 'sum' or 'mean', got {aggregation!r}")
    refs_given = (ref_chosen_logps is not None, ref_rejected_logps is not None)
    if loss_type in REFERENCE_FREE and any(refs_given):
        raise ValueError(f"loss_type={loss_type!r} is reference-free: pass ref_*_logps=None")
    if loss_type not in REFERENCE_FREE and not all(refs_given):
        raise ValueError(f"loss_type={loss_type!r} needs ref_chosen_logps and ref_rejected_logps")
    _check("chosen", policy_chosen_logps, chosen_mask)
    _check("rejected", policy_rejected_logps, rejected_mask)
    _check("ref chosen", ref_chosen_logps, chosen_mask)
    _check("ref rejected", ref_rejected_logps, rejected_mask)
    if chosen_mask.shape[0] != rejected_mask.shape[0]:
        raise ValueError(f"{chosen_mask.shape[0]} chosen vs {rejected_mask.shape[0]} rejected rows")

    chosen_tokens = chosen_mask.sum(-1)  # (b,)
    rejected_tokens = rejected_mask.sum(-1)  # (b,)
    _check_spans(chosen_tokens, rejected_tokens, aggregation)

    pi_w = _aggregate(policy_chosen_logps, chosen_mask, chosen_tokens, aggregation)  # (b,)
    pi_l = _aggregate(policy_rejected_logps, rejected_mask, rejected_tokens, aggregation)
    if loss_type in REFERENCE_FREE:
        chosen_logratios, rejected_logratios = pi_w, pi_l  # SimPO's reward has no reference
    else:
        chosen_logratios = pi_w - _aggregate(ref_chosen_logps, chosen_mask, chosen_tokens,
                                             aggregation)
        rejected_logratios = pi_l - _aggregate(ref_rejected_logps, rejected_mask, rejected_tokens,
                                               aggregation)
    h = chosen_logratios - rejected_logratios  # (b,)
    eps = label_smoothing

    if loss_type == "sigmoid":
        # DPO, Rafailov et al. 2023 eq. 7:  L = -log sigma(beta * h).
        # With eps > 0, conservative DPO (cDPO; Mitchell 2023, "A note on DPO with noisy
        # preferences"): the BCE against the smoothed target 1 - eps,
        #   L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h).
        losses = -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        # IPO, Azar et al. 2024 ("A General Theoretical Paradigm...", arXiv:2310.12036) eq. 17:
        #   L = (h - 1 / (2 tau))^2.   TRL's IPO is this with aggregation="mean".
        tau = beta if ipo_tau is None else ipo_tau
        losses = (h - 1 / (2 * tau)) ** 2
    elif loss_type == "hinge":
        # SLiC-HF calibration hinge (Zhao et al. 2023, arXiv:2305.10425) on reference-normalized
        # log-likelihoods, as in RSO (Liu et al. 2024, arXiv:2309.06657) and TRL:
        #   L = max(0, 1 - beta * h).
        losses = torch.relu(1 - beta * h)
    elif loss_type == "robust":
        # Robust DPO, Chowdhury et al. 2024 ("Provably Robust DPO", arXiv:2403.00409), the
        # unbiased loss under label-flip rate eps < 1/2:
        #   L = [(1 - eps) * (-log sigma(beta h)) - eps * (-log sigma(-beta h))] / (1 - 2 eps).
        if not 0.0 <= eps < 0.5:
            raise ValueError(f"loss_type='robust' needs label_smoothing in [0, 0.5), got {eps}")
        losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    elif loss_type == "apo_zero":
        # APO-zero, D'Oosterlinck et al. 2024 ("Anchored Preference Optimization",
        # arXiv:2408.06266) eq. 7: push the chosen log-ratio up and the rejected one down,
        # each anchored at zero:  L = (1 - sigma(beta * r_w)) + sigma(beta * r_l).
        losses = (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    elif loss_type == "dpop":
        # DPO-Positive, Pal et al. 2024 ("Smaug", arXiv:2402.13228), Sec. 3: DPO with a penalty
        # once the chosen log-ratio is negative (the chosen span got LESS likely than under the
        # reference, which DPO allows as long as the rejected one falls faster):
        #   L = -log sigma(beta * (h - lambda * max(0, -log_ratio_w))).
        # lambda = 0 is DPO; while log_ratio_w >= 0 the two are equal.
        if dpop_lambda < 0:
            raise ValueError(f"loss_type='dpop' needs dpop_lambda >= 0, got {dpop_lambda}")
        losses = -F.logsigmoid(beta * (h - dpop_lambda * torch.relu(-chosen_logratios)))
    elif loss_type == "cal_dpo":
        # Cal-DPO, Xiao et al. 2024 (arXiv:2412.14516), Sec. 4: a contrastive term plus a squared
        # calibration of each log-ratio to r / beta for the rewards r = +1/2 (chosen), -1/2
        # (rejected), so the chosen log-ratio is pulled UP even once the margin is won:
        #   L = -log sigma(h) + (log_ratio_w - 1/(2 beta))^2 + (log_ratio_l + 1/(2 beta))^2.
        # beta is NOT inside the sigmoid, unlike DPO: so in both of the authors' code releases
        # (github.com/Cal-DPO/Cal-DPO, Pythia-2.8b-exp/trainers.py, shift=0.5; and
        # github.com/tengxiao1/Cal-DPO, scripts/dpo_trainer.py). The Pythia release weighs the
        # calibration by 1, as here; the tengxiao1 release by 0.5. Doubt: we read the paper's
        # equation only through those releases. With aggregation="mean" the targets +-1/(2 beta)
        # apply to per-token log-ratios, not the paper's sequence sums: scale beta accordingly.
        target = 1 / (2 * beta)
        losses = (-F.logsigmoid(h) + (chosen_logratios - target) ** 2
                  + (rejected_logratios + target) ** 2)
    else:  # "simpo"
        # SimPO, Meng et al. 2024 (arXiv:2405.14734) eq. 6, reference-free with margin gamma:
        #   L = -log sigma(beta * (pi_w - pi_l) - gamma),
        # where pi_* are the span log-probs; the paper's form is aggregation="mean"
        # (length-normalized). eps > 0 smooths it like cDPO (as in the SimPO code release).
        z = beta * h - simpo_gamma
        losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)

    if sft_weight:
        # SFT anchor as in RPO (Pang et al. 2024, "Iterative Reasoning Preference Optimization",
        # arXiv:2404.19733): L += alpha * (-log pi(y_w | x) / |y_w|), the per-pair
        # length-normalized NLL of the anchor tokens (the chosen span unless told otherwise).
        nll_mask = chosen_mask if policy_chosen_nll_mask is None else policy_chosen_nll_mask
        _check("policy_chosen_nll", policy_chosen_logps, nll_mask)
        nll_tokens = nll_mask.sum(-1)  # (b,)
        if bool((nll_tokens == 0).any()):
            raise ValueError("sft_weight > 0 but some pair's SFT-anchor mask is empty")
        losses = losses + sft_weight * (-_masked_sum(policy_chosen_logps, nll_mask) / nll_tokens)

    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
        sum=losses.sum(),
        count=int(losses.shape[0]),
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
        policy_chosen_seq_logps=_masked_sum(policy_chosen_logps, chosen_mask).detach(),
        policy_rejected_seq_logps=_masked_sum(policy_rejected_logps, rejected_mask).detach(),
    )


def sft_loss(policy_logps: Tensor, mask: Tensor) -> SFTOutput:
    """Negative log-likelihood over the masked tokens, as a sum and a count.

    Args:
        policy_logps: (b, t) per-token log-probs of the targets.
        mask: (b, t) bool: the corrected span, or the whole corrected completion.

    Returns:
        SFTOutput with ``.sum`` = -sum of the masked log-probs and ``.count`` = masked tokens;
        the loop divides the sum by the global token count (a token-level mean over the batch).
    """
    _check("sft", policy_logps, mask)
    return SFTOutput(sum=-_masked_sum(policy_logps, mask).sum(), count=mask.sum())


def preference_metrics(out: PreferenceOutput) -> dict[str, Tensor]:
    """Batch means of the usual DPO diagnostics, under the names TRL and others log.

    Returns detached 0-d tensors (no ``.item()`` here, so no device sync):
    ``rewards/{chosen,rejected,margins,accuracies}``, ``logps/{chosen,rejected}`` (summed over
    each mask, then averaged over pairs) and ``span/{chosen_tokens,rejected_tokens}``.
    """
    margins = out.chosen_rewards - out.rejected_rewards  # (b,)
    return {
        "rewards/chosen": out.chosen_rewards.mean(),
        "rewards/rejected": out.rejected_rewards.mean(),
        "rewards/margins": margins.mean(),
        "rewards/accuracies": (margins > 0).float().mean(),
        "logps/chosen": out.policy_chosen_seq_logps.mean(),
        "logps/rejected": out.policy_rejected_seq_logps.mean(),
        "span/chosen_tokens": out.chosen_tokens.float().mean(),
        "span/rejected_tokens": out.rejected_tokens.float().mean(),
    }
