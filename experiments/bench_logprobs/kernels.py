"""Time and peak memory of the per-token log-prob paths: Triton kernels, their PyTorch references,
the naive ``log_softmax().gather()`` line, and Liger-Kernel's fused linear cross entropy (peer).

GPU (the shapes of issue #4: n in {1024, 8192} and a 5% span selection, d = 4096,
v in {49152, 128256}, fp32 and bf16)::

    .venv/bin/python experiments/bench_logprobs/kernels.py

CPU smoke run (tiny shapes; kernels and Liger run under the Triton interpreter, so their times
mean nothing, but peak memory of every path is measured the same way)::

    .venv/bin/python experiments/bench_logprobs/kernels.py --device cpu --quick

Writes ``<out>/kernels-<device>.json`` (one record per case x path x mode) and ``.png``.
Memory: CUDA uses the caching allocator's peak above what was allocated before the call; CPU
counts live tensor storages created by ATen ops inside the call (``PeakTensorBytes``). "extra" is
that peak minus the outputs and gradients the call returns, i.e. the scratch a path needs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Dense peaks (bytes/s, FLOP/s by dtype) from NVIDIA datasheets, SXM parts; fp32 means tf32
# tensor cores when torch's matmul precision allows it, else the plain fp32 pipe.
PEAKS = {
    "H100": (3.35e12, {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    "H200": (4.8e12, {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}),
    "A100": (2.04e12, {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--ops", default="logits,linear")
    p.add_argument("--tf32", action="store_true", help="allow tf32 for fp32 matmuls (all paths)")
    p.add_argument("--paths", default="naive,reference,triton,liger")
    p.add_argument("--n", help="comma-separated row counts (overrides the preset)")
    p.add_argument("--d", type=int, help="hidden size (overrides the preset)")
    p.add_argument("--v", help="comma-separated vocabulary sizes (overrides the preset)")
    p.add_argument("--fracs", help="comma-separated selected-row fractions (overrides the preset)")
    p.add_argument("--repeats", type=int, default=1, help="CPU timing repeats (median)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--tag", default="", help="suffix of the output file names")
    return p.parse_args()


ARGS = parse_args()
if ARGS.device == "cpu":  # must precede the first import of triton (kernels, Liger)
    os.environ.setdefault("TRITON_INTERPRET", "1")


from localpref.kernels.gather_logps import gather_logps_triton  # noqa: E402
from localpref.kernels.linear_gather_logps import linear_gather_logps_triton  # noqa: E402
from localpref.memory import PeakTensorBytes  # noqa: E402
from localpref.logprobs import gather_logps_reference, linear_gather_logps_reference  # noqa: E402


def peak_bytes(run: Callable[[], list[torch.Tensor]], device: str) -> tuple[int, int]:
    """(peak bytes above the starting point, bytes of the tensors ``run`` returns)."""
    if device == "cuda":
        run()  # one-time allocations (cuBLAS workspace, Triton compilation) are not the path's
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        kept = run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with PeakTensorBytes() as meter:
            kept = run()
        peak = meter.peak
    return peak, sum(t.untyped_storage().nbytes() for t in kept if t is not None)


def time_ms(run: Callable[[], object], device: str, repeats: int) -> float:
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(run, warmup=10, rep=50, return_mode="median")
    times = []  # the memory measurement already ran it once (interpreter rewrites, allocator)
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def logits_paths(n: int, v: int, dtype: torch.dtype, frac: float, device: str):
    """Paths for rows of logits (n, v) of which ``frac`` are selected (a span)."""
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (2 * torch.randn(n, v, device=device, generator=gen)).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), device=device, generator=gen)
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[torch.randperm(n, device=device, generator=gen)[:max(1, round(frac * n))]] = True
    all_rows = bool(mask.all())

    def selected(fn):
        # The loss selects span rows first (token_logps does the same); with every row
        # selected the copy is skipped so the kernel's own bandwidth shows.
        return lambda x: fn(x if all_rows else x[mask], targets if all_rows else targets[mask])

    def naive(x):  # over every row, masked afterwards, as an unselected loss would
        lp = torch.log_softmax(x.float(), -1).gather(-1, targets[:, None]).squeeze(-1)
        return torch.where(mask, lp, 0.0)

    paths = {"naive": naive, "reference": selected(gather_logps_reference),
             "triton": selected(gather_logps_triton)}
    return paths, [logits], int(mask.sum())


def linear_paths(n: int, d: int, v: int, dtype: torch.dtype, frac: float, device: str):
    """Paths for hidden states (n, d) and lm_head weight (v, d), ``frac`` of rows selected."""
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, d, device=device, generator=gen).to(dtype).requires_grad_()
    weight = (torch.randn(v, d, device=device, generator=gen) / d**0.5).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), device=device, generator=gen)
    keep = torch.randperm(n, device=device, generator=gen)[:max(1, round(frac * n))]
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[keep] = True
    all_rows = bool(mask.all())

    def selected(fn):
        return lambda h, w: fn(h if all_rows else h[mask], w,
                               targets if all_rows else targets[mask])

    def naive(h, w):
        lp = torch.log_softmax((h @ w.T).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
        return torch.where(mask, lp, 0.0)

    def liger(h, w, t):  # the peer returns a summed NLL; negate so every path is a log-prob
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return -liger_fused_linear_cross_entropy(h, w, t, reduction="sum")

    paths = {"naive": naive, "reference": selected(linear_gather_logps_reference),
             "triton": selected(linear_gather_logps_triton), "liger": selected(liger)}
    return paths, [hidden, weight], int(mask.sum())


def measure(fn, inputs: list[torch.Tensor], device: str, backward: bool, repeats: int):
    """(ms, peak bytes, extra bytes) of fn(*inputs), with or without the backward pass."""
    def run() -> list[torch.Tensor]:
        if not backward:
            with torch.no_grad():
                return [fn(*inputs)]
        out = fn(*inputs)
        grads = torch.autograd.grad(out.sum(), inputs)
        return [out, *grads]

    peak, kept = peak_bytes(run, device)
    return time_ms(run, device, repeats), peak, peak - kept


def device_peaks(device: str) -> tuple[float | None, dict[str, float]]:
    if device != "cuda":
        return None, {}
    name = torch.cuda.get_device_name()
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None, {}


def shapes(args: argparse.Namespace) -> tuple[list[int], int, list[int], list[float]]:
    """(n values, d, v values, selected fractions): the preset, then any overrides."""
    if args.quick:
        ns, d, vs, fracs = [32], 32, [1000, 3001], [1.0, 0.25]
    else:
        ns, d, vs, fracs = [1024, 8192], 4096, [49152, 128256], [1.0, 0.05]
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    return (ints(args.n) if args.n else ns, args.d or d, ints(args.v) if args.v else vs,
            [float(x) for x in args.fracs.split(",")] if args.fracs else fracs)


def main() -> None:
    device = ARGS.device
    if ARGS.tf32:
        torch.set_float32_matmul_precision("high")
    bandwidth, flops = device_peaks(device)
    ns, d, vs, fracs = shapes(ARGS)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"device={device} ({name}) d={d}")
    print(f"{'op':7}{'path':10}{'dtype':6}{'n':>6}{'rows':>6}{'v':>7} {'mode':8}{'ms':>10}"
          f"{'peak MiB':>10}{'extra MiB':>10}  rate")
    records = []
    cases = itertools.product(ARGS.ops.split(","), ARGS.dtypes.split(","), ns, vs, fracs)
    for op, dname, n, v, frac in cases:
        records += bench_case(op, DTYPES[dname], n, d, v, frac, device, bandwidth, flops)
    ARGS.out.mkdir(parents=True, exist_ok=True)
    stem = ARGS.out / "-".join(x for x in ("kernels", device, "quick" * ARGS.quick, ARGS.tag) if x)
    meta = dict(device=device, name=torch.cuda.get_device_name() if device == "cuda" else "cpu",
                torch=torch.__version__, tf32=ARGS.tf32, peak_bandwidth=bandwidth, peak_flops=flops)
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, records=records), indent=1))
    summarize(records, device)
    plot(records, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and {stem}.png")


def bench_case(op: str, dtype: torch.dtype, n: int, d: int, v: int, frac: float, device: str,
               bandwidth: float | None, flops: dict) -> list[dict]:
    """Every wanted path of one shape, forward-only and forward + backward; prints each line."""
    if op == "logits":
        paths, inputs, rows = logits_paths(n, v, dtype, frac, device)
    else:
        paths, inputs, rows = linear_paths(n, d, v, dtype, frac, device)
    dname = next(k for k, x in DTYPES.items() if x == dtype)
    records = []
    for path, fn in paths.items():
        if path not in ARGS.paths.split(","):
            continue
        for mode in ("fwd", "fwd+bwd"):
            rec = dict(op=op, path=path, dtype=dname, n=n, rows=rows, d=d, v=v, mode=mode)
            line = f"{op:7}{path:10}{dname:6}{n:>6}{rows:>6}{v:>7} {mode:8}"
            try:
                ms, peak, extra = measure(fn, inputs, device, mode == "fwd+bwd", ARGS.repeats)
            except torch.OutOfMemoryError:
                print(line + " out of memory")
                records.append(dict(rec, error="out of memory"))
                continue
            rec.update(ms=ms, peak_bytes=peak, extra_bytes=extra)
            if device == "cuda":
                rec.update(rates(rec, dtype, bandwidth, flops))
            records.append(rec)
            print(f"{line}{ms:10.3f}{peak / 2**20:10.1f}{extra / 2**20:10.1f}  "
                  f"{rec.get('rate', '')}")
    return records


def rates(rec: dict, dtype: torch.dtype, bandwidth: float | None, flops: dict) -> dict:
    """Achieved GB/s (logits path: memory bound) or TFLOP/s (linear path: matmul bound)."""
    s = rec["ms"] / 1e3
    if rec["op"] == "logits":
        rows = rec["n"] if rec["path"] == "naive" else rec["rows"]
        # forward reads the rows once; backward reads them again and writes the gradient.
        nbytes = rows * rec["v"] * dtype.itemsize * (3 if rec["mode"] == "fwd+bwd" else 1)
        out = dict(gbps=nbytes / s / 1e9, rate=f"{nbytes / s / 1e9:.0f} GB/s")
        if bandwidth:
            out["frac_of_peak"] = nbytes / s / bandwidth
            out["rate"] += f" ({100 * out['frac_of_peak']:.0f}% of peak)"
        return out
    rows = rec["n"] if rec["path"] == "naive" else rec["rows"]
    # Model FLOPs: 2ndv forward, 2x that for the two gradient matmuls (recompute not counted).
    nflop = 2 * rows * rec["d"] * rec["v"] * (3 if rec["mode"] == "fwd+bwd" else 1)
    out = dict(tflops=nflop / s / 1e12, rate=f"{nflop / s / 1e12:.1f} TFLOP/s")
    key = "bf16" if dtype == torch.bfloat16 else ("tf32" if ARGS.tf32 else "fp32")
    if key in flops:
        out["frac_of_peak"] = nflop / s / flops[key]
        out["rate"] += f" ({100 * out['frac_of_peak']:.0f}% of peak)"
    return out


def summarize(records: list[dict], device: str) -> None:
    """The issue's targets (GPU) and the memory ratios against naive (any device)."""
    records = [r for r in records if "ms" in r]  # skip cases that ran out of memory
    def find(**kw):
        return next((r for r in records if all(r.get(k) == x for k, x in kw.items())), None)

    print("\nPeak memory vs naive (fwd+bwd):")
    for r in records:
        if r["path"] != "naive" and r["mode"] == "fwd+bwd":
            nv = find(op=r["op"], path="naive", dtype=r["dtype"], n=r["n"], v=r["v"],
                      rows=r["rows"], mode="fwd+bwd")
            if nv:
                ratio = nv["peak_bytes"] / max(1, r["peak_bytes"])
                print(f"  {r['op']:7}{r['path']:10}{r['dtype']:5} n={r['n']} rows={r['rows']} "
                      f"v={r['v']}: {r['peak_bytes'] / 2**20:8.1f} MiB vs naive "
                      f"{nv['peak_bytes'] / 2**20:8.1f} MiB (naive/this {ratio:.1f}); "
                      f"extra {r['extra_bytes'] / 2**20:.1f} MiB")
    if device != "cuda":
        return
    print("\nTargets (issue #4, H100):")
    fw = find(op="logits", path="triton", dtype="bf16", n=8192, rows=8192, v=128256, mode="fwd")
    if fw:
        print(f"  logits fwd n=8192 v=128256 bf16: {fw['ms']:.3f} ms, "
              f"{100 * fw.get('frac_of_peak', 0):.0f}% of peak bandwidth (target >= 78%, 0.80 ms)")
    lin = find(op="linear", path="triton", dtype="bf16", n=8192, rows=8192, v=128256,
               mode="fwd+bwd")
    if lin:
        print(f"  linear fwd+bwd n=8192 d=4096 v=128256 bf16: {lin['ms']:.1f} ms (target <= 70 ms)")
    for r in records:
        if r["path"] == "triton" and r["rows"] < r["n"]:
            full = find(op=r["op"], path="triton", dtype=r["dtype"], n=r["n"], rows=r["n"],
                        v=r["v"], mode=r["mode"])
            if full:
                print(f"  {r['op']} {r['mode']} {r['dtype']} n={r['n']} v={r['v']}: time ratio "
                      f"{r['ms'] / full['ms']:.3f} for row ratio {r['rows'] / r['n']:.3f}")
    worst = max((r["extra_bytes"] for r in records if r["path"] == "triton"), default=0)
    print(f"  worst extra memory of the kernels: {worst / 2**20:.1f} MiB (target <= 64 MiB)")


