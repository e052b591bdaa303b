"""Holding steers out for evaluation without leaking a source record into both sides.

Several steers can come from one source record: the steps of one trajectory (ids ``"t4/step0"``,
``"t4/step1"``, ...; ``localpref.data.load``) and the hunks of one edited answer
(``localpref data from-edits --hunks all``: ``"x/hunk0"``, ``"x/hunk1"``, ...). They share their
prompt and, step by step, each other's text, so one of them in training and another held out would
make the held-out numbers look better than they are. The split therefore holds out whole records.
"""

from __future__ import annotations

import json
import re
from typing import Sequence

import torch

from localpref.data.schema import Steer

_PART = re.compile(r"/(step|hunk)\d+$")  # the suffix load.py and importers.py append per steer


def source_record(steer: Steer) -> tuple[str, str | None]:
    """The key shared by all steers of one source record: ``(prompt, record id)``.

    The record id is the steer's id without its ``/stepK`` or ``/hunkK`` suffix. Steers without
    an id (a trajectory without one, steers built in code) share the key of every id-less steer
    with the same prompt: grouping too much is safe, too little would leak.
    """
    prompt = steer.prompt if isinstance(steer.prompt, str) else json.dumps(steer.prompt, sort_keys=True)
    return prompt, None if steer.id is None else _PART.sub("", steer.id)


def split_by_record(steers: Sequence[Steer], eval_fraction: float, *, seed: int = 0) -> tuple[list, list]:
    """``(train, held_out)``: a share ``eval_fraction`` of the source records (at least one) held out whole.

    The records are shuffled by a generator seeded with ``seed`` alone (0 in training, never the
    run's seed), so every run of a seed sweep is evaluated on the same steers. Training steers
    keep their file order; held-out ones come record by record in shuffled order.
    """
    groups: dict[tuple[str, str | None], list[int]] = {}
    for i, steer in enumerate(steers):
        groups.setdefault(source_record(steer), []).append(i)
    records = list(groups.values())
    if len(records) < 2:
        raise ValueError(f"all {len(steers)} steers come from one source record, so none can be held out "
                         f"without leaking it into training: give a separate held-out file (data.eval_path)")
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = min(len(records) - 1, max(1, round(eval_fraction * len(records))))
    held = [i for r in order[:n_held] for i in records[r]]
    kept = sorted(i for r in order[n_held:] for i in records[r])
    return [steers[i] for i in kept], [steers[i] for i in held]
