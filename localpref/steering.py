"""The steering loop: generate, stop at the first error, correct one unit, resume; and its evaluation.

For one task (a prompt of a ``localpref.tasks`` family) and a model:

1. The model writes its answer (``TurnWriter``). The first pass runs to the end of the turn: that
   unsteered answer is recorded (``meta.original``), scored (pass without steers, position of the
   first error) and is what "DPO on (model output, rewrite)" uses. (If a pass runs out of tokens
   with a complete unit already wrong, the loop steers there at once: ``meta.original`` is then
   cut, ``original_ended`` false, and ``data.collected`` makes no rewrite of it, counted as unused.)
2. While the answer is wrong and fewer than ``budget`` steers were spent: find the first wrong
   unit (``family.first_error``), take what the model wrote from there to where it would have been
   stopped (``Unit.stop``: the unit and the character that completed it) as ``rejected``, the right
   unit (``family.correct``) as ``corrected``, splice ``accepted + corrected`` into the writer and
   let the model go on, now stopping as soon as a unit is complete and wrong. A correction that
   completes a right answer ends the turn (the person accepts).
   A pass that runs out of tokens (``max_new_tokens``, per pass) with nothing wrong yet is not an
   end: the model goes on from its own text, as a person would let it, until the task has sampled
   ``max_task_tokens`` in all (every pass counted); only that cap ends a task unverified without
   the budget being spent, and the record says so (``meta.stopped == "token_cap"``).
3. The record is a trajectory (``localpref.data.load``): ``prompt``, ``steps`` of
   ``accepted``/``rejected``/``corrected`` with their ``cost`` (characters and tokens typed),
   ``final`` (the answer as it stands) and ``verified``. ``load_steers`` expands it into steers as is.

``summarize`` turns records into the evaluation: the headline ``steers_to_verify`` (steers spent per
task, a task not verified within the budget counting as budget + 1, so no task leaves the mean),
pass rate without steers, share verified within the budget, first-error position, with 95% intervals
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

from localpref.generation import TurnWriter, generate_batch
from localpref.stats import bootstrap_interval, cluster_bootstrap, wilson_interval
from localpref.tasks import Task, TaskFamily


def make_step(tokenizer: Any, accepted: str, rejected: str, corrected: str, *, rejected_ends_turn: bool,
              corrected_ends_turn: bool) -> dict[str, Any]:
    """One trajectory step as collection files and the steering page store it: the texts, what the
    correction cost to type (characters, tokens) and the end-of-turn flags that are set."""
    step: dict[str, Any] = {"accepted": accepted, "rejected": rejected, "corrected": corrected,
                            "cost": {"chars": len(corrected),
                                     "tokens": len(tokenizer(corrected, add_special_tokens=False)["input_ids"])}}
    if rejected_ends_turn:
        step["rejected_ends_turn"] = True
    if corrected_ends_turn:
        step["corrected_ends_turn"] = True
    return step


def task_seed(seed: int, task_id: str) -> int:
    """A per-task sampling seed: runs are reproducible and independent of the order of tasks."""
    return zlib.crc32(f"{seed}/{task_id}".encode())


class Trajectory:
    """The loop's decisions for one task (steps 1-3 of the module docstring), fed the assistant text
    after each generation pass; generation itself is the caller's (one ``TurnWriter``, or batched)."""

    def __init__(self, family: TaskFamily, task: Task, tokenizer: Any, budget: int, max_task_tokens: int):
        self.family, self.task, self.meta, self.tok, self.budget = family, task, task.meta, tokenizer, budget
        self.max_task_tokens = max_task_tokens
        self.steps: list[dict[str, Any]] = []
        self.accepted_from = 0  # text before this offset is accepted (corrections included)
        self.text = ""
        self.stopped: str | None = None  # why it ended: verified | budget | token_cap
        self.original: str | None = None
        self.original_ended = False
        self.tokens = 0  # tokens sampled for this task so far, over all passes
        self.continuations = 0  # passes that went on after running out of tokens

    @property
    def steered(self) -> bool:
        """A correction was made: the next pass stops at the first wrong unit (before it, passes
        write the unsteered answer whole)."""
        return bool(self.steps)

    def feed(self, text: str, *, ended: bool, exhausted: bool, tokens: int) -> str | None:
        """The text after a pass and the tokens sampled for the task so far; returns the text to
        resume from (a correction spliced in, or the same text to go on), or None: done.

        Only an answer the model ended is judged whole (``final``): text cut off by ``max_new_tokens``
        is judged on its complete units only, since its last unit may just be unfinished."""
        family, meta = self.family, self.meta
        sampled, self.tokens, self.text = tokens - self.tokens, tokens, text
        if not self.steps:  # still the unsteered answer (a pass that ran out of tokens goes on)
            self.original, self.original_ended = text, ended
        offset = family.first_error(meta, text, final=ended)
        if offset is None:
            if not (ended or exhausted):
                raise RuntimeError("a generation pass stopped early with no wrong unit")
            if ended:
                self.stopped = "verified"
                return None
            return self._go_on(text, sampled)
        if offset < self.accepted_from:
            raise RuntimeError(f"family {family.name!r} found an error in accepted text at {offset} of {text!r}")
        if len(self.steps) >= self.budget:
            self.stopped = "budget"
            return None
        stop = family.unit_stop(meta, text, offset, final=ended)
        rejected, rejected_ends_turn = text[offset:stop], ended and stop == len(text)
        if not rejected and not rejected_ends_turn:  # out of tokens mid-answer: nothing to reject yet
            return self._go_on(text, sampled)
        corrected = family.correct(meta, text, offset, final=ended)
        fixed = text[:offset] + corrected
        ends_turn = family.verify(meta, fixed)  # the correction completes a right answer: accept
        self.steps.append(make_step(self.tok, text[self.accepted_from:offset], rejected, corrected,
                                    rejected_ends_turn=rejected_ends_turn, corrected_ends_turn=ends_turn))
        self.accepted_from = len(fixed)
        if ends_turn:
            self.text, self.stopped = fixed, "verified"
            return None
        return fixed

    def _go_on(self, text: str, sampled: int) -> str | None:
        """Out of tokens with nothing (complete) wrong: let the model go on from its own text, unless
        the task's token cap is reached (or the pass could sample nothing: the context is full)."""
        if self.tokens >= self.max_task_tokens or sampled == 0:
            self.stopped = "token_cap"
            return None
        self.continuations += 1
        return text

    def record(self, settings: dict[str, Any], **usage: Any) -> dict[str, Any]:
        """The trajectory record (module docstring), once ``feed`` returned None."""
        family, meta, text = self.family, self.meta, self.text
        steps = self.steps + ([{"accepted": text[self.accepted_from:]}] if text[self.accepted_from:] else [])
        verified = self.stopped == "verified" and family.verify(meta, text)
        ended = self.original_ended
        first = family.first_error(meta, self.original, final=ended)
        if first is None and not ended:  # cut off with no wrong unit so far: it did not pass either
            first = len(self.original)
        return {
            "id": self.task.id, "prompt": self.task.prompt, "steps": steps, "final": text, "verified": verified,
            "meta": {"task": meta, "original": self.original, "original_ended": ended,
                     "first_error": None if first is None else {
                         "offset": first, "unit": family.unit_index(self.original, first)},
                     "steers": len(self.steps), "stopped": self.stopped, "continuations": self.continuations,
                     "budget": self.budget, **settings, **usage},
        }


