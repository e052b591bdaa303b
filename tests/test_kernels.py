"""Triton kernels against their references (``localpref.logprobs``) and an fp64 ground truth.

On CPU the kernels run under the Triton interpreter, which must be switched on before triton is
first imported in this process. tests/conftest.py is the place to set TRITON_INTERPRET=1 when
CUDA is absent; the lines below do the same, which suffices while no module collected before this
one imports triton, and fail loudly otherwise. Shapes stay tiny (n <= 20, v <= 300, d <= 64)
because the interpreter executes every program in numpy.

Tolerance rule (STYLE.md): a kernel's error against fp64 math on the same inputs may be no larger
than eager PyTorch's own error (the naive one-liner, in the same dtype) plus ``_eps``: a few ulps of
the output dtype at the tensor's scale, which covers summation order and a final rounding that lands
on the other neighbour.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from localpref.kernels.gather_logps import gather_logps_triton, interpreted  # noqa: E402
from localpref.kernels.gather_logps import reference as gather_reference  # noqa: E402
from localpref.kernels.linear_gather_logps import linear_gather_logps_triton  # noqa: E402
from localpref.kernels.linear_gather_logps import reference as linear_reference  # noqa: E402
from localpref.logprobs import token_logps, token_logps_from_hidden  # noqa: E402
from localpref.memory import PeakTensorBytes  # noqa: E402

if not torch.cuda.is_available() and not interpreted():
    raise RuntimeError("triton was imported before TRITON_INTERPRET=1 was set; set it in "
                       "tests/conftest.py so the kernels can run under the interpreter")

DTYPES = [torch.float32, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _eps(dtype: torch.dtype, exact: torch.Tensor, ulps: float = 4.0) -> float:
    """``ulps`` units in the last place of ``dtype`` at the largest magnitude of ``exact``."""
    return ulps * torch.finfo(dtype).eps * max(1.0, exact.abs().max().item())


def _softmax_eps(logit_scale: float, grad_scale: float) -> float:
    """Budget for gradients built from p = exp(x - lse) with an fp32 lse.

    An fp32 logsumexp summed in another order (online over tiles, or over vocabulary slices) is
    off by a few fp32 ulps of the logits' magnitude; p inherits that as a relative error, and the
    gradient multiplies it by at most ``grad_scale`` (|g|, times |W| or sum |g||h| for the linear
    path). Eager has the same kind of error with its own order, so this is the epsilon part.
    """
    return 8 * torch.finfo(torch.float32).eps * max(1.0, logit_scale) * grad_scale


def _assert_no_worse_than_eager(got: torch.Tensor, eager: torch.Tensor, exact: torch.Tensor,
                                eps: float, what: str) -> None:
    got_err = (got.double() - exact).abs().max().item()
    eager_err = (eager.double() - exact).abs().max().item()
    assert got_err <= eager_err + eps, \
        f"{what}: kernel err {got_err:.3g} > eager {eager_err:.3g} + {eps:.3g}"


def _naive_gather(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The docstring one-liner, in whatever dtype ``logits`` has (fp64 gives the ground truth)."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits.to(acc), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def _value_and_grads(fn, inputs: list[torch.Tensor], upstream: torch.Tensor):
    """fn(*inputs) and the gradients of <fn(*inputs), upstream> w.r.t. fresh leaf copies."""
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad((out * upstream.to(out.dtype)).sum(), leaves)
    return out.detach(), [g.detach() for g in grads]


# ------------------------------------------------------------------------------------------
# Logits path
# ------------------------------------------------------------------------------------------

# (n, v, block_v, num_splits): v not a multiple of the block; one row split over the vocabulary;
# a split count that does not divide the tiles; more splits asked than tiles exist; 150 slices,
# so the combine step reads a (rows, 256) tile with fewer rows per program.
GATHER_CASES = [(5, 300, 64, None), (1, 257, 32, 3), (4, 300, 64, 2), (3, 50, 16, 64),
                (2, 300, 2, 150)]


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize("n,v,block_v,splits", GATHER_CASES)
def test_gather_forward_backward_match_reference_and_fp64(dtype, n, v, block_v, splits):
    gen = torch.Generator().manual_seed(n * 1000 + v)
    # Non-contiguous on purpose: a column slice of a wider buffer (row stride != v).
    logits = (3 * torch.randn(n, v + 7, generator=gen)).to(dtype)[:, 3:v + 3].to(DEVICE)
    targets = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    upstream = torch.randn(n, generator=gen).to(DEVICE)

    def kernel(x):
        return gather_logps_triton(x, targets, block_v=block_v, num_splits=splits)

    got, (got_g,) = _value_and_grads(kernel, [logits], upstream)
    ref, (ref_g,) = _value_and_grads(lambda x: gather_reference(x, targets), [logits], upstream)
    eager, (eager_g,) = _value_and_grads(lambda x: _naive_gather(x, targets), [logits], upstream)
    exact, (exact_g,) = _value_and_grads(lambda x: _naive_gather(x, targets), [logits.double()],
                                         upstream)
    assert got.dtype == ref.dtype == torch.float32 and got.shape == (n,)
    assert got_g.dtype == dtype and got_g.shape == (n, v)
    # Forward is fp32 whatever the input dtype: a few fp32 ulps at the logit scale.
    _assert_no_worse_than_eager(got, eager, exact, _eps(torch.float32, exact), "forward")
    # Gradients are rounded to the input dtype, as eager's are (one ulp), plus the lse budget.
    grad_eps = _eps(dtype, exact_g, 1.0) + _softmax_eps(logits.abs().max().item(),
                                                        upstream.abs().max().item())
    _assert_no_worse_than_eager(got_g, eager_g, exact_g, grad_eps, "grad")
    # And against the reference (the spec) directly: both within that budget of the truth.
    torch.testing.assert_close(got, ref, rtol=0, atol=2 * _eps(torch.float32, exact))
    torch.testing.assert_close(got_g.double(), ref_g.double(), rtol=0, atol=2 * grad_eps)


def test_gather_transposed_logits_and_int32_targets():
    """Column stride != 1 (a transposed buffer) and int32 labels give the reference's values."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(70, 6, generator=gen).T.to(DEVICE)  # (6, 70), strides (1, 6)
    targets = torch.randint(0, 70, (6,), generator=gen, dtype=torch.int32).to(DEVICE)
    got = gather_logps_triton(logits, targets, block_v=16)
    ref = gather_reference(logits, targets.long())
    # Two fp32 logsumexps of the same 70 logits in another order (tiles of 16 vs eager): the rule
    # of the module, 2 x 4 ulps at |log p| <= 6 (6e-6). One ulp there is 4.8e-7, which the old
    # atol of 1e-6 left room for only twice (measured: exact on AVX-512, one ulp on plain CPU kernels).
    torch.testing.assert_close(got, ref, rtol=0, atol=2 * _eps(torch.float32, ref))


