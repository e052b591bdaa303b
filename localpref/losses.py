"""Localized preference losses, and the SFT and DPO baselines, as pure functions.

Axis letters used in shapes: ``b`` pairs in the (micro-)batch, ``t`` token positions.

Inputs are per-token log-probs ``(b, t)`` (from ``localpref.logprobs.token_logps``) and boolean
masks ``(b, t)`` marking the tokens a loss is about. For a steer the masks cover the divergence
span (the human's corrected tokens on the chosen side, the model's rejected tokens on the other);
plain DPO is the same call with the completion masks. Nothing else differs between the methods.

Notation (Rafailov et al. 2023, "Direct Preference Optimization", arXiv:2305.18290), with
``y_w`` the chosen span, ``y_l`` the rejected span, ``S(m)`` the tokens of a mask:

    pi_w        = sum_{i in S(m_w)} log pi(y_w,i | .)          (per pair; SpanLogps.chosen)
    r_w         = pi_w - sum_{i in S(m_w)} log pi_ref(y_w,i | .)   (the log-ratio)
    h           = r_w - r_l                                     (the margin)
    reward_w    = beta * r_w           (DPO's implicit reward, Sec. 5)

With ``aggregation="mean"`` every ``sum`` over span tokens becomes a mean over them (length
normalization, as IPO in TRL, SimPO and ORPO use).

**The losses are a table.** Each one is a short function below, registered by name with
``@register_loss``: it takes the batch's spans (``SpanLogps``) and its own parameters (keyword
arguments with defaults; ``beta`` when it has one) and returns the per-pair loss ``(b,)``, with its
equation in the docstring. ``preference_loss`` checks the inputs, aggregates the spans and
dispatches; it adds the optional SFT anchor (RPO) to any of them. Adding a loss is one function here
and one yaml in ``conf/loss/`` (its ``loss_type`` and ``params``); the config checks
``loss.params`` against the function's signature (``loss_params``), so a misspelt parameter fails
before training.

Losses come back per pair together with their sum and the pair count: the training loop divides
the summed losses by the GLOBAL pair count (all micro-batches, all ranks), so gradient accumulation
and data parallelism give exactly the gradient of one big batch. No ``.mean()`` over the batch
happens here.

Empty spans: a pair whose chosen and rejected masks are both empty raises ``ValueError`` (there
is nothing to compare; the data layer never emits one). Under ``aggregation="sum"`` one empty
side is allowed and its log-ratio is the empty sum, 0 (an insertion-only edit has no rejected
tokens; unlikelihood then has no rejected token to push down and adds 0). Under
``aggregation="mean"`` any empty side raises, since a mean over no tokens is undefined; so does an
empty chosen span anchored by ``sft_weight > 0`` (an anchor on other tokens may be empty: it adds 0).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Aggregation = Literal["sum", "mean"]


@dataclass(frozen=True)
class SpanLogps:
    """A batch's spans as a loss function sees them. Shapes: ``b`` pairs, ``t`` tokens."""

    chosen: Tensor  # (b,) policy log-prob of each chosen span (sum or mean over its tokens): pi_w
    rejected: Tensor  # (b,) the same for the rejected span: pi_l
    ref_chosen: Tensor | None  # (b,) under the reference; None for a reference-free loss
    ref_rejected: Tensor | None  # (b,)
    policy_rejected_logps: Tensor  # (b, t) per-token policy log-probs of the rejected side
    rejected_mask: Tensor  # (b, t) bool, the rejected span

    @property
    def chosen_logratios(self) -> Tensor:  # (b,) r_w
        return self.chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> Tensor:  # (b,) r_l
        return self.rejected - self.ref_rejected

    @property
    def margin(self) -> Tensor:  # (b,) h = r_w - r_l
        return self.chosen_logratios - self.rejected_logratios


