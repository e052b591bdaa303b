"""Batch layouts: how tokenized steers become model inputs, and how per-token outputs map back.

The loop and the losses never index rows themselves. They ask the batch for

* ``model_inputs()``: what the model's forward takes,
* ``masks(kind)``: the chosen/rejected masks of the tokens to score (``"span"`` or ``"completion"``),
* ``split(per_token)``: the per-token output of that forward, split into chosen and rejected,
* ``to_rows(chosen, rejected)``: per-pair masks placed on the forward's rows (what to score),
* ``chosen_only()``: the same pairs with the chosen sequences alone (SFT never looks at the
  rejected ones),

so the packed layouts (``localpref.packing``: chosen and rejected sharing their prefix in one
row, steer trees) only implement these.

Axis letters: ``b`` pairs, ``t`` tokens. The padded layout here stacks the ``b`` chosen rows on
top of the ``b`` rejected rows, so one forward of ``2b`` rows serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor


class PairBatch(Protocol):
    """What the training loop needs from any batch layout."""

    index: Tensor  # (b,) positions of the pairs in their dataset (for cached reference log-probs)

    @property
    def num_pairs(self) -> int: ...

    def model_inputs(self) -> dict[str, Tensor]: ...

    def chosen_only(self) -> "PairBatch": ...

    def labels(self) -> Tensor: ...

    def masks(self, kind: str) -> tuple[Tensor, Tensor]: ...

    def split(self, per_token: Tensor) -> tuple[Tensor, Tensor]: ...

    def to_rows(self, chosen: Tensor, rejected: Tensor) -> Tensor: ...

    def to(self, device: torch.device) -> "PairBatch": ...


@dataclass
class PaddedPairBatch:
    """Chosen rows then rejected rows, right-padded to the longest sequence.

    input_ids        (2b, t)  token ids; rows [0, b) chosen, [b, 2b) rejected
    attention_mask   (2b, t)  1 for real tokens, 0 for padding
    span_mask        (2b, t)  True at positions whose token is in the divergence span
    completion_mask  (2b, t)  True at positions whose token is in the assistant completion
    index            (b,)     dataset position of each pair

    A mask is True at position i when token ids[i] is trained on; the model's logits at i-1
    score it (``localpref.reference.TokenScorer`` does that shift), so position 0 is never True.
    """

    input_ids: Tensor
    attention_mask: Tensor
    span_mask: Tensor
    completion_mask: Tensor
    index: Tensor

    @property
    def num_pairs(self) -> int:
        return self.index.shape[0]

    def model_inputs(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def chosen_only(self) -> "PaddedPairBatch":
        """The b chosen rows alone; its ``split`` gives the chosen side and an empty (0, t) rejected one."""
        b = self.num_pairs
        return PaddedPairBatch(*(x[:b] for x in (self.input_ids, self.attention_mask, self.span_mask,
                                                 self.completion_mask)), self.index)

    def labels(self) -> Tensor:
        """(2b, t) the token to score at each position (the input itself; shifted by the scorer)."""
        return self.input_ids

    def masks(self, kind: str) -> tuple[Tensor, Tensor]:
        """(chosen (b, t), rejected (b, t)) masks of the tokens a loss scores."""
        if kind == "span":
            return self.split(self.span_mask)
        if kind == "completion":
            return self.split(self.completion_mask)
        raise ValueError(f"mask kind must be 'span' or 'completion', got {kind!r}")

    def split(self, per_token: Tensor) -> tuple[Tensor, Tensor]:
        """(2b, t, ...) -> chosen (b, t, ...), rejected (b, t, ...)."""
        b = self.num_pairs
        return per_token[:b], per_token[b:]

    def to_rows(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """(b, t), (b, t) -> (2b, t): chosen rows on top of rejected rows (the inverse of ``split``)."""
        return torch.cat([chosen, rejected])

    @property
    def num_tokens(self) -> int:
        """Row tokens that are not padding."""
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> "PaddedPairBatch":
        return PaddedPairBatch(*(x.to(device) for x in (self.input_ids, self.attention_mask,
                                                          self.span_mask, self.completion_mask, self.index)))


def collate_padded(examples: Sequence, indices: Sequence[int], pad_id: int) -> PaddedPairBatch:
    """Tokenized steers (``localpref.data.TokenizedSteer``) -> one right-padded pair batch.

    ``indices`` are the examples' positions in their dataset, carried along for cached lookups.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    rows = [(e.chosen_ids, e.chosen_span_mask, e.chosen_completion_mask) for e in examples]
    rows += [(e.rejected_ids, e.rejected_span_mask, e.rejected_completion_mask) for e in examples]
    t = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), t), dtype=torch.long)
    span_mask = torch.zeros((len(rows), t), dtype=torch.bool)
    completion_mask = torch.zeros((len(rows), t), dtype=torch.bool)
    for r, (ids, span, completion) in enumerate(rows):
        n = len(ids)
        input_ids[r, :n] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, :n] = 1
        span_mask[r, :n] = torch.tensor(span, dtype=torch.bool)
        completion_mask[r, :n] = torch.tensor(completion, dtype=torch.bool)
    # Position 0 has no logits before it; a mask there would be a tokenizer bug, not a choice.
    if span_mask[:, 0].any() or completion_mask[:, 0].any():
        raise ValueError("a mask marks position 0, which no logit can score")
    return PaddedPairBatch(input_ids, attention_mask, span_mask, completion_mask,
                           torch.tensor(list(indices), dtype=torch.long))