COLORS = {"naive": "tab:gray", "reference": "tab:blue", "triton": "tab:red", "liger": "tab:green"}


def plot(records: list[dict], path: Path) -> None:
    """Time and peak memory of every path (fwd+bwd), one panel per op and measure."""
    records = [r for r in records if "ms" in r]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = sorted({r["op"] for r in records})
    fig, axes = plt.subplots(2, len(ops), figsize=(7 * len(ops), 8), squeeze=False)
    for j, op in enumerate(ops):
        rs = [r for r in records if r["op"] == op and r["mode"] == "fwd+bwd"]
        cases = sorted({(r["dtype"], r["n"], r["rows"], r["v"]) for r in rs})
        paths = [p for p in COLORS if any(r["path"] == p for r in rs)]
        width = 0.8 / max(1, len(paths))
        for i, key in enumerate(("ms", "peak_bytes")):
            ax = axes[i][j]
            for k, p in enumerate(paths):
                vals = [next((r[key] for r in rs if r["path"] == p and
                              (r["dtype"], r["n"], r["rows"], r["v"]) == c), 0) for c in cases]
                vals = [x / 2**20 if key == "peak_bytes" else x for x in vals]
                ax.bar([c + k * width for c in range(len(cases))], vals, width, label=p,
                       color=COLORS[p])
            ax.set_xticks([c + 0.4 - width / 2 for c in range(len(cases))])
            ax.set_xticklabels([f"{dt}\nn={n}\nrows={r}\nv={v}" for dt, n, r, v in cases],
                               fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("ms (fwd+bwd)" if key == "ms" else "peak MiB (fwd+bwd)")
            ax.set_title(f"{op} path")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
