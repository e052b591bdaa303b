"""``localpref data ...``: importers that write steer JSONL, built-in examples, and inspect.

Every subcommand returns an exit code: 0 on success, 1 when the input has an error under
``--on-error raise`` (the message names file, line and field), 2 for an unusable option or path
(an input that does not exist or holds nothing to read, an output that would lose data).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from localpref.data.errors import SteerError
from localpref.data.load import is_steer_file_or_absent


def _default_defacto_dir() -> str:
    shared = os.environ.get("LOCALPREF_SHARED", "../shared")
    return str(Path(shared) / "data" / "defacto")


def _report(what: str, summary: dict[str, Any]) -> None:
    print(f"{what}: {json.dumps(summary, sort_keys=True)}")


def _guard(run):
    """Turn a ``SteerError`` into a message on stderr and exit code 1."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except SteerError as e:
            print(f"error: {e}", file=sys.stderr)
            print("(pass --on-error skip to drop bad rows and count them by reason)", file=sys.stderr)
            return 1

    return wrapped


@_guard
def _from_edits(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_edits

    res = import_edits(args.input, args.output, hunks=args.hunks, complete=not args.partial, on_error=args.on_error)
    _report(f"wrote {len(res.steers)} steers to {args.output}", res.summary())
    return 0


@_guard
def _from_trl(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_preferences

    res = import_preferences(args.input, args.output, completions=args.completions, on_error=args.on_error)
    _report(f"wrote {len(res.steers)} steers to {args.output}", res.summary())
    return 0


@_guard
def _from_defacto(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_defacto

    if not (Path(args.dir) / f"{args.splits[0]}.jsonl").exists():
        print(f"error: no DeFacto files in {args.dir} (pass --dir)", file=sys.stderr)
        return 2
    results = import_defacto(args.dir, args.output, splits=args.splits, hunks=args.hunks, on_error=args.on_error)
    for split, res in results.items():
        _report(f"{split}: wrote {len(res.steers)} steers to {Path(args.output) / f'{split}.jsonl'}", res.summary())
    return 0


def _output_refusal(output: Path, inputs: list[Path], *, force: bool) -> str | None:
    """Why ``output`` must not be written (None: it may be). An existing steer file is replaced only
    with ``force``; an input, or a file that is not a steer file, never."""
    if output.is_dir():
        return f"{output} is a folder; the last path is the steer JSONL file to write"
    if not output.exists() or output.stat().st_size == 0:
        return None
    if any(f.exists() and os.path.samefile(output, f) for f in inputs):
        return f"{output} is one of the files being read; refusing to write over it (the last path is the output)"
    if not is_steer_file_or_absent(output):
        return (f"{output} exists and is not a steer JSONL file; refusing to overwrite it (the last path is the "
                f"output: is it one of your save files?)")
    if not force:
        with open(output, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        return (f"{output} already holds {lines} record(s); refusing to replace it: give another output file, "
                f"or pass --force to replace it")
    return None


@_guard
def _from_tool(args: argparse.Namespace) -> int:
    from localpref.data.frontends import TOOLS, expand_inputs, import_tool

    *inputs, output = args.paths
    if not inputs:
        print("error: give the save files (or folders) to read, then the output file", file=sys.stderr)
        return 2
    missing = [p for p in inputs if not Path(p).exists()]
    if missing:
        print(f"error: {missing[0]} does not exist", file=sys.stderr)
        return 2
    extensions = TOOLS[args.tool].EXTENSIONS
    files = expand_inputs(inputs, extensions)
    if not files:
        print(f"error: no {args.tool} save files ({', '.join('*' + e for e in extensions)}) in {', '.join(inputs)}"
              f" ('backups' folders are skipped); nothing was written", file=sys.stderr)
        return 2
    refusal = _output_refusal(Path(output), files, force=args.force)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    res = import_tool(args.tool, files, output, partial=args.partial, hunks=args.hunks, system=args.system,
                      on_error=args.on_error)
    _report(f"wrote {len(res.records)} records ({len(res.steers)} steers) to {output}", res.summary())
    for note in res.notes:
        print(f"note: {note}")
    return 0


@_guard
def _examples(args: argparse.Namespace) -> int:
    from localpref.data.examples import example_steers
    from localpref.data.load import write_steers

    try:
        steers = example_steers(args.split, n=args.n, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {write_steers(steers, args.output)} {args.split} example steers to {args.output}")
    return 0


@_guard
def _inspect(args: argparse.Namespace) -> int:
    from localpref.data.inspect import inspect_file
    from localpref.models import load_tokenizer

    if not Path(args.file).exists():
        print(f"error: {args.file} does not exist", file=sys.stderr)
        return 2
    tokenizer = load_tokenizer(args.tokenizer)
    if args.min_match < 1:
        print(f"error: --min-match must be >= 1, got {args.min_match}", file=sys.stderr)
        return 2
    inspect_file(args.file, tokenizer, span=args.span, max_length=args.max_length,
                 context_after=args.context_after, min_match=args.min_match, limit=args.limit,
                 on_error=args.on_error)
    return 0


def _on_error(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--on-error", choices=("raise", "skip"), default=default,
                   help=f"bad rows: stop with an error naming file/line/field, or skip and count them "
                        f"by reason (default: {default})")


def _add_from_tool(sub: Any) -> None:
    p = sub.add_parser("from-tool", usage="localpref data from-tool TOOL IN [IN ...] OUT [options]", help="front-end save files (tgwui, sillytavern, loom, mikupad) -> steers",
                       description="Read the chat logs, trees or sessions a front end saved and write each "
                                   "correction the person made as a steer (several along one generation "
                                   "as a trajectory). Which edits each format keeps, and which it loses, "
                                   "is in the docstring of localpref/data/frontends/<tool>.py.")
    p.add_argument("tool", choices=("tgwui", "sillytavern", "loom", "mikupad"), metavar="TOOL",
                   help="tgwui (user_data/logs/{chat,instruct} *.json), sillytavern (chats/*.jsonl; edits need "
                        "the More Flexible Continues extension), loom (tree *.json), mikupad (exported session *.json)")
    p.add_argument("paths", nargs="+", metavar="IN ... OUT",
                   help="save files or folders (searched recursively, 'backups' folders skipped), then the "
                        "steer JSONL to write (a new file, unless --force)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT when it already holds steers (never an input, nor a file that is not "
                        "steer JSONL)")
    p.add_argument("--partial", action="store_true",
                   help="chat replies may stop mid-answer: never end the assistant turn (default: a saved "
                        "reply is a whole answer; Loom and mikupad texts never end a turn)")
    p.add_argument("--hunks", choices=("first", "all"), default="first",
                   help="for edited replies, a steer at the first difference only, or one per difference "
                        "(as from-edits; default: first)")
    p.add_argument("--system", default=None,
                   help="a system message to put before every chat prompt (the chat files do not keep one)")
    _on_error(p, "raise")
    p.set_defaults(func=_from_tool)


def register(subparsers: Any) -> None:
    """Add ``data`` and its subcommands to the top-level ``localpref`` parser."""
    data = subparsers.add_parser("data", help="import, generate and inspect steer JSONL files")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("from-edits", help="{prompt, original, edited} rows -> one steer per edit hunk",
                       description="Diff each model output against the person's edited version at the "
                                   "word level; each difference (hunk) becomes a steer whose prefix is "
                                   "the text before it, and prefix + corrected is a prefix of edited.")
    p.add_argument("input", help="JSONL with prompt (string or chat messages), original, edited[, id, meta]")
    p.add_argument("output", help="steer JSONL to write")
    p.add_argument("--hunks", choices=("first", "all"), default="first",
                   help="first: one steer per row, at the first edit; all: one per edit, each later "
                        "prefix with the earlier edits applied (default: first)")
    p.add_argument("--partial", action="store_true",
                   help="the texts stop mid-answer: never end the assistant turn (default: they are "
                        "whole answers, so a continuation reaching their end ends the turn)")
    _on_error(p, "raise")
    p.set_defaults(func=_from_edits)

    p = sub.add_parser("from-trl", help="TRL-style {prompt, chosen, rejected} rows -> steers")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--completions", choices=("full", "partial"), required=True,
                   help="full: chosen/rejected are whole answers (end the turn); partial: they stop mid-answer")
    _on_error(p, "raise")
    p.set_defaults(func=_from_trl)

    p = sub.add_parser("from-defacto", help="DeFacto summary corrections -> steers (OUT/{split}.jsonl)")
    p.add_argument("output", help="folder to write {split}.jsonl into")
    p.add_argument("--dir", default=_default_defacto_dir(),
                   help="folder holding DeFacto's {train,val,test}.jsonl (default: $LOCALPREF_SHARED/data/defacto)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--hunks", choices=("first", "all"), default="first")
    _on_error(p, "raise")
    p.set_defaults(func=_from_defacto)

    _add_from_tool(sub)

    p = sub.add_parser("examples", help="write the built-in example steers (lists with a checkable rule)")
    p.add_argument("output")
    p.add_argument("--split", choices=("train", "eval"), default="train")
    p.add_argument("--n", type=int, default=None, help="how many (default: 320 train / 80 eval)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_examples)

    p = sub.add_parser("inspect", help="show which tokens each steer trains on, with statistics")
    p.add_argument("file", help="steer JSONL")
    p.add_argument("--tokenizer", default="smollm2", help="'smollm2' or a local tokenizer folder")
    p.add_argument("--span", choices=("hunk", "continuation", "completion"), default="hunk")
    p.add_argument("--max-length", type=int, default=None, help="longest sequence per side (tokens)")
    p.add_argument("--context-after", type=int, default=0, help="extra tokens trained on after each hunk")
    p.add_argument("--min-match", type=int, default=1,
                   help="equal tokens in a row that end a hunk; shorter equal runs between two "
                        "differences join the hunk (default: 1, as data.min_match)")
    p.add_argument("--limit", type=int, default=5, help="how many steers to show (statistics cover all)")
    _on_error(p, "skip")
    p.set_defaults(func=_inspect)
