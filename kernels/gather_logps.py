"""Triton kernel: rows of logits -> log p(target), in one pass over the vocabulary.

Naive equivalent (also the reference, re-exported here as ``reference``)::

    torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)

Shapes: ``n`` selected rows, ``v`` vocabulary. The naive line writes an fp32 ``(n, v)`` log-softmax
and keeps it for backward; this kernel reads the logits once, keeps two fp32 numbers per row
(a running max and a running sum of exponentials), and saves only the per-row logsumexp (n,) for
backward, which recomputes the softmax tile by tile and writes ``g * (onehot - softmax)``.

Parallelism. Forward launches a ``(n, splits)`` grid: each program reduces one vocabulary slice of
one row to a partial logsumexp; a tiny combine kernel merges the ``splits`` partials of a row
(logsumexp of logsumexps), reads the target logit and writes ``logp`` and ``lse``. With many rows
``splits == 1``; with a few span rows the vocabulary is split so the whole GPU is busy. No locks,
no atomics: every program owns its output slot.

Accumulation is fp32 for fp32/bf16/fp16 logits (fp64 for fp64, so gradcheck can run).

On CPU tensors the kernels run under the Triton interpreter, which requires ``TRITON_INTERPRET=1``
to be set before triton is first imported in the process (``tl.max`` and friends are themselves
``@triton.jit`` functions, decorated at import time); we raise a clear error otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from localpref.logprobs import check_targets as validate_targets
from localpref.logprobs import gather_logps_reference as reference

__all__ = ["gather_logps_triton", "reference"]

BLOCK_V = 4096
"""Vocabulary tile on GPU: 8 KiB of bf16 per row per step, enough to keep loads wide."""

PROGRAMS_PER_SM = 4
"""Split the vocabulary until at least this many programs per SM are in flight (small n)."""


def interpreted() -> bool:
    """Whether triton's own @jit functions (tl.max, ...) were built for the interpreter.

    Decided once, when triton is first imported; setting TRITON_INTERPRET later has no effect.
    """
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.max, InterpretedFunction)


def check_launchable(*tensors: Tensor) -> None:
    """Raise unless the tensors can be handed to a Triton kernel in this process."""
    device = tensors[0].device
    if any(t.device != device for t in tensors):
        devices = [str(t.device) for t in tensors]
        raise ValueError(f"all inputs must be on one device, got {devices}")
    if device.type == "cpu" and not interpreted():
        raise RuntimeError("Triton kernels on CPU tensors run under the Triton interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported (tests do this in "
                           "tests/conftest.py), or use backend='torch'")


def acc_dtypes(x: Tensor) -> tuple[torch.dtype, tl.dtype]:
    """Accumulation dtype (torch, triton): fp64 for fp64 inputs, fp32 otherwise."""
    if x.dtype == torch.float64:
        return torch.float64, tl.float64
    return torch.float32, tl.float32


def check_targets(targets: Tensor, n: int, v: int, where: str) -> Tensor:
    """The reference's check (same errors), then contiguous int64 for the kernels."""
    validate_targets(targets, v, n, where)
    return targets.long().contiguous()


