"""localpref.losses: hand derivations, full-span = sequence-level DPO, peers (Liger, TRL),
gradients, micro-batch and padding invariance, numerics, empty spans."""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from localpref.logprobs import token_logps, token_logps_from_hidden
from localpref.losses import LOSS_TYPES, REFERENCE_FREE, loss_params, preference_loss, preference_metrics, sft_loss


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def refs_for(loss_type, ref_c, ref_r):
    return (None, None) if loss_type in REFERENCE_FREE else (ref_c, ref_r)


# ---------------------------------------------------------------------------------------------
# Hand derivations
# ---------------------------------------------------------------------------------------------

# One pair. Chosen span = first two tokens (the third is outside the mask and must not matter):
#   policy log-probs -1, -2   reference -1.5, -2.5   -> log-ratio_w = -3 - (-4) = +1
# Rejected span = both tokens:
#   policy log-probs -3, -1   reference -2, -1       -> log-ratio_l = -4 - (-3) = -1
# so h = log-ratio_w - log-ratio_l = 2. Per-token means: r_w = 0.5, r_l = -0.5, h_mean = 1.
PC = torch.tensor([[-1.0, -2.0, -50.0]])
RC = torch.tensor([[-1.5, -2.5, -0.1]])
MC = torch.tensor([[True, True, False]])
PR = torch.tensor([[-3.0, -1.0]])
RR = torch.tensor([[-2.0, -1.0]])
MR = torch.tensor([[True, True]])

HAND = [
    # (loss_type, kwargs, expected per-pair loss, derivation)
    ("sigmoid", dict(beta=0.5), -math.log(sig(1.0))),  # -log sigma(0.5 * 2)
    ("sigmoid", dict(beta=0.5, label_smoothing=0.1),  # cDPO: 0.9 (-log s(1)) + 0.1 (-log s(-1))
     -0.9 * math.log(sig(1.0)) - 0.1 * math.log(sig(-1.0))),
    ("sigmoid", dict(beta=0.5, aggregation="mean"), -math.log(sig(0.5))),  # 0.5 * h_mean
    ("ipo", dict(beta=0.5), (2.0 - 1 / (2 * 0.5)) ** 2),  # (h - 1/(2 tau))^2 = 1
    ("ipo", dict(beta=0.5, ipo_tau=0.25), (2.0 - 2.0) ** 2),  # tau given explicitly: 0
    ("ipo", dict(beta=1.0, aggregation="mean"), (1.0 - 0.5) ** 2),
    ("hinge", dict(beta=0.25), 1 - 0.25 * 2),  # max(0, 1 - beta h)
    ("hinge", dict(beta=1.0), 0.0),  # margin met: relu clips 1 - 2
    ("robust", dict(beta=0.5, label_smoothing=0.1),  # [(1-e)(-log s(1)) - e(-log s(-1))]/(1-2e)
     (-0.9 * math.log(sig(1.0)) + 0.1 * math.log(sig(-1.0))) / 0.8),
    ("apo_zero", dict(beta=0.5), (1 - sig(0.5 * 1)) + sig(0.5 * -1)),
    # SimPO, mean aggregation: pi_w = -3/2, pi_l = -4/2, beta (pi_w - pi_l) - gamma = 2*0.5 - 0.5
    ("simpo", dict(beta=2.0, simpo_gamma=0.5, aggregation="mean"), -math.log(sig(0.5))),
    ("simpo", dict(beta=0.5, simpo_gamma=0.0), -math.log(sig(0.5 * 1.0))),  # sums: -3 - (-4)
    # DPOP: r_w = +1 >= 0, so no penalty: DPO's -log sigma(0.5 * 2) whatever lambda.
    ("dpop", dict(beta=0.5, dpop_lambda=50.0), -math.log(sig(1.0))),
    # Cal-DPO: -log sigma(h) + (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2, no beta in the sigmoid.
    ("cal_dpo", dict(beta=0.5), -math.log(sig(2.0)) + (1 - 1) ** 2 + (-1 + 1) ** 2),  # targets met
    ("cal_dpo", dict(beta=0.25), -math.log(sig(2.0)) + (1 - 2) ** 2 + (-1 + 2) ** 2),
    ("cal_dpo", dict(beta=1.0, aggregation="mean"), -math.log(sig(1.0)) + 0.0 + 0.0),  # +-0.5 met
]


