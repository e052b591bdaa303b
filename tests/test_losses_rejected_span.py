"""The losses that read the rejected span beside the correction: unlikelihood (Welleck et al.),
ORPO on spans (Hong et al.) and RPO (localized DPO with a tuned SFT anchor, Pang et al.); and the
registry they were added through (one function in localpref/losses.py, one yaml in conf/loss/).

Hand derivations on the fixture of test_losses.py: chosen span log-probs -1, -2 (a third token,
-50, outside the mask), rejected span -3, -1.
"""

from __future__ import annotations

import ast
import inspect
import math
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from localpref import losses
from localpref.config import validate
from localpref.losses import LOSSES, preference_loss
from localpref.train import train

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

PC = torch.tensor([[-1.0, -2.0, -50.0]], dtype=torch.float64)
MC = torch.tensor([[True, True, False]])
PR = torch.tensor([[-3.0, -1.0]], dtype=torch.float64)
MR = torch.tensor([[True, True]])


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_odds(logp: float) -> float:
    """log(P / (1 - P)) for P = exp(logp), written out."""
    p = math.exp(logp)
    return math.log(p / (1 - p))


HAND = [
    # unlikelihood, sums: -pi_w = 3; the first rejected token has p = e^-3: -log(1 - e^-3)
    ("unlikelihood", dict(), 3.0 - math.log(1 - math.exp(-3.0))),
    ("unlikelihood", dict(ul_weight=2.0), 3.0 - 2.0 * math.log(1 - math.exp(-3.0))),
    # means: -pi_w = 1.5; the unlikelihood term reads the first token, whatever the aggregation
    ("unlikelihood", dict(aggregation="mean"), 1.5 - math.log(1 - math.exp(-3.0))),
    # ORPO, means: pi_w = -1.5, pi_l = -2; L = 1.5 - lambda log sigma(log odds(-1.5) - log odds(-2))
    ("orpo", dict(beta=0.1, aggregation="mean"), 1.5 - 0.1 * math.log(sig(log_odds(-1.5) - log_odds(-2.0)))),
    ("orpo", dict(beta=1.0, aggregation="mean"), 1.5 - 1.0 * math.log(sig(log_odds(-1.5) - log_odds(-2.0)))),
    # ORPO, sums: pi_w = -3, pi_l = -4
    ("orpo", dict(beta=0.5), 3.0 - 0.5 * math.log(sig(log_odds(-3.0) - log_odds(-4.0)))),
]


@pytest.mark.parametrize("loss_type,kwargs,expected", HAND)
def test_values_against_hand_derivation(loss_type, kwargs, expected):
    out = preference_loss(PC, PR, None, None, MC, MR, loss_type=loss_type, **kwargs)
    # float64 throughout: a few roundings of values below 4.
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)


def test_rpo_is_localized_dpo_plus_the_span_nll_at_the_tuned_weight():
    ref_c = torch.tensor([[-1.5, -2.5, -0.1]], dtype=torch.float64)
    ref_r = torch.tensor([[-2.0, -1.0]], dtype=torch.float64)
    cfg = OmegaConf.to_object(_compose(["loss=rpo", "loss.sft_weight=0.7"])).loss
    out = preference_loss(PC, PR, ref_c, ref_r, MC, MR, beta=cfg.beta, loss_type=cfg.loss_type,
                          aggregation=cfg.aggregation, sft_weight=cfg.sft_weight, **cfg.params)
    # h = (-3 + 4) - (-4 + 3) = 2; anchor = 0.7 * (3 / 2)
    assert out.losses.item() == pytest.approx(-math.log(sig(0.1 * 2.0)) + 0.7 * 1.5, abs=1e-12)


def test_unlikelihood_pushes_down_only_the_first_rejected_token():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    out = preference_loss(pc, pr, None, None, MC, MR, loss_type="unlikelihood", ul_weight=1.0)
    gc, gr = torch.autograd.grad(out.sum, (pc, pr))
    p = math.exp(-3.0)
    # d/dx [-log(1 - e^x)] = e^x / (1 - e^x) > 0: descending lowers the token's log-prob
    assert gr.tolist() == [pytest.approx([p / (1 - p), 0.0])]
    assert gc.tolist() == [[-1.0, -1.0, 0.0]]  # the NLL of the corrected span, nothing outside it