def test_gather_fp64_gradcheck():
    """Finite differences in fp64 (the kernel accumulates in fp64 for fp64 input)."""
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 40, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    targets = torch.tensor([0, 39, 17], device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda x: gather_logps_triton(x, targets, block_v=16, num_splits=2), (logits,),
        fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_huge_logits_finite_and_nonpositive(dtype):
    """|logits| ~ 1e4: exp would overflow without the running max; log p stays <= 0."""
    gen = torch.Generator().manual_seed(3)
    logits = (1e4 * torch.randn(4, 100, generator=gen)).to(dtype).to(DEVICE).requires_grad_()
    targets = torch.tensor([0, 5, 50, 99], device=DEVICE)
    out = gather_logps_triton(logits, targets, block_v=32, num_splits=2)
    (grad,) = torch.autograd.grad(out.sum(), logits)
    assert torch.isfinite(out).all() and (out <= 0).all()
    assert torch.isfinite(grad).all()
    # fp32 at |logits| ~ 1e4, where one ulp is 1e-3: the logsumexp in another order is off by a
    # few of those (atol 1e-2), and log p itself reaches ~4e4 (rtol 1e-6, 8 ulps of it).
    torch.testing.assert_close(out, _naive_gather(logits.detach(), targets), rtol=1e-6, atol=1e-2)


def test_token_logps_triton_backend_masks_rows_and_zero_gradients():
    """Entry point: masked-out rows give 0 and get exactly zero gradient, like backend='torch'."""
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 5, 90, generator=gen).to(DEVICE)
    labels = torch.randint(0, 90, (2, 5), generator=gen).to(DEVICE)
    labels[0, 0] = -100  # an ignore index at a masked-out position is never read
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool, device=DEVICE)
    upstream = torch.randn(2, 5, generator=gen).to(DEVICE)
    got, (got_g,) = _value_and_grads(
        lambda x: token_logps(x, labels, mask, backend="triton"), [logits], upstream)
    ref, (ref_g,) = _value_and_grads(
        lambda x: token_logps(x, labels, mask, backend="torch"), [logits], upstream)
    assert (got[~mask] == 0).all() and (got[mask] < 0).all()
    assert (got_g[~mask] == 0).all()
    # The module's rule, as in test_gather_forward_backward_match_reference_and_fp64. The old
    # atols (1e-6, 1e-7) were 2 ulps of log p ~ -5 and under one ulp of the largest gradient
    # entries (|upstream| up to 3.5, ulp 2.4e-7): a final rounding to the other neighbour failed them.
    grad_eps = _eps(torch.float32, ref_g, 1.0) + _softmax_eps(logits.abs().max().item(),
                                                             upstream.abs().max().item())
    torch.testing.assert_close(got, ref, rtol=0, atol=2 * _eps(torch.float32, ref))
    torch.testing.assert_close(got_g, ref_g, rtol=0, atol=2 * grad_eps)