@dataclass(frozen=True)
class LossSpec:
    """One registered loss: its function and what it reads."""

    fn: Callable[..., Tensor]
    reference_free: bool  # needs no reference log-probs (pass ref_*_logps=None)
    uses_beta: bool  # takes ``beta`` (tuning sweeps search it only for these)
    params: dict[str, object]  # its other keyword parameters and their defaults (loss.params)


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, *, reference_free: bool = False):
    """Decorator: register ``fn(s: SpanLogps, *, beta=..., **params) -> (b,)`` under ``name``."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        kw = {p.name: p.default for p in inspect.signature(fn).parameters.values()
              if p.kind is inspect.Parameter.KEYWORD_ONLY}
        uses_beta = "beta" in kw
        kw.pop("beta", None)
        LOSSES[name] = LossSpec(fn, reference_free, uses_beta, kw)
        return fn

    return wrap


def loss_params(loss_type: str) -> dict[str, object]:
    """The parameters (name: default) that ``loss_type`` takes besides ``beta``; ValueError if unknown."""
    if loss_type not in LOSSES:
        raise ValueError(f"loss_type must be one of {tuple(LOSSES)}, got {loss_type!r}")
    return dict(LOSSES[loss_type].params)


# ------------------------------------------------------------------------------------------------
# The losses: one function each, its equation beside the line that implements it
# ------------------------------------------------------------------------------------------------


@register_loss("sigmoid")
def sigmoid(s: SpanLogps, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """DPO, Rafailov et al. 2023 (arXiv:2305.18290) eq. 7:  L = -log sigma(beta h).

    With ``label_smoothing`` eps > 0, conservative DPO (cDPO; Mitchell 2023, "A note on DPO with
    noisy preferences"), the BCE against the smoothed target 1 - eps:
        L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)."""
    eps, z = label_smoothing, beta * s.margin
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register_loss("ipo")
def ipo(s: SpanLogps, *, beta: float, ipo_tau: float | None = None) -> Tensor:
    """IPO, Azar et al. 2024 ("A General Theoretical Paradigm...", arXiv:2310.12036) eq. 17:
        L = (h - 1 / (2 tau))^2,   tau = ``ipo_tau``, or ``beta`` when None (as in TRL).
    TRL's IPO is this with aggregation="mean"."""
    tau = beta if ipo_tau is None else ipo_tau
    return (s.margin - 1 / (2 * tau)) ** 2


@register_loss("hinge")
def hinge(s: SpanLogps, *, beta: float) -> Tensor:
    """SLiC-HF calibration hinge (Zhao et al. 2023, arXiv:2305.10425) on reference-normalized
    log-likelihoods, as in RSO (Liu et al. 2024, arXiv:2309.06657) and TRL:
        L = max(0, 1 - beta h)."""
    return torch.relu(1 - beta * s.margin)


@register_loss("robust")
def robust(s: SpanLogps, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO, Chowdhury et al. 2024 ("Provably Robust DPO", arXiv:2403.00409), the unbiased
    loss under label-flip rate eps = ``label_smoothing`` < 1/2:
        L = [(1 - eps) (-log sigma(beta h)) - eps (-log sigma(-beta h))] / (1 - 2 eps)."""
    eps, z = label_smoothing, beta * s.margin
    if not 0.0 <= eps < 0.5:
        raise ValueError(f"loss_type='robust' needs label_smoothing in [0, 0.5), got {eps}")
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


@register_loss("apo_zero")
def apo_zero(s: SpanLogps, *, beta: float) -> Tensor:
    """APO-zero, D'Oosterlinck et al. 2024 ("Anchored Preference Optimization", arXiv:2408.06266)
    eq. 7: push the chosen log-ratio up and the rejected one down, each anchored at zero:
        L = (1 - sigma(beta r_w)) + sigma(beta r_l)."""
    return (1 - torch.sigmoid(beta * s.chosen_logratios)) + torch.sigmoid(beta * s.rejected_logratios)


@register_loss("simpo", reference_free=True)
def simpo(s: SpanLogps, *, beta: float, simpo_gamma: float = 0.5, label_smoothing: float = 0.0) -> Tensor:
    """SimPO, Meng et al. 2024 (arXiv:2405.14734) eq. 6, reference-free with margin gamma:
        L = -log sigma(beta (pi_w - pi_l) - gamma);
    the paper's form is aggregation="mean" (length-normalized). eps > 0 smooths it like cDPO (as
    in the SimPO code release)."""
    eps, z = label_smoothing, beta * (s.chosen - s.rejected) - simpo_gamma
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


@register_loss("dpop")
def dpop(s: SpanLogps, *, beta: float, dpop_lambda: float = 50.0) -> Tensor:
    """DPO-Positive, Pal et al. 2024 ("Smaug", arXiv:2402.13228), Sec. 3: DPO with a penalty once
    the chosen log-ratio is negative (the chosen span got LESS likely than under the reference,
    which DPO allows as long as the rejected one falls faster):
        L = -log sigma(beta (h - lambda max(0, -r_w))).
    lambda = 0 is DPO; while r_w >= 0 the two are equal. 50 is the paper's lambda."""
    if dpop_lambda < 0:
        raise ValueError(f"loss_type='dpop' needs dpop_lambda >= 0, got {dpop_lambda}")
    return -F.logsigmoid(beta * (s.margin - dpop_lambda * torch.relu(-s.chosen_logratios)))


