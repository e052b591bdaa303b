"""``localpref steer ...``: collect steers from a model with a program as the annotator, evaluate
how many steers a model needs, and serve the page where a person steers (``localpref.page``).

    localpref steer collect --family lists --model tiny --split train --n 200 --budget 4 \\
        --temperature 0.7 --seed 0 --out steers.jsonl       # sampled; appends, resumes
    localpref steer eval --family lists --model tiny --split heldout --n 100 --budget 4 \\
        --report report.json                               # greedy unless --temperature
    localpref steer pretrain --family arith                 # build the cached tiny task model
    localpref steer pretrain --family arith --errors systematic --profile 200  # ... and its greedy errors
    localpref steer serve --model smollm2 --out steers.jsonl  # a local page to steer by hand

``--model`` is ``tiny`` (the family's tiny task model, built on first use; ``--errors`` says which:
pretrained on random, systematic or mixed errors, ``localpref.tasks.base``), ``smollm2``
(SmolLM2-135M-Instruct), a Hugging Face model folder, or a training run directory (its
``export/``). ``--adapter`` loads a LoRA adapter folder on top (``trainer.export`` with
``peft.merge_on_export=false`` writes one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def load_generation_model(spec: str, family: str, adapter: str | None = None, device: str = "cpu",
                          errors: str = "random", build: int = 0, pretrain_steps: int | None = None):
    """(model in eval mode, tokenizer, model id) for ``--model`` / ``--adapter`` / ``--errors`` /
    ``--build`` / ``--pretrain-steps`` (module docstring)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localpref.models import check_model_folder, smollm2_dir

    if spec == "tiny":
        from localpref.tasks.pretrain import default_spec, task_model_dir

        folder = task_model_dir(family, default_spec(family, errors, build, pretrain_steps))
    elif spec == "smollm2":
        folder = smollm2_dir()
    else:
        folder = Path(spec) / "export" if (Path(spec) / "export" / "config.json").exists() else Path(spec)
        check_model_folder(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(f"--adapter {adapter}: no adapter_config.json (not a LoRA adapter folder)")
        model = PeftModel.from_pretrained(model, adapter)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    return model, tokenizer, f"{folder}" + (f"+{adapter}" if adapter else "")


def _tasks(args: argparse.Namespace):
    from localpref.tasks import get_family

    family = get_family(args.family)
    split = "heldout" if args.split == "test" else args.split
    return family, family.tasks(split, n=args.n, seed=args.task_seed)


def _run(args: argparse.Namespace, *, evaluate: bool) -> int:
    from localpref.steering import run_tasks, summarize_by

    if error := _errors_mismatch(args):
        return _fail(error)
    family, tasks = _tasks(args)
    model, tokenizer, model_id = load_generation_model(args.model, args.family, args.adapter, args.device,
                                                       args.errors, args.build, args.pretrain_steps)
    start = time.time()
    records = run_tasks(model, tokenizer, family, tasks, out=args.out, budget=args.budget,
                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        max_new_tokens=args.max_new_tokens, max_task_tokens=args.max_task_tokens,
                        batch_size=args.batch_size, progress_label=f"steer {args.family}",
                        extra_meta={"model": model_id, "split": args.split})
    summary = summarize_by(records)
    if args.out:
        print(f"{len(records)} trajectories in {args.out}")
    _print_summary(summary, family.unit_name)
    if evaluate and args.report:
        report = {"family": args.family, "model": model_id, "split": args.split, "n": len(tasks),
                  "budget": args.budget, "temperature": args.temperature, "seed": args.seed,
                  "seconds": round(time.time() - start, 1), "summary": summary}
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report: {args.report}")
    return 0


def _fmt(summary: dict[str, Any], key: str) -> str:
    if key not in summary:
        return "-"
    if isinstance(summary[key], int):
        return str(summary[key])
    ci = summary.get(f"{key}_ci")
    return f"{summary[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _print_summary(summary: dict[str, dict], unit: str) -> None:
    rows = [("steers to verify (headline)", "steers_to_verify"), ("pass rate without steers", "pass_rate"),
            ("share verified within the budget", "verified_within_budget"),
            ("tasks ended on the token cap", "token_capped"), ("steers per task", "steers_per_task"),
            ("steers per verified output (drops tasks)", "steers_per_verified"),
            (f"first wrong {unit} (index, unsteered)", "first_error_unit"),
            ("characters typed per verified output", "chars_per_verified")]
    for group, s in summary.items():
        print(f"\n{group}: {s['tasks']} tasks, budget {s['budget']} steers  (95% intervals; steers to verify "
              f"counts a task not verified within the budget as {s['budget'] + 1})")
        for text, key in rows:
            print(f"  {text:<40} {_fmt(s, key)}")


def _pretrain(args: argparse.Namespace) -> int:
    from localpref.tasks import get_family
    from localpref.tasks.pretrain import default_spec, error_profile, task_model_dir

    if error := _errors_mismatch(args):
        return _fail(error)
    folder = task_model_dir(args.family, default_spec(args.family, args.errors, args.build, args.pretrain_steps))
    info = json.loads((folder / "pretrain.json").read_text())
    print(f"{folder}: {info['parameters']} parameters, {info['spec']['steps']} steps, {info['seconds']} s to build, "
          f"errors {args.errors}, build {args.build}")
    if args.profile:
        model, tokenizer, _ = load_generation_model("tiny", args.family, errors=args.errors, build=args.build,
                                                    pretrain_steps=args.pretrain_steps)
        family, split = get_family(args.family), "heldout" if args.split == "test" else args.split
        _print_profile(error_profile(family, model, tokenizer, split, args.profile), family.unit_name)
    return 0


def _print_profile(profile: dict[str, dict], unit: str) -> None:
    for group, p in profile.items():
        where = "-" if p["systematic_where_fires"] is None else f"{p['systematic_where_fires']:.3f}"
        print(f"\n{group}: {p['tasks']} prompts, greedy")
        print(f"  {'pass rate':<40} {p['pass_rate']:.3f}")
        print(f"  {'first error systematic (the rule)':<40} {p['systematic']:.3f}")
        print(f"  {'first error of another kind':<40} {p['other']:.3f}")
        print(f"  {'prompts the rule fires on':<40} {p['rule_fires']:.3f}")
        print(f"  {'systematic where the rule fires':<40} {where}")
        print(f"  {f'first wrong {unit}: prompts':<40} {p['first_error_unit']}")


def _errors_mismatch(args: argparse.Namespace) -> str | None:
    """Why ``--errors`` cannot be honoured, or None. It picks a tiny task model, so with another
    ``--model`` it would be silently ignored; and a family without a systematic rule has only one."""
    from localpref.tasks.pretrain import default_spec

    if args.errors == "random" and args.build == 0 and args.pretrain_steps is None:
        return None
    if args.model != "tiny":
        if args.build != 0 or args.pretrain_steps is not None:
            return f"--build and --pretrain-steps apply to --model tiny only (got --model {args.model})"
        return f"--errors {args.errors} applies to --model tiny only (got --model {args.model})"
    try:
        default_spec(args.family, args.errors)
    except ValueError as e:
        return str(e)
    return None


def _fail(message: str) -> int:
    import sys

    print(f"error: {message}", file=sys.stderr)
    return 2


def _add_errors(p: argparse.ArgumentParser) -> None:
    from localpref.tasks.base import ERRORS

    p.add_argument("--errors", default="random", choices=ERRORS,
                   help="with --model tiny: the tiny model pretrained on random errors, on the family's "
                        "systematic rule, or on both (default: random)")
    p.add_argument("--build", type=int, default=0,
                   help="with --model tiny: which build of it, its pretraining seed (default 0); builds are "
                        "independent models of one recipe")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="with --model tiny: pretraining steps instead of the family's (quick runs)")