# ------------------------------------------------------------------------------------------
# Fused linear path
# ------------------------------------------------------------------------------------------

def _naive_linear(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """What eager code writes: logits in the input dtype, then an fp32 log-softmax."""
    return _naive_gather(hidden @ weight.T, targets)


# (n, d, v, blocks, num_splits, grad_chunk_bytes): v not a multiple of BLOCK_V; d not a multiple
# of BLOCK_D; one row over 3 vocabulary slices. The last two budgets force the backward into four
# 32-column vocabulary chunks: n = 20 sums grad_hidden in the input dtype (an fp32 (n, d) does not
# fit), n = 8 in fp32 (it does: 8*16*6 bytes <= half the budget, the other half holds G).
LINEAR_CASES = [
    (5, 48, 300, (16, 64, 32), None, 2**20),
    (1, 40, 257, (16, 32, 16), 3, 2**20),
    (20, 32, 100, (16, 32, 16), 2, 20 * 32 * 2),
    (8, 16, 100, (16, 32, 16), None, 8 * 16 * 12),
]


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16])
@pytest.mark.parametrize("n,d,v,blocks,splits,chunk", LINEAR_CASES)
def test_linear_forward_backward_match_reference_and_fp64(dtype, n, d, v, blocks, splits, chunk):
    gen = torch.Generator().manual_seed(n * 1000 + v)
    hidden = torch.randn(n, d + 2, generator=gen).to(dtype)[:, 1:d + 1].to(DEVICE)  # row stride d+2
    # (v, d) with column-major strides: the transposed view of a (d, v) buffer.
    weight = (torch.randn(d, v, generator=gen) / d**0.5 * 3).to(dtype).T.to(DEVICE)
    targets = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    upstream = torch.randn(n, generator=gen).to(DEVICE)

    def kernel(h, w):
        return linear_gather_logps_triton(h, w, targets, blocks=blocks, num_splits=splits,
                                          grad_chunk_bytes=chunk)

    got, got_g = _value_and_grads(kernel, [hidden, weight], upstream)
    ref, ref_g = _value_and_grads(lambda h, w: linear_reference(h, w, targets),
                                  [hidden, weight], upstream)
    eager, eager_g = _value_and_grads(lambda h, w: _naive_linear(h, w, targets),
                                      [hidden, weight], upstream)
    exact, exact_g = _value_and_grads(lambda h, w: _naive_linear(h, w, targets),
                                      [hidden.double(), weight.double()], upstream)
    assert got.dtype == torch.float32 and got.shape == (n,)
    _assert_no_worse_than_eager(got, eager, exact, _eps(torch.float32, exact, 8), "forward")
    logit_scale = (hidden.double() @ weight.double().T).abs().max().item()
    g_max = upstream.abs().max().item()
    grad_scales = (g_max * 2 * weight.abs().max().item(),  # |sum_j G_ij W_j| <= |g_i| 2 max|W|
                   g_max * 2 * hidden.abs().max().item() * n)  # sum_i |G_ij h_i|
    for name, g, e, x, r, scale in zip(("grad_hidden", "grad_weight"), got_g, eager_g, exact_g,
                                       ref_g, grad_scales):
        assert g.dtype == dtype and g.shape == r.shape
        # bf16 grad_hidden may be rounded once per vocabulary chunk (case n = 20): 2 ulps.
        _assert_no_worse_than_eager(g, e, x, _eps(dtype, x, 2.0) + _softmax_eps(logit_scale, scale),
                                    name)
    # Kernel and reference both accumulate logits in fp32, so they agree far more tightly than
    # either agrees with the eager bf16 path (whose logits are rounded to bf16).
    torch.testing.assert_close(got, ref, rtol=0, atol=2 * _eps(torch.float32, exact, 8))


