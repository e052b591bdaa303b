"""Per-token log-probabilities of given labels, from logits or from hidden states.

Axis letters used in shapes: ``b`` batch, ``t`` token, ``v`` vocabulary, ``d`` hidden size,
``n`` flattened rows (selected ``(b, t)`` positions).

Everything here equals a naive one-liner and is tested against it::

    torch.log_softmax(logits.float(), dim=-1).gather(-1, labels[..., None]).squeeze(-1)

The naive line materializes an fp32 copy of all ``(b, t, v)`` logits, keeps its log-softmax for
backward, and builds two more fp32 ``(b, t, v)`` tensors in backward. With v = 49k and a span that
covers 5% of the positions, almost all of that is wasted. So we

1. select only the masked-in rows (the divergence span), compute, and scatter back with zeros;
2. process the selected rows in chunks whose fp32 ``(rows, v)`` block stays under a byte budget
   (``CHUNK_BYTES``, 256 MiB by default), and
3. save only the per-row logsumexp for backward (a custom ``autograd.Function``) and recompute the
   softmax chunk by chunk there, writing straight into the gradient of the logits.

Peak extra memory (beyond the inputs and the unavoidable gradient of the logits, which has the
logits' shape and dtype and is allocated once) is bounded by ``2 * k * v * itemsize(logits)`` for
the copy of the ``k`` selected rows and, in backward, their gradient, plus ``3 * CHUNK_BYTES``
(the fp32 chunk, logsumexp's temporary, and in backward the softmax being turned into a
gradient). ``tests/test_logprobs.py`` asserts this bound; ``experiments/bench_logprobs/memory.py``
measures it against the naive line (at n=8192, v=49152, 5% of rows, bf16 on CPU: 814 MiB vs
4613 MiB peak, 5.7x, of which 768 MiB is the gradient both need).

Log-softmax and every reduction run in fp32 even for bf16 logits: bf16 has 8 mantissa bits, so a
logsumexp over 49k terms in bf16 loses ~2 decimal digits, which is the size of the DPO log-ratios
we are after.

Backends: ``"torch"`` forces the references in this file; ``"triton"`` imports the kernels
``localpref.kernels.gather_logps.gather_logps_triton`` and
``localpref.kernels.linear_gather_logps.linear_gather_logps_triton`` (same signatures as the
references, autograd-capable) and fails with a clear ImportError if they are missing; ``"auto"``
uses the kernels when the input is on CUDA and they import, else the references.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

Backend = Literal["auto", "torch", "triton"]

CHUNK_BYTES = 256 * 2**20
"""Byte budget of one fp32 ``(rows, v)`` chunk in the references (256 MiB: ~1.3k rows at v=49k)."""


def _chunk_rows(v: int, chunk_bytes: int | None) -> int:
    """Rows per chunk so that one fp32 (rows, v) block stays under ``chunk_bytes``."""
    budget = CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    return max(1, budget // (4 * v))


def _acc_dtype(x: Tensor) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs; fp64 stays fp64 (so gradcheck can run in float64)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_targets(targets: Tensor, v: int, n: int, where: str) -> None:
    """Raise ValueError unless ``targets`` is (n,) int32/int64 in [0, v) (shared with the kernels)."""
    # A bad label would otherwise be an opaque CUDA assert (or a silent wrong gather in a kernel).
    if targets.shape != (n,):
        raise ValueError(f"{where}: targets must have shape ({n},), got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{where}: targets must be int64/int32, got {targets.dtype}")
    if n and (int(targets.min()) < 0 or int(targets.max()) >= v):
        raise ValueError(f"{where}: targets must lie in [0, {v}), got range "
                         f"[{int(targets.min())}, {int(targets.max())}] (mask out ignore indices)")


# --------------------------------------------------------------------------------------------
# Reference 1: rows of logits -> log p(target)
# --------------------------------------------------------------------------------------------


class _GatherLogps(torch.autograd.Function):
    """log_softmax(logits.float())[i, targets[i]] with chunked, recomputing backward."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk_rows: int) -> Tensor:
        n, acc = logits.shape[0], _acc_dtype(logits)
        out = torch.empty(n, dtype=acc, device=logits.device)  # (n,)
        lse = torch.empty(n, dtype=acc, device=logits.device)  # (n,)
        for s in range(0, n, chunk_rows):
            x = logits[s:s + chunk_rows].to(acc)  # (rows, v) fp32: the only big temporary
            lse[s:s + chunk_rows] = torch.logsumexp(x, dim=-1)
            tgt = x.gather(-1, targets[s:s + chunk_rows, None]).squeeze(-1)
            out[s:s + chunk_rows] = tgt - lse[s:s + chunk_rows]
        # Only the (n,) logsumexp is saved; the softmax is recomputed in backward.
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        grad_logits = torch.empty_like(logits)  # (n, v) in the logits' dtype
        r = ctx.chunk_rows
        for s in range(0, logits.shape[0], r):
            g = grad_out[s:s + r].to(lse.dtype)  # (rows,)
            # d/dx_j [x_y - lse(x)] = 1[j = y] - softmax(x)_j, times the incoming gradient g.
            p = (logits[s:s + r].to(lse.dtype) - lse[s:s + r, None]).exp_()  # (rows, v) softmax
            p.mul_(-g[:, None])
            p.scatter_add_(-1, targets[s:s + r, None], g[:, None])
            grad_logits[s:s + r] = p
        return grad_logits, None, None