def _serve(args: argparse.Namespace) -> int:
    import sys
    import threading

    import uvicorn

    from localpref.page.app import Served, create_app
    from localpref.page.listen import allowed_hosts, exposure_warning, listen, page_url
    from localpref.page.review import prepare_output
    from localpref.page.session import Sampling

    if error := _errors_mismatch(args):  # before listening or loading anything
        return _fail(error)
    try:  # before loading the model: a port in use fails at once
        sock = listen(args.host, args.port)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    if warning := exposure_warning(args.host, port, args.out):  # the real port, also for --port 0
        print(f"warning: {warning}", file=sys.stderr)
    try:  # also before loading the model
        warning = prepare_output(Path(args.out))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    model, tokenizer, model_id = load_generation_model(args.model, args.family, args.adapter, args.device,
                                                       args.errors, args.build, args.pretrain_steps)
    served = Served(model, tokenizer, model_id, threading.Lock())
    compare = None
    if args.compare or args.compare_adapter:
        cm, ct, cid = load_generation_model(args.compare or args.model, args.family, args.compare_adapter, args.device,
                                            args.errors, args.build, args.pretrain_steps)
        compare = Served(cm, ct, cid, threading.Lock())
    defaults = Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                        max_new_tokens=args.max_new_tokens)
    try:
        app = create_app(served, args.out, defaults=defaults, span=args.span, max_length=args.max_length,
                         compare=compare, allowed_hosts=allowed_hosts(args.host))
    except ValueError as e:  # e.g. --max-new-tokens out of range
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"steering page: {page_url(args.host, port)}  model {model_id}"
          + (f", compare with {compare.model_id}" if compare else "")
          + f"; saving to {args.out}  (Ctrl-C stops; a trajectory not yet accepted is lost)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    return 0