def _write_until_error(writer: TurnWriter, family: TaskFamily, meta: dict, *, stop_early: bool) -> None:
    """Generate until the turn ends, tokens run out, or (``stop_early``) a complete unit is wrong."""
    while not writer.done:
        piece = writer.step()
        if stop_early and piece and family.first_error(meta, writer.text, final=False) is not None:
            return


def _task_tokens(max_new_tokens: int, max_task_tokens: int | None) -> int:
    """The task's token cap: ``max_task_tokens``, or four passes' worth when it is None."""
    cap = 4 * max_new_tokens if max_task_tokens is None else max_task_tokens
    if cap < max_new_tokens:
        raise ValueError(f"max_task_tokens ({cap}) must be at least max_new_tokens ({max_new_tokens})")
    return cap


def steer_task(model: Any, tokenizer: Any, family: TaskFamily, task: Task, *, budget: int,
               temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
               max_new_tokens: int = 128, max_task_tokens: int | None = None) -> dict[str, Any]:
    """Run the steering loop on one task with a ``TurnWriter`` (the KV cache is kept across
    corrections); returns its trajectory record (module docstring). ``max_new_tokens`` bounds one
    generation pass, ``max_task_tokens`` (default 4 x ``max_new_tokens``) the whole task."""
    start = time.time()
    cap = _task_tokens(max_new_tokens, max_task_tokens)
    writer = TurnWriter(model, tokenizer, task.prompt, temperature=temperature, top_p=top_p,
                        seed=task_seed(seed, task.id), max_new_tokens=max_new_tokens)
    trajectory = Trajectory(family, task, tokenizer, budget, cap)
    _write_until_error(writer, family, task.meta, stop_early=False)
    resume = trajectory.feed(writer.text, ended=writer.ended, exhausted=writer.exhausted, tokens=writer.new_tokens)
    while resume is not None:
        writer.set_text(resume)
        _write_until_error(writer, family, task.meta, stop_early=trajectory.steered)
        resume = trajectory.feed(writer.text, ended=writer.ended, exhausted=writer.exhausted,
                                 tokens=writer.new_tokens)
    settings = dict(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
                    max_task_tokens=cap)
    return trajectory.record(settings, new_tokens=writer.new_tokens, forwarded_tokens=writer.forwarded_tokens,
                             seconds=round(time.time() - start, 3))


