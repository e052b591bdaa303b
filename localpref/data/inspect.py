"""Show which tokens each steer trains on, and statistics over a steer file.

``inspect_steers`` returns the statistics (``InspectStats``, testable); ``render_steer`` and
``render_stats`` draw them with rich. In a rendered steer the prompt is dim, the accepted prefix
plain, the trained-on span tokens highlighted (green on the chosen side, red on the rejected
side, alternating shades so token boundaries show), and untrained tokens after the span (the
shared tail) dim italic. Each side also lists its span tokens exactly, as Python string reprs.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from localpref.data.errors import OnError, SkipCounter
from localpref.data.load import SteerList, load_steers
from localpref.data.schema import Steer

SPAN_STYLES = {"chosen": ("bold black on green3", "bold black on dark_sea_green2"),
               "rejected": ("bold black on red3", "bold black on light_pink3")}


@dataclass
class InspectStats:
    steers: int = 0  # valid steers loaded (trajectories expanded)
    tokenized: int = 0  # steers that tokenized within the limits
    accepted_records: int = 0  # trajectories without any correction
    skipped_load: dict[str, int] = field(default_factory=dict)  # by reason
    skipped_tokenize: dict[str, int] = field(default_factory=dict)  # by reason
    chosen_span_lengths: list[int] = field(default_factory=list)  # tokens trained on, per steer
    rejected_span_lengths: list[int] = field(default_factory=list)
    prefix_tokens: list[int] = field(default_factory=list)  # completion tokens before the divergence
    sequence_lengths: list[int] = field(default_factory=list)  # max(len(chosen), len(rejected))
    truncated_left: int = 0  # steers that lost context on the left (prompt, prefix) to fit max_length
    ends_turn: Counter = field(default_factory=Counter)  # "corrected" / "rejected" -> count


def histogram(values: list[int]) -> list[tuple[int, int, int]]:
    """Counts in power-of-two bins ``(lo, hi, count)`` (inclusive): 0, 1, 2, 3-4, 5-8, 9-16, ..."""
    if not values:
        return []
    edges = [(0, 0), (1, 1)]
    while edges[-1][1] < max(values):
        lo = edges[-1][1] + 1
        edges.append((lo, max(lo, 2 * edges[-1][1])))
    counts = Counter()
    for v in values:
        counts[next(i for i, (lo, hi) in enumerate(edges) if lo <= v <= hi)] += 1
    first = min(counts)  # drop empty leading bins (span lengths are never 0)
    return [(lo, hi, counts[i]) for i, (lo, hi) in enumerate(edges) if i >= first]


def histogram_lines(values: list[int], width: int = 40) -> list[str]:
    """A text bar chart of ``histogram(values)``."""
    hist = histogram(values)
    top = max((c for _, _, c in hist), default=0)
    lines = []
    for lo, hi, c in hist:
        label = f"{lo}" if lo == hi else f"{lo}-{hi}"
        bar = "█" * (round(width * c / top) if top else 0)
        lines.append(f"{label:>9} | {bar} {c}")
    return lines


def _summary(values: list[int]) -> str:
    if not values:
        return "-"
    return f"mean {statistics.fmean(values):.1f}, median {statistics.median(values):g}, max {max(values)}"


def collect_stats(steers: SteerList, tokenized: list, tokenize_skipped: SkipCounter) -> InspectStats:
    """Statistics of loaded steers and their tokenizations (``TokenizedSteer`` list)."""
    stats = InspectStats(steers=len(steers), tokenized=len(tokenized), accepted_records=steers.accepted,
                         skipped_load=dict(steers.skipped), skipped_tokenize=dict(tokenize_skipped))
    for s in steers:
        stats.ends_turn["corrected"] += s.corrected_ends_turn
        stats.ends_turn["rejected"] += s.rejected_ends_turn
    for ts in tokenized:
        stats.chosen_span_lengths.append(sum(ts.chosen_span_mask))
        stats.rejected_span_lengths.append(sum(ts.rejected_span_mask))
        stats.prefix_tokens.append(ts.prefix_len - ts.prompt_len)
        stats.sequence_lengths.append(max(len(ts.chosen_ids), len(ts.rejected_ids)))
        stats.truncated_left += ts.truncated_left > 0
    return stats


def inspect_steers(source: Any, tokenizer: Any, *, span: str = "hunk", max_length: int | None = None,
                   context_after: int = 0, min_match: int = 1,
                   on_error: OnError = "skip") -> tuple[SteerList, list, InspectStats]:
    """Load, tokenize and summarize a steer file (or dataset): ``(steers, tokenized, stats)``.

    ``tokenized`` holds the steers that tokenized (each names its steer by ``source_index``);
    under ``on_error="skip"`` bad steers are counted in ``stats`` by reason.
    """
    from localpref.data.tokenize import tokenize_steers

    steers = load_steers(source, on_error=on_error)
    tokenized, skipped = tokenize_steers(steers, tokenizer, span=span, max_length=max_length,
                                         context_after=context_after, min_match=min_match, on_error=on_error)
    return steers, tokenized, collect_stats(steers, tokenized, skipped)


# ---------------------------------------------------------------------------------------------
# Rendering (rich)


def _visible(text: str) -> str:
    return text.replace("\n", "⏎\n").replace("\t", "⇥")


def side_pieces(tokenizer: Any, ids: list[int], span_mask: list[bool], prompt_len: int,
                prefix_len: int) -> list[tuple[str, str]]:
    """One side's completion tokens as ``(text, kind)``: kind ``"span"`` (trained on), ``"prefix"``
    (the accepted prefix) or ``"tail"`` (after the span: shared tail or context, not trained on).
    The terminal view below and the steering page's review both draw from this."""
    pieces = []
    for i in range(prompt_len, len(ids)):
        kind = "span" if span_mask[i] else "prefix" if i < prefix_len else "tail"
        pieces.append((tokenizer.decode([ids[i]]), kind))
    return pieces