def _add_serve(sub: Any) -> None:
    from localpref.tasks import family_names

    p = sub.add_parser("serve", help="a local web page: generate, stop, correct, resume; every correction is saved "
                                     "as a steer",
                       description="Serve the steering page on this machine. Each accepted trajectory is appended to "
                                   "--out (one record per line, steps of accepted/rejected/corrected), ready for "
                                   "`localpref train data=jsonl data.path=OUT`.")
    p.add_argument("--model", default="smollm2", help="tiny | smollm2 | model folder | run dir (default: smollm2)")
    p.add_argument("--adapter", default=None, help="LoRA adapter folder to load on top of --model")
    p.add_argument("--family", default="lists", choices=family_names(),
                   help="whose tiny task model --model tiny means (default: lists)")
    p.add_argument("--out", required=True, help="steer JSONL to append to (fixed for the server's life)")
    p.add_argument("--compare", default=None, metavar="MODEL",
                   help="a second model for the compare view (e.g. a training run dir or its export/)")
    p.add_argument("--compare-adapter", default=None, metavar="ADAPTER",
                   help="LoRA adapter for the compare model (on --compare, or on --model when --compare is not given)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="0: any free port (default 8765)")
    p.add_argument("--temperature", type=float, default=0.7, help="default sampling temperature (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0, help="default sampling seed")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="tokens per generation pass, and the most a page may ask for")
    p.add_argument("--span", choices=("hunk", "continuation", "completion"), default="hunk",
                   help="the span mode the review shows (use the one you train with: data.span)")
    p.add_argument("--max-length", type=int, default=None, help="max_length the review tokenizes with (tokens)")
    p.add_argument("--device", default="cpu")
    _add_errors(p)
    p.set_defaults(func=_serve)


def register(subparsers: Any) -> None:
    """Add ``steer`` and its subcommands to the top-level ``localpref`` parser."""
    from localpref.tasks import family_names

    steer = subparsers.add_parser("steer", help="collect steers with a program as annotator; steering evaluation")
    sub = steer.add_subparsers(dest="steer_command", required=True)
    for name, evaluate in (("collect", False), ("eval", True)):
        p = sub.add_parser(name, help=("generate, stop at the first error, correct, resume: write trajectories"
                                       if not evaluate else "steers needed per verified output, pass rate, "
                                       "first-error position (95% intervals)"))
        p.add_argument("--family", required=True, choices=family_names())
        p.add_argument("--model", default="tiny", help="tiny | smollm2 | model folder | run dir (default: tiny)")
        p.add_argument("--adapter", default=None, help="LoRA adapter folder to load on top of --model")
        p.add_argument("--split", default="heldout" if evaluate else "train", choices=("pretrain", "train", "val", "heldout", "test"),
                       help="prompts to use (test = heldout)")
        p.add_argument("--n", type=int, default=100, help="number of prompts")
        p.add_argument("--budget", type=int, default=4, help="steers allowed per prompt")
        p.add_argument("--temperature", type=float, default=0.0 if evaluate else 0.7, help="0: greedy")
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--seed", type=int, default=0, help="sampling seed")
        p.add_argument("--task-seed", type=int, default=0, help="which prompts (order of the split)")
        p.add_argument("--max-new-tokens", type=int, default=128,
                       help="per generation pass (a pass that runs out of tokens goes on, up to --max-task-tokens)")
        p.add_argument("--max-task-tokens", type=int, default=None,
                       help="tokens per prompt over all passes; a prompt that reaches it unverified ends "
                            "(default: 4 x --max-new-tokens)")
        p.add_argument("--batch-size", type=int, default=32, help="prompts generated together (1: one at a time, "
                       "keeping each prompt's KV cache across corrections)")
        p.add_argument("--device", default="cpu")
        p.add_argument("--out", default=None, required=not evaluate,
                       help="trajectory JSONL (appended; prompts already in it are skipped)")
        if evaluate:
            p.add_argument("--report", default=None, help="write the summary as JSON here")
        _add_errors(p)
        p.set_defaults(func=lambda a, e=evaluate: _run(a, evaluate=e))
    p = sub.add_parser("pretrain", help="build (or show) the cached tiny task model of a family")
    p.add_argument("--family", required=True, choices=family_names())
    _add_errors(p)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="then print its greedy error profile on N prompts of --split (pass rate, share of "
                        "first errors that are the family's systematic rule, where they fall)")
    p.add_argument("--split", default="heldout", choices=("train", "val", "heldout", "test"),
                   help="prompts of the profile (test = heldout; never pretrain: the model saw those)")
    p.set_defaults(func=_pretrain, model="tiny")
    _add_serve(sub)

