"""Training sets from collected trajectories (``localpref steer collect``), at a fixed annotation cost.

A collection file holds one trajectory per prompt, in collection order, each step with the cost of
its correction (characters typed). Methods that learn from steers and methods that learn from full
rewrites are compared at equal annotation cost: each takes trajectories from the start of the file
until its budget of characters is spent.

* ``form="steers"``: every corrected step is a steer (``load_steers`` expands the trajectory);
  a trajectory costs the characters of its corrections.
* ``form="rewrites"``: a trajectory whose unsteered answer was wrong becomes one steer with an empty
  prefix, the model's whole answer (``meta.original``) as ``rejected`` and a full correct answer as
  ``corrected``, both ending the turn; it costs the characters of that answer, since a person
  rewriting an output types all of it. The correct answer is the trajectory's final text when it
  verified (the model's own wording, every error fixed), else the family's ``solve``, which the
  caller passes (``solve=localpref.tasks.solve``: the data layer knows no task family). Plain DPO
  trains on these with ``span=completion``; SFT on fully corrected outputs uses their chosen side.

Trajectories whose unsteered answer was right cost nothing and give nothing to either form; one
whose unsteered answer was cut off by ``max_new_tokens`` gives no rewrite (it is not an answer).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Literal

from localpref.data.errors import OnError
from localpref.data.load import SteerList, iter_jsonl, steers_from_record
from localpref.data.schema import Steer

Form = Literal["steers", "rewrites"]
Solve = Callable[[dict[str, Any]], str]  # a task's meta -> a whole correct answer (localpref.tasks.solve)


def _check(form: Form, solve: Solve | None) -> None:
    if form not in ("steers", "rewrites"):
        raise ValueError(f"form must be 'steers' or 'rewrites', got {form!r}")
    if form == "rewrites" and solve is None:
        raise ValueError("form='rewrites' needs solve= (localpref.tasks.solve): the rewrite of a trajectory "
                         "that never verified is its task family's solution")


def trajectory_cost(record: dict[str, Any], form: Form, solve: Solve | None = None) -> int:
    """Characters a person typed for this trajectory in ``form`` (``solve``: see ``rewrite_text``)."""
    _check(form, solve)
    if form == "steers":
        return int(sum(step.get("cost", {}).get("chars", 0) for step in record["steps"]))
    return len(rewrite_text(record, solve)) if _rewritable(record) else 0


def _rewritable(record: dict[str, Any]) -> bool:
    """A wrong answer the model finished: one cut off by max_new_tokens is not the model's answer."""
    return record["meta"]["first_error"] is not None and bool(record["meta"]["original_ended"])


def rewrite_text(record: dict[str, Any], solve: Solve) -> str:
    """A full correct answer for the trajectory's prompt: its final text if it verified, else
    ``solve`` of its task (module docstring)."""
    return record["final"] if record["verified"] else solve(record["meta"]["task"])


def steer_cost(path: str | os.PathLike, on_error: OnError = "raise") -> int:
    """Characters typed for every steer of the collection at ``path``: what its whole steer form
    costs, against which a budget share (``data.cost_share``) is set for steers and rewrites alike."""
    return sum(trajectory_cost(record, "steers") for _, record in iter_jsonl(path, on_error=on_error))


def load_collected(path: str | os.PathLike, *, form: Form = "steers", cost_budget: int | None = None,
                   on_error: OnError = "raise", solve: Solve | None = None) -> tuple[SteerList, dict[str, float]]:
    """Steers of ``form`` from the first trajectories of ``path`` whose cost fits ``cost_budget``;
    ``form="rewrites"`` needs ``solve`` (``localpref.tasks.solve``).

    Returns the steers and what was taken: trajectories taken (within the budget, the file's
    first ones) and used (those that gave steers), characters spent.
    A trajectory that would overrun the budget ends the selection (the file's order is kept, so
    a larger budget always holds a smaller one's data).
    """
    _check(form, solve)
    out = SteerList(source=str(path))
    spent = used = taken = 0
    for line, record in iter_jsonl(path, on_error=on_error, skipped=out.skipped):
        cost = trajectory_cost(record, form, solve)
        if cost_budget is not None and spent + cost > cost_budget:
            break
        spent, taken = spent + cost, taken + 1
        if form == "steers":
            steers = steers_from_record(record)
        elif _rewritable(record):
            steers = [Steer(prompt=record["prompt"], prefix="", rejected=record["meta"]["original"],
                            corrected=rewrite_text(record, solve), id=f"{record['id']}/rewrite",
                            corrected_ends_turn=True, rejected_ends_turn=True, meta={"source": "rewrite"})]
        else:
            steers = []
        used += bool(steers)
        for steer in steers:
            steer.origin = (str(path), line)
        out.extend(steers)
    return out, {"trajectories_taken": taken, "trajectories_used": used, "chars": spent}
