"""localpref.logprobs against the naive one-liner, in float64 gradcheck, odd shapes and dtypes.

The oracle everywhere is ``torch.log_softmax(x.double(), -1).gather(-1, y[:, None])``: the
naive line computed in float64, so its own rounding error is negligible next to fp32's.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from localpref.logprobs import (
    gather_logps_reference,
    linear_gather_logps_reference,
    token_logps,
    token_logps_from_hidden,
)
from localpref.memory import PeakTensorBytes


def naive64(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(n, v), (n,) -> (n,) float64: the spec, in float64."""
    return torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).squeeze(-1)


# Tolerances: fp32 log-softmax over v <= 5k terms has relative error ~v * 2^-24 ~ 3e-4 at worst
# in the logsumexp (pairwise summation makes it far smaller in practice); 1e-5 absolute on
# log-probs of size ~10 covers it. For bf16 inputs the reference upcasts the (exactly
# representable) bf16 values, so only the same fp32 error applies.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,v,chunk_bytes", [(37, 1000, None), (64, 4099, 4 * 4099 * 5),
                                              (5, 7, 4 * 7)])
def test_gather_reference_matches_naive_forward_backward(dtype, n, v, chunk_bytes):
    g = torch.Generator().manual_seed(n * v)
    logits = (3 * torch.randn(n, v, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    w = torch.randn(n, generator=g, dtype=torch.float64)  # random upstream gradient

    out = gather_logps_reference(logits, targets, chunk_bytes=chunk_bytes)
    assert out.dtype == torch.float32 and out.shape == (n,)
    (out.double() * w).sum().backward()

    x64 = logits.detach().double().requires_grad_()
    ref = naive64(x64, targets)
    (ref * w).sum().backward()
    torch.testing.assert_close(out.double(), ref.detach(), atol=ATOL[dtype], rtol=0)
    # The gradient is stored in the logits' dtype, so it carries that dtype's rounding
    # (half an ulp: 2^-9 relative for bf16, 2^-12 for fp16, plus fp32 error).
    eps = {torch.float32: 1e-6, torch.bfloat16: 2**-8, torch.float16: 2**-10}[dtype]
    torch.testing.assert_close(logits.grad.double(), x64.grad, atol=eps, rtol=eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_gather_reference_matches_naive(dtype):
    g = torch.Generator().manual_seed(1)
    n, d, v = 33, 24, 1001  # odd vocab, several chunks below
    hidden = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(v, d, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    out = linear_gather_logps_reference(hidden, weight, targets, chunk_bytes=4 * v * 8)
    out.sum().backward()

    h64 = hidden.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    ref = naive64(h64 @ w64.T, targets)
    ref.sum().backward()
    # fp32 matmul of d=24 terms plus fp32 log-softmax: ~1e-6 relative on logits of size ~3.
    torch.testing.assert_close(out.double(), ref.detach(), atol=2e-5, rtol=0)
    eps = 1e-5 if dtype == torch.float32 else 2**-7  # bf16 storage of the gradients
    torch.testing.assert_close(hidden.grad.double(), h64.grad, atol=eps, rtol=eps)
    torch.testing.assert_close(weight.grad.double(), w64.grad, atol=eps, rtol=eps)
    via_public = token_logps_from_hidden(hidden.detach(), weight.detach(), targets,
                                         backend="torch")
    # The same function with the default chunk (all 33 rows in one matmul, not 8+8+8+8+1): BLAS
    # may sum each row's 24 products in another order for another row count, so a few fp32
    # ulps of log p (|log p| <= 13, ulp <= 9.5e-7): 8 ulps at the largest. The old atol of 1e-6
    # was one ulp there.
    atol = 8 * torch.finfo(torch.float32).eps * out.abs().max().item()
    torch.testing.assert_close(via_public, out.detach(), atol=atol, rtol=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    n, d, v = 6, 4, 11
    targets = torch.randint(0, v, (n,), generator=g)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    # chunk_bytes smaller than a row pair forces the chunked loops to run more than once.
    assert torch.autograd.gradcheck(
        lambda x: gather_logps_reference(x, targets, chunk_bytes=4 * v * 2), (logits,))
    assert torch.autograd.gradcheck(
        lambda h, w: linear_gather_logps_reference(h, w, targets, chunk_bytes=4 * v * 4),
        (hidden, weight))

    b, t = 2, 5
    logits3 = torch.randn(b, t, v, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: token_logps(x, labels, mask), (logits3,))


def test_token_logps_masked_rows_and_zero_gradient_outside():
    g = torch.Generator().manual_seed(3)
    b, t, v = 3, 9, 257
    logits = torch.randn(b, t, v, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) < 0.4
    mask[2] = False  # a row with nothing selected
    labels = labels.masked_fill(~mask, -100)  # ignore indices outside the mask are never read

    out = token_logps(logits, labels, mask, backend="torch")
    assert out.shape == (b, t) and out.dtype == torch.float32
    assert (out[~mask] == 0).all()
    expected = naive64(logits.detach()[mask], labels[mask])
    torch.testing.assert_close(out[mask].double(), expected, atol=ATOL[torch.float32], rtol=0)

    out.sum().backward()
    assert (logits.grad[~mask] == 0).all()  # exactly zero, not just small
    assert (logits.grad[mask].abs().sum(-1) > 0).all()
    # Whole-sequence default (mask=None) equals the naive line on every position.
    full = token_logps(logits.detach(), labels.clamp_min(0))
    torch.testing.assert_close(
        full.double().flatten(),
        naive64(logits.detach().flatten(0, 1), labels.clamp_min(0).flatten()), atol=ATOL[torch.float32],
        rtol=0)


@pytest.mark.parametrize("scale,dtype", [(1e4, torch.float32), (1e4, torch.bfloat16),
                                         (1.0, torch.bfloat16)])
def test_extreme_logits_stay_finite_and_nonpositive(scale, dtype):
    g = torch.Generator().manual_seed(4)
    b, t, v = 2, 6, 3001  # vocab deliberately not a power of two
    raw = scale * torch.randn(b, t, v, generator=g)
    labels = torch.randint(0, v, (b, t), generator=g)
    raw[0, 0, labels[0, 0]] = raw[0, 0].max() + 50 * scale  # a certain token: log p ~ 0, never > 0
    logits = raw.to(dtype).requires_grad_()
    out = token_logps(logits, labels)
    assert torch.isfinite(out).all() and (out <= 0).all()
    assert out[0, 0] > -1e-3
    # fp32 errors scale with the logits (an ulp of 1e4 is 1e-3): rtol 1e-6 (8 ulps) of |log p|,
    # which reaches ~1e5 at scale 1e4; ATOL[float32] at scale 1, grown with the scale, for the
    # log-probs near 0.
    torch.testing.assert_close(out.double().flatten(),
                               naive64(logits.detach().flatten(0, 1), labels.flatten()),
                               atol=1e-5 * max(1.0, scale / 1e3), rtol=1e-6)
    out.sum().backward()
    assert torch.isfinite(logits.grad.float()).all()


def test_bad_input_raises_clear_errors():
    logits = torch.randn(4, 10)
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 10\)"):
        gather_logps_reference(logits, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="targets must have shape"):
        gather_logps_reference(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        token_logps(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask must be bool"):
        token_logps(logits[None], torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match="backend"):
        token_logps(logits[None], torch.zeros(1, 4, dtype=torch.long), backend="cuda")


def test_backend_dispatch(monkeypatch):
    calls = []

    def fake(*args):
        calls.append(len(args))
        return gather_logps_reference(*args)

    module = types.ModuleType("localpref.kernels.gather_logps")
    module.gather_logps_triton = fake
    monkeypatch.setitem(sys.modules, "localpref.kernels.gather_logps", module)
    logits, labels = torch.randn(1, 3, 5), torch.zeros(1, 3, dtype=torch.long)
    token_logps(logits, labels, backend="auto")  # CPU tensor: "auto" keeps the reference
    token_logps(logits, labels, backend="torch")
    assert calls == []
    token_logps(logits, labels, backend="triton")  # forced: the kernel is called
    assert calls == [2]

    # A missing kernel module is a clear ImportError under "triton", a silent fallback under auto.
    monkeypatch.setitem(sys.modules, "localpref.kernels.linear_gather_logps", None)
    h, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ImportError, match="linear_gather_logps_triton"):
        token_logps_from_hidden(h, w, y, backend="triton")
    assert token_logps_from_hidden(h, w, y, backend="auto").shape == (3,)


def test_chunked_row_selected_peak_memory_is_bounded(monkeypatch):
    """Forward+backward peak of token_logps vs the naive line on the same masked rows."""
    b, t, v, chunk_bytes = 1, 2048, 3001, 4 * 3001 * 32  # 32-row chunks
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(b, t, v, generator=g).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) < 0.05
    k = int(mask.sum())

    with PeakTensorBytes() as naive:
        lp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
        torch.where(mask, lp, 0.0).sum().backward()
    logits.grad = None
    monkeypatch.setattr("localpref.logprobs.CHUNK_BYTES", chunk_bytes)  # several chunks
    with PeakTensorBytes() as ours:
        token_logps(logits, labels, mask, backend="torch").sum().backward()

    grad_bytes = b * t * v * 2  # logits.grad, bf16: needed by both
    # Documented bound: the gradient, the k selected rows and their gradient (bf16), and 3 fp32
    # chunks.
    bound = grad_bytes + 2 * k * v * 2 + 3 * chunk_bytes
    assert ours.peak <= bound, (ours.peak, bound)
    # The naive line holds >= 2 fp32 copies of all (b, t, v) logits.
    assert naive.peak >= 2 * b * t * v * 4
    assert naive.peak / ours.peak > 3
