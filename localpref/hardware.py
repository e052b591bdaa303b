"""What the machine computes fast, and the two choices made from it: autocast precision and the
CPU allocator (``trainer.precision`` and ``trainer.cpu_allocator``, both ``auto`` by default).

Precision. bf16 autocast pays where the matmuls run natively in bf16: a CUDA device that supports
it, or a CPU with AMX-BF16 tiles (Intel Xeon since Sapphire Rapids), where a [4096x576]x[576x1536]
matmul took 6.9 ms in bf16 against 50.5 ms in fp32 (7.3x, 2 threads). Without them (AVX-512 or
AVX2 only, AVX512-BF16 included: not measured here) oneDNN converts and computes in fp32 and every
cast is extra work, so ``auto`` is fp32 there. The decision reads ``/proc/cpuinfo``'s ``amx_bf16``
flag; ``resolve_precision`` is the one place it is made.

Allocator (CPU only). glibc serves large blocks with ``mmap`` and raises its threshold as they are
freed; ``release`` fixes the threshold at 1 MiB (``localpref.memory.return_freed_memory``) so a
freed activation leaves the resident set at once, at the price of a fresh mapping (page faults)
for every large tensor; ``keep`` leaves glibc as it is. Measured on SmolLM2-135M + LoRA, 4
DeFacto steers a step, ``data.layout=pairs`` (``experiments/throughput``):

    CPU                      precision   release s/step (peak RSS)   keep s/step (peak RSS)
    AMD EPYC, 2 vCPU         fp32        28.2 (4.8 GB)               19.2 (7.4 GB)
    Xeon with AMX, 2 vCPU    fp32         9.3                         6.2
    Xeon with AMX, 2 vCPU    bf16         6.3 (4.3 GB)                3.5 (6.6 GB)

``keep`` was 1.5-1.8x faster on every CPU and precision measured, and its peak stays under half of
TRL's DPOTrainer on the same steers (14.4 GB); ``auto`` is therefore ``keep``. Choose ``release``
when memory is what binds (several jobs on one box, long rows in the padded layout: 13.8 GB RSS
for 8 x 791 tokens with ``keep``, 8.4 GB with ``release``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
CPU_ALLOCATORS = ("auto", "keep", "release")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """Does ``device`` run bf16 matmuls natively (CUDA with bf16 support; a CPU with AMX-BF16)?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return "amx_bf16" in cpu_flags()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``trainer.precision`` -> "fp32" | "bf16" (``auto``: bf16 where ``fast_bf16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "fp32"
    return precision


def resolve_cpu_allocator(allocator: str) -> str:
    """``trainer.cpu_allocator`` -> "keep" | "release" (``auto``: keep, see the module docstring)."""
    if allocator not in CPU_ALLOCATORS:
        raise ValueError(f"trainer.cpu_allocator must be one of {CPU_ALLOCATORS}, got {allocator!r}")
    return "keep" if allocator == "auto" else allocator
