"""DPOP and Cal-DPO in localpref.losses: hand derivations, gradient directions, DPOP with lambda 0
is DPO, every mask x aggregation x anchor, empty spans, config composition, a tiny training run.

(The LOSS_TYPES-wide tests in test_losses.py, such as gradcheck, zero gradient outside the masks
and bf16 numerics, cover both losses too.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import localpref.train
from localpref.config import validate
from localpref.losses import LOSS_TYPES, preference_loss
from localpref.train import CONF_DIR, train


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# One pair, float64 so the hand values hold to ~1e-15. Chosen span = the first two tokens (the
# third lies outside the mask and must not matter):
#   policy -1, -2       reference -0.75, -1.75   -> r_w = -3 - (-2.5) = -0.5  (chosen got LESS likely)
# Rejected span = both tokens:
#   policy -1, -0.7     reference -1.2, -0.8     -> r_l = -1.7 - (-2.0) = +0.3
# so h = r_w - r_l = -0.8. Per-token means: r_w = -0.25, r_l = 0.15, h = -0.4.
F64 = dict(dtype=torch.float64)
PC = torch.tensor([[-1.0, -2.0, -9.0]], **F64)
RC = torch.tensor([[-0.75, -1.75, -0.1]], **F64)
MC = torch.tensor([[True, True, False]])
PR = torch.tensor([[-1.0, -0.7]], **F64)
RR = torch.tensor([[-1.2, -0.8]], **F64)
MR = torch.tensor([[True, True]])

HAND = [
    # DPOP, beta 0.1, lambda 50: beta * (h - lambda * max(0, -r_w)) = 0.1 * (-0.8 - 50 * 0.5) = -2.58
    ("dpop", dict(beta=0.1, dpop_lambda=50.0), -math.log(sig(-2.58))),
    # ... means: 0.1 * (-0.4 - 50 * 0.25) = -1.29
    ("dpop", dict(beta=0.1, dpop_lambda=50.0, aggregation="mean"), -math.log(sig(-1.29))),
    # ... lambda 0 is DPO: -log sigma(0.1 * -0.8)
    ("dpop", dict(beta=0.1, dpop_lambda=0.0), -math.log(sig(-0.08))),
    # Cal-DPO, beta 0.1 (targets +-5): -log sigma(-0.8) + (-0.5 - 5)^2 + (0.3 + 5)^2
    ("cal_dpo", dict(beta=0.1), -math.log(sig(-0.8)) + 30.25 + 28.09),
    # ... means, beta 1 (targets +-0.5): -log sigma(-0.4) + (-0.25 - 0.5)^2 + (0.15 + 0.5)^2
    ("cal_dpo", dict(beta=1.0, aggregation="mean"), -math.log(sig(-0.4)) + 0.5625 + 0.4225),
]


@pytest.mark.parametrize("loss_type,kwargs,expected", HAND)
def test_loss_values_against_hand_derivation(loss_type, kwargs, expected):
    out = preference_loss(PC, PR, RC, RR, MC, MR, loss_type=loss_type, **kwargs)
    # float64, a handful of operations on values <= 60: ~1e-14.
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    mean = kwargs.get("aggregation") == "mean"
    assert out.chosen_rewards.item() == pytest.approx(kwargs["beta"] * (-0.25 if mean else -0.5))
    assert out.rejected_rewards.item() == pytest.approx(kwargs["beta"] * (0.15 if mean else 0.3))


@pytest.mark.parametrize("loss_type", ["dpop", "cal_dpo"])
def test_sft_anchor_adds_the_chosen_span_nll(loss_type):
    # RPO anchor: + alpha * (-(-1 - 2) / 2) = alpha * 1.5, whatever the preference term.
    plain = preference_loss(PC, PR, RC, RR, MC, MR, loss_type=loss_type)
    anchored = preference_loss(PC, PR, RC, RR, MC, MR, loss_type=loss_type, sft_weight=2.0)
    assert (anchored.losses - plain.losses).item() == pytest.approx(2.0 * 1.5, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Gradient directions
# ---------------------------------------------------------------------------------------------


def chosen_grad(loss_type: str, pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor,
                rr: torch.Tensor, **kw) -> torch.Tensor:
    """d loss / d policy_chosen_logps on the chosen mask, (n_masked,)."""
    pc = pc.clone().requires_grad_()
    out = preference_loss(pc, pr, rc, rr, MC, MR, loss_type=loss_type, **kw)
    (grad,) = torch.autograd.grad(out.sum, pc)
    assert (grad[~MC] == 0).all()
    return grad[MC]


def test_dpop_pushes_a_falling_chosen_span_up_harder_than_dpo():
    # r_w = -0.5 < 0. Per chosen token, d/d pc of -log sigma(z):
    #   DPO:  z = beta h                          -> -beta * sigma(-z) = -0.1 sigma(0.08)
    #   DPOP: z = beta (h - lambda max(0, -r_w))  -> -beta (1 + lambda) sigma(-z) = -5.1 sigma(2.58)
    dpo = chosen_grad("sigmoid", PC, PR, RC, RR, beta=0.1)
    dpop = chosen_grad("dpop", PC, PR, RC, RR, beta=0.1, dpop_lambda=50.0)
    torch.testing.assert_close(dpo, torch.full((2,), -0.1 * sig(0.08), **F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(dpop, torch.full((2,), -5.1 * sig(2.58), **F64), atol=1e-12, rtol=0)
    assert (dpop < dpo).all() and (dpo < 0).all()  # descent raises the chosen log-probs, more so


def test_dpop_equals_dpo_while_the_chosen_log_ratio_is_positive():
    rc = RC - 1.0  # reference 2 nats lower over the span: r_w = +1.5 > 0, the penalty is off
    for kw in (dict(), dict(aggregation="mean")):
        dpo = preference_loss(PC, PR, rc, RR, MC, MR, beta=0.1, **kw)
        dpop = preference_loss(PC, PR, rc, RR, MC, MR, beta=0.1, loss_type="dpop", **kw)
        torch.testing.assert_close(dpop.losses, dpo.losses, atol=1e-15, rtol=0)
        torch.testing.assert_close(chosen_grad("dpop", PC, PR, rc, RR, beta=0.1, **kw),
                                   chosen_grad("sigmoid", PC, PR, rc, RR, beta=0.1, **kw),
                                   atol=1e-15, rtol=0)


def test_cal_dpo_still_pulls_the_chosen_span_up_once_the_dpo_margin_is_saturated():
    # The failure Cal-DPO targets: the chosen span fell (r_w = -8 - (-5) = -3) but the rejected
    # one fell much more (r_l = -600 - (-200) = -400), so h = 397 and DPO's sigmoid is flat.
    pc = torch.tensor([[-4.0, -4.0, -9.0]], **F64)
    rc = torch.tensor([[-2.5, -2.5, -0.1]], **F64)
    pr = torch.tensor([[-300.0, -300.0]], **F64)
    rr = torch.tensor([[-100.0, -100.0]], **F64)
    dpo = chosen_grad("sigmoid", pc, pr, rc, rr, beta=0.1)  # -0.1 sigma(-39.7) ~ -6e-19
    assert dpo.abs().max() < 1e-15
    # Cal-DPO per chosen token: -sigma(-h) + 2 (r_w - 1/(2 beta)) = -sigma(-397) + 2 (-3 - 5) = -16.
    cal = chosen_grad("cal_dpo", pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(cal, torch.full((2,), -16.0, **F64), atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------
# Every span mode: masks x aggregation x anchor, against a re-derivation; DPOP(0) = DPO
# ---------------------------------------------------------------------------------------------


def random_batch(seed: int = 21, b: int = 5, t: int = 9):
    """float64 per-token log-probs and, per side, a completion mask and a span inside it."""
    g = torch.Generator().manual_seed(seed)
    lp = {k: -3 * torch.rand(b, t, generator=g, **F64) for k in ("pc", "pr", "rc", "rr")}
    pos = torch.arange(t)[None]
    masks = {}
    for side in ("c", "r"):
        prompt = torch.randint(1, 4, (b,), generator=g)
        start = prompt + torch.randint(0, 3, (b,), generator=g)
        end = start + 1 + torch.randint(0, 3, (b,), generator=g)
        masks[side] = {"completion": pos >= prompt[:, None],
                       "span": (pos >= start[:, None]) & (pos < end[:, None])}
    return lp, masks


def reference_loss(loss_type, lp, mc, mr, beta, aggregation, dpop_lambda, sft_weight):
    """The two losses written out again from their equations, on masked sums or means."""
    def seq(x, m):
        s = (x * m).sum(-1)
        return s / m.sum(-1) if aggregation == "mean" else s
    r_w = seq(lp["pc"], mc) - seq(lp["rc"], mc)
    r_l = seq(lp["pr"], mr) - seq(lp["rr"], mr)
    if loss_type == "dpop":
        loss = -F.logsigmoid(beta * (r_w - r_l - dpop_lambda * (-r_w).clamp_min(0)))
    else:
        loss = -F.logsigmoid(r_w - r_l) + (r_w - 1 / (2 * beta)) ** 2 + (r_l + 1 / (2 * beta)) ** 2
    return loss + sft_weight * -(lp["pc"] * mc).sum(-1) / mc.sum(-1)


@pytest.mark.parametrize("sft_weight", [0.0, 0.3])
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("mask", ["span", "completion"])
@pytest.mark.parametrize("loss_type", ["dpop", "cal_dpo"])
def test_every_mask_aggregation_and_anchor(loss_type, mask, aggregation, sft_weight):
    lp, masks = random_batch()
    mc, mr = masks["c"][mask], masks["r"][mask]
    kw = dict(beta=0.3, aggregation=aggregation, sft_weight=sft_weight)
    params = dict(dpop_lambda=5.0) if loss_type == "dpop" else {}  # Cal-DPO has no parameter but beta
    out = preference_loss(lp["pc"], lp["pr"], lp["rc"], lp["rr"], mc, mr, loss_type=loss_type,
                          **params, **kw)
    expected = reference_loss(loss_type, lp, mc, mr, dpop_lambda=5.0, **kw)
    # float64, the same terms summed in another order: ~1e-15 relative of values <= ~30.
    torch.testing.assert_close(out.losses, expected, atol=1e-12, rtol=0)
    if loss_type == "dpop":  # the data must exercise the penalty, in some pairs and not in others
        r_w = out.chosen_rewards / 0.3
        assert (r_w < 0).any() and (r_w > 0).any()


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("mask", ["span", "completion"])
def test_dpop_with_lambda_zero_is_dpo(mask, aggregation):
    lp, masks = random_batch(seed=22)
    mc, mr = masks["c"][mask], masks["r"][mask]
    leaves = {k: v.clone().requires_grad_() for k, v in lp.items() if k in ("pc", "pr")}
    kw = dict(beta=0.3, aggregation=aggregation, sft_weight=0.2)
    dpo = preference_loss(leaves["pc"], leaves["pr"], lp["rc"], lp["rr"], mc, mr, **kw)
    dpop = preference_loss(leaves["pc"], leaves["pr"], lp["rc"], lp["rr"], mc, mr,
                           loss_type="dpop", dpop_lambda=0.0, **kw)
    # h - 0 * max(0, -r_w) is h exactly, so the same float64 operations follow: equal to the bit.
    torch.testing.assert_close(dpop.losses, dpo.losses, atol=0, rtol=0)
    g_dpo = torch.autograd.grad(dpo.sum, list(leaves.values()))
    g_dpop = torch.autograd.grad(dpop.sum, list(leaves.values()))
    for a, b in zip(g_dpop, g_dpo):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Empty spans and bad input: as for every other loss type
# ---------------------------------------------------------------------------------------------


def test_empty_span_behaviour():
    m_empty = torch.tensor([[False, False]])
    for loss_type in ("dpop", "cal_dpo"):
        with pytest.raises(ValueError, match=r"pairs \[0\] have empty chosen AND rejected"):
            preference_loss(PR, PR, RR, RR, m_empty, m_empty, loss_type=loss_type)
        with pytest.raises(ValueError, match="aggregation='mean'"):
            preference_loss(PC, PR, RC, RR, MC, m_empty, loss_type=loss_type, aggregation="mean")
        with pytest.raises(ValueError, match=r"SFT-anchor mask \(its chosen span\) is empty"):
            preference_loss(PR, PC, RR, RC, m_empty, MC, loss_type=loss_type, sft_weight=1.0)
    # Sum aggregation, rejected side empty: r_l is the empty sum 0.
    #   DPOP:    -log sigma(0.1 * (-0.5 - 0 - 50 * 0.5)) = -log sigma(-2.55)
    #   Cal-DPO: -log sigma(-0.5) + (-0.5 - 5)^2 + (0 + 5)^2
    dpop = preference_loss(PC, PR, RC, RR, MC, m_empty, loss_type="dpop", beta=0.1)
    cal = preference_loss(PC, PR, RC, RR, MC, m_empty, loss_type="cal_dpo", beta=0.1)
    assert dpop.losses.item() == pytest.approx(-math.log(sig(-2.55)), abs=1e-12)
    assert cal.losses.item() == pytest.approx(-math.log(sig(-0.5)) + 30.25 + 25.0, abs=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match=r"dpop_lambda >= 0"):
        preference_loss(PC, PR, RC, RR, MC, MR, loss_type="dpop", dpop_lambda=-1.0)
    for loss_type in ("dpop", "cal_dpo"):
        assert loss_type in LOSS_TYPES
        with pytest.raises(ValueError, match="needs ref_chosen_logps"):
            preference_loss(PC, PR, None, None, MC, MR, loss_type=loss_type)


# ---------------------------------------------------------------------------------------------
# Config and training loop
# ---------------------------------------------------------------------------------------------


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name,loss_type", [("dpop", "dpop"), ("cal_dpo", "cal_dpo")])
def test_loss_files_compose_on_localized(name, loss_type):
    cfg = OmegaConf.to_object(_compose([f"loss={name}"]))
    loss = cfg.loss
    assert (loss.objective, loss.mask, loss.loss_type, loss.beta, loss.aggregation, loss.sft_weight) == (
        "preference", "span", loss_type, 0.1, "sum", 0.0)  # localized.yaml's, but the loss type
    assert loss.params == ({"dpop_lambda": 50.0} if name == "dpop" else {})
    validate(cfg)
    # Every span mode composes through the config too.
    lam = ["loss.params.dpop_lambda=5"] if name == "dpop" else []
    other = OmegaConf.to_object(_compose([f"loss={name}", "loss.mask=completion",
                                          "loss.aggregation=mean", "loss.sft_weight=0.1", *lam]))
    assert (other.loss.mask, other.loss.aggregation, other.loss.params.get("dpop_lambda", 5.0)) == (
        "completion", "mean", 5.0)
    validate(other)


def test_bad_loss_values_fail_validation():
    with pytest.raises(ValueError, match="loss.loss_type='dpo' is not one of"):
        validate(OmegaConf.to_object(_compose(["loss.loss_type=dpo"])))
    with pytest.raises(ValueError, match="dpop_lambda >= 0, got -1.0"):
        validate(OmegaConf.to_object(_compose(["loss=dpop", "loss.params.dpop_lambda=-1"])))
    # a parameter the loss does not take fails before anything loads, naming the key
    with pytest.raises(ValueError, match=r"loss.params.dpop_lambda is not a parameter of loss_type='cal_dpo'"):
        validate(OmegaConf.to_object(_compose(["loss=cal_dpo", "+loss.params.dpop_lambda=5"])))


def run(run_dir: Path, *overrides: str) -> list[dict]:
    """Train with debug=tiny (2 steps on CPU) plus overrides; return the metrics rows."""
    train(_compose(["debug=tiny", f"run_dir={run_dir}", *overrides]))
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# At step 1 the policy is the reference, so r_w = r_l = 0 (exactly: the copy's forward is the
# policy's, op for op): DPOP's penalty is off, -log sigma(0) = log 2; Cal-DPO adds
# (0 - 1/(2 * 0.1))^2 + (0 + 1/(2 * 0.1))^2 = 50.
@pytest.mark.parametrize("loss,first", [("dpop", math.log(2)), ("cal_dpo", math.log(2) + 50.0)])
def test_tiny_training_run(loss, first, tmp_path):
    rows = run(tmp_path, f"loss={loss}")
    steps = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["train/loss"]) for r in steps)
    assert steps[0]["train/rewards/margins"] == 0.0
    assert steps[0]["train/loss"] == pytest.approx(first, rel=1e-6)  # fp32: a few ulps of <= 51


def test_dpop_lambda_reaches_the_loss(tmp_path, monkeypatch):
    # The loop must pass loss.params.dpop_lambda on; a default taken inside preference_loss
    # instead would silently ignore the config.
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("dpop_lambda"))
        return preference_loss(*args, **kwargs)

    monkeypatch.setattr(localpref.train, "preference_loss", spy)
    run(tmp_path, "loss=dpop", "loss.params.dpop_lambda=7", "trainer.max_steps=1")
    assert seen and set(seen) == {7.0}