def steer_tasks_batched(model: Any, tokenizer: Any, family: TaskFamily, tasks: list[Task], *, budget: int,
                        temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                        max_new_tokens: int = 128, max_task_tokens: int | None = None) -> list[dict[str, Any]]:
    """``steer_task`` for many tasks at once: each generation pass runs all tasks that need one as
    one left-padded batch (``localpref.generation.generate_batch``). The records are those of
    ``steer_task`` up to floating-point ties; a resume re-reads its context in the batched prefill
    instead of reusing a per-task cache, which costs little next to token-by-token decoding."""
    start = time.time()
    cap = _task_tokens(max_new_tokens, max_task_tokens)
    trajectories = [Trajectory(family, t, tokenizer, budget, cap) for t in tasks]
    generators = [torch.Generator().manual_seed(task_seed(seed, t.id)) for t in tasks]
    usage = [{"new_tokens": 0, "forwarded_tokens": 0} for _ in tasks]
    pending = [(i, "") for i in range(len(tasks))]
    while pending:
        rows = [i for i, _ in pending]
        early = [trajectories[i].steered for i in rows]  # per row: unsteered answers are written whole
        stop = (lambda k, text: early[k] and family.first_error(tasks[rows[k]].meta, text, final=False) is not None) \
            if any(early) else None
        results = generate_batch(model, tokenizer, [tasks[i].prompt for i in rows], [t for _, t in pending],
                                 temperature=temperature, top_p=top_p, generators=[generators[i] for i in rows],
                                 max_new_tokens=max_new_tokens, stop=stop)
        next_pending = []
        for i, out in zip(rows, results):
            usage[i]["new_tokens"] += out.new_tokens
            usage[i]["forwarded_tokens"] += out.forwarded_tokens
            resume = trajectories[i].feed(out.text, ended=out.ended, exhausted=out.exhausted,
                                          tokens=usage[i]["new_tokens"])
            if resume is not None:
                next_pending.append((i, resume))
        pending = next_pending
    seconds = round((time.time() - start) / max(1, len(tasks)), 3)  # the batch's time, shared out
    settings = dict(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens,
                    max_task_tokens=cap)
    return [t.record(settings, **u, seconds=seconds) for t, u in zip(trajectories, usage)]


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
              out: str | os.PathLike | None = None, batch_size: int = 32, progress_label: str = "steer",
              show_progress: bool = True, extra_meta: dict[str, Any] | None = None,
              **settings: Any) -> list[dict[str, Any]]:
    """The steering loop over ``tasks``, ``batch_size`` at a time (``steer_tasks_batched``; 1: one
    ``TurnWriter`` per task). With ``out``, each batch's records are appended (flushed, fsynced) as
    they are done and tasks already in ``out`` are skipped, so a re-run resumes. Returns the records
    of all ``tasks``, in their order."""
    from localpref.log import Progress

    tasks = list(tasks)
    done: dict[str, dict] = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _drop_torn_tail(out)
        done = {r["id"]: r for r in read_records(out)}
        _check_same_settings(out, done.values(), {**settings, **(extra_meta or {})})
    todo = [t for t in tasks if t.id not in done]
    was_training = model.training
    model.eval()
    progress = Progress(len(tasks), len(tasks) - len(todo), label=progress_label, unit="prompts",
                        enabled=show_progress)
    verified = sum(bool(done[t.id]["verified"]) for t in tasks if t.id in done)
    try:
        for lo in range(0, len(todo), batch_size):
            chunk = todo[lo:lo + batch_size]
            records = (steer_tasks_batched(model, tokenizer, family, chunk, **settings) if batch_size > 1
                       else [steer_task(model, tokenizer, family, chunk[0], **settings)])
            for record in records:
                record["meta"].update(extra_meta or {})
                done[record["id"]] = record
                verified += record["verified"]
            if out is not None:
                append_records(out, records)
            progress.update(len(chunk), verified=verified)
    finally:
        progress.close()
        model.train(was_training)
    return [done[t.id] for t in tasks]