def span_listing(tokenizer: Any, ids: list[int], span_mask: list[bool]) -> str:
    """``"2 tokens, positions 58..59: [' oxy', 'gen']"``: a side's span tokens, exactly."""
    span = [tokenizer.decode([t]) for t, m in zip(ids, span_mask) if m]
    where = [i for i, m in enumerate(span_mask) if m]
    at = f"positions {where[0]}..{where[-1]}" if where else "empty"
    return f"{len(span)} tokens, {at}: {span!r}"


def _side(tokenizer: Any, ids: list[int], span_mask: list[bool], prompt_len: int, prefix_len: int,
          styles: tuple[str, str]):
    from rich.text import Text

    text, k = Text(), 0
    for piece, kind in side_pieces(tokenizer, ids, span_mask, prompt_len, prefix_len):
        if kind == "span":
            text.append(_visible(piece), style=styles[k % 2])
            k += 1
        elif kind == "prefix":
            text.append(piece)
        else:
            text.append(piece, style="dim italic")
    return text, span_listing(tokenizer, ids, span_mask)


def render_steer(console: Any, steer: Steer | None, ts: Any, tokenizer: Any, *, prompt_chars: int = 300) -> None:
    """Print one tokenized steer: prompt (dim, last ``prompt_chars`` characters), then both sides."""
    from rich.text import Text

    prompt = tokenizer.decode(ts.chosen_ids[:ts.prompt_len])
    if len(prompt) > prompt_chars:
        prompt = "…" + prompt[-prompt_chars:]
    console.rule(f"steer {ts.id!r}" + (f"  (truncated {ts.truncated_left} tokens)" if ts.truncated_left else ""))
    console.print(Text(prompt, style="dim"), end="")
    for name, ids, mask in (("chosen", ts.chosen_ids, ts.chosen_span_mask),
                            ("rejected", ts.rejected_ids, ts.rejected_span_mask)):
        text, listing = _side(tokenizer, ids, mask, ts.prompt_len, ts.prefix_len, SPAN_STYLES[name])
        console.print(Text(f"\n[{name}] ", style="bold"), text, sep="")
        console.print(Text(f"  {name} span: {listing}", style="green" if name == "chosen" else "red"))
    if steer is not None and steer.meta:
        console.print(Text(f"  meta: {steer.meta}", style="dim"))


def render_stats(console: Any, stats: InspectStats) -> None:
    """Print counts, skips by reason and span-length histograms."""
    console.rule("statistics")
    console.print(f"steers loaded: {stats.steers}   tokenized: {stats.tokenized}   "
                  f"trajectories without corrections: {stats.accepted_records}")
    console.print(f"ends turn: corrected {stats.ends_turn['corrected']}, rejected {stats.ends_turn['rejected']}")
    console.print(f"truncated from the left (context lost) to fit max_length: {stats.truncated_left}")
    for name, skipped in (("skipped while loading", stats.skipped_load),
                          ("skipped while tokenizing", stats.skipped_tokenize)):
        console.print(f"{name}: {sum(skipped.values())}" + (f"  {dict(sorted(skipped.items()))}" if skipped else ""))
    for name, values in (("chosen span tokens", stats.chosen_span_lengths),
                         ("rejected span tokens", stats.rejected_span_lengths),
                         ("prefix tokens (completion before divergence)", stats.prefix_tokens),
                         ("sequence tokens", stats.sequence_lengths)):
        console.print(f"\n{name}: {_summary(values)}")
        if "span" in name:
            console.print("\n".join(histogram_lines(values)), markup=False, highlight=False)


def inspect_file(path: str | os.PathLike, tokenizer: Any, *, span: str = "hunk", max_length: int | None = None,
                 context_after: int = 0, min_match: int = 1, limit: int = 5, on_error: OnError = "skip",
                 console: Any = None) -> InspectStats:
    """Render the first ``limit`` steers of a file and its statistics; returns the statistics."""
    from rich.console import Console
    from rich.text import Text

    console = console or Console()
    steers, tokenized, stats = inspect_steers(path, tokenizer, span=span, max_length=max_length,
                                              context_after=context_after, min_match=min_match, on_error=on_error)
    # The shown steers are tokenized again one by one, so a skipped one shows why it was skipped.
    from localpref.data.errors import SteerError
    from localpref.data.tokenize import tokenize_steer

    for steer in steers[:limit]:
        try:
            ts = tokenize_steer(steer, tokenizer, span=span, max_length=max_length, context_after=context_after,
                                min_match=min_match)
        except SteerError as e:
            console.rule(f"steer {steer.id!r}")
            console.print(Text(f"skipped: {e}", style="bold red"))
            continue
        render_steer(console, steer, ts, tokenizer)
    render_stats(console, stats)
    return stats