def test_unlikelihood_of_an_insertion_is_the_nll_and_a_sure_token_stays_finite():
    empty = torch.tensor([[False, False]])
    out = preference_loss(PC, PR, None, None, MC, empty, loss_type="unlikelihood")
    assert out.losses.item() == pytest.approx(3.0)  # nothing was rejected: no unlikelihood term
    sure = torch.tensor([[0.0, -1.0]], dtype=torch.float64, requires_grad=True)  # p = 1 exactly
    out = preference_loss(PC, sure, None, None, MC, MR, loss_type="unlikelihood")
    (g,) = torch.autograd.grad(out.sum, sure)
    assert torch.isfinite(out.losses).all() and torch.isfinite(g).all()
    assert out.losses.item() == pytest.approx(3.0 - math.log(-math.expm1(-1e-6)), rel=1e-9)  # clamped at P = 1 - 1e-6


@pytest.mark.filterwarnings("ignore:You are importing from 'trl.experimental'")
def test_orpo_matches_trl_odds_ratio_loss():
    pytest.importorskip("trl")
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    g = torch.Generator().manual_seed(3)
    b, t = 5, 4
    pc, pr = (-3 * torch.rand(b, t, generator=g, dtype=torch.float64) for _ in range(2))
    mask = torch.ones(b, t, dtype=torch.bool)  # equal lengths: TRL's token mean = the mean of pair means
    ours = preference_loss(pc, pr, None, None, mask, mask, loss_type="orpo", beta=0.2, aggregation="mean")
    fake = types.SimpleNamespace(beta=0.2, accelerator=types.SimpleNamespace(device="cpu"))
    trl_or, *_ = ORPOTrainer.odds_ratio_loss(fake, pc.mean(-1), pr.mean(-1))
    nll = -pc.mean(-1)
    # TRL's loss = NLL - mean(beta * log sigma(log odds)); per pair ours = NLL - beta log sigma(...)
    # TRL casts the span log-probs to fp32 first: agreement to fp32 rounding of values ~1.
    torch.testing.assert_close(ours.losses, (nll - trl_or).to(ours.losses.dtype), atol=1e-6, rtol=0)


def reference_loss(loss_type: str, pc, pr, mc, mr, aggregation: str, beta: float, sft_weight: float):
    """The two reference-free losses written out again, on masked sums or means."""
    def agg(x, m):
        s = (x * m).sum(-1)
        return s / m.sum(-1) if aggregation == "mean" else s

    pi_w, pi_l = agg(pc, mc), agg(pr, mr)
    if loss_type == "unlikelihood":
        first = torch.stack([pr[i][mr[i]][0] for i in range(len(pr))])  # the first rejected token
        loss = -pi_w - torch.log(1 - torch.exp(first))
    else:
        lo = lambda x: x - torch.log(1 - torch.exp(x))  # noqa: E731  log odds
        loss = -pi_w - beta * F.logsigmoid(lo(pi_w) - lo(pi_l))
    return loss + sft_weight * -(pc * mc).sum(-1) / mc.sum(-1)


@pytest.mark.parametrize("sft_weight", [0.0, 0.3])
@pytest.mark.parametrize("aggregation", ["sum", "mean"])
@pytest.mark.parametrize("mask", ["span", "completion"])
@pytest.mark.parametrize("loss_type", ["unlikelihood", "orpo"])
def test_every_mask_aggregation_and_anchor(loss_type, mask, aggregation, sft_weight):
    g = torch.Generator().manual_seed(7)
    b, t, prompt = 4, 9, 3
    pos = torch.arange(t)
    pc, pr = (-2 * torch.rand(b, t, generator=g, dtype=torch.float64) - 0.01 for _ in range(2))
    masks = {}
    for side in "cr":
        start = prompt + torch.randint(0, 3, (b,), generator=g)
        end = start + 1 + torch.randint(0, 3, (b,), generator=g)
        masks[side] = {"completion": pos >= prompt, "span": (pos >= start[:, None]) & (pos < end[:, None])}
    mc, mr = masks["c"][mask].expand(b, t), masks["r"][mask].expand(b, t)
    out = preference_loss(pc, pr, None, None, mc, mr, loss_type=loss_type, beta=0.3, aggregation=aggregation,
                          sft_weight=sft_weight)
    expected = reference_loss(loss_type, pc, pr, mc, mr, aggregation, 0.3, sft_weight)
    # float64, the same terms in another order: ~1e-15 relative of values <= ~20.
    torch.testing.assert_close(out.losses, expected, atol=1e-12, rtol=0)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("name", ["unlikelihood", "orpo", "rpo"])