def gather_logps_reference(logits: Tensor, targets: Tensor, *,
                           chunk_bytes: int | None = None) -> Tensor:
    """Log-probability of ``targets`` under ``logits``, row by row, in fp32.

    Args:
        logits: (n, v) any float dtype.
        targets: (n,) int64 in [0, v).
        chunk_bytes: budget of one fp32 (rows, v) chunk; default ``CHUNK_BYTES``.

    Returns:
        (n,) float32 (float64 for float64 input), equal to
        ``torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)``,
        differentiable w.r.t. ``logits`` with peak extra memory of a few fp32 chunks.
        This is the spec of ``localpref.kernels.gather_logps.gather_logps_triton``.
    """
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float (n, v) tensor, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    n, v = logits.shape
    check_targets(targets, v, n, "gather_logps_reference")
    return _GatherLogps.apply(logits, targets.long(), _chunk_rows(v, chunk_bytes))


# --------------------------------------------------------------------------------------------
# Reference 2: hidden states + output projection -> log p(target), never building all logits
# --------------------------------------------------------------------------------------------


class _LinearGatherLogps(torch.autograd.Function):
    """log_softmax(hidden @ weight.T in fp32)[i, targets[i]], logits built chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_rows: int) -> Tensor:
        n, acc = hidden.shape[0], _acc_dtype(hidden)
        w32 = weight.to(acc)  # (v, d); a no-op for fp32 weights
        out = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        for s in range(0, n, chunk_rows):
            x = hidden[s:s + chunk_rows].to(acc) @ w32.T  # (rows, v) fp32 logits
            lse[s:s + chunk_rows] = torch.logsumexp(x, dim=-1)
            tgt = x.gather(-1, targets[s:s + chunk_rows, None]).squeeze(-1)
            out[s:s + chunk_rows] = tgt - lse[s:s + chunk_rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_rows = chunk_rows
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w32 = weight.to(lse.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None  # (n, d)
        grad_w = torch.zeros_like(w32) if need_w else None  # (v, d) fp32 accumulator
        r = ctx.chunk_rows
        for s in range(0, hidden.shape[0], r):
            h = hidden[s:s + r].to(lse.dtype)  # (rows, d)
            g = grad_out[s:s + r].to(lse.dtype)  # (rows,)
            # G = g * (onehot(y) - softmax(h W^T)), the gradient w.r.t. this chunk's logits.
            G = (h @ w32.T - lse[s:s + r, None]).exp_()  # (rows, v)
            G.mul_(-g[:, None])
            G.scatter_add_(-1, targets[s:s + r, None], g[:, None])
            if need_h:
                grad_h[s:s + r] = G @ w32  # (rows, d)
            if need_w:
                grad_w.addmm_(G.T, h)  # (v, d)
        if need_w:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None


def linear_gather_logps_reference(hidden: Tensor, weight: Tensor, targets: Tensor, *,
                                  chunk_bytes: int | None = None) -> Tensor:
    """Log-probability of ``targets`` under logits ``hidden @ weight.T``, without building them all.

    Args:
        hidden: (n, d) any float dtype (final hidden states of the selected positions).
        weight: (v, d) the output projection (lm_head) weight; no bias.
        targets: (n,) int64 in [0, v).
        chunk_bytes: budget of one fp32 (rows, v) logits chunk; default ``CHUNK_BYTES``.

    Returns:
        (n,) float32 (float64 for float64 input), equal to
        ``torch.log_softmax(hidden.float() @ weight.float().T, -1).gather(-1, targets[:, None])
        .squeeze(-1)``: logits are accumulated in fp32 one row chunk at a time and recomputed in
        backward, so peak extra memory is a few fp32 chunks plus an fp32 copy and gradient of
        ``weight``. This is the spec of
        ``localpref.kernels.linear_gather_logps.linear_gather_logps_triton``.
    """
    if hidden.ndim != 2 or weight.ndim != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"expected hidden (n, d) and weight (v, d), got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    n, v = hidden.shape[0], weight.shape[0]
    check_targets(targets, v, n, "linear_gather_logps_reference")
    return _LinearGatherLogps.apply(hidden, weight, targets.long(), _chunk_rows(v, chunk_bytes))


# --------------------------------------------------------------------------------------------
# Dispatch and the public entry points
# --------------------------------------------------------------------------------------------


def _kernel(name: str, backend: Backend, device: torch.device) -> Callable[..., Tensor] | None:
    """The Triton kernel ``name`` for this backend and device, or None for the reference."""
    if backend == "torch":
        return None
    if backend not in ("auto", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "auto" and device.type != "cuda":
        return None
    try:
        import importlib

        module = importlib.import_module(f"localpref.kernels.{name}")
        return getattr(module, f"{name}_triton")
    except ImportError as err:
        if backend == "auto":
            return None  # no triton / kernel not built here: the reference is the fallback
        raise ImportError(f"backend='triton' needs localpref.kernels.{name}.{name}_triton "
                          f"(source: kernels/{name}.py) and triton: {err}") from err


class _SelectRows(torch.autograd.Function):
    """x.index_select(0, idx) whose backward allocates the full-size gradient once.

    Autograd's own backward for ``x[mask]`` / ``index_select`` builds a zeros (b*t, v) tensor
    and then an out-of-place copy of it, doubling the one allocation we cannot avoid.
    """

    @staticmethod
    def forward(ctx, x: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.x_shape = x.shape
        return x.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad_rows: Tensor):
        (idx,) = ctx.saved_tensors
        grad = grad_rows.new_zeros(ctx.x_shape)  # (b*t, v)
        return grad.index_copy_(0, idx, grad_rows), None  # idx has no repeats


def token_logps(logits: Tensor, labels: Tensor, mask: Tensor | None = None, *,
                backend: Backend = "auto") -> Tensor:
    """Per-token log p(label), computed only where ``mask`` is True.

    Args:
        logits: (b, t, v) any float dtype; ``logits[:, i]`` scores ``labels[:, i]`` (already
            shifted by the caller).
        labels: (b, t) int64; values at masked-out positions are never read (may be -100).
        mask: (b, t) bool, or None for all positions.
        backend: "auto" | "torch" | "triton" (see module docstring).

    Returns:
        (b, t) float32 (float64 for float64 logits), 0 where ``mask`` is False, else equal to
        ``torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)``.
        Only the selected rows are copied and computed (see the module docstring for the bound).
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (b, t, v) and labels (b, t), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if mask is None:
        mask = torch.ones_like(labels, dtype=torch.bool)
    if mask.shape != labels.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool with shape {tuple(labels.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    idx = mask.flatten().nonzero().squeeze(1)  # (n,) selected positions of the b*t rows
    rows = _SelectRows.apply(logits.flatten(0, 1), idx)  # (n, v) copy of the selected rows only
    kernel = _kernel("gather_logps", backend, logits.device)
    row_logps = (kernel or gather_logps_reference)(rows, labels.flatten()[idx])  # (n,) fp32
    out = torch.zeros(labels.shape, dtype=row_logps.dtype, device=logits.device)  # (b, t)
    return out.masked_scatter(mask, row_logps)


def token_logps_from_hidden(hidden: Tensor, weight: Tensor, labels: Tensor, *,
                            backend: Backend = "auto") -> Tensor:
    """Per-row log p(label) from final hidden states and the output projection weight.

    Lets a caller select the span positions first (``hidden[mask]``) and never build logits
    for the rest of the sequence.

    Args:
        hidden: (n, d) any float dtype.
        weight: (v, d) lm_head weight (no bias).
        labels: (n,) int64 in [0, v).
        backend: "auto" | "torch" | "triton" (see module docstring).

    Returns:
        (n,) float32 (float64 for float64 input), equal to
        ``torch.log_softmax((hidden @ weight.T).float(), -1).gather(-1, labels[:, None])
        .squeeze(-1)`` up to the matmul being accumulated in fp32.
    """
    kernel = _kernel("linear_gather_logps", backend, hidden.device)
    return (kernel or linear_gather_logps_reference)(hidden, weight, labels)
