"""Counting the memory a code path allocates, on any device (used by tests and benchmarks).

On CUDA, ``torch.cuda.max_memory_allocated`` answers this; on CPU there is no allocator
statistic, so ``PeakTensorBytes`` watches ATen ops instead.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created by ATen ops while active (forward and backward).

    Each new storage an op returns is counted until it is freed (a finalizer on the storage);
    outputs aliasing an input (views, in-place ops) are not new memory. Scratch space private to
    one kernel (and the numpy buffers of the Triton interpreter) is invisible, so it slightly
    under-counts every path alike.

        with PeakTensorBytes() as meter:
            loss(x).backward()
        meter.peak  # bytes
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                s = t.untyped_storage()
                key = s.data_ptr()
                if key in self.seen or key in inputs or s.nbytes() == 0:
                    continue
                self.seen.add(key)
                self.live += s.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(s, self._free, key, s.nbytes())
        return out