def test_loss_files_compose_validate_and_train(name, tmp_path):
    cfg = OmegaConf.to_object(_compose([f"loss={name}"]))
    validate(cfg)
    train(_compose(["debug=tiny", f"loss={name}", f"run_dir={tmp_path}"]))
    import json

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses_seen = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses_seen) == 2 and all(math.isfinite(x) and x > 0 for x in losses_seen)


# ---------------------------------------------------------------------------------------------
# The registry: each loss one short function with its equation, reachable from a yaml
# ---------------------------------------------------------------------------------------------


def test_each_loss_is_one_short_function_with_its_equation():
    tree = ast.parse(inspect.getsource(losses))
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert len(LOSSES) >= 10
    for name, spec in LOSSES.items():
        node = functions[spec.fn.__name__]
        assert node.end_lineno - node.lineno + 1 <= 25, f"{name} is {node.end_lineno - node.lineno + 1} lines"
        doc = inspect.getdoc(spec.fn)
        assert doc and "L = " in doc and "arXiv" in doc, f"{name}: no equation or citation in its docstring"


def test_every_loss_has_a_yaml_and_every_yaml_names_a_loss():
    named = {}
    for path in sorted((CONF_DIR / "loss").glob("*.yaml")):
        loss = OmegaConf.to_object(_compose([f"loss={path.stem}"])).loss
        named[path.stem] = loss.loss_type if loss.objective == "preference" else "sft"
        assert set(loss.params) <= set(LOSSES.get(loss.loss_type, losses.LossSpec(None, False, False, {})).params)
    # the losses the experiments compare each have a file (robust, hinge and simpo are reached
    # by overriding loss.loss_type, as README shows)
    for name in ("sigmoid", "ipo", "dpop", "cal_dpo", "unlikelihood", "orpo"):
        assert name in named.values(), f"no conf/loss/*.yaml uses loss_type={name}"
    assert len(named) >= 11


# ---------------------------------------------------------------------------------------------
# The anchor's tokens (loss.anchor): the corrected span, the accepted text before it, or both
# ---------------------------------------------------------------------------------------------


def test_the_anchor_on_the_accepted_text_is_the_mean_nll_of_the_chosen_tokens_before_the_span(tmp_path, monkeypatch):
    import localpref.train as train_module

    seen = []

    def spy(*args, **kwargs):
        out = preference_loss(*args, **kwargs)
        seen.append((args, kwargs, out))
        return out

    monkeypatch.setattr(train_module, "preference_loss", spy)
    train(_compose(["debug=tiny", "loss=rpo", "loss.anchor=accepted", "loss.sft_weight=0.5", "trainer.max_steps=1",
                    f"run_dir={tmp_path}"]))
    (pc, pr, rc, rr, mc, mr), kwargs, out = seen[0]
    anchor = kwargs["policy_chosen_nll_mask"]
    assert anchor is not None and not (anchor & mc).any()  # no token of the span
    assert ((mc.long().cumsum(-1) > 0) & anchor).sum() == 0  # only tokens before the span
    assert anchor.any(1).any() and (pc[anchor] < 0).all()  # scored: real log-probs there
    plain = preference_loss(pc, pr, rc, rr, mc, mr, beta=0.1, loss_type="sigmoid")
    nll = -(pc * anchor).sum(-1) / anchor.sum(-1).clamp_min(1)
    torch.testing.assert_close(out.losses, plain.losses + 0.5 * nll)  # fp32, the same ops: a rounding or two


def test_an_anchor_off_the_span_needs_an_anchor_weight_on_a_span_loss():
    with pytest.raises(ValueError, match="loss.anchor='accepted' anchors a preference loss on spans"):
        validate(OmegaConf.to_object(_compose(["loss=localized", "loss.anchor=accepted"])))  # sft_weight 0
    with pytest.raises(ValueError, match="loss.anchor='completion'"):
        validate(OmegaConf.to_object(_compose(["loss=dpo", "loss.sft_weight=1", "loss.anchor=completion"])))
    validate(OmegaConf.to_object(_compose(["loss=rpo", "loss.anchor=completion"])))