@pytest.mark.parametrize("loss_type,kwargs,expected", HAND)
def test_loss_values_against_hand_derivation(loss_type, kwargs, expected):
    out = preference_loss(PC, PR, *refs_for(loss_type, RC, RR), MC, MR, loss_type=loss_type,
                          **kwargs)
    assert out.losses.shape == (1,) and out.count == 1
    # fp32 on exactly representable inputs: a few roundings of values <= 1.3 (ulp <= 1.2e-7).
    assert out.losses.item() == pytest.approx(expected, abs=1e-6)
    assert out.sum.item() == pytest.approx(expected, abs=1e-6)
    beta = kwargs["beta"]
    mean = kwargs.get("aggregation") == "mean"
    if loss_type == "simpo":  # reward = beta * policy span log-prob (no reference)
        assert out.chosen_rewards.item() == pytest.approx(beta * (-1.5 if mean else -3.0))
    else:  # reward = beta * log-ratio
        assert out.chosen_rewards.item() == pytest.approx(beta * (0.5 if mean else 1.0))
        assert out.rejected_rewards.item() == pytest.approx(beta * (-0.5 if mean else -1.0))
    assert out.chosen_tokens.tolist() == [2] and out.rejected_tokens.tolist() == [2]
    assert out.policy_chosen_seq_logps.tolist() == [-3.0]  # always the sum over the mask
    assert out.policy_rejected_seq_logps.tolist() == [-4.0]


def test_sft_anchor_and_sft_loss_by_hand():
    # RPO anchor: + alpha * (-(-1 - 2) / 2) = alpha * 1.5 per pair.
    plain = preference_loss(PC, PR, RC, RR, MC, MR, beta=0.5)
    anchored = preference_loss(PC, PR, RC, RR, MC, MR, beta=0.5, sft_weight=2.0)
    assert (anchored.losses - plain.losses).item() == pytest.approx(2.0 * 1.5)
    # Anchor on the whole chosen sequence instead: -(-1 - 2 - 50) / 3.
    whole = preference_loss(PC, PR, RC, RR, MC, MR, beta=0.5, sft_weight=1.0,
                            policy_chosen_nll_mask=torch.ones_like(MC))
    assert (whole.losses - plain.losses).item() == pytest.approx(53 / 3, rel=1e-6)

    out = sft_loss(PC, MC)
    assert out.sum.item() == pytest.approx(3.0) and out.count.item() == 2


def test_metrics_names_and_values():
    pc = torch.cat([PC, PC]); pr = torch.cat([PR, PR + 5])  # pair 2: rejected far more likely
    out = preference_loss(pc, pr, torch.cat([RC, RC]), torch.cat([RR, RR]),
                          torch.cat([MC, MC]), torch.cat([MR, MR]), beta=0.5)
    m = preference_metrics(out)
    assert set(m) == {"rewards/chosen", "rewards/rejected", "rewards/margins",
                      "rewards/accuracies", "logps/chosen", "logps/rejected",
                      "span/chosen_tokens", "span/rejected_tokens"}
    # pair 1: rewards 0.5 / -0.5; pair 2: rejected log-ratio -1 + 10 = 9 -> reward 4.5
    assert m["rewards/chosen"].item() == pytest.approx(0.5)
    assert m["rewards/rejected"].item() == pytest.approx((-0.5 + 4.5) / 2)
    assert m["rewards/margins"].item() == pytest.approx((1.0 + -4.0) / 2)
    assert m["rewards/accuracies"].item() == pytest.approx(0.5)
    assert m["logps/rejected"].item() == pytest.approx((-4.0 + 6.0) / 2)
    assert m["span/chosen_tokens"].item() == 2.0
    assert all(not v.requires_grad for v in m.values())


# ---------------------------------------------------------------------------------------------
# Full span = sequence-level DPO; peers
# ---------------------------------------------------------------------------------------------


