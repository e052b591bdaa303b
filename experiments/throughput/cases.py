"""The throughput benchmark's cases: what a system name means, the interleaved order in which the
rounds run them, and the figures and table made of their measurements. Plain Python (no torch),
so tests check it without running a model.

A system is ``BASE[@OPTION]...``, options in any order (the canonical name lists them as below):

* ``BASE``: ``trl`` (TRL's ``DPOTrainer``) or a localpref layout, ``unpacked`` | ``pairs`` | ``trees``;
* ``@fp32`` (the default) | ``@bf16`` | ``@auto``: the precision. localpref: ``trainer.precision``
  (bf16 autocast in ``TokenScorer``); TRL: ``bf16=True`` in its ``TrainingArguments`` (accelerate's
  bf16 autocast). ``auto`` is ``localpref.hardware.resolve_precision``'s choice, for both;
* ``@keep`` | ``@release``: the CPU allocator, ``trainer.cpu_allocator`` (``release``:
  ``localpref.memory.return_freed_memory``). Without it, ``auto``: what ``localpref train`` does,
  and TRL gets the same setting;
* ``@tpm=N``: ``data.tokens_per_micro_batch=N`` (packed layouts only): a step's rows are cut into
  micro-batches of at most N padded tokens each, instead of one micro-batch of all its pairs.

So ``pairs@bf16@tpm=2048`` is localpref's ``pairs`` layout, bf16 autocast, 2048-token micro-batches.

Interleaving (``round_order``): round ``k`` runs one measured step of every case, in the cases'
order rotated by ``k``, so slow and fast stretches of a shared machine fall on every case alike;
all cases of round ``k`` measure the same optimizer step (the same pairs). Figures (``summarize``,
``compare``): per case the median and range of its rounds' step times; a ratio between two cases is
the median over rounds of their step-time ratio within the round (paired: both measured minutes
apart on the same pairs), so drift between rounds cancels.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

BASES = ("trl", "unpacked", "pairs", "trees")
PACKED = ("pairs", "trees")  # the layouts data.tokens_per_micro_batch applies to
PRECISIONS = ("fp32", "bf16", "auto")
ALLOCATORS = ("keep", "release")  # "auto" is written as no option
DATASETS = ("defacto", "trajectory")


@dataclass(frozen=True)
class System:
    base: str  # "trl" | "unpacked" | "pairs" | "trees"
    precision: str = "fp32"  # "fp32" | "bf16" | "auto" (trainer.precision; TRL: bf16=True or not)
    allocator: str = "auto"  # trainer.cpu_allocator: "auto" | "keep" | "release"
    tokens_per_micro_batch: int | None = None  # data.tokens_per_micro_batch (packed layouts)

    @property
    def name(self) -> str:
        options = [self.precision] if self.precision != "fp32" else []
        options += [self.allocator] if self.allocator != "auto" else []
        options += [f"tpm={self.tokens_per_micro_batch}"] if self.tokens_per_micro_batch is not None else []
        return "@".join([self.base, *options])

    @property
    def plain(self) -> System:
        """The same base at fp32 with no option: what ``x base`` compares against."""
        return System(self.base)


GRAMMAR = (f"SYSTEM is BASE[@OPTION]... with BASE one of {'|'.join(BASES)} and OPTION one of "
           f"{'|'.join(PRECISIONS)} (precision), {'|'.join(ALLOCATORS)} (CPU allocator), tpm=N "
           f"(tokens per micro-batch; {'|'.join(PACKED)} only), e.g. pairs@bf16@tpm=2048")


def parse_system(text: str) -> System:
    """``System`` of a name such as ``pairs@bf16@tpm=2048`` (module docstring); ValueError if bad."""
    base, *options = text.strip().split("@")
    if base not in BASES:
        raise ValueError(f"unknown system {text!r}: {GRAMMAR}")
    fields: dict = {}
    for option in options:
        if option in PRECISIONS:
            key, value = "precision", option
        elif option in ALLOCATORS:
            key, value = "allocator", option
        elif option.startswith("tpm=") and option[4:].isdigit() and int(option[4:]) > 0:
            key, value = "tokens_per_micro_batch", int(option[4:])
        else:
            raise ValueError(f"unknown option {option!r} in {text!r}: {GRAMMAR}")
        if key in fields:
            raise ValueError(f"two {key} options in {text!r}")
        fields[key] = value
    if "tokens_per_micro_batch" in fields and base not in PACKED:
        raise ValueError(f"{text!r}: tpm=N cuts packed rows; {base} has none ({'|'.join(PACKED)} only)")
    return System(base, **fields)


def with_precisions(names: list[str], precisions: list[str] | None) -> list[str]:
    """``names`` with each one that names no precision run at every one of ``precisions`` (None:
    as named), in order, without repeats: ``["pairs", "trl@bf16"], ["fp32", "bf16"]`` ->
    ``["pairs", "pairs@bf16", "trl@bf16"]``. Names come back canonical."""
    out: list[str] = []
    for name in names:
        suffix = name.split(":")[-1]  # DATASET:SYSTEM or SYSTEM
        head = name[:len(name) - len(suffix)]
        system = parse_system(suffix)
        named = any(option in PRECISIONS for option in suffix.split("@")[1:])
        variants = [system] if named or not precisions else [
            System(system.base, p, system.allocator, system.tokens_per_micro_batch) for p in precisions]
        out += [head + v.name for v in variants if head + v.name not in out]
    return out


def round_order(n_cases: int, k: int) -> list[int]:
    """Indices of ``n_cases`` cases in the order round ``k`` runs them: rotated by ``k``, so over
    ``n_cases`` rounds every case runs once in every position. (A case always follows the same
    other case, except at the wrap; with a fresh process per run we assume that does not matter.)"""
    shift = k % n_cases if n_cases else 0
    return list(range(shift, n_cases)) + list(range(shift))


def summarize(runs: list[dict], pairs_per_step: int) -> dict:
    """Figures of one case from its rounds' worker outputs (one per round, in round order).

    A round's step time is the median of the steps its worker measured (one, normally);
    ``steers_per_s`` = pairs per step / the median over rounds; ``peak_rss`` the highest of the
    rounds' peaks; ``padding_share`` = padding / padded row tokens of the policy forwards
    (``tokens`` real, ``padded`` rows x longest row), over all measured steps.
    """
    seconds = [statistics.median(r["step_seconds"]) for r in runs]
    steps = sum(len(r["step_seconds"]) for r in runs)
    tokens, padded = sum(r.get("tokens", 0) for r in runs), sum(r.get("padded", 0) for r in runs)
    median = statistics.median(seconds)
    return dict(step_seconds=seconds, median_seconds=median, min_seconds=min(seconds), max_seconds=max(seconds),
                steers_per_s=pairs_per_step / median, peak_rss=max(r["peak_rss"] for r in runs),
                tokens_per_step=tokens / steps, padded_per_step=padded / steps,
                padding_share=1 - tokens / padded if padded else math.nan)


def paired_ratio(faster: list[float], slower: list[float]) -> float:
    """Median over rounds of ``slower[k] / faster[k]``: how many times faster the first case ran
    than the second, round by round (step times of the same rounds, in round order)."""
    if not faster or len(faster) != len(slower):
        return math.nan
    return statistics.median(s / f for f, s in zip(faster, slower))


def best_trl(group: dict[str, dict]) -> str | None:
    """The fastest TRL case (by median step time) of ``group`` (one model and data set) among those
    that differ in precision only (the default allocator)."""
    trl = [name for name in group if parse_system(name).base == "trl" and parse_system(name).allocator == "auto"]
    return min(trl, key=lambda name: group[name]["median_seconds"], default=None)


def compare(results: list[dict]) -> None:
    """Add to each result (figures of ``summarize`` plus ``model``, ``dataset``, ``system``) its
    ratios: ``x_trl`` / ``mem_trl`` against the fastest TRL precision of the same model and data
    (``trl_reference``), ``x_base`` against its own base at fp32 with no option (``pairs@bf16@tpm=2048``
    against ``pairs``; ``trl@bf16`` against ``trl``). Missing references give NaN."""
    for r in results:
        group = {x["system"]: x for x in results if (x["model"], x["dataset"]) == (r["model"], r["dataset"])}
        trl, base = best_trl(group), parse_system(r["system"]).plain.name
        r["trl_reference"] = trl
        r["x_trl"] = paired_ratio(r["step_seconds"], group[trl]["step_seconds"]) if trl else math.nan
        r["mem_trl"] = r["peak_rss"] / group[trl]["peak_rss"] if trl else math.nan
        r["x_base"] = paired_ratio(r["step_seconds"], group[base]["step_seconds"]) if base in group else math.nan


def report(results: list[dict], k: int) -> list[str]:
    """The printed table (results as ``compare`` left them) and the target ratios below it."""
    width = max([len("system")] + [len(r["system"]) for r in results])
    lines = [f"{'model':8} {'data':10} {'system':{width}} {'s/step':>7} {'min-max':>13} {'steers/s':>8} "
             f"{'peak GB':>7} {'x TRL':>6} {'x base':>6} {'mem/TRL':>7} {'tok/step':>8} {'pad %':>5}"]
    for r in results:
        spread = f"{r['min_seconds']:.2f}-{r['max_seconds']:.2f}"
        lines.append(f"{r['model']:8} {r['dataset']:10} {r['system']:{width}} {r['median_seconds']:7.2f} "
                     f"{spread:>13} {r['steers_per_s']:8.3f} {r['peak_rss'] / 1e9:7.2f} {r['x_trl']:6.2f} "
                     f"{r['x_base']:6.2f} {r['mem_trl']:7.2f} {r['tokens_per_step']:8.0f} "
                     f"{100 * r['padding_share']:5.1f}")
    rounds = max((len(r["step_seconds"]) for r in results), default=0)
    lines.append(f"{rounds} interleaved rounds. s/step: median over rounds (min-max); steers/s: pairs per step / "
                 f"median s/step; pad %: padding of the policy forwards' padded rows")
    lines.append("x TRL, x base: median over rounds of the step-time ratio within the round; x base: against "
                 "the same base at fp32 with no option")
    for model, data in dict.fromkeys((r["model"], r["dataset"]) for r in results):
        trl = next(r["trl_reference"] for r in results if (r["model"], r["dataset"]) == (model, data))
        lines.append(f"x TRL, mem/TRL ({model}, {data}): " + (f"against {trl}" if trl else "no TRL case"))
    # The layout targets, at fp32 with no option.
    targets = (("defacto", "pairs", "unpacked", "1.8x"),
               ("trajectory", "trees", "pairs", f"k/2 = {k / 2:.1f}x, k = {k}"))
    for data, fast, slow, target in targets:
        for model in dict.fromkeys(r["model"] for r in results):
            group = {r["system"]: r for r in results if (r["model"], r["dataset"]) == (model, data)}
            if fast in group and slow in group:
                ratio = paired_ratio(group[fast]["step_seconds"], group[slow]["step_seconds"])
                lines.append(f"{fast} / {slow} ({model}, {data}): {ratio:.2f}x (target >= {target})")
    return lines
