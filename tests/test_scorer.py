"""TokenScorer: the span-only path (backbone -> scored hidden states -> lm_head) equals full logits.

The full-logits path (``span_only=False``) is the one every other test trusts; the span-only path
must give the same per-token log-probs and the same gradients for every trainable parameter,
with plain models, LoRA (adapters on and off) and tied embeddings, and must step aside for models
where it would not be exact.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from localpref.memory import PeakTensorBytes
from localpref.models import tiny_llama_config
from localpref.reference import TokenScorer

# Tolerances. Both paths compute the same fp32 (or fp64) math but in a different order: the
# full path runs lm_head on all (r*t) rows then log_softmax; the span-only path multiplies only
# the n selected rows in chunks. Logits of this tiny model are O(1) and log-probs O(log v) ~ 6,
# so fp32 reassociation errors are ~1e-6 relative; 1e-5 absolute covers it. Gradients sum over
# ~r*t terms of that size (weight gradients), so they get 1e-5 relative as well. fp64 leaves
# ~1e-15 relative error: 1e-10 is generous.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
# The fallback (full-logits) path against the fp64 spec from the same fp32 logits: only the fp32
# log-softmax differs, a few ulps (4.8e-7) of log-probs ~ -6: the fp32 atol above.
FP32_ATOL = TOL[torch.float32]["atol"]


def tiny_model(dtype: torch.dtype = torch.float32, seed: int = 0, **config) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = tiny_llama_config(**{k: v for k, v in config.items() if k in ("vocab_size", "hidden_size")})
    for k, v in config.items():
        if k not in ("vocab_size", "hidden_size"):
            setattr(cfg, k, v)
    return LlamaForCausalLM(cfg).to(dtype)


def inputs(r: int = 4, t: int = 12, v: int = 256, p: float = 0.4, seed: int = 1):
    """Random ids, right padding on some rows, a random score mask inside the real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, v, (r, t), generator=g)
    lengths = torch.tensor([t - 3 * (i % 2) for i in range(r)])  # odd rows padded by 3
    attention_mask = (torch.arange(t)[None] < lengths[:, None]).long()  # (r, t)
    score_mask = (torch.rand(r, t, generator=g) < p) & attention_mask.bool()
    score_mask[0, 0] = True  # position 0 has no logits: must score 0 even when asked
    return ids, attention_mask, score_mask


def forward_backward(scorer: TokenScorer, ids, attention_mask, score_mask):
    """(out (r, t), {param name: grad}) for the loss sum(out * fixed random weights)."""
    scorer.zero_grad(set_to_none=True)
    out = scorer(ids, attention_mask, score_mask)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(out.shape, generator=g, dtype=out.dtype)  # weights make every row's gradient distinct
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in scorer.named_parameters() if p.grad is not None}
    return out.detach(), grads


def assert_paths_agree(model: nn.Module, dtype: torch.dtype, *, expect_span_only: bool = True):
    span, full = TokenScorer(model), TokenScorer(model, span_only=False)
    assert span.span_only is expect_span_only, span.span_only_reason
    assert not full.span_only
    batch = inputs(v=model.config.vocab_size)
    out_span, grads_span = forward_backward(span, *batch)
    out_full, grads_full = forward_backward(full, *batch)
    assert out_span.dtype == out_full.dtype
    torch.testing.assert_close(out_span, out_full, **TOL[dtype])
    trainable = {n for n, p in span.named_parameters() if p.requires_grad}
    assert grads_span.keys() == grads_full.keys() == trainable  # every trainable weight gets a gradient
    for name in grads_full:
        torch.testing.assert_close(grads_span[name], grads_full[name], **TOL[dtype], msg=name)
    return out_span, grads_span