def random_pairs(b=4, t=9, v=37, seed=0, span=True):
    """Logits/labels for chosen and rejected, with completion masks and (sub-)span masks."""
    g = torch.Generator().manual_seed(seed)
    logits = {k: torch.randn(b, t, v, generator=g, dtype=torch.float64) for k in
              ("pc", "pr", "rc", "rr")}
    labels_c, labels_r = (torch.randint(0, v, (b, t), generator=g) for _ in range(2))
    prompt = torch.randint(1, 4, (b,), generator=g)  # completion starts here
    pos = torch.arange(t)[None]
    completion = pos >= prompt[:, None]  # (b, t)
    start = prompt + torch.randint(0, 3, (b,), generator=g)
    end = start + 1 + torch.randint(0, 3, (b,), generator=g)
    spans = (pos >= start[:, None]) & (pos < end[:, None]) if span else completion
    return logits, labels_c, labels_r, completion, spans


def sequence_dpo(logits, labels_c, labels_r, mask, beta):
    """Sequence-level DPO as in eric-mitchell/direct-preference-optimization: labels -100
    outside the completion, summed log-probs, -log sigma(beta * h). Written independently."""
    def seq_logps(x, y):
        y = y.masked_fill(~mask, -100)
        lp = torch.log_softmax(x, -1).gather(-1, y.clamp_min(0)[..., None]).squeeze(-1)
        return (lp * (y != -100)).sum(-1)
    pi = seq_logps(logits["pc"], labels_c) - seq_logps(logits["pr"], labels_r)
    ref = seq_logps(logits["rc"], labels_c) - seq_logps(logits["rr"], labels_r)
    return -F.logsigmoid(beta * (pi - ref))


def test_full_span_equals_sequence_level_dpo():
    logits, yc, yr, completion, _ = random_pairs()
    tl = {k: token_logps(x, yc if k[1] == "c" else yr, completion) for k, x in logits.items()}
    out = preference_loss(tl["pc"], tl["pr"], tl["rc"], tl["rr"], completion, completion,
                          beta=0.3)
    # float64 on both sides, the same terms summed in another order: ~1e-16 relative of losses ~1.
    torch.testing.assert_close(out.losses, sequence_dpo(logits, yc, yr, completion, 0.3),
                               atol=1e-12, rtol=0)


# Liger computes log-softmax in fp32 whatever the input dtype, so the comparison runs in fp32;
# the two differ only in summation order: a few fp32 ulps on values of size ~10.
FP32 = dict(atol=1e-5, rtol=1e-5)

LIGER_CASES = [("sigmoid", {}), ("hinge", {}), ("robust", dict(label_smoothing=0.2)),
               ("apo_zero", {})]


@pytest.mark.parametrize("span", [True, False], ids=["span", "completion"])
@pytest.mark.parametrize("loss_type,kw", LIGER_CASES)
def test_matches_liger_fused_linear_dpo(loss_type, kw, span):
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

    b, t, d, v = 3, 8, 6, 41
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2 * b, t, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    ref_hidden = torch.randn(2 * b, t, d, generator=g)
    ref_weight = torch.randn(v, d, generator=g)
    targets = torch.randint(0, v, (2 * b, t), generator=g)
    _, _, _, completion, spans = random_pairs(b, t, seed=8, span=span)
    mask = torch.cat([spans, spans.roll(1, 0)])  # chosen spans, then different rejected spans

    liger = LigerFusedLinearDPOLoss(beta=0.3, loss_type=loss_type, compiled=False, **kw)
    l_loss, aux = liger(weight, hidden, targets.masked_fill(~mask, -100),
                        ref_input=ref_hidden, ref_weight=ref_weight)
    l_grads = torch.autograd.grad(l_loss, (hidden, weight))

    def per_token(h, w):
        rows = token_logps_from_hidden(h[mask], w, targets[mask], backend="torch")
        return torch.zeros(2 * b, t, dtype=rows.dtype).masked_scatter(mask, rows)

    pol, ref = per_token(hidden, weight), per_token(ref_hidden, ref_weight)
    out = preference_loss(pol[:b], pol[b:], ref[:b], ref[b:], mask[:b], mask[b:], beta=0.3,
                          loss_type=loss_type, **kw)
    loss = out.sum / out.count
    grads = torch.autograd.grad(loss, (hidden, weight))
    torch.testing.assert_close(loss, l_loss, **FP32)
    torch.testing.assert_close(out.chosen_rewards, aux[5], **FP32)
    torch.testing.assert_close(out.rejected_rewards, aux[6], **FP32)
    for ours, theirs in zip(grads, l_grads):
        torch.testing.assert_close(ours, theirs, **FP32)


