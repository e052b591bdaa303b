"""Counting the memory a code path allocates, on any device (used by tests and benchmarks).

On CUDA, ``torch.cuda.max_memory_allocated`` answers this; on CPU there is no allocator
statistic, so ``PeakTensorBytes`` watches ATen ops instead.
"""

from __future__ import annotations

import ctypes
import sys
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


# glibc's mallopt parameter number for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
_M_MMAP_THRESHOLD = -3


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Have glibc serve every CPU allocation of ``threshold`` bytes or more with its own mmap.

    Why: glibc starts with a 128 KiB mmap threshold but raises it (up to 32 MiB) each time a
    mapped block is freed, so after the first step the activations of a forward (tens of MiB
    each) come from the heap, and a heap freed in the middle stays resident. Measured on
    SmolLM2-135M + LoRA, one micro-batch of 4 DeFacto pairs (8 x 791 tokens, CPU): live tensors
    peak at 7.4 GB, the resident set at 13.8 GB; with a fixed 1 MiB threshold the resident set
    peaks at 8.4 GB, and a freed activation goes back to the OS at once. Setting the threshold
    also turns glibc's raising off. No-op (False) off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