def num_programs_wanted(device: torch.device) -> int:
    """How many programs keep the device busy (a handful under the interpreter)."""
    if device.type != "cuda":
        return 4
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _partial_lse_kernel(logits_ptr, stride_n, stride_v, part_ptr, v, tiles_per_split,
                        BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """part[row, split] = logsumexp(logits[row, slice(split)]), online over BLOCK_V tiles."""
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row * stride_n
    m = tl.full((), float("-inf"), ACC)  # running max of the slice
    s = tl.zeros((), ACC)  # running sum of exp(x - m)
    first_col = split * tiles_per_split * BLOCK_V
    for t in range(0, tiles_per_split):
        cols = first_col + t * BLOCK_V + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols.to(tl.int64) * stride_v, mask=cols < v,
                    other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        # While everything seen is -inf (padding, or -inf logits), subtract 0 to avoid inf - inf.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(x - m_ref), axis=0)
        m = m_new
    tl.store(part_ptr + row * tl.num_programs(1) + split, m + tl.log(s))


@triton.jit
def _combine_kernel(logits_ptr, stride_n, stride_v, targets_ptr, part_ptr, out_ptr, lse_ptr,
                    n, splits, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, ACC: tl.constexpr):
    """lse[row] = logsumexp_s part[row, s]; out[row] = logits[row, target[row]] - lse[row]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    rows64 = rows.to(tl.int64)
    s_idx = tl.arange(0, BLOCK_S)
    part = tl.load(part_ptr + rows64[:, None] * splits + s_idx[None, :],
                   mask=row_ok[:, None] & (s_idx[None, :] < splits), other=float("-inf"))
    m = tl.max(part, axis=1)  # (BLOCK_N,)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(part - m_ref[:, None]), axis=1)
    lse = m_ref + tl.log(tl.where(row_ok, total, 1.0))  # padding rows: log(1), not log(0)
    tgt = tl.load(targets_ptr + rows64, mask=row_ok, other=0)
    x_t = tl.load(logits_ptr + rows64 * stride_n + tgt * stride_v, mask=row_ok, other=0.0).to(ACC)
    tl.store(out_ptr + rows64, x_t - lse, mask=row_ok)
    tl.store(lse_ptr + rows64, lse, mask=row_ok)


@triton.jit
def _backward_kernel(logits_ptr, stride_n, stride_v, targets_ptr, lse_ptr, g_ptr, grad_ptr, v,
                     BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """grad[row, tile] = g[row] * (onehot(target[row]) - exp(logits[row, tile] - lse[row]))."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    ok = cols < v
    x = tl.load(logits_ptr + row * stride_n + cols.to(tl.int64) * stride_v, mask=ok,
                other=float("-inf")).to(ACC)
    lse = tl.load(lse_ptr + row)
    g = tl.load(g_ptr + row).to(ACC)
    tgt = tl.load(targets_ptr + row)
    grad = g * (tl.where(cols == tgt, 1.0, 0.0) - tl.exp(x - lse))
    # grad is written contiguously (n, v), whatever the logits' strides.
    tl.store(grad_ptr + row * v + cols, grad.to(grad_ptr.dtype.element_ty), mask=ok)


def combine_rows(block_s: int) -> int:
    """Rows per combine program: a (rows, block_s) tile of at most 8k partials, no spills."""
    return max(2, min(64, 8192 // block_s))


def _splits(n: int, tiles: int, device: torch.device, num_splits: int | None) -> int:
    """Vocabulary slices per row: enough programs for the device, never an empty slice."""
    want = num_splits if num_splits is not None else triton.cdiv(num_programs_wanted(device), n)
    return max(1, min(tiles, want))


class _GatherLogpsTriton(torch.autograd.Function):
    """Forward: partial logsumexp per (row, slice) + combine. Backward: one tile per program."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, block_v: int,
                num_splits: int | None) -> Tensor:
        n, v = logits.shape
        acc, acc_tl = acc_dtypes(logits)
        tiles = triton.cdiv(v, block_v)
        splits = _splits(n, tiles, logits.device, num_splits)
        tiles_per_split = triton.cdiv(tiles, splits)
        splits = triton.cdiv(tiles, tiles_per_split)  # drop slices that would be empty
        part = torch.empty(n, splits, dtype=acc, device=logits.device)  # (n, splits)
        out = torch.empty(n, dtype=acc, device=logits.device)  # (n,)
        lse = torch.empty(n, dtype=acc, device=logits.device)  # (n,)
        _partial_lse_kernel[(n, splits)](logits, logits.stride(0), logits.stride(1), part, v,
                                         tiles_per_split, BLOCK_V=block_v, ACC=acc_tl,
                                         num_warps=8 if block_v >= 2048 else 4)
        block_s = triton.next_power_of_2(splits)
        block_n = combine_rows(block_s)
        _combine_kernel[(triton.cdiv(n, block_n),)](
            logits, logits.stride(0), logits.stride(1), targets, part, out, lse, n, splits,
            BLOCK_N=block_n, BLOCK_S=block_s, ACC=acc_tl)
        ctx.save_for_backward(logits, targets, lse)
        ctx.block_v = block_v
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        n, v = logits.shape
        _, acc_tl = acc_dtypes(logits)
        grad = torch.empty(n, v, dtype=logits.dtype, device=logits.device)  # (n, v)
        g = grad_out.contiguous()  # (n,); often an expanded stride-0 view of a scalar
        _backward_kernel[(n, triton.cdiv(v, ctx.block_v))](
            logits, logits.stride(0), logits.stride(1), targets, lse, g, grad, v,
            BLOCK_V=ctx.block_v, ACC=acc_tl, num_warps=8 if ctx.block_v >= 2048 else 4)
        return grad, None, None, None


def gather_logps_triton(logits: Tensor, targets: Tensor, *, block_v: int | None = None,
                        num_splits: int | None = None) -> Tensor:
    """Log-probability of ``targets`` under ``logits``, row by row, in fp32 (Triton).

    Args:
        logits: (n, v) fp32/bf16/fp16 (fp64 accumulates in fp64); any strides.
        targets: (n,) int64/int32 in [0, v); out-of-range labels raise ValueError, like the
            reference (select rows before calling, as ``token_logps`` does).
        block_v: vocabulary tile (power of two); default ``BLOCK_V`` on GPU, 1024 elsewhere.
        num_splits: vocabulary slices per row in forward; default: enough for the device.

    Returns:
        (n,) float32 (float64 for float64 logits), equal to
        ``torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)``;
        differentiable w.r.t. ``logits`` (gradient in the logits' dtype, contiguous).
    """
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (n, v) tensor, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    n, v = logits.shape
    targets = check_targets(targets, n, v, "gather_logps_triton")
    if n == 0 or v == 0:
        if v == 0 and n:
            raise ValueError("gather_logps_triton: empty vocabulary")
        # Keep the autograd graph (a zero gradient) without launching an empty grid.
        return logits.sum(-1).to(acc_dtypes(logits)[0])
    check_launchable(logits, targets)
    if block_v is None:
        block_v = BLOCK_V if logits.is_cuda else 1024
    block_v = min(block_v, triton.next_power_of_2(v))
    return _GatherLogpsTriton.apply(logits, targets, block_v, num_splits)