def test_matches_liger_simpo_and_nll_anchor():
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss, LigerFusedLinearSimPOLoss

    b, t, d, v = 3, 8, 6, 41
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(2 * b, t, d, generator=g)
    weight = torch.randn(v, d, generator=g)
    targets = torch.randint(0, v, (2 * b, t), generator=g)
    mask = torch.zeros(2 * b, t, dtype=torch.bool)
    mask[:b, 2:5] = True  # chosen spans of equal length 3 (Liger's NLL is a token mean over
    mask[b:, 4:] = True   # the whole batch; RPO's is per pair: equal only for equal lengths)
    rows = token_logps_from_hidden(hidden[mask], weight, targets[mask], backend="torch")
    lp = torch.zeros(2 * b, t, dtype=rows.dtype).masked_scatter(mask, rows)
    y = targets.masked_fill(~mask, -100)

    simpo = LigerFusedLinearSimPOLoss(beta=2.0, gamma=0.7, compute_nll_loss=False, compiled=False)
    out = preference_loss(lp[:b], lp[b:], None, None, mask[:b], mask[b:], beta=2.0,
                          simpo_gamma=0.7, loss_type="simpo", aggregation="mean")
    torch.testing.assert_close(out.sum / out.count, simpo(weight, hidden, y)[0], **FP32)

    ref = torch.zeros_like(lp)  # a reference that assigns log-prob 0: log-ratios = policy
    rpo = LigerFusedLinearDPOLoss(beta=0.3, alpha=0.5, compute_nll_loss=True, compiled=False,
                                  use_ref_model=False)
    out = preference_loss(lp[:b], lp[b:], ref[:b], ref[b:], mask[:b], mask[b:], beta=0.3,
                          sft_weight=0.5)
    torch.testing.assert_close(out.sum / out.count, rpo(weight, hidden, y)[0], **FP32)


