"""The ``localpref`` console command.

    localpref data from-edits IN OUT      edited outputs -> steer JSONL
    localpref data from-trl IN OUT        TRL-style preference rows -> steer JSONL
    localpref data from-defacto OUT       DeFacto human corrections -> steer JSONL
    localpref data examples OUT           built-in example steers -> steer JSONL
    localpref data inspect FILE           show which tokens each steer trains on
    localpref steer collect ...           generate, stop at the first error, correct, resume
    localpref steer eval ...              steers needed per verified output, pass rate
    localpref steer serve --out FILE      a local page: generate, stop, correct, resume (steers by hand)
    localpref train [hydra overrides]     the training entry point (Hydra)
    localpref demo                        the main job on the embedded default
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `train` hands the rest of the command line to Hydra untouched (overrides, -m, --cfg ...).
    if argv and argv[0] == "train":
        from localpref.train import hydra_main

        sys.argv = ["localpref train", *argv[1:]]
        hydra_main()
        return 0

    parser = argparse.ArgumentParser(prog="localpref", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from localpref.data.cli import register as register_data

    register_data(sub)
    from localpref.steer_cli import register as register_steer

    register_steer(sub)
    sub.add_parser("train", help="train (Hydra app; see `localpref train --help`)")
    demo = sub.add_parser("demo", help="run the main job on the embedded default")
    demo.add_argument("overrides", nargs="*", help="extra Hydra overrides for the demo run")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from localpref.demo import run_demo

        return run_demo(args.overrides)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
