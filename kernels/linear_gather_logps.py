"""Triton kernel: hidden states + output projection -> log p(target), never writing all logits.

Naive equivalent (the reference, re-exported here as ``reference``; logits accumulate in fp32)::

    torch.log_softmax(hidden.float() @ weight.float().T, -1).gather(-1, targets[:, None])
    .squeeze(-1)

Shapes: ``n`` selected rows (span tokens only, so cost scales with the span, not the sequence),
``d`` hidden size, ``v`` vocabulary.

Forward (one fused kernel + a tiny combine): a ``(row blocks, vocabulary slices)`` grid; each
program computes ``(BLOCK_N, BLOCK_V)`` logit tiles with ``tl.dot`` over ``BLOCK_D`` chunks of
``d`` (fp32 accumulation), folds each tile into a running max / sum of exponentials per row, and
picks the target logit when it falls in the tile. It writes per (row, slice) a partial logsumexp
and the partial target logit; the combine kernel merges slices. Logits live only in registers.

Backward, by vocabulary chunks sized so one ``(n, width)`` block fits in ``GRAD_CHUNK_BYTES``:
a Triton kernel recomputes the logit tiles (the same fp32 ``tl.dot`` as forward, so consistent
with the saved logsumexp) and writes ``G = g * (onehot - softmax)`` for the chunk in the input
dtype; then two cuBLAS matmuls give ``grad_weight[chunk] = G^T @ H`` (written once, no
read-modify-write of the (v, d) gradient) and ``grad_hidden += G @ W[chunk]``. Chunking the
vocabulary rather than the rows matters at d = 4096, v = 128k: row chunks would re-read and
re-write the 1 GiB bf16 ``grad_weight`` once per chunk (~20 ms of traffic on an H100 at n = 8192),
vocabulary chunks re-touch only the (n, d) ``grad_hidden``. Precision: in bf16, ``grad_hidden``
is summed in fp32 when an fp32 (n, d) fits half the budget (spans of up to ~1k rows at d = 4096),
else rounded once per chunk. Doubt written down: a fully fused backward (no ``G`` buffer) would
need an fp32 (n, d) or (v, d) accumulator or recomputing the logits once per ``d`` block; at
d = 4096 we expect both to lose to the bounded buffer plus cuBLAS, but this is unmeasured (no
GPU here).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from localpref.kernels.gather_logps import (acc_dtypes, check_launchable, check_targets,
                                            combine_rows, num_programs_wanted)
from localpref.logprobs import linear_gather_logps_reference as reference

__all__ = ["linear_gather_logps_triton", "reference"]

BLOCKS = (128, 128, 64)
"""(BLOCK_N, BLOCK_V, BLOCK_D) on GPU: an H100-sized bf16 matmul tile (untuned: no GPU here)."""

GRAD_CHUNK_BYTES = 60 * 2**20
"""Backward scratch budget: the (n, width) gradient-of-logits buffer, plus the fp32 grad_hidden
sum when one is used (issue #4 asks for <= 64 MiB beyond inputs, outputs and gradients)."""


@triton.jit
def _logit_tile(h_ptr, shn, shd, w_ptr, swv, swd, rows, cols, n, v, d,
                BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """(BLOCK_N, BLOCK_V) tile of hidden[rows] @ weight[cols].T, accumulated in ACC."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), ACC)
    row_ok = rows < n
    col_ok = cols < v
    for k in range(0, d, BLOCK_D):
        ks = k + tl.arange(0, BLOCK_D)
        k_ok = ks < d
        h = tl.load(h_ptr + rows.to(tl.int64)[:, None] * shn + ks[None, :] * shd,
                    mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_N, BLOCK_D)
        w = tl.load(w_ptr + cols.to(tl.int64)[None, :] * swv + ks[:, None] * swd,
                    mask=col_ok[None, :] & k_ok[:, None], other=0.0)  # (BLOCK_D, BLOCK_V)
        if UPCAST:  # the interpreter has no bf16 matmul; fp64 needs fp64 products
            h = h.to(ACC)
            w = w.to(ACC)
        acc = tl.dot(h, w, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _forward_kernel(h_ptr, shn, shd, w_ptr, swv, swd, targets_ptr, part_ptr, n, v, d,
                    tiles_per_split, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                    BLOCK_D: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
                    PRECISION: tl.constexpr):
    """part[0, r, s] = logsumexp of row r's logits in slice s; part[1, r, s] = its target logit."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    tgt = tl.load(targets_ptr + rows, mask=rows < n, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), ACC)  # running max per row
    s = tl.zeros((BLOCK_N,), ACC)  # running sum of exp(logit - m)
    x_t = tl.zeros((BLOCK_N,), ACC)  # target logit, if it falls in this slice
    for t in range(0, tiles_per_split):
        cols = (split * tiles_per_split + t) * BLOCK_V + tl.arange(0, BLOCK_V)
        acc = _logit_tile(h_ptr, shn, shd, w_ptr, swv, swd, rows, cols, n, v, d,
                          BLOCK_N, BLOCK_V, BLOCK_D, ACC, UPCAST, PRECISION)
        logits = tl.where((cols < v)[None, :], acc, float("-inf"))
        m_new = tl.maximum(m, tl.max(logits, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # avoid inf - inf
        s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(logits - m_ref[:, None]), axis=1)
        m = m_new
        x_t += tl.sum(tl.where(cols[None, :] == tgt[:, None], acc, 0.0), axis=1)
    lse = m + tl.log(s)  # slices are never empty, so s >= 1
    slot = rows.to(tl.int64) * splits + split
    ok = rows < n
    tl.store(part_ptr + slot, lse, mask=ok)
    tl.store(part_ptr + n * splits + slot, x_t, mask=ok)


@triton.jit
def _combine_kernel(part_ptr, out_ptr, lse_ptr, n, splits, BLOCK_N: tl.constexpr,
                    BLOCK_S: tl.constexpr):
    """lse[r] = logsumexp_s part[0, r, s]; out[r] = sum_s part[1, r, s] - lse[r]."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n
    s_idx = tl.arange(0, BLOCK_S)
    ok = row_ok[:, None] & (s_idx[None, :] < splits)
    slot = rows.to(tl.int64)[:, None] * splits + s_idx[None, :]
    part = tl.load(part_ptr + slot, mask=ok, other=float("-inf"))  # (BLOCK_N, BLOCK_S)
    x_t = tl.sum(tl.load(part_ptr + n * splits + slot, mask=ok, other=0.0), axis=1)
    m = tl.max(part, axis=1)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(part - m_ref[:, None]), axis=1)
    lse = m_ref + tl.log(tl.where(row_ok, total, 1.0))
    tl.store(out_ptr + rows, x_t - lse, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)


@triton.jit
def _grad_logits_kernel(h_ptr, shn, shd, w_ptr, swv, swd, targets_ptr, lse_ptr, g_ptr, grad_ptr,
                        sgn, col0, n, v, d, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_D: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr,
                        PRECISION: tl.constexpr):
    """grad[r, c] = g[r] * (1[col0 + c == target[r]] - exp(logit[r, c] - lse[r])), recomputed.

    ``w_ptr`` points at vocabulary row ``col0`` (a column chunk of width ``v``); ``grad`` has
    row stride ``sgn``.
    """
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < n
    acc = _logit_tile(h_ptr, shn, shd, w_ptr, swv, swd, rows, cols, n, v, d,
                      BLOCK_N, BLOCK_V, BLOCK_D, ACC, UPCAST, PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(ACC)
    tgt = tl.load(targets_ptr + rows, mask=row_ok, other=-1)
    onehot = tl.where(col0 + cols[None, :] == tgt[:, None], 1.0, 0.0)
    grad = g[:, None] * (onehot - tl.exp(acc - lse[:, None]))
    ok = row_ok[:, None] & (cols < v)[None, :]
    tl.store(grad_ptr + rows.to(tl.int64)[:, None] * sgn + cols[None, :],
             grad.to(grad_ptr.dtype.element_ty), mask=ok)


def _dot_config(x: Tensor) -> dict:
    """Constexprs for tl.dot: accumulation dtype, whether to upcast tiles, fp32 precision."""
    _, acc_tl = acc_dtypes(x)
    # Interpreter: no bf16 matmul, so upcast. fp64: products in fp64. GPU bf16/fp16: tensor cores.
    upcast = x.device.type != "cuda" or x.dtype == torch.float64
    # fp32 inputs follow torch's own matmul setting, so the kernel agrees with the reference.
    tf32 = x.dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
    return dict(ACC=acc_tl, UPCAST=upcast, PRECISION="tf32" if tf32 else "ieee")


class _LinearGatherLogpsTriton(torch.autograd.Function):
    """Forward: fused matmul + online logsumexp. Backward: recomputed G by vocab chunks + cuBLAS."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, blocks: tuple[int, int, int],
                num_splits: int | None, grad_chunk_bytes: int) -> Tensor:
        n, d = hidden.shape
        v = weight.shape[0]
        acc, _ = acc_dtypes(hidden)
        bn, bv, bd = blocks
        row_blocks, tiles = triton.cdiv(n, bn), triton.cdiv(v, bv)
        want = num_splits or triton.cdiv(num_programs_wanted(hidden.device), row_blocks)
        tiles_per_split = triton.cdiv(tiles, max(1, min(tiles, want)))
        splits = triton.cdiv(tiles, tiles_per_split)  # no empty slice
        part = torch.empty(2, n, splits, dtype=acc, device=hidden.device)  # (lse, target logit)
        out = torch.empty(n, dtype=acc, device=hidden.device)  # (n,)
        lse = torch.empty(n, dtype=acc, device=hidden.device)  # (n,)
        cfg = _dot_config(hidden)
        _forward_kernel[(row_blocks, splits)](
            hidden, *hidden.stride(), weight, *weight.stride(), targets, part, n, v, d,
            tiles_per_split, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, **cfg,
            num_warps=8 if bn * bv >= 128 * 128 else 4, num_stages=3)
        block_s = triton.next_power_of_2(splits)
        block_n = combine_rows(block_s)
        _combine_kernel[(triton.cdiv(n, block_n),)](part, out, lse, n, splits, BLOCK_N=block_n,
                                                    BLOCK_S=block_s)
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.blocks, ctx.grad_chunk_bytes = blocks, grad_chunk_bytes
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_h or need_w):
            return None, None, None, None, None, None
        (n, d), v = hidden.shape, weight.shape[0]
        bn, bv, bd = ctx.blocks
        cfg = _dot_config(hidden)
        g = grad_out.contiguous()  # (n,)
        # grad_hidden sums over vocabulary chunks. In bf16/fp16 keep that sum in fp32 when it
        # (n*d*4 bytes) and the per-chunk product (n*d*2) fit in half the budget (the span
        # regime); otherwise it is rounded once per chunk.
        budget = ctx.grad_chunk_bytes
        exact = hidden.dtype in (torch.float32, torch.float64)
        fp32_sum = need_h and not exact and n * d * 6 <= budget // 2
        budget = budget // 2 if fp32_sum else budget
        # Vocabulary chunks of `width` columns: G (n, width) stays under the rest of the budget.
        width = max(bv, budget // (n * hidden.element_size()) // bv * bv)
        width = min(width, triton.cdiv(v, bv) * bv)
        G = torch.empty(n, width, dtype=hidden.dtype, device=hidden.device)  # reused per chunk
        grad_w = torch.empty(v, d, dtype=weight.dtype, device=weight.device) if need_w else None
        grad_h = None
        if need_h:
            grad_h = torch.zeros(n, d, dtype=torch.float32 if fp32_sum else hidden.dtype,
                                 device=hidden.device)
        for c0 in range(0, v, width):
            w_c = weight[c0:c0 + width]  # (cw, d) view
            G_c = G[:, :w_c.shape[0]]  # (n, cw)
            _grad_logits_kernel[(triton.cdiv(n, bn), triton.cdiv(w_c.shape[0], bv))](
                hidden, *hidden.stride(), w_c, *w_c.stride(), targets, lse, g, G_c, G.stride(0),
                c0, n, w_c.shape[0], d, BLOCK_N=bn, BLOCK_V=bv, BLOCK_D=bd, **cfg,
                num_warps=8 if bn * bv >= 128 * 128 else 4, num_stages=3)
            if need_w:  # each chunk of grad_weight is written once: one rounding, no RMW
                torch.mm(G_c.T, hidden, out=grad_w[c0:c0 + width])  # (cw, n) @ (n, d)
            if need_h and fp32_sum:
                grad_h += G_c @ w_c  # (n, cw) @ (cw, d), rounded per chunk, summed in fp32
            elif need_h:
                grad_h.addmm_(G_c, w_c)
        if need_h:
            grad_h = grad_h.to(hidden.dtype)
        return grad_h, grad_w, None, None, None, None


def linear_gather_logps_triton(hidden: Tensor, weight: Tensor, targets: Tensor, *,
                               blocks: tuple[int, int, int] | None = None,
                               num_splits: int | None = None,
                               grad_chunk_bytes: int = GRAD_CHUNK_BYTES) -> Tensor:
    """Log-probability of ``targets`` under logits ``hidden @ weight.T`` (Triton, fused).

    Args:
        hidden: (n, d) fp32/bf16/fp16 (fp64 accumulates in fp64); any strides.
        weight: (v, d) lm_head weight (no bias); any strides. If the dtypes differ, both are
            cast to the wider one (the gradients come back in each input's own dtype).
        targets: (n,) int64/int32 in [0, v); out-of-range labels raise ValueError.
        blocks: (BLOCK_N, BLOCK_V, BLOCK_D), powers of two >= 16; default ``BLOCKS`` on GPU.
        num_splits: vocabulary slices per row block in forward; default: enough for the device.
        grad_chunk_bytes: budget of the backward's (n, width) buffer (at least BLOCK_V wide).

    Returns:
        (n,) float32 (float64 for float64 input), equal to
        ``torch.log_softmax(hidden.float() @ weight.float().T, -1).gather(-1, targets[:, None])
        .squeeze(-1)``; differentiable w.r.t. ``hidden`` and ``weight``.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (n, d) and weight (v, d), got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    if not (hidden.is_floating_point() and weight.is_floating_point()):
        raise ValueError(f"hidden and weight must be float, got {hidden.dtype} and {weight.dtype}")
    if hidden.dtype != weight.dtype:
        # Mixed precision (e.g. bf16 activations, fp32 lm_head): compute in the wider dtype, as
        # the reference does; usually that copies only the small (n, d) hidden states.
        common = torch.promote_types(hidden.dtype, weight.dtype)
        hidden, weight = hidden.to(common), weight.to(common)
    (n, d), v = hidden.shape, weight.shape[0]
    targets = check_targets(targets, n, v, "linear_gather_logps_triton")
    if n == 0:  # keep the graph (zero gradients) without launching an empty grid
        return (hidden.sum(-1) + 0 * weight.sum()).to(acc_dtypes(hidden)[0])
    check_launchable(hidden, weight, targets)
    if blocks is None:
        # A few span rows would leave most of a 128-row tile empty: halve it.
        blocks = ((64 if n <= 64 else BLOCKS[0], *BLOCKS[1:]) if hidden.is_cuda
                  else (16, 64, 32))
    if min(blocks) < 16 or any(b & (b - 1) for b in blocks):
        raise ValueError(f"blocks must be powers of two >= 16 (tl.dot), got {blocks}")
    return _LinearGatherLogpsTriton.apply(hidden, weight, targets, tuple(blocks), num_splits,
                                          grad_chunk_bytes)
