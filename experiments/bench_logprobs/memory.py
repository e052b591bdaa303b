"""Peak memory of per-token log-probs, forward + backward: naive line vs localpref's path.

Usage:
    .venv/bin/python experiments/bench_logprobs/memory.py            # n=8192, v=49152, 5%, bf16
    .venv/bin/python experiments/bench_logprobs/memory.py --device cuda

Variants (all score the same masked-in rows and backpropagate a sum of their log-probs):
    naive           log_softmax(logits.float()).gather(labels) over all n rows, then masked:
                    what one writes without thinking (TRL's and DPO-repo's eager path)
    naive_selected  the same line on logits[mask] only: row selection without chunking
    localpref       localpref.logprobs.token_logps(logits, labels, mask, backend="torch"):
                    row selection + fp32 chunks + recomputing backward

How memory is measured (each variant in a fresh subprocess, so no allocator state is shared):
    CPU   peak resident set size (``ru_maxrss``) after the fwd+bwd, minus the peak after creating
          the inputs. glibc serves these large blocks with mmap and unmaps them on free, so RSS
          follows live tensor memory; the figure is physical memory, not our own accounting.
    CUDA  ``torch.cuda.max_memory_allocated`` minus the memory allocated before the fwd+bwd.
The gradient of the logits (n, v in the logits' dtype) is part of every variant's peak: it
is the output of backward, not overhead. We report it separately and the ratio with and
without it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = ("naive", "naive_selected", "localpref")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def child(args: argparse.Namespace) -> dict:
    """Run one variant once and return its measured peak (MiB above the inputs)."""
    import torch

    from localpref.logprobs import token_logps

    dtype = getattr(torch, DTYPES[args.dtype])
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(1, args.n, args.v, generator=g, device=device, dtype=dtype)
    logits.requires_grad_()
    labels = torch.randint(0, args.v, (1, args.n), generator=g, device=device)
    mask = torch.rand(1, args.n, generator=g, device=device) < args.frac

    def rss_mib() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = rss_mib()
    t0 = time.perf_counter()
    if args.variant == "naive":
        lp = torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)
        torch.where(mask, lp, 0.0).sum().backward()
    elif args.variant == "naive_selected":
        rows = logits[mask]  # (k, v)
        lp = torch.log_softmax(rows.float(), -1).gather(-1, labels[mask][:, None])
        lp.sum().backward()
    else:
        token_logps(logits, labels, mask, backend="torch").sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = rss_mib()
    return dict(variant=args.variant, peak_above_inputs_mib=round(peak - base, 1),
                seconds=round(time.perf_counter() - t0, 2), rows_selected=int(mask.sum()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=8192, help="rows (b * t positions)")
    p.add_argument("--v", type=int, default=49152, help="vocabulary size (SmolLM2: 49152)")
    p.add_argument("--frac", type=float, default=0.05, help="fraction of rows in the span mask")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--device", default="cpu")
    p.add_argument("--variant", choices=VARIANTS, help="internal: run one variant and exit")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return

    results = []
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--n", str(args.n),
               "--v", str(args.v), "--frac", str(args.frac), "--dtype", args.dtype,
               "--device", args.device]
        line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
    itemsize = {"bf16": 2, "fp16": 2, "fp32": 4}[args.dtype]
    grad_mib = args.n * args.v * itemsize / 2**20
    print(f"n={args.n} v={args.v} span={args.frac:.0%} dtype={args.dtype} device={args.device}"
          f"  (logits and their gradient: {grad_mib:.0f} MiB each)")
    by = {r["variant"]: r for r in results}
    ours = by["localpref"]["peak_above_inputs_mib"]
    for r in results:
        peak = r["peak_above_inputs_mib"]
        print(f"  {r['variant']:15s} peak {peak:8.1f} MiB  (minus gradient {peak - grad_mib:8.1f})"
              f"  {r['seconds']:6.2f} s  ratio to localpref {peak / ours:5.2f}x"
              f" / {(peak - grad_mib) / max(ours - grad_mib, 1.0):6.1f}x without gradient")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(config=vars(args), gradient_mib=grad_mib, results=results), f, indent=1)


if __name__ == "__main__":
    main()