@register_loss("cal_dpo")
def cal_dpo(s: SpanLogps, *, beta: float) -> Tensor:
    """Cal-DPO, Xiao et al. 2024 (arXiv:2412.14516), Sec. 4: a contrastive term plus a squared
    calibration of each log-ratio to r / beta for the rewards r = +1/2 (chosen), -1/2 (rejected),
    so the chosen log-ratio is pulled UP even once the margin is won:
        L = -log sigma(h) + (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2.
    beta is NOT inside the sigmoid, unlike DPO: so in both of the authors' code releases
    (github.com/Cal-DPO/Cal-DPO, Pythia-2.8b-exp/trainers.py, shift=0.5, calibration weight 1 as
    here; github.com/tengxiao1/Cal-DPO, scripts/dpo_trainer.py, weight 0.5). Doubt: we read the
    paper's equation only through those releases. With aggregation="mean" the targets apply to
    per-token log-ratios, not the paper's sequence sums: scale beta accordingly."""
    target = 1 / (2 * beta)
    return -F.logsigmoid(s.margin) + (s.chosen_logratios - target) ** 2 + (s.rejected_logratios + target) ** 2


@register_loss("unlikelihood", reference_free=True)
def unlikelihood(s: SpanLogps, *, ul_weight: float = 1.0) -> Tensor:
    """SFT on the corrected span plus token-level unlikelihood on the rejected span's first token,
    Welleck et al. 2020 ("Neural Text Generation with Unlikelihood Training", arXiv:1908.04319)
    eq. 4 with the negative candidate set {y_l,1}, the token the model wrote where the person
    corrected it (later rejected tokens were conditioned on it and are not candidates here):
        L = -pi_w + alpha * (-log(1 - p(y_l,1 | .))),   alpha = ``ul_weight``.
    A pair with no rejected token (an insertion) adds only the NLL."""
    first = s.rejected_mask & (s.rejected_mask.cumsum(-1) == 1)  # (b, t) the first rejected token
    logps = s.policy_rejected_logps.to(torch.promote_types(s.policy_rejected_logps.dtype, torch.float32))
    logp = torch.where(first, logps, -torch.inf).amax(-1)  # (b,) its log-prob; -inf if there is none
    return -s.chosen + ul_weight * -_log1mexp(logp)


