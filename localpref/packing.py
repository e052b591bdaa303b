"""Packed layouts: every token that several sequences share goes through the model once.

A steer's chosen and rejected sequences share the prompt and the accepted prefix (hundreds of
tokens) and differ in a handful; the steers of one trajectory share even more. The padded layout
(``localpref.collate``) runs each shared token once per sequence; the layouts here lay the
sequences of a *group* out as a prefix tree in one row:

* ``pairs``: a group is one steer. Its row holds the shared tokens once, then the rest of the
  chosen sequence, then the rest of the rejected one::

      row       <s> P P P P a | c c c | a' r r r          a' = a copy of a (see below)
      position   0  1 2 3 4 5 | 6 7 8 | 5  6 7 8

* ``trees``: a group is every steer of one source record (``TokenizedSteer.source_record``,
  ``localpref.data.split.source_record``: the steps of one trajectory, the hunks of one edited
  answer; a steer from a flat file is a group of one, i.e. ``pairs``). The trunk is the final
  accepted text; each rejected branch (and each chosen sequence that a later step's text
  re-tokenizes differently at its end) hangs off the trunk where it diverges.

How a group becomes a row. The group's token sequences are sorted; each one after the first
shares ``l`` leading tokens with the one before it (the longest prefix it shares with any of the
earlier ones, since they are sorted) and adds only its own tail to the row. Every row token gets

* its position id: its index in its own sequence (so a branch restarts at its divergence);
* ``end``: one past the last row position of any sequence that passes through it. A query at row
  position ``j`` sees the key at ``i`` iff ``i <= j < end[i]``: the tree is laid out depth first,
  so the keys a token sees are exactly the earlier tokens of its own sequence. Neither branch
  sees the other.

The scorer keeps its one rule: the output at row position ``j`` scores ``ids[j]`` with the
hidden state at ``j - 1``. For a tail that branches off the row at depth ``l`` that would be the
last token of the previous branch, so such a tail starts with a copy of its parent token ``a'``
(same token, same position, same keys, hence the same hidden state as ``a``), and the branch's
tokens see ``a'`` in place of ``a``. That is one extra token per branch. A sequence's own token at
depth ``l - 1`` is still read at ``a``; ``a'`` is never scored.

The batch answers the loop's questions (``localpref.collate.PairBatch``) per pair: ``split``
gathers each pair's chosen and rejected tokens out of the rows into ``(b, w)`` tensors whose
column ``i`` is the sequence's token ``i``, exactly as in the padded layout (``w``: the longest
sequence), so the losses, the metrics and the reference cache do not know the layout. A token
shared by both sides of a pair is read twice from one row position; the gradients of its two
uses add up, as the two copies' gradients do in the padded layout.

Attention: the mask is a dense boolean ``(r, 1, t, t)`` tensor built from ``end``; the model
gets it in the form its attention implementation takes (``packed_attention_mask``), and a model
family that has not been checked to honour a custom 4D mask and position ids is refused, never
run with the wrong attention.

Axis letters: ``b`` pairs, ``w`` tokens of a pair's sequence, ``r`` rows, ``t`` row positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from localpref.collate import collate_padded
from localpref.spans import common_prefix_len

# ``config.model_type`` of the families whose packed log-probs and gradients are tested equal to
# the padded layout's (tests/test_packing.py, transformers 5.x): each builds its causal mask with
# ``transformers.masking_utils.create_causal_mask``, which passes a 4D mask through unchanged, and
# feeds ``position_ids`` to its rotary embedding. Add a family only together with its test.
PACKED_ATTENTION_FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})

# How each attention implementation takes a custom mask (see ``packed_attention_mask``).
_MASK_FORMS = ("sdpa", "eager", "flex_attention")


# ------------------------------------------------------------------------------------------------
# One group of sequences -> one prefix tree laid out in a row
# ------------------------------------------------------------------------------------------------


@dataclass
class TreeRow:
    """A group of token sequences laid out as one prefix tree (lengths ``n`` = row tokens).

    ids        (n,) token ids
    positions  (n,) position id of each row token: its index within its sequence
    end        (n,) one past the last row position that may attend to this token
    paths      per input sequence, the row position holding each of its tokens (for reading
               its per-token outputs; never a branch's copied parent token)
    """

    ids: list[int]
    positions: list[int]
    end: list[int]
    paths: list[list[int]]


def lay_out(sequences: Sequence[Sequence[int]]) -> TreeRow:
    """Lay ``sequences`` out as a prefix tree: each shared leading token appears once.

    See the module docstring for the layout, the copied parent tokens and ``end``.
    Doubt: sharing is found between neighbours in sorted order only, which finds every prefix
    two sequences share (a sorted list's neighbours share the longest prefixes).
    """
    ids: list[int] = []
    positions: list[int] = []
    reads: list[list[int] | None] = [None] * len(sequences)  # row positions read for each token
    sees: list[list[int] | None] = [None] * len(sequences)  # row positions each token's branch attends along
    prev = None
    for i in sorted(range(len(sequences)), key=lambda k: list(sequences[k])):
        seq = list(sequences[i])
        if not seq:
            raise ValueError("cannot lay out an empty sequence")
        shared = 0 if prev is None else common_prefix_len(sequences[prev], seq)
        if prev is not None and shared == len(seq):  # equal to the previous one (a prefix sorts first)
            reads[i], sees[i] = reads[prev][:shared], sees[prev][:shared]
        elif shared == 0:  # nothing in common: a new root
            reads[i] = sees[i] = list(range(len(ids), len(ids) + len(seq)))
            ids += seq
            positions += range(len(seq))
        elif shared == len(sequences[prev]):  # the previous sequence ends at the row's end: go on from it
            tail = list(range(len(ids), len(ids) + len(seq) - shared))
            reads[i], sees[i] = reads[prev] + tail, sees[prev] + tail
            ids += seq[shared:]
            positions += range(shared, len(seq))
        else:  # branch off at depth `shared`: a copy of the parent token, then the own tail
            copy = len(ids)
            tail = list(range(copy + 1, copy + 1 + len(seq) - shared))
            reads[i] = reads[prev][:shared] + tail
            sees[i] = sees[prev][:shared - 1] + [copy] + tail
            ids += seq[shared - 1:]
            positions += range(shared - 1, len(seq))
        prev = i
    end = list(range(1, len(ids) + 1))
    for path in sees:
        for q in path:  # paths run in increasing row order: the last one is the furthest
            end[q] = max(end[q], path[-1] + 1)
    return TreeRow(ids, positions, end, reads)


def attention_from_end(end: Tensor) -> Tensor:
    """(r, t) ``end`` -> (r, 1, t, t) bool mask, True where query ``j`` may attend key ``i``.

    ``mask[:, 0, j, i] = i <= j < end[:, i]``: causal, and inside the subtree of key ``i``.
    Padding tokens have ``end = own position + 1``: they see only themselves (a fully masked
    query row would give NaN in attention and then in its backward) and nobody sees them.
    """
    t = end.shape[-1]
    pos = torch.arange(t, device=end.device)
    return ((pos[None, None, :] <= pos[None, :, None]) & (pos[None, :, None] < end[:, None, :]))[:, None]


# ------------------------------------------------------------------------------------------------
# Which steers share a row, and which rows share a micro-batch
# ------------------------------------------------------------------------------------------------


def groups(examples: Sequence, layout: str) -> list[list[int]]:
    """Positions of ``examples`` that share a row, in order of first appearance.

    ``pairs``: each steer alone. ``trees``: the steers of one source record together
    (``TokenizedSteer.source_record``; a steer without one alone). Grouping is only about speed:
    a row of any set of sequences is exact.
    """
    if layout not in ("pairs", "trees"):
        raise ValueError(f"packed layouts are 'pairs' and 'trees', got {layout!r}")
    out: dict[Any, list[int]] = {}
    for k, e in enumerate(examples):
        key = (1, e.source_record) if layout == "trees" and e.source_record is not None else (0, k)
        out.setdefault(key, []).append(k)
    return list(out.values())


def epoch_order(examples: Sequence, generator: torch.Generator, *, by_trajectory: bool) -> list[int]:
    """A permutation of the dataset for one epoch (``data.shuffle``).

    ``by_trajectory``: the groups of ``groups(examples, "trees")`` are permuted, so each
    trajectory's steers stay together, in order, and a step can hold whole trajectories (what
    ``trees`` needs). Otherwise, and always when there are no trajectories, it is
    ``torch.randperm(len(examples), generator=generator)``.
    """
    if not by_trajectory:
        return torch.randperm(len(examples), generator=generator).tolist()
    parts = groups(examples, "trees")
    return [i for g in torch.randperm(len(parts), generator=generator).tolist() for i in parts[g]]


def _sequences(examples: Sequence, sides: tuple[str, ...]) -> list[list[int]]:
    return [getattr(e, f"{side}_ids") for e in examples for side in sides]


def micro_batches(examples: Sequence, idx: Sequence[int], *, layout: str, micro_batch_size: int,
                  tokens_per_micro_batch: int | None) -> list[list[int]]:
    """Cut one step's pairs (dataset positions ``idx``, in order) into micro-batches.

    Without a token budget (``unpacked``, or ``tokens_per_micro_batch`` None) every
    ``micro_batch_size`` consecutive pairs make one, as in the padded layout. With one, whole
    groups (``groups``; one longer than the budget is cut into consecutive parts that fit) are
    taken longest first, and a micro-batch takes rows while ``rows x longest row`` (the padded
    size of its input) stays within the budget; a row longer than the budget is alone. Which
    pairs make a step never changes, only how they are cut, so the step's gradient is the same
    (the loop divides by global counts).
    """
    idx = list(idx)
    if layout == "unpacked" or tokens_per_micro_batch is None:
        return [idx[k:k + micro_batch_size] for k in range(0, len(idx), micro_batch_size)]
    rows = [row for group in groups([examples[i] for i in idx], layout)
            for row in _rows_within(examples, [idx[k] for k in group], tokens_per_micro_batch)]
    rows.sort(key=lambda row: -row[0])  # similar lengths side by side: little padding
    out: list[list[int]] = []
    count = longest = 0
    for length, members in rows:
        if out and (count + 1) * max(longest, length) <= tokens_per_micro_batch:
            out[-1] += members
            count, longest = count + 1, max(longest, length)
        else:
            out.append(list(members))
            count, longest = 1, length
    return out


def _rows_within(examples: Sequence, members: list[int], budget: int) -> list[tuple[int, list[int]]]:
    """(row length, steers) of one group, cut into consecutive parts whose rows fit ``budget``
    (a steer whose own row does not fit is a part of its own)."""
    def length(part: list[int]) -> int:
        return len(lay_out(_sequences([examples[i] for i in part], ("chosen", "rejected"))).ids)

    parts: list[tuple[int, list[int]]] = []
    for i in members:
        grown = length(parts[-1][1] + [i]) if parts else budget + 1
        if grown <= budget:
            parts[-1] = (grown, parts[-1][1] + [i])
        else:
            parts.append((length([i]), [i]))
    return parts


# ------------------------------------------------------------------------------------------------
# The batch
# ------------------------------------------------------------------------------------------------


@dataclass
class PackedPairBatch:
    """Groups of steers, one prefix tree per row, right-padded to the longest row.

    input_ids        (r, t)  token ids of the rows
    position_ids     (r, t)  each token's index in its own sequence (0 on padding)
    end              (r, t)  one past the last row position that may attend to it (mask rule above)
    chosen_index     (b, w)  flat index into the (r * t) row tokens of the chosen sequence's token
                             at each column; -1 past the sequence's end
    rejected_index   (b, w)  same for the rejected sequence (all -1 in ``chosen_only()``)
    span_mask        (2, b, w)  chosen / rejected divergence-span masks per pair, as in the padded layout
    completion_mask  (2, b, w)  chosen / rejected completion masks
    index            (b,)    dataset position of each pair
    lengths          (r,)    tokens of each row before its padding
    """

    input_ids: Tensor
    position_ids: Tensor
    end: Tensor
    chosen_index: Tensor
    rejected_index: Tensor
    span_mask: Tensor
    completion_mask: Tensor
    index: Tensor
    lengths: Tensor
    # What chosen_only() rebuilds from; not moved between devices.
    examples: tuple = field(default=(), repr=False)
    layout: str = "pairs"
    pad_id: int = 0

    @property
    def num_pairs(self) -> int:
        return self.index.shape[0]

    def model_inputs(self) -> dict[str, Tensor]:
        """input_ids and position_ids (r, t), attention_mask (r, 1, t, t) bool (True: may attend)."""
        return {"input_ids": self.input_ids, "attention_mask": attention_from_end(self.end),
                "position_ids": self.position_ids}

    def labels(self) -> Tensor:
        """(r, t) the token to score at each row position (the input itself; shifted by the scorer)."""
        return self.input_ids

    def masks(self, kind: str) -> tuple[Tensor, Tensor]:
        """(chosen (b, w), rejected (b, w)) masks of the tokens a loss scores."""
        if kind == "span":
            return self.span_mask[0], self.span_mask[1]
        if kind == "completion":
            return self.completion_mask[0], self.completion_mask[1]
        raise ValueError(f"mask kind must be 'span' or 'completion', got {kind!r}")

    def split(self, per_token: Tensor) -> tuple[Tensor, Tensor]:
        """(r, t, ...) row outputs -> chosen (b, w, ...), rejected (b, w, ...); 0 past a sequence's end."""
        flat = per_token.flatten(0, 1)  # (r * t, ...)
        out = []
        for index in (self.chosen_index, self.rejected_index):
            valid = (index >= 0).reshape(index.shape + (1,) * (flat.ndim - 1))
            taken = flat[index.clamp_min(0)]  # (b, w, ...); a gather: gradients of repeated reads add up
            out.append(torch.where(valid, taken, torch.zeros((), dtype=flat.dtype, device=flat.device)))
        return out[0], out[1]

    def to_rows(self, chosen: Tensor, rejected: Tensor) -> Tensor:
        """Per-pair masks (b, w) -> (r, t) bool: the row positions holding any marked token."""
        rows = torch.zeros(self.input_ids.numel(), dtype=torch.bool, device=self.input_ids.device)
        for index, mask in ((self.chosen_index, chosen), (self.rejected_index, rejected)):
            marked = index[mask]
            if bool((marked < 0).any()):
                raise ValueError("a mask marks a column past the end of its sequence")
            rows[marked] = True
        return rows.view_as(self.input_ids)

    def chosen_only(self) -> "PackedPairBatch":
        """The same pairs with their chosen sequences alone (SFT never looks at the rejected ones)."""
        batch = collate_packed(self.examples, self.index.tolist(), self.pad_id, layout=self.layout,
                               sides=("chosen",))
        return batch.to(self.input_ids.device)

    @property
    def num_tokens(self) -> int:
        """Row tokens that are not padding (copied parent tokens included)."""
        return int(self.lengths.sum())

    def to(self, device: torch.device) -> "PackedPairBatch":
        tensors = ("input_ids", "position_ids", "end", "chosen_index", "rejected_index", "span_mask",
                   "completion_mask", "index", "lengths")
        return replace(self, **{k: getattr(self, k).to(device) for k in tensors})


def collate(dataset: Sequence, indices: Sequence[int], pad_id: int, *, layout: str):
    """The pairs ``dataset[i] for i in indices`` as one batch of ``layout`` (``localpref.collate.PairBatch``)."""
    examples = [dataset[i] for i in indices]
    if layout == "unpacked":
        return collate_padded(examples, indices, pad_id)
    return collate_packed(examples, indices, pad_id, layout=layout)


def collate_packed(examples: Sequence, indices: Sequence[int], pad_id: int, *, layout: str,
                   sides: tuple[str, ...] = ("chosen", "rejected")) -> PackedPairBatch:
    """Tokenized steers (``localpref.data.TokenizedSteer``) -> one packed batch (module docstring).

    ``indices`` are the examples' positions in their dataset; ``sides`` the sequences laid out.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    examples = tuple(examples)
    rows, pair_reads = [], {}
    for group in groups(examples, layout):
        row = lay_out(_sequences([examples[k] for k in group], sides))
        for n, k in enumerate(group):
            for s, side in enumerate(sides):
                pair_reads[k, side] = (len(rows), row.paths[n * len(sides) + s])
        rows.append(row)
    t = max(len(row.ids) for row in rows)
    # Built as Python lists and turned into tensors once (a tensor per row and pair cost more than
    # the tiny models' forward).
    pad = lambda values, fill: [list(v) + [fill] * (t - len(v)) for v in values]  # noqa: E731
    input_ids = torch.tensor(pad([row.ids for row in rows], pad_id), dtype=torch.long).view(len(rows), t)
    position_ids = torch.tensor(pad([row.positions for row in rows], 0), dtype=torch.long).view(len(rows), t)
    end = torch.tensor([row.end + list(range(len(row.ids) + 1, t + 1)) for row in rows],  # padding sees itself
                       dtype=torch.long).view(len(rows), t)

    b = len(examples)
    w = max(len(getattr(e, f"{side}_ids")) for e in examples for side in ("chosen", "rejected"))
    index = {side: [[-1] * w for _ in range(b)] for side in ("chosen", "rejected")}
    span = [[[False] * w for _ in range(b)] for _ in range(2)]
    completion = [[[False] * w for _ in range(b)] for _ in range(2)]
    for k, e in enumerate(examples):
        for s, side in enumerate(("chosen", "rejected")):
            if side not in sides:
                continue
            r, path = pair_reads[k, side]
            n = len(path)
            index[side][k][:n] = [r * t + q for q in path]
            span[s][k][:n] = getattr(e, f"{side}_span_mask")
            completion[s][k][:n] = getattr(e, f"{side}_completion_mask")
    index = {side: torch.tensor(v, dtype=torch.long).view(b, w) for side, v in index.items()}
    span = torch.tensor(span, dtype=torch.bool).view(2, b, w)
    completion = torch.tensor(completion, dtype=torch.bool).view(2, b, w)
    # Position 0 has no logits before it; a mask there would be a tokenizer bug, not a choice.
    if span[..., 0].any() or completion[..., 0].any():
        raise ValueError("a mask marks position 0, which no logit can score")
    return PackedPairBatch(input_ids, position_ids, end, index["chosen"], index["rejected"], span, completion,
                           torch.tensor(list(indices), dtype=torch.long),
                           torch.tensor([len(row.ids) for row in rows]), examples, layout, pad_id)


# ------------------------------------------------------------------------------------------------
# Handing the mask to the model
# ------------------------------------------------------------------------------------------------


def _config(model: torch.nn.Module):
    """The config of an HF model, or of the one inside a peft model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def check_packed_attention(model: torch.nn.Module) -> None:
    """Raise ValueError unless ``model`` is known to honour a packed mask and position ids."""
    config = _config(model)
    family = getattr(config, "model_type", None)
    if family not in PACKED_ATTENTION_FAMILIES:
        raise ValueError(f"data.layout=pairs|trees needs a model family whose attention is tested with "
                         f"packed masks and position ids ({', '.join(sorted(PACKED_ATTENTION_FAMILIES))}); "
                         f"model_type {family!r} is not one of them: use data.layout=unpacked")
    impl = config._attn_implementation
    if impl not in _MASK_FORMS:
        raise ValueError(f"data.layout=pairs|trees needs attention implementation {' | '.join(_MASK_FORMS)}; "
                         f"the model uses {impl!r}, which cannot take a tree-shaped mask")


def packed_attention_mask(model: torch.nn.Module, mask: Tensor) -> Any:
    """(r, 1, t, t) bool mask (True: may attend) -> what ``model``'s attention implementation takes.

    sdpa: the boolean mask itself. eager: an additive float mask (0 or the dtype's minimum), since
    eager attention adds the mask to its scores. flex_attention (CUDA): a ``BlockMask`` over the
    same pattern, so fully masked blocks are skipped. Anything else raises (``check_packed_attention``).
    """
    check_packed_attention(model)
    config = _config(model)
    window = getattr(config, "sliding_window", None)
    if window is not None and mask.shape[-1] > window:
        # A 4D mask replaces the model's own, sliding window included: longer rows would see too far.
        raise ValueError(f"packed rows of {mask.shape[-1]} tokens exceed the model's sliding window "
                         f"({window}); lower data.tokens_per_micro_batch / data.max_length or use data.layout=unpacked")
    impl = config._attn_implementation
    if impl == "sdpa":
        return mask
    if impl == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    # flex_attention: not exercised by the CPU test suite (it compiles its kernel for the GPU).
    from torch.nn.attention.flex_attention import create_block_mask

    dense = mask[:, 0]  # (r, t, t)
    r, t = dense.shape[0], dense.shape[-1]
    return create_block_mask(lambda b, h, q, kv: dense[b, q, kv], B=r, H=None, Q_LEN=t, KV_LEN=t, device=mask.device)