def test_linear_mixed_dtypes_match_reference():
    """bf16 hidden states, fp32 lm_head (no autocast): computed in fp32, like the reference."""
    gen = torch.Generator().manual_seed(9)
    hidden = torch.randn(4, 32, generator=gen).to(torch.bfloat16).to(DEVICE)
    weight = torch.randn(70, 32, generator=gen).to(DEVICE)
    targets = torch.randint(0, 70, (4,), generator=gen).to(DEVICE)
    upstream = torch.randn(4, generator=gen).to(DEVICE)
    got, got_g = _value_and_grads(
        lambda h, w: linear_gather_logps_triton(h, w, targets, blocks=(16, 16, 16)),
        [hidden, weight], upstream)
    ref, ref_g = _value_and_grads(lambda h, w: linear_reference(h, w, targets), [hidden, weight],
                                  upstream)
    assert [g.dtype for g in got_g] == [torch.bfloat16, torch.float32]
    # Both paths are fp32 from the same inputs: fp32 summation-order differences only, a few
    # ulps of logits and log-probs of size ~10-30 (ulp 1e-6 to 2e-6), and of gradient entries ~1-10.
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    grad_hidden, grad_weight = got_g
    # bf16 grad_hidden: fp32 values that differ by a few ulps may round to neighbouring bf16
    # values, one bf16 ulp apart (2^-7 = 7.8e-3 relative): rtol 1e-2.
    torch.testing.assert_close(grad_hidden, ref_g[0], rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(grad_weight, ref_g[1], rtol=1e-5, atol=1e-5)  # fp32, as the values


def test_linear_fp64_gradcheck():
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 16, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    weight = torch.randn(40, 16, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    targets = torch.tensor([0, 39, 21], device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_gather_logps_triton(h, w, targets, blocks=(16, 16, 16), num_splits=2),
        (hidden, weight), fast_mode=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_huge_logits_finite_and_nonpositive(dtype):
    gen = torch.Generator().manual_seed(6)
    hidden = (100 * torch.randn(4, 16, generator=gen)).to(dtype).to(DEVICE).requires_grad_()
    weight = (25 * torch.randn(60, 16, generator=gen)).to(dtype).to(DEVICE)  # logits ~ 1e4
    targets = torch.tensor([0, 7, 33, 59], device=DEVICE)
    out = linear_gather_logps_triton(hidden, weight, targets, blocks=(16, 16, 16))
    (grad,) = torch.autograd.grad(out.sum(), hidden)
    assert torch.isfinite(out).all() and (out <= 0).all() and torch.isfinite(grad).all()
    exact = _naive_linear(hidden.detach().double(), weight.double(), targets)
    # fp32 logits from 16 products of size ~2.5e3: the worst case d * eps32 * sum|h w| is ~0.1
    # per logit, for the target logit and the logsumexp each: atol 1.0; rtol 1e-5 of |log p| <= 5e4.
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1.0)


def test_token_logps_from_hidden_triton_matches_torch_backend():
    gen = torch.Generator().manual_seed(7)
    hidden = torch.randn(6, 32, generator=gen).to(DEVICE)
    weight = torch.randn(90, 32, generator=gen).to(DEVICE)
    labels = torch.randint(0, 90, (6,), generator=gen).to(DEVICE)
    upstream = torch.randn(6, generator=gen).to(DEVICE)
    got, got_g = _value_and_grads(
        lambda h, w: token_logps_from_hidden(h, w, labels, backend="triton"), [hidden, weight],
        upstream)
    ref, ref_g = _value_and_grads(
        lambda h, w: token_logps_from_hidden(h, w, labels, backend="torch"), [hidden, weight],
        upstream)
    # Both fp32: logits of size up to ~20 summed over d=32 in another order, then the logsumexp
    # (~20, ulp 1.9e-6): atol 1e-5 is ~5 of its ulps, rtol 1e-5 covers the larger log-probs
    # (down to -25) and gradient entries, which inherit that relative error.
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_g, ref_g):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Edge cases shared by both kernels
# ------------------------------------------------------------------------------------------

def test_empty_selection_gives_empty_output_and_zero_gradients():
    logits = torch.randn(0, 30, device=DEVICE, requires_grad=True)
    hidden = torch.randn(0, 16, device=DEVICE, requires_grad=True)
    weight = torch.randn(30, 16, device=DEVICE, requires_grad=True)
    none = torch.zeros(0, dtype=torch.long, device=DEVICE)
    a = gather_logps_triton(logits, none)
    b = linear_gather_logps_triton(hidden, weight, none)
    assert a.shape == b.shape == (0,) and a.dtype == b.dtype == torch.float32
    (a.sum() + b.sum()).backward()
    assert logits.grad.shape == (0, 30) and (weight.grad == 0).all()


def test_out_of_range_targets_raise_like_the_reference():
    logits = torch.randn(2, 30, device=DEVICE)
    weight = torch.randn(30, 16, device=DEVICE)
    for bad in ([0, 30], [-100, 1]):
        targets = torch.tensor(bad, device=DEVICE)
        for fn in (gather_logps_triton, gather_reference):
            with pytest.raises(ValueError, match=r"\[0, 30\)"):
                fn(logits, targets)
        for fn in (linear_gather_logps_triton, linear_reference):
            with pytest.raises(ValueError, match=r"\[0, 30\)"):
                fn(torch.randn(2, 16, device=DEVICE), weight, targets)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scratch_memory_stays_within_budget(dtype):
    """Beyond the outputs and gradients, the kernels allocate (n, splits) partials, the (n,)
    logsumexp, and in the linear backward at most ``grad_chunk_bytes`` (issue #4: <= 64 MiB)."""
    n, d, v, budget = 20, 32, 300, 20 * 64 * 2  # a 64-column G chunk in bf16, 32 in fp32
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(n, v, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    hidden = torch.randn(n, d, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    weight = torch.randn(v, d, generator=gen).to(dtype).to(DEVICE).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen).to(DEVICE)
    # (2, n, splits) partials with splits <= 2 here, lse, out, contiguous grad_out: ~570 bytes.
    small = 1024
    with PeakTensorBytes() as meter:
        out = gather_logps_triton(logits, targets, block_v=32, num_splits=2)
        (grad,) = torch.autograd.grad(out.sum(), logits)
    assert meter.peak - grad.nbytes <= small
    with PeakTensorBytes() as meter:
        out = linear_gather_logps_triton(hidden, weight, targets, blocks=(16, 32, 16),
                                         num_splits=2, grad_chunk_bytes=budget)
        grads = torch.autograd.grad(out.sum(), (hidden, weight))
    assert meter.peak - sum(g.nbytes for g in grads) <= budget + small


# ------------------------------------------------------------------------------------------
# GPU: real compilation, default (H100-sized) blocks, realistic shapes
# ------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,v", [(512, 49152), (3, 128256), (1000, 32011)])
def test_gpu_gather_realistic(dtype, n, v):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (4 * torch.randn(n, v, device="cuda", generator=gen)).to(dtype)
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    upstream = torch.randn(n, device="cuda", generator=gen)
    got, (got_g,) = _value_and_grads(lambda x: gather_logps_triton(x, targets), [logits], upstream)
    ref, (ref_g,) = _value_and_grads(lambda x: gather_reference(x, targets), [logits], upstream)
    exact = _naive_gather(logits.double(), targets)
    torch.testing.assert_close(got, ref, rtol=0, atol=2 * _eps(torch.float32, exact, 16))
    torch.testing.assert_close(got_g.float(), ref_g.float(), rtol=0,
                               atol=2 * torch.finfo(dtype).eps * ref_g.abs().max().item())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,v", [(300, 1024, 49152), (7, 576, 49152)])
def test_gpu_linear_realistic(dtype, n, d, v):
    gen = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(n, d, device="cuda", generator=gen).to(dtype)
    weight = (torch.randn(v, d, device="cuda", generator=gen) / d**0.5).to(dtype)
    targets = torch.randint(0, v, (n,), device="cuda", generator=gen)
    upstream = torch.randn(n, device="cuda", generator=gen)
    got, got_g = _value_and_grads(lambda h, w: linear_gather_logps_triton(h, w, targets),
                                  [hidden, weight], upstream)
    ref, ref_g = _value_and_grads(lambda h, w: linear_reference(h, w, targets),
                                  [hidden, weight], upstream)
    # fp32 inputs: the kernel follows torch's matmul precision setting, like the reference.
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-3)
    for g, r in zip(got_g, ref_g):
        scale = r.abs().max().item()
        torch.testing.assert_close(g.float(), r.float(), rtol=0,
                                   atol=4 * torch.finfo(dtype).eps * scale + 1e-6)