@register_loss("orpo", reference_free=True)
def orpo(s: SpanLogps, *, beta: float) -> Tensor:
    """ORPO, Hong et al. 2024 ("Monolithic Preference Optimization without Reference Model",
    arXiv:2403.07691) eq. 6-7 on the spans, reference-free, with lambda = ``beta`` (TRL's name):
        odds(y) = P(y) / (1 - P(y)),  P(y) = exp(pi_y)  (the paper's pi is length-normalized:
        aggregation="mean", as conf/loss/orpo.yaml sets)
        L = -pi_w - lambda log sigma(log odds(y_w) - log odds(y_l))."""
    log_odds = (s.chosen - _log1mexp(s.chosen)) - (s.rejected - _log1mexp(s.rejected))  # (b,)
    return -s.chosen - beta * F.logsigmoid(log_odds)


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for log-probs x, stable at both ends (Maechler 2012): log(-expm1(x)) near 0,
    log1p(-exp(x)) below -log 2; x = -inf gives 0. x is clamped to <= -1e-6 (P <= 1 - 1e-6, as
    Welleck et al.'s code clamps 1 - p >= 1e-5), so a token the model is sure of gives a finite
    value (about -13.8) and gradient instead of -inf and NaN."""
    x = x.clamp_max(-1e-6)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# ------------------------------------------------------------------------------------------------
# Aggregate the spans, check, dispatch
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceOutput:
    """What ``preference_loss`` returns. Shapes: ``b`` pairs."""

    losses: Tensor  # (b,) per-pair loss, differentiable
    chosen_rewards: Tensor  # (b,) beta * chosen log-ratio (reference-free: beta * policy span logps), detached
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


def preference_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    chosen_mask: Tensor,
    rejected_mask: Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    aggregation: Aggregation = "sum",
    sft_weight: float = 0.0,
    policy_chosen_nll_mask: Tensor | None = None,
    **params: float,
) -> PreferenceOutput:
    """Per-pair preference loss ``LOSSES[loss_type]`` over the masked tokens of a chosen and a
    rejected sequence.

    Args:
        policy_chosen_logps, policy_rejected_logps: (b, t) per-token log-probs of the policy.
        ref_chosen_logps, ref_rejected_logps: (b, t) the same under the frozen reference, or None
            for a reference-free loss (``simpo``, ``orpo``, ``unlikelihood``; which requires None).
        chosen_mask, rejected_mask: (b, t) bool; the divergence span (localized loss) or the
            whole completion (sequence-level DPO). The two sides may have different ``t``.
        beta: inverse temperature of the implicit reward (for the losses that take it).
        loss_type: a name in ``LOSSES``.
        aggregation: "sum" (default, the papers' sequence log-probs) or "mean" (per pair, the
            average over its span tokens: length normalization).
        sft_weight: weight alpha of an SFT anchor added to each pair's loss (RPO, Pang et al.
            2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733):
            L += alpha * (-log pi(y_w | x) / |y_w|), the per-pair length-normalized NLL of the
            anchor tokens.
        policy_chosen_nll_mask: (b, t) bool tokens of the anchor; None means ``chosen_mask`` (then an
            empty one raises). A given mask may be empty for a pair, which then adds no anchor (the
            accepted text before a correction at the very start of an answer).
        **params: the loss's own parameters (``loss_params(loss_type)``; e.g. ``dpop_lambda``).

    Returns:
        PreferenceOutput; ``.sum / global_count`` is the batch loss.
    """
    spec = _check_call(loss_type, aggregation, params, ref_chosen_logps, ref_rejected_logps)
    _check("chosen", policy_chosen_logps, chosen_mask)
    _check("rejected", policy_rejected_logps, rejected_mask)
    _check("ref chosen", ref_chosen_logps, chosen_mask)
    _check("ref rejected", ref_rejected_logps, rejected_mask)
    if chosen_mask.shape[0] != rejected_mask.shape[0]:
        raise ValueError(f"{chosen_mask.shape[0]} chosen vs {rejected_mask.shape[0]} rejected rows")
    chosen_tokens, rejected_tokens = chosen_mask.sum(-1), rejected_mask.sum(-1)  # (b,) each
    _check_spans(chosen_tokens, rejected_tokens, aggregation)

    def agg(logps: Tensor | None, mask: Tensor, tokens: Tensor) -> Tensor | None:
        return None if logps is None else _aggregate(logps, mask, tokens, aggregation)

    s = SpanLogps(agg(policy_chosen_logps, chosen_mask, chosen_tokens),
                  agg(policy_rejected_logps, rejected_mask, rejected_tokens),
                  agg(ref_chosen_logps, chosen_mask, chosen_tokens),
                  agg(ref_rejected_logps, rejected_mask, rejected_tokens), policy_rejected_logps, rejected_mask)
    losses = spec.fn(s, **({"beta": beta} if spec.uses_beta else {}), **params)  # (b,)
    if sft_weight:
        nll_mask = chosen_mask if policy_chosen_nll_mask is None else policy_chosen_nll_mask
        _check("policy_chosen_nll", policy_chosen_logps, nll_mask)
        nll_tokens = nll_mask.sum(-1)  # (b,)
        if policy_chosen_nll_mask is None and bool((nll_tokens == 0).any()):
            raise ValueError("sft_weight > 0 but some pair's SFT-anchor mask (its chosen span) is empty")
        # a given anchor may be empty for a pair (nothing accepted before a correction at the start): 0
        losses = losses + sft_weight * (-_masked_sum(policy_chosen_logps, nll_mask) / nll_tokens.clamp_min(1))

    chosen_reward = s.chosen if spec.reference_free else s.chosen_logratios
    rejected_reward = s.rejected if spec.reference_free else s.rejected_logratios
    return PreferenceOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_reward).detach(),
        rejected_rewards=(beta * rejected_reward).detach(),
        sum=losses.sum(),
        count=int(losses.shape[0]),
        chosen_tokens=chosen_tokens,
        rejected_tokens=rejected_tokens,
        policy_chosen_seq_logps=_masked_sum(policy_chosen_logps, chosen_mask).detach(),
        policy_rejected_seq_logps=_masked_sum(policy_rejected_logps, rejected_mask).detach(),
    )


def _check_call(loss_type: str, aggregation: str, params: dict, ref_chosen, ref_rejected) -> LossSpec:
    """The loss's spec, after checking its name, parameters, aggregation and references."""
    allowed = loss_params(loss_type)  # ValueError for an unknown loss_type
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"loss_type={loss_type!r} takes no parameter {', '.join(unknown)} "
                         f"(its parameters: {', '.join(allowed) or 'none'})")
    if aggregation not in ("sum", "mean"):
        raise ValueError(f"aggregation must be 'sum' or 'mean', got {aggregation!r}")
    spec = LOSSES[loss_type]
    refs_given = (ref_chosen is not None, ref_rejected is not None)
    if spec.reference_free and any(refs_given):
        raise ValueError(f"loss_type={loss_type!r} is reference-free: pass ref_*_logps=None")
    if not spec.reference_free and not all(refs_given):
        raise ValueError(f"loss_type={loss_type!r} needs ref_chosen_logps and ref_rejected_logps")
    return spec


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


LOSS_TYPES: tuple[str, ...] = tuple(LOSSES)  # the registered names, in order of definition
REFERENCE_FREE: frozenset[str] = frozenset(k for k, v in LOSSES.items() if v.reference_free)
