"""What one held-out evaluation costs against a training step, per pair (SmolLM2-135M + LoRA, CPU).

    .venv/bin/python experiments/throughput/eval_cost.py                  # 100 DeFacto val steers
    .venv/bin/python experiments/throughput/eval_cost.py --n 16 --train-steps 1   # a quick look
    .venv/bin/python experiments/throughput/eval_cost.py --n 4 --train-steps 0    # evaluation alone

Times ``localpref.evaluate.evaluate`` (eval_batch_size 8, reference = adapters disabled) on the
first ``--n`` DeFacto val steers, twice per layout: the first evaluation of a run (before
training: the policy is still the reference, one forward serves both) and a later one (which
reuses the reference's outputs kept by the first), and ``--train-steps`` training steps (after
``--warmup`` untimed ones) of 4 DeFacto train pairs (policy forward + backward + reference
forward, the loop's ``micro_batch_loss``) in the same layout. Prints seconds per pair of each and
their ratio.

The same script measures the code before this change: point PYTHONPATH at an export of the older
commit (``git archive <commit> | tar -x -C /tmp/old``); it then calls the older ``evaluate``
(no ``layout``, no cache) and the padded layout only.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="held-out steers")
    p.add_argument("--layouts", default="unpacked,pairs")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1, help="training steps before timing starts (first-call costs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--defacto", type=Path, default=REPO.parent / "shared" / "data" / "defacto")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import localpref
    from localpref.config import LossConfig, ModelConfig, PeftConfig
    from localpref.data.importers import import_defacto
    from localpref.data.tokenize import tokenize_steers
    from localpref.evaluate import evaluate
    from localpref.models import build_model
    from localpref.reference import TokenScorer, make_model_reference
    from localpref.train import micro_batch_loss

    packed = "layout" in inspect.signature(evaluate).parameters
    layouts = args.layouts.split(",") if packed else ["unpacked"]
    print(f"localpref from {Path(localpref.__file__).parent}; {'layouts + reference cache' if packed else 'older evaluate'}")
    if packed:
        from localpref.memory import return_freed_memory
        from localpref.packing import collate

        return_freed_memory()  # as train() does on CPU
    else:
        from localpref.collate import collate_padded

        def collate(dataset, idx, pad_id, layout):  # the older code has the padded layout only
            return collate_padded([dataset[i] for i in idx], idx, pad_id)

    model, tokenizer = build_model(ModelConfig(source="smollm2"), PeftConfig(kind="lora"), seed=0)
    steers = import_defacto(args.defacto, None, splits=("train", "val"), on_error="skip")
    held, _ = tokenize_steers(steers["val"].steers[:args.n], tokenizer, max_length=1024)
    train, _ = tokenize_steers(steers["train"].steers[:4 * (args.warmup + args.train_steps)], tokenizer,
                               max_length=1024)
    scorer = TokenScorer(model)
    reference = make_model_reference("adapter_disabled", scorer)
    device, pad = torch.device("cpu"), tokenizer.pad_token_id
    results = {}
    for layout in layouts:
        extra = dict(layout=layout) if packed else {}
        cache: dict = {}
        times = []
        for _ in range(2 if packed else 1):
            begin = time.perf_counter()
            if packed:
                metrics = evaluate(scorer, reference, held, pad, batch_size=8, device=device, **extra,
                                   reference_cache=cache)
            else:
                metrics = evaluate(scorer, reference, held, pad, batch_size=8, device=device)
            times.append(time.perf_counter() - begin)
        scorer.train()
        steps = []
        for s in range(args.warmup + args.train_steps if args.train_steps else 0):  # 0: evaluation alone
            idx = list(range(4 * s, 4 * s + 4))
            begin = time.perf_counter()
            loss_sum, _ = micro_batch_loss(scorer, reference, collate(train, idx, pad, layout=layout), LossConfig())
            (loss_sum / 4).backward()
            model.zero_grad(set_to_none=True)
            if s >= args.warmup:
                steps.append((time.perf_counter() - begin) / 4)
        train_per_pair = statistics.median(steps) if steps else None
        results[layout] = dict(eval_seconds=times, eval_per_pair=[x / len(held) for x in times],
                               train_step_per_pair=train_per_pair, metrics=metrics)
        line = ", ".join(f"{x:.1f} s ({x / len(held):.2f} s/pair" + (
            f", {x / len(held) / train_per_pair:.2f} of a training step per pair)" if steps else ")") for x in times)
        step = f"; training step {train_per_pair:.2f} s/pair" if steps else ""
        print(f"{layout}: evaluation of {len(held)} steers: {line}{step}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