def _check_same_settings(path: Path, records: Iterable[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Resuming into a file made with other settings (model, budget, sampling) would mix two runs."""
    defaults = {"temperature": 0.0, "top_p": 1.0, "seed": 0, "max_new_tokens": 128, "max_task_tokens": None}
    want = {**defaults, **settings}
    want["max_task_tokens"] = _task_tokens(want["max_new_tokens"], want["max_task_tokens"])
    for record in records:
        # A missing key is a default of the writer of its day, except max_task_tokens: a record
        # without it ended its task when a pass ran out of tokens (the earlier loop), never the same.
        had = {k: record["meta"].get(k, None if k == "max_task_tokens" else v) for k, v in want.items()}
        differ = {k: (had[k], v) for k, v in want.items() if had[k] != v}
        if differ:
            raise ValueError(f"{path} holds trajectories made with other settings ({record['id']}: "
                             + ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items())
                             + "); write to another file")


def append_records(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append whole JSON lines, flushed and fsynced: a killed process loses at most the line in flight."""
    with open(path, "a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------------------
# The evaluation


def _clusters(records: list[dict[str, Any]]) -> list[Any] | None:
    """Each task's cluster (``meta.task.cluster``, a string or number: prompts that share answer
    items) when every record has one, else None (tasks are then taken as independent)."""
    labels = [(r["meta"].get("task") or {}).get("cluster") for r in records]
    return None if any(c is None for c in labels) else labels


def _bootstrap(values: list[float], den: list[float] | None, clusters: list[Any] | None) -> tuple[float, float]:
    """95% percentile bootstrap of sum(values) / sum(den) (den None: the mean) over tasks, or over
    whole clusters of tasks; a resample with nothing in ``den`` counts as inf (``localpref.stats``)."""
    _, lo, hi = (bootstrap_interval(values, den) if clusters is None
                 else cluster_bootstrap(values, clusters, den))
    return lo, hi


def _rate_ci(outcomes: list[bool], clusters: list[Any] | None) -> tuple[float, float]:
    """95% interval of a rate: Wilson over independent tasks; with clusters, the cluster bootstrap,
    unless every outcome is equal (every resample would be the same, a zero-width interval that
    hides how few tasks were seen): then Wilson, which treats the tasks as independent."""
    k, n = int(sum(outcomes)), len(outcomes)
    if clusters is None or k in (0, n):
        return wilson_interval(k, n)
    return _bootstrap([float(o) for o in outcomes], None, clusters)


def steers_to_verify(record: dict[str, Any]) -> int:
    """A task's steers to verify: the steers it spent if it was verified within its budget, else
    budget + 1 (more than any verified task can spend). The headline is their mean over all tasks,
    so a model that verifies fewer tasks never scores better, and no task (one that rambled to the
    token cap, one that spent the budget) leaves the mean."""
    return int(record["meta"]["steers"]) if record["verified"] else int(record["meta"]["budget"]) + 1


def prompt_outcomes(record: dict[str, Any]) -> list[int]:
    """What the analysis keeps per task (``[steers, verified, passed, capped]``), enough to recompute
    every headline figure for resampled prompts and seeds."""
    return [int(record["meta"]["steers"]), int(record["verified"]), int(_passed(record)), int(_capped(record))]


def _passed(record: dict[str, Any]) -> bool:
    return record["meta"]["first_error"] is None and bool(record["verified"])


def _capped(record: dict[str, Any]) -> bool:
    # "max_new_tokens": records written before the loop went on past a pass's token limit
    return record["meta"]["stopped"] in ("token_cap", "max_new_tokens")


def summarize(records: list[dict[str, Any]], *, budget: int | None = None) -> dict[str, Any]:
    """Steering metrics of ``records`` with 95% intervals (``[low, high]`` under ``*_ci``).

    steers_to_verify          the headline: mean over ALL tasks of the steers spent, a task not
                              verified within the budget counting as budget + 1 (``steers_to_verify``;
                              percentile bootstrap, 2000 resamples, see below)
    pass_rate                 share of unsteered answers that verify (Wilson interval, see below)
    verified_within_budget    share of tasks verified after at most ``budget`` steers (as pass_rate)
    token_capped              tasks that ended on the task's token cap (``max_task_tokens``)
                              unverified, with fewer steers than the budget: should be rare
    steers_per_verified       secondary: all steers spent / outputs verified within the budget (a
                              ratio over the tasks). It drops every unverified task that spent no
                              steer (one that rambled to the token cap adds 0 / 0), so it can reward
                              failing; it is kept for comparison with earlier reports only.
                              Bootstrap; a resample with nothing verified counts as inf
    steers_per_task           mean steers spent per task (bootstrap)
    first_error_unit          mean index of the first wrong unit of unsteered answers that have one
    chars_per_verified        characters typed per verified output (bootstrap; drops as above)

    The bootstraps resample tasks as independent units; when every record's task names its cluster
    (``meta.task.cluster``: prompts that share answer items, whose outcomes go together) they
    resample whole clusters instead (``localpref.stats.cluster_bootstrap``), and the rates get a
    cluster bootstrap too in place of Wilson (``_rate_ci``).
    """
    n = len(records)
    if n == 0:
        return {"tasks": 0}
    if budget is not None and any(int(r["meta"]["budget"]) != budget for r in records):
        raise ValueError(f"summarize(budget={budget}) of records steered with another budget")
    passed = [_passed(r) for r in records]
    steers = [float(r["meta"]["steers"]) for r in records]
    verified = [float(r["verified"]) for r in records]
    to_verify = [float(steers_to_verify(r)) for r in records]
    chars = [float(sum(s.get("cost", {}).get("chars", 0) for s in r["steps"])) for r in records]
    first_units = [float(r["meta"]["first_error"]["unit"]) for r in records if r["meta"]["first_error"]]
    out: dict[str, Any] = {"tasks": n, "budget": budget if budget is not None else records[0]["meta"]["budget"]}
    clusters = _clusters(records)
    out["steers_to_verify"] = sum(to_verify) / n
    out["steers_to_verify_ci"] = _bootstrap(to_verify, None, clusters)
    out["pass_rate"], out["pass_rate_ci"] = sum(passed) / n, _rate_ci(passed, clusters)
    out["verified_within_budget"] = sum(verified) / n
    out["verified_within_budget_ci"] = _rate_ci([bool(v) for v in verified], clusters)
    out["token_capped"] = sum(_capped(r) and not r["verified"] for r in records)
    if sum(verified) > 0:
        out["steers_per_verified"] = sum(steers) / sum(verified)
        out["steers_per_verified_ci"] = _bootstrap(steers, verified, clusters)
        out["chars_per_verified"] = sum(chars) / sum(verified)
        out["chars_per_verified_ci"] = _bootstrap(chars, verified, clusters)
    else:
        out["steers_per_verified"] = float("inf")
    out["steers_per_task"] = sum(steers) / n
    out["steers_per_task_ci"] = _bootstrap(steers, None, clusters)
    if first_units:
        erred = [i for i, r in enumerate(records) if r["meta"]["first_error"]]
        out["first_error_unit"] = sum(first_units) / len(first_units)
        out["first_error_unit_ci"] = _bootstrap(first_units, None,
                                                None if clusters is None else [clusters[i] for i in erred])
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