def naive_logps(model: nn.Module, ids, attention_mask, score_mask) -> torch.Tensor:
    """(r, t) float64: the spec, from HF's own logits and a plain log_softmax, independently of localpref."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention_mask).logits.double()  # (r, t, v)
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # (r, t-1)
    lp = torch.where(score_mask[:, 1:], lp, 0.0)
    return torch.nn.functional.pad(lp, (1, 0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_span_only_equals_full_logits(dtype):
    model = tiny_model(dtype)
    out, grads = assert_paths_agree(model, dtype)
    assert "model.lm_head.weight" in grads and "model.model.embed_tokens.weight" in grads
    batch = inputs()
    torch.testing.assert_close(out.double(), naive_logps(model, *batch), rtol=0,
                               atol=TOL[dtype]["atol"])


def test_scores_only_the_masked_positions():
    model = tiny_model()
    ids, attention_mask, score_mask = inputs()
    out = TokenScorer(model)(ids, attention_mask, score_mask)
    assert out.shape == ids.shape and out.dtype == torch.float32
    assert (out[:, 0] == 0).all()  # no logits before the first token, although score_mask[0, 0]
    assert (out[~score_mask] == 0).all()
    assert (out[:, 1:][score_mask[:, 1:]] < 0).all()  # log-probs of a random model are < 0
    # An empty mask still gives a (zero) differentiable output, so DDP sees every parameter used.
    empty = TokenScorer(model)(ids, attention_mask, torch.zeros_like(score_mask))
    assert (empty == 0).all() and empty.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tied_embeddings(dtype):
    model = tiny_model(dtype, tie_word_embeddings=True)
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    _, grads = assert_paths_agree(model, dtype)
    # One tensor, one gradient: the input-embedding and output-projection contributions summed.
    assert "model.model.embed_tokens.weight" in grads


def lora_model(dtype: torch.dtype, target_modules: list[str]):
    """(peft model, deep copy of its base taken before the adapters went in)."""
    from peft import LoraConfig, get_peft_model

    base = tiny_model(dtype)
    untouched = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules))
    torch.manual_seed(3)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (adapter = identity); make the adapters matter
            nn.init.normal_(p, std=0.5)
    return model, untouched


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lora_adapters_active_and_disabled(dtype):
    model, base = lora_model(dtype, ["q_proj", "v_proj"])
    out, grads = assert_paths_agree(model, dtype)
    lora_grads = [n for n in grads if "lora_" in n]
    assert len(lora_grads) == 2 * 2 * 2  # A and B of q_proj and v_proj in 2 layers
    assert all(grads[n].abs().max() > 0 for n in lora_grads)
    batch = inputs()
    base_out = TokenScorer(base, span_only=False)(*batch).detach()
    # The backbone called directly still runs the LoRA-injected layers: the outputs differ from the base's.
    assert (out - base_out).abs().max() > 1e-2
    with torch.no_grad(), model.disable_adapter():
        off = TokenScorer(model)(*batch)
    torch.testing.assert_close(off, base_out, **TOL[dtype])


def test_fallback_when_lm_head_is_a_lora_layer():
    model, _ = lora_model(torch.float32, ["q_proj", "v_proj", "lm_head"])
    scorer = TokenScorer(model)
    assert not scorer.span_only and "peft" in scorer.span_only_reason  # peft.tuners.lora...Linear
    assert "not a plain nn.Linear" in scorer.span_only_reason
    batch = inputs()
    torch.testing.assert_close(scorer(*batch).double(), naive_logps(model, *batch), rtol=0, atol=FP32_ATOL)
    with torch.no_grad(), model.disable_adapter():
        # Disabled adapters include the one on lm_head: still the full path, still the base model.
        torch.testing.assert_close(scorer(*batch).double(), naive_logps(model, *batch), rtol=0, atol=FP32_ATOL)


def test_fallback_when_lm_head_has_a_bias():
    model = tiny_model()
    old = model.lm_head
    model.lm_head = nn.Linear(old.in_features, old.out_features, bias=True)
    nn.init.normal_(model.lm_head.bias, std=1.0)  # a bias the span-only path would ignore
    scorer = TokenScorer(model)
    assert not scorer.span_only and scorer.span_only_reason == "lm_head has a bias"
    batch = inputs()
    torch.testing.assert_close(scorer(*batch).double(), naive_logps(model, *batch), rtol=0, atol=FP32_ATOL)


@pytest.mark.parametrize("field,value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625),
                                         ("logits_scaling", 4.0)])
def test_fallback_when_the_config_transforms_logits(field, value):
    model = tiny_model(**{field: value})
    scorer = TokenScorer(model)
    assert not scorer.span_only and field in scorer.span_only_reason
    assert TokenScorer(tiny_model(**{field: None if "cap" in field else 1.0})).span_only  # off / identity


def test_fallback_for_a_model_that_is_not_a_causal_lm():
    scorer = TokenScorer(tiny_model().model)  # the backbone alone has no lm_head
    assert not scorer.span_only and "not a *ForCausalLM" in scorer.span_only_reason


def test_bf16_span_only_projects_bf16_operands_in_fp32():
    # precision=bf16 keeps the full path's semantics (autocast hands lm_head bf16 hidden states
    # and a bf16 weight) but accumulates the projection in fp32 instead of rounding each logit to
    # bf16. Spec: the backbone under autocast, its hidden states and lm_head.weight rounded to
    # bf16, then an fp64 log_softmax; fp32 accumulation over d=64 bf16 products is exact to ~1e-6.
    model = tiny_model()
    ids, attention_mask, score_mask = batch = inputs()
    span, full = TokenScorer(model, "bf16"), TokenScorer(model, "bf16", span_only=False)
    assert span.span_only
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        logits = hidden.bfloat16().double() @ model.lm_head.weight.bfloat16().double().T  # (r, t, v)
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        spec = torch.nn.functional.pad(torch.where(score_mask[:, 1:], lp, 0.0), (1, 0))
        out_span, out_full = span(*batch), full(*batch)
    torch.testing.assert_close(out_span.double(), spec, rtol=0, atol=1e-5)
    # The full path differs only by rounding each logit to bf16: this model's logits are < 1 in
    # size, so each moves by <= 2^-9 < 2e-3, and a log-prob (target logit - logsumexp) by <= 4e-3.
    assert out_span.abs().max() > 1  # (the log-probs themselves are ~ -log v = -5.5)
    torch.testing.assert_close(out_span, out_full, rtol=0, atol=4e-3)


def test_span_only_peak_memory_is_far_below_full_logits():
    # A large vocabulary on a tiny body: v=32000, d=64; 4 rows of 128 tokens, 5% scored.
    # The full path holds (r, t, v) fp32 logits (4*128*32000*4 B = 65.5 MB) and their gradient
    # of the same size in backward; the span-only path holds only fp32 chunks of the ~26 scored
    # rows (3.3 MB) plus what both need: the (v, d) gradients of lm_head and the embedding (8.2 MB
    # each). So the span-only peak must be well under half the full one.
    model = tiny_model(vocab_size=32000, hidden_size=64)
    ids, attention_mask, _ = inputs(r=4, t=128, v=32000)
    g = torch.Generator().manual_seed(5)
    score_mask = torch.rand(4, 128, generator=g) < 0.05
    peaks = {}
    for span_only in (True, False):
        scorer = TokenScorer(model, span_only=span_only)
        scorer.zero_grad(set_to_none=True)
        with PeakTensorBytes() as meter:
            scorer(ids, attention_mask, score_mask).sum().backward()
        peaks[span_only] = meter.peak
    print(f"peak bytes: span_only={peaks[True] / 2**20:.1f} MiB, full={peaks[False] / 2**20:.1f} MiB")
    logits_bytes = 4 * 128 * 32000 * 4
    assert peaks[False] >= 2 * logits_bytes  # the full path: logits and their gradient
    assert peaks[True] < peaks[False] / 2
    assert peaks[True] < logits_bytes  # never a single (r, t, v) fp32 tensor


def _pair_batch(v: int = 256):
    """A PaddedPairBatch of 2 pairs (rows from ``inputs``), the random mask as span and completion."""
    from localpref.collate import PaddedPairBatch

    ids, attention_mask, score_mask = inputs(v=v)
    score_mask[:, 0] = False
    return PaddedPairBatch(ids, attention_mask, score_mask, score_mask, torch.arange(2))


def test_reference_is_deterministic_whatever_the_dropout():
    # Attention dropout in the model, LoRA on top, the policy in train mode as in the loop: the
    # adapter_disabled reference shares that model, yet must be a fixed function (eval mode).
    from peft import LoraConfig, get_peft_model

    from localpref.reference import make_model_reference

    model = get_peft_model(tiny_model(attention_dropout=0.1), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    policy = TokenScorer(model).train()
    batch = _pair_batch()
    torch.manual_seed(0)
    train_mode = [policy(*batch.model_inputs().values(), batch.span_mask).detach() for _ in range(2)]
    assert not torch.equal(*train_mode)  # the dropout is real: the policy in train mode is random
    for kind in ("adapter_disabled", "copy"):
        reference = make_model_reference(kind, policy)
        calls = [torch.cat(reference.token_logps(batch, "span")) for _ in range(3)]
        assert torch.equal(calls[0], calls[1]) and torch.equal(calls[0], calls[2]), kind
        rows = reference.score_and_keep(batch, "span", batch.to_rows(*batch.masks("span")))[2]
        assert calls[0].abs().sum() > 0 and reference.scorer(project=rows).shape[-1] == 256
        assert policy.training and model.training  # the policy's mode is restored


def test_disable_dropout_zeroes_the_models_dropout(tmp_path):
    # model.disable_dropout (on by default, as in TRL): a model folder whose config asks for
    # dropout trains without it; LoRA's own dropout stays what peft.dropout says.
    from localpref.config import ModelConfig, PeftConfig
    from localpref.models import build_model

    tiny_model(attention_dropout=0.1).save_pretrained(tmp_path)
    batch = _pair_batch()
    for disable in (True, False):
        model, _ = build_model(ModelConfig(source="local", path=str(tmp_path), tokenizer="smollm2",
                                           disable_dropout=disable),
                               PeftConfig(kind="lora", dropout=0.2, target_modules=["q_proj"]), seed=0)
        lora_dropouts = [m.p for n, m in model.named_modules() if n.endswith("lora_dropout.default")]
        assert lora_dropouts == [0.2, 0.2]  # one per layer's q_proj, as peft.dropout says
        policy = TokenScorer(model).train()
        # LoRA's B starts at 0, so its dropout cannot move the outputs: only the model's can.
        twice = [policy(*batch.model_inputs().values(), batch.span_mask).detach() for _ in range(2)]
        assert torch.equal(*twice) is disable
