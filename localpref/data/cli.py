"""``localpref data ...``: importers that write steer JSONL, built-in examples, and inspect.

Every subcommand returns an exit code: 0 on success, 1 when the input has an error under
``--on-error raise`` (the message names file, line and field), 2 for an unusable option or path
(an input that does not exist or holds nothing to read, an output that would lose data).

Nothing is lost at the edges: every command that writes (``from-edits``, ``from-trl``,
``from-defacto``, ``from-tool``, ``examples``) checks all its outputs before it reads a row
(``_check_outputs``). An output that already holds steers is replaced only with ``--force``; one of
the inputs, or a file that is not steer JSONL, never is; and the file is written through a
temporary renamed into place, so a failed run leaves the old one whole.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localpref.data.errors import SteerError
from localpref.data.load import is_steer_file_or_absent

if TYPE_CHECKING:
    from collections.abc import Iterable

    from localpref.data.schema import Steer


def _default_defacto_dir() -> str:
    shared = os.environ.get("LOCALPREF_SHARED", "../shared")
    return str(Path(shared) / "data" / "defacto")


def _report(what: str, summary: dict[str, Any]) -> None:
    print(f"{what}: {json.dumps(summary, sort_keys=True)}")


class _Unusable(Exception):
    """An option or path the command cannot use (an output that would lose data): exit code 2."""


def _guard(run):
    """Turn a ``SteerError`` into a message on stderr and exit code 1, an ``_Unusable`` into exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _Unusable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except SteerError as e:
            print(f"error: {e}", file=sys.stderr)
            print("(pass --on-error skip to drop bad rows and count them by reason)", file=sys.stderr)
            return 1

    return wrapped


def _output_refusal(output: Path, inputs: list[Path], *, force: bool) -> str | None:
    """Why ``output`` must not be written (None: it may be). An existing steer file is replaced only
    with ``force``; an input, or a file that is not a steer file, never."""
    if output.is_dir():
        return f"{output} is a folder, not the steer JSONL file to write"
    if not output.exists():
        return None
    if any(f.exists() and os.path.samefile(output, f) for f in inputs):
        return f"{output} is one of the files being read; refusing to write over it, even with --force"
    if output.stat().st_size == 0:
        return None
    if not is_steer_file_or_absent(output):
        return (f"{output} exists and is not a steer JSONL file; refusing to overwrite it, even with --force "
                f"(is the output path right, or is it one of your input files?)")
    if not force:
        with open(output, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        return (f"{output} already holds {lines} record(s); refusing to replace it: give another output file, "
                f"or pass --force to replace it")
    return None


def _check_outputs(outputs: list[Path], inputs: list[Path], *, force: bool) -> None:
    """Every ``data`` command that writes checks all its outputs here before it writes any (see
    ``_output_refusal``); ``_Unusable`` names the first file that must not be written."""
    for path in inputs:
        if not path.exists():
            raise _Unusable(f"{path} does not exist")
    for output in outputs:
        refusal = _output_refusal(output, inputs, force=force)
        if refusal:
            raise _Unusable(refusal)


def _write(steers: Iterable[Steer], output: str | os.PathLike) -> int:
    """Steers to ``output`` through a temporary file renamed into place (``write_records``, as
    ``from-tool`` writes): a run that fails midway leaves ``output`` as it was."""
    from localpref.data.frontends import write_records

    return write_records((steer.to_dict() for steer in steers), output)


@_guard
def _from_edits(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_edits

    _check_outputs([Path(args.output)], [Path(args.input)], force=args.force)
    res = import_edits(args.input, None, hunks=args.hunks, complete=not args.partial, on_error=args.on_error)
    _write(res.steers, args.output)
    _report(f"wrote {len(res.steers)} steers to {args.output}", res.summary())
    return 0


@_guard
def _from_trl(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_preferences

    _check_outputs([Path(args.output)], [Path(args.input)], force=args.force)
    res = import_preferences(args.input, None, completions=args.completions, on_error=args.on_error)
    _write(res.steers, args.output)
    _report(f"wrote {len(res.steers)} steers to {args.output}", res.summary())
    return 0


@_guard
def _from_defacto(args: argparse.Namespace) -> int:
    from localpref.data.importers import import_defacto

    if not (Path(args.dir) / f"{args.splits[0]}.jsonl").exists():
        print(f"error: no DeFacto files in {args.dir} (pass --dir)", file=sys.stderr)
        return 2
    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise _Unusable(f"{args.output} is a file; OUT is the folder to write {{split}}.jsonl into")
    outputs = {split: Path(args.output) / f"{split}.jsonl" for split in args.splits}
    _check_outputs(list(outputs.values()), [Path(args.dir) / f"{split}.jsonl" for split in args.splits],
                   force=args.force)
    results = import_defacto(args.dir, None, splits=args.splits, hunks=args.hunks, on_error=args.on_error)
    for split, res in results.items():
        _write(res.steers, outputs[split])
        _report(f"{split}: wrote {len(res.steers)} steers to {outputs[split]}", res.summary())
    return 0


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
    _check_outputs([Path(output)], files, force=args.force)
    res = import_tool(args.tool, files, output, partial=args.partial, hunks=args.hunks, system=args.system,
                      on_error=args.on_error)
    _report(f"wrote {len(res.records)} records ({len(res.steers)} steers) to {output}", res.summary())
    for note in res.notes:
        print(f"note: {note}")
    return 0


@_guard
def _examples(args: argparse.Namespace) -> int:
    from localpref.data.examples import example_steers

    _check_outputs([Path(args.output)], [], force=args.force)
    try:
        steers = example_steers(args.split, n=args.n, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {_write(steers, args.output)} {args.split} example steers to {args.output}")
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


def _force(p: argparse.ArgumentParser, what: str = "OUT") -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace {what} when it already holds steers (never an input, nor a file that is not "
                        f"steer JSONL)")


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
    _force(p)
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
    p.add_argument("output", help="steer JSONL to write (a new file, unless --force)")
    _force(p)
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
    p.add_argument("output", help="steer JSONL to write (a new file, unless --force)")
    _force(p)
    p.add_argument("--completions", choices=("full", "partial"), required=True,
                   help="full: chosen/rejected are whole answers (end the turn); partial: they stop mid-answer")
    _on_error(p, "raise")
    p.set_defaults(func=_from_trl)

    p = sub.add_parser("from-defacto", help="DeFacto summary corrections -> steers (OUT/{split}.jsonl)")
    p.add_argument("output", help="folder to write {split}.jsonl into (new files, unless --force)")
    _force(p, "OUT/{split}.jsonl")
    p.add_argument("--dir", default=_default_defacto_dir(),
                   help="folder holding DeFacto's {train,val,test}.jsonl (default: $LOCALPREF_SHARED/data/defacto)")
    p.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    p.add_argument("--hunks", choices=("first", "all"), default="first")
    _on_error(p, "raise")
    p.set_defaults(func=_from_defacto)

    _add_from_tool(sub)

    p = sub.add_parser("examples", help="write the built-in example steers (lists with a checkable rule)")
    p.add_argument("output", help="steer JSONL to write (a new file, unless --force)")
    _force(p)
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
