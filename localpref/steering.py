"""The steering loop: generate, stop at the first error, correct one unit, resume; and its evaluation.

For one task (a prompt of a ``localpref.tasks`` family) and a model:

1. The model writes its answer (``TurnWriter``). The first pass runs to the end of the turn (or
   ``max_new_tokens``): that unsteered answer is recorded (``meta.original``), scored (pass
   without steers, position of the first error) and is what "DPO on (model output, rewrite)" uses.
2. While the answer is wrong and fewer than ``budget`` steers were spent: find the first wrong
   unit (``family.first_error``), take what the model wrote from there to where it would have been
   stopped (``Unit.stop``: the unit and the character that completed it) as ``rejected``, the right
   unit (``family.correct``) as ``corrected``, splice ``accepted + corrected`` into the writer and
   let the model go on, now stopping as soon as a unit is complete and wrong. A correction that
   completes a right answer ends the turn (the person accepts).
3. The record is a trajectory (``localpref.data.load``): ``prompt``, ``steps`` of
   ``accepted``/``rejected``/``corrected`` with their ``cost`` (characters and tokens typed),
   ``final`` (the answer as it stands) and ``verified``. ``load_steers`` expands it into steers as is.

``summarize`` turns records into the evaluation: pass rate without steers, steers needed per
verified output, share verified within the budget, first-error position, with 95% intervals
(``localpref.stats``). The same loop serves ``localpref steer collect`` (sampled, on train prompts),
``localpref steer eval`` (greedy, on held-out prompts), the trainer's ``eval/steer/...`` metrics and
the demo.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any, Iterable

import torch

from localpref.generation import TurnWriter
from localpref.stats import bootstrap_interval, wilson_interval
from localpref.tasks import Task, TaskFamily


def _write_until_error(writer: TurnWriter, family: TaskFamily, meta: dict, *, stop_early: bool) -> None:
    """Generate until the turn ends, tokens run out, or (``stop_early``) a complete unit is wrong."""
    while not writer.done:
        piece = writer.step()
        if stop_early and piece and family.first_error(meta, writer.text, final=False) is not None:
            return


def task_seed(seed: int, task_id: str) -> int:
    """A per-task sampling seed: runs are reproducible and independent of the order of tasks."""
    return zlib.crc32(f"{seed}/{task_id}".encode())


def steer_task(model: Any, tokenizer: Any, family: TaskFamily, task: Task, *, budget: int,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
               max_new_tokens: int = 128) -> dict[str, Any]:
    """Run the steering loop on one task; returns its trajectory record (module docstring)."""
    start = time.time()
    meta = task.meta
    writer = TurnWriter(model, tokenizer, task.prompt, temperature=temperature, top_p=top_p,
                        seed=task_seed(seed, task.id), max_new_tokens=max_new_tokens)
    _write_until_error(writer, family, meta, stop_early=False)
    original, original_ended = writer.text, writer.ended
    first = family.first_error(meta, original, final=True)
    steps: list[dict[str, Any]] = []
    accepted_from, stopped = 0, "verified"
    text = original
    while True:
        offset = family.first_error(meta, text, final=writer.done)
        if offset is None:
            if writer.done:
                break
            _write_until_error(writer, family, meta, stop_early=True)  # unreachable in practice
            text = writer.text
            continue
        if offset < accepted_from:
            raise RuntimeError(f"family {family.name!r} found an error in accepted text at {offset} of {text!r}")
        if len(steps) >= budget:
            stopped = "budget"
            break
        stop = family.unit_stop(meta, text, offset, final=writer.done)
        rejected = text[offset:stop]
        rejected_ends_turn = writer.ended and stop == len(text)
        if not rejected and not rejected_ends_turn:
            stopped = "max_new_tokens"  # out of tokens mid-answer: nothing the model wrote to reject
            break
        corrected = family.correct(meta, text, offset, final=writer.done)
        fixed = text[:offset] + corrected
        ends_turn = family.verify(meta, fixed)  # the correction completes a right answer: accept
        step = {"accepted": text[accepted_from:offset], "rejected": rejected, "corrected": corrected,
                "cost": {"chars": len(corrected),
                         "tokens": len(tokenizer(corrected, add_special_tokens=False)["input_ids"])}}
        if rejected_ends_turn:
            step["rejected_ends_turn"] = True
        if ends_turn:
            step["corrected_ends_turn"] = True
        steps.append(step)
        accepted_from = len(fixed)
        if ends_turn:
            text = fixed
            break
        writer.set_text(fixed)
        _write_until_error(writer, family, meta, stop_early=True)
        text = writer.text
    if text[accepted_from:]:
        steps.append({"accepted": text[accepted_from:]})
    verified = family.verify(meta, text) and (stopped == "verified")
    return {
        "id": task.id, "prompt": task.prompt, "steps": steps, "final": text, "verified": verified,
        "meta": {"task": meta, "original": original, "original_ended": original_ended,
                 "first_error": None if first is None else {
                     "offset": first, "unit": family.first_error_unit(meta, original, final=True)},
                 "steers": sum("corrected" in s for s in steps), "stopped": stopped if not verified else "verified",
                 "temperature": temperature, "top_p": top_p, "seed": seed, "budget": budget,
                 "max_new_tokens": max_new_tokens, "new_tokens": writer.new_tokens,
                 "forwarded_tokens": writer.forwarded_tokens, "seconds": round(time.time() - start, 3)},
    }


# ------------------------------------------------------------------------------------------------
# Many tasks: appending, resumable output


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The whole records of a collection file; a torn last line (a killed run) is left out."""
    if not Path(path).exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n") and line.strip():
                out.append(json.loads(line))
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a run killed mid-write) so appending stays line-aligned."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def run_tasks(model: Any, tokenizer: Any, family: TaskFamily, tasks: Iterable[Task], *,
              out: str | os.PathLike | None = None, progress_label: str = "steer", show_progress: bool = True,
              extra_meta: dict[str, Any] | None = None, **settings: Any) -> list[dict[str, Any]]:
    """``steer_task`` over ``tasks``; with ``out``, each record is appended (flushed, fsynced) as it is
    done and tasks already in ``out`` are skipped (a re-run resumes). Returns all records of these tasks."""
    from localpref.log import Progress

    tasks = list(tasks)
    done: dict[str, dict] = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(out)
        done = {r["id"]: r for r in read_records(out)}
    todo = [t for t in tasks if t.id not in done]
    was_training = model.training
    model.eval()
    progress = Progress(len(tasks), len(tasks) - len(todo), label=progress_label, enabled=show_progress)
    verified = sum(bool(done[t.id]["verified"]) for t in tasks if t.id in done)
    try:
        for task in todo:
            record = steer_task(model, tokenizer, family, task, **settings)
            record["meta"].update(extra_meta or {})
            done[task.id] = record
            verified += record["verified"]
            if out is not None:
                with open(out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            progress.update(verified=verified, steers=record["meta"]["steers"])
    finally:
        progress.close()
        model.train(was_training)
    return [done[t.id] for t in tasks]


def append_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append whole JSON lines, flushed and fsynced: a killed process loses at most the line in flight."""
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# The evaluation


def summarize(records: list[dict[str, Any]], *, budget: int | None = None) -> dict[str, Any]:
    """Steering metrics of ``records`` with 95% intervals (``[low, high]`` under ``*_ci``).

    pass_rate                 share of unsteered answers that verify (Wilson interval)
    steers_per_verified       all steers spent / outputs verified within the budget (a ratio over
                              the tasks: steers spent on tasks that never verified count too;
                              percentile bootstrap over tasks, 2000 resamples)
    verified_within_budget    share of tasks verified after at most ``budget`` steers (Wilson)
    steers_per_task           mean steers spent per task (bootstrap)
    first_error_unit          mean index of the first wrong unit of unsteered answers that have one
    chars_per_verified        characters typed per verified output (bootstrap)
    """
    n = len(records)
    if n == 0:
        return {"tasks": 0}
    passed = [r["meta"]["first_error"] is None and r["verified"] for r in records]
    steers = [float(r["meta"]["steers"]) for r in records]
    verified = [float(r["verified"]) for r in records]
    chars = [float(sum(s.get("cost", {}).get("chars", 0) for s in r["steps"])) for r in records]
    first_units = [float(r["meta"]["first_error"]["unit"]) for r in records if r["meta"]["first_error"]]
    ratio = lambda num, den: (lambda idx: sum(num[i] for i in idx) / max(1e-9, sum(den[i] for i in idx)))  # noqa: E731
    out: dict[str, Any] = {"tasks": n, "budget": budget if budget is not None else records[0]["meta"]["budget"]}
    out["pass_rate"], out["pass_rate_ci"] = sum(passed) / n, wilson_interval(sum(passed), n)
    out["verified_within_budget"] = sum(verified) / n
    out["verified_within_budget_ci"] = wilson_interval(int(sum(verified)), n)
    if sum(verified) > 0:
        out["steers_per_verified"] = sum(steers) / sum(verified)
        out["steers_per_verified_ci"] = bootstrap_interval(ratio(steers, verified), n)
        out["chars_per_verified"] = sum(chars) / sum(verified)
        out["chars_per_verified_ci"] = bootstrap_interval(ratio(chars, verified), n)
    else:
        out["steers_per_verified"] = float("inf")
    out["steers_per_task"] = sum(steers) / n
    out["steers_per_task_ci"] = bootstrap_interval(ratio(steers, [1.0] * n), n)
    if first_units:
        m = len(first_units)
        out["first_error_unit"] = sum(first_units) / m
        out["first_error_unit_ci"] = bootstrap_interval(ratio(first_units, [1.0] * m), m)
    out["tokens_generated"] = sum(r["meta"]["new_tokens"] for r in records)
    out["seconds"] = round(sum(r["meta"]["seconds"] for r in records), 1)
    return out


def summarize_by(records: list[dict[str, Any]], key: str = "subfamily") -> dict[str, Any]:
    """``summarize`` overall and per value of ``record.meta.task[key]`` (e.g. seen / unseen sub-families)."""
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(str(r["meta"]["task"].get(key)), []).append(r)
    return {"all": summarize(records), **({f"{key}={k}": summarize(v) for k, v in sorted(groups.items())}
                                           if len(groups) > 1 else {})}


def flat_metrics(summary: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Scalars of a ``summarize`` result (intervals as ``_lo``/``_hi``), for metrics.jsonl / wandb."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, (list, tuple)) and len(v) == 2:
            out[f"{prefix}{k.removesuffix('_ci')}_lo"], out[f"{prefix}{k.removesuffix('_ci')}_hi"] = map(float, v)
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = float(v)
    return out


@torch.no_grad()
def steering_eval(model: Any, tokenizer: Any, family: TaskFamily, tasks: list[Task], *, budget: int,
                  max_new_tokens: int = 128, show_progress: bool = True) -> dict[str, Any]:
    """Greedy steering on ``tasks`` without writing anything: ``summarize_by`` of the records."""
    records = run_tasks(model, tokenizer, family, tasks, budget=budget, temperature=0.0,
                        max_new_tokens=max_new_tokens, progress_label=f"steer eval {family.name}",
                        show_progress=show_progress)
    return summarize_by(records)