def trl_dpo_loss(loss_type, beta, pol, ref, mask, label_smoothing=0.0):
    """TRL 1.16's DPOTrainer._compute_loss on given per-token log-probs.

    The trainer needs a model and an accelerator only to produce per-token log-probs and to
    gather metrics; we bypass __init__ and hand it a model whose forward returns our log-probs
    (zero outside the completion, as its fused LM head gives for label -100), precomputed
    reference sums, and an identity accelerator. The loss branches themselves are TRL's.
    """
    from trl import DPOTrainer

    n, t = pol.shape

    class Model(torch.nn.Module):
        def forward(self, input_ids, **_):
            z = torch.zeros(n, t, dtype=pol.dtype)
            # The fused LM head returns log-prob 0, with no gradient, at label -100.
            log_probs = torch.where(mask, pol, 0.0)
            return types.SimpleNamespace(log_probs=log_probs, entropy=z, mean_logits=z,
                                         is_top1=torch.zeros(n, t, dtype=torch.bool))

    acc = types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                gather_for_metrics=lambda x: x)
    trainer = object.__new__(DPOTrainer)
    model = Model()
    trainer.__dict__.update(
        model=model, accelerator=acc, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing, use_weighting=False,
        _metrics={"train": defaultdict(list)}, _total_train_tokens=0, _tp_size=1)
    # completion_mask has one more column: TRL drops its first one (the shift).
    completion = torch.cat([torch.zeros(n, 1, dtype=torch.long), mask.long()], 1)
    ref_seq = (ref * mask).sum(-1)
    inputs = dict(input_ids=torch.zeros(n, t + 1, dtype=torch.long),
                  attention_mask=torch.ones(n, t + 1, dtype=torch.long),
                  completion_mask=completion, ref_chosen_logps=ref_seq[: n // 2],
                  ref_rejected_logps=ref_seq[n // 2:])
    loss = trainer._compute_loss(model, inputs, False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


TRL_CASES = [("sigmoid", {}, "sum"), ("hinge", {}, "sum"), ("ipo", {}, "mean"),
             ("robust", dict(label_smoothing=0.1), "sum"), ("apo_zero", {}, "sum")]


@pytest.mark.parametrize("loss_type,kw,aggregation", TRL_CASES)
def test_matches_trl_dpo_trainer_loss(loss_type, kw, aggregation):
    logits, yc, yr, completion, spans = random_pairs(seed=11)
    mask = torch.cat([spans, completion])  # chosen: spans; rejected: whole completions
    labels = torch.cat([yc, yr])
    pol = token_logps(torch.cat([logits["pc"], logits["pr"]]), labels, mask).requires_grad_()
    ref = token_logps(torch.cat([logits["rc"], logits["rr"]]), labels, mask)
    b = yc.shape[0]
    trl_loss, trl_metrics = trl_dpo_loss(loss_type, 0.2, pol, ref, mask, **kw)
    out = preference_loss(pol[:b], pol[b:], ref[:b], ref[b:], mask[:b], mask[b:], beta=0.2,
                          loss_type=loss_type, aggregation=aggregation, **kw)
    ours = out.sum / out.count
    # float64 log-probs (random_pairs), TRL's formulas and ours: the same sums in another order,
    # ~1e-16 relative of losses and gradients up to ~1e2 (IPO): atol 1e-10.
    torch.testing.assert_close(ours, trl_loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(torch.autograd.grad(ours, pol)[0],
                               torch.autograd.grad(trl_loss, pol)[0], atol=1e-10, rtol=0)
    if aggregation == "sum":  # TRL's reward metrics use summed log-ratios
        ours_m = preference_metrics(out)
        for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                  "logps/chosen", "logps/rejected"):
            assert ours_m[k].item() == pytest.approx(trl_metrics[k], abs=1e-9), k


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_gradcheck_and_zero_gradient_outside_masks(loss_type, aggregation):
    g = torch.Generator().manual_seed(12)
    b, t = 3, 6
    mc = torch.rand(b, t, generator=g) < 0.5
    mr = torch.rand(b, t, generator=g) < 0.5
    mc[:, 0] = mr[:, 1] = True  # no empty span
    pc, pr = (-torch.rand(b, t, generator=g, dtype=torch.float64).requires_grad_()
              for _ in range(2))
    rc, rr = (-torch.rand(b, t, generator=g, dtype=torch.float64) for _ in range(2))
    kw = dict(loss_type=loss_type, aggregation=aggregation, beta=0.7, sft_weight=0.3,
              **({"label_smoothing": 0.1} if "label_smoothing" in loss_params(loss_type) else {}))
    refs = refs_for(loss_type, rc, rr)

    def f(pc, pr):
        return preference_loss(pc, pr, *refs, mc, mr, **kw).losses

    assert torch.autograd.gradcheck(f, (pc, pr))
    gc, gr = torch.autograd.grad(f(pc, pr).sum(), (pc, pr))
    assert (gc[~mc] == 0).all() and (gr[~mr] == 0).all()
    # -inf outside a mask (e.g. an impossible padding token) must not poison anything.
    pc_inf = pc.detach().masked_fill(~mc, -math.inf).requires_grad_()
    out = preference_loss(pc_inf, pr, *refs, mc, mr, **kw)
    (gc_inf,) = torch.autograd.grad(out.sum, pc_inf)
    assert torch.isfinite(out.losses).all() and (gc_inf[~mc] == 0).all()


def test_sft_loss_gradcheck_and_mask():
    g = torch.Generator().manual_seed(13)
    lp = -torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    mask = torch.rand(3, 5, generator=g) < 0.5
    assert torch.autograd.gradcheck(lambda x: sft_loss(x, mask).sum, (lp,))
    (grad,) = torch.autograd.grad(sft_loss(lp, mask).sum, lp)
    assert (grad[~mask] == 0).all() and (grad[mask] == -1).all()


# ---------------------------------------------------------------------------------------------
# Invariance: micro-batches and padding side
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_micro_batch_accumulation_equals_one_big_batch(loss_type):
    logits, yc, yr, completion, spans = random_pairs(b=6, seed=14)
    leaves = {k: x.float().requires_grad_() for k, x in logits.items()}
    kw = dict(loss_type=loss_type, beta=0.4, sft_weight=0.2,
              aggregation="mean" if loss_type == "simpo" else "sum")

    def loss_terms(rows):
        tl = {k: token_logps(x[rows], (yc if k[1] == "c" else yr)[rows], spans[rows])
              for k, x in leaves.items()}
        refs = refs_for(loss_type, tl["rc"], tl["rr"])
        pref = preference_loss(tl["pc"], tl["pr"], *refs, spans[rows], spans[rows], **kw)
        return pref, sft_loss(tl["pc"], spans[rows])

    big, big_sft = loss_terms(slice(0, 6))
    total = big.sum / big.count + big_sft.sum / big_sft.count
    g_big = torch.autograd.grad(total, [leaves["pc"], leaves["pr"]])

    parts = [loss_terms(r) for r in (slice(0, 1), slice(1, 4), slice(4, 6))]  # uneven
    n_pairs = sum(p.count for p, _ in parts)
    n_tokens = sum(s.count for _, s in parts)  # the GLOBAL counts, as the loop all-reduces them
    acc = [torch.zeros_like(leaves["pc"]), torch.zeros_like(leaves["pr"])]
    loss_acc = 0.0
    for pref, sft in parts:
        part = pref.sum / n_pairs + sft.sum / n_tokens
        loss_acc += part.detach()
        for a, gpart in zip(acc, torch.autograd.grad(part, [leaves["pc"], leaves["pr"]])):
            a += gpart
    # fp32: the same 6 pair losses and 11 token log-probs summed in 3 groups instead of one, a few
    # ulps of a total of 6 to 27 (ulp 4.8e-7 to 1.9e-6): rtol 1e-6 (8 ulps) plus atol 1e-6.
    torch.testing.assert_close(loss_acc, total.detach(), atol=1e-6, rtol=1e-6)
    # A gradient entry is its own pair's coefficient (the same 1 / global count) times its own row's
    # softmax: the same fp32 operations in both (each row is in one micro-batch), so equal unless a
    # kernel takes another vector path for the sliced rows: rtol 1e-5 (~80 ulps), atol 1e-7 near 0.
    for a, gb in zip(acc, g_big):
        torch.testing.assert_close(a, gb, atol=1e-7, rtol=1e-5)


def test_left_and_right_padding_give_identical_results():
    g = torch.Generator().manual_seed(15)
    v, lengths = 23, [5, 8, 3]
    # Per-pair unpadded sequences: logits leaves, labels and span masks (per side).
    seqs = []
    for n in lengths:
        side = {}
        for k in ("c", "r"):
            m = torch.zeros(n, dtype=torch.bool)
            m[n // 2:] = True
            side[k] = (torch.randn(n, v, generator=g, dtype=torch.float64, requires_grad=True),
                       torch.randn(n, v, generator=g, dtype=torch.float64),  # reference logits
                       torch.randint(0, v, (n,), generator=g), m)
        seqs.append(side)
    t = max(lengths)

    def padded(left: bool):
        out = {}
        for k in ("c", "r"):
            cols = {"pol": [], "ref": [], "lab": [], "mask": []}
            for side in seqs:
                pol, ref, lab, m = side[k]
                pad = t - m.shape[0]
                junk = torch.full((pad, v), 7.0, dtype=torch.float64)  # padding logits: never read
                cat = (lambda p, x: torch.cat([p, x] if left else [x, p]))
                cols["pol"].append(cat(junk, pol)); cols["ref"].append(cat(junk, ref))
                cols["lab"].append(cat(torch.full((pad,), -100), lab))
                cols["mask"].append(cat(torch.zeros(pad, dtype=torch.bool), m))
            out[k] = {c: torch.stack(xs) for c, xs in cols.items()}
        tl = {(k, w): token_logps(out[k][w], out[k]["lab"], out[k]["mask"])
              for k in ("c", "r") for w in ("pol", "ref")}
        res = preference_loss(tl["c", "pol"], tl["r", "pol"], tl["c", "ref"], tl["r", "ref"],
                              out["c"]["mask"], out["r"]["mask"], beta=0.5)
        grads = torch.autograd.grad(res.sum, [s[k][0] for s in seqs for k in ("c", "r")])
        return res.losses.detach(), grads

    loss_l, grads_l = padded(True)
    loss_r, grads_r = padded(False)
    # Not bit for bit: the padding moves a sequence's tokens to other columns of its (b, t) row,
    # and the vectorized sum over t may then add the same terms in another order (for 3 terms at
    # different offsets of a row of 8 to 37, in ~6% of rows in fp32). Hence float64 (leaves
    # above), where that is ~1e-16 relative of log-prob sums ~10 and losses ~1: atol 1e-12. Padding
    # that leaked into the result would move it by O(1).
    torch.testing.assert_close(loss_l, loss_r, atol=1e-12, rtol=0)
    for a, b in zip(grads_l, grads_r):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# Numerics, empty spans and bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e4])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_bf16_huge_logits_odd_vocab_one_token_span(loss_type, scale):
    g = torch.Generator().manual_seed(16)
    b, t, v = 3, 7, 1023  # vocab not a power of two
    logits = {k: (scale * torch.randn(b, t, v, generator=g)).bfloat16() for k in
              ("pc", "pr", "rc", "rr")}
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.zeros(b, t, dtype=torch.bool)
    mask[0, 3] = True  # pair 0: a one-token span
    mask[1:, 2:] = True
    logits["pc"].requires_grad_()
    tl = {k: token_logps(x, labels, mask) for k, x in logits.items()}
    assert all((x <= 0).all() and torch.isfinite(x).all() for x in tl.values())
    out = preference_loss(tl["pc"], tl["pr"], *refs_for(loss_type, tl["rc"], tl["rr"]),
                          mask, mask, loss_type=loss_type, beta=0.1,
                          aggregation="mean" if loss_type in ("simpo", "orpo") else "sum")
    assert torch.isfinite(out.losses).all() and (out.losses >= 0).all()
    out.sum.backward()
    assert torch.isfinite(logits["pc"].grad.float()).all()


def test_empty_span_behaviour():
    m_empty = torch.tensor([[False, False]])
    # Both sides empty: nothing to compare -> ValueError naming the pair.
    with pytest.raises(ValueError, match=r"pairs \[0\] have empty chosen AND rejected"):
        preference_loss(PR, PR, RR, RR, m_empty, m_empty)
    # Sum aggregation, one side empty: that side's log-ratio is the empty sum 0.
    out = preference_loss(PC, PR, RC, RR, MC, m_empty, beta=0.5)  # h = 1 - 0
    assert out.losses.item() == pytest.approx(-math.log(sig(0.5)))
    assert out.rejected_rewards.item() == 0.0 and out.rejected_tokens.item() == 0
    # Mean aggregation: a mean over zero tokens is undefined -> ValueError.
    with pytest.raises(ValueError, match="aggregation='mean'"):
        preference_loss(PC, PR, RC, RR, MC, m_empty, aggregation="mean")
    with pytest.raises(ValueError, match=r"SFT-anchor mask \(its chosen span\) is empty"):
        preference_loss(PR, PC, RR, RC, m_empty, MC, sft_weight=1.0)  # the span anchored, and empty
    # an anchor on other tokens (the accepted text) may be empty for a pair: it adds nothing
    plain = preference_loss(PC, PR, RC, RR, MC, MR, beta=0.5)
    empty_anchor = preference_loss(PC, PR, RC, RR, MC, MR, beta=0.5, sft_weight=1.0,
                                   policy_chosen_nll_mask=torch.zeros_like(MC))
    assert empty_anchor.losses.item() == plain.losses.item()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="needs ref_chosen_logps"):
        preference_loss(PC, PR, None, None, MC, MR)
    with pytest.raises(ValueError, match="reference-free"):
        preference_loss(PC, PR, RC, RR, MC, MR, loss_type="simpo")
    with pytest.raises(ValueError, match="loss_type must be one of"):
        preference_loss(PC, PR, RC, RR, MC, MR, loss_type="dpo")
    with pytest.raises(ValueError, match="aggregation"):
        preference_loss(PC, PR, RC, RR, MC, MR, aggregation="avg")
    with pytest.raises(ValueError, match=r"label_smoothing in \[0, 0.5\)"):
        preference_loss(PC, PR, RC, RR, MC, MR, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="bool"):
        preference_loss(PC, PR, RC, RR, MC.float(), MR)
    with pytest.raises(ValueError, match="same"):
        preference_loss(PC, PR, RC, RR, MR, MR)
