"""Scoring tokens with the policy, and where the reference's log-probs come from.

``TokenScorer`` is the module the loop differentiates through (and DDP/FSDP wrap): it runs the
causal LM and returns per-token log-probs aligned with the input positions. References:

* ``copy``              a frozen deep copy of the initial model (2x weights in memory);
* ``adapter_disabled``  the LoRA policy with its adapters switched off (no second copy);
* ``precomputed``       per-token log-probs of the span and completion tokens, computed once by
                        one of the above and cached on disk under
                        ``cache_root()/reflogps/<hash>``, keyed by the model's config,
                        attention implementation, dtypes and weights, the scoring precision
                        and lm_head path, and the tokenized data, so all runs of a sweep over
                        one model and data share it.

All return ``(ref_chosen_logps (b, t), ref_rejected_logps (b, t))`` in the batch's layout.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from localpref.logprobs import token_logps, token_logps_from_hidden
from localpref.models import cache_root
from localpref.packing import collate, packed_attention_mask

if TYPE_CHECKING:
    from localpref.log import Progress


# Config fields that change the logits after ``lm_head`` (soft-capping, scaling, muP multipliers) in
# some ``*ForCausalLM.forward`` of transformers (Gemma2/3, Cohere, Granite, Falcon-H1, MiniCPM, ...).
# The span-only path computes ``log_softmax(hidden @ W^T)`` and would silently skip them.
_LOGIT_TRANSFORM_FIELD = re.compile(r"logits?_?(soft)?_?(cap|scal|mult)|^softcap$|^output_multiplier$|"
                                    r"^dim_model_base$|^mup_")


def _logit_transform(config) -> str | None:
    """Name=value of a config field (or its ``text_config``'s) that transforms the logits, if any."""
    for cfg in (config, getattr(config, "text_config", None)):
        for name, value in (vars(cfg).items() if cfg is not None else ()):
            if not _LOGIT_TRANSFORM_FIELD.search(name) or value is None or isinstance(value, bool):
                continue
            if "scal" in name or "mult" in name:  # a scale of 1 is the identity
                if isinstance(value, (int, float)) and value == 1:
                    continue
            return f"{name}={value!r}"
    return None


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | str:
    """(backbone, lm_head) of an HF causal LM (or of the one inside a peft model), or why not.

    The span-only path is exact when ``model(...).logits == lm_head(backbone(...)[0])``: a plain
    ``*ForCausalLM`` whose head is a bias-free ``nn.Linear`` and whose config asks for no logit
    transform. Doubt: a model class that transforms its logits without a config field saying so
    would pass these checks; construct ``TokenScorer(..., span_only=False)`` for it.
    """
    base = model
    if hasattr(model, "get_base_model"):  # peft.PeftModel: LoRA layers are injected in place
        peft_config = getattr(model, "active_peft_config", None)
        if getattr(peft_config, "is_prompt_learning", False):
            return "peft prompt learning adds virtual tokens in PeftModel.forward"
        base = model.get_base_model()
    if not type(base).__name__.endswith("ForCausalLM"):
        return f"{type(base).__name__} is not a *ForCausalLM"
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if not isinstance(backbone, nn.Module):
        return f"{type(base).__name__} has no backbone attribute {base.base_model_prefix!r}"
    head = base.get_output_embeddings()
    if type(head) is not nn.Linear:  # e.g. a peft LoRA layer or ModulesToSaveWrapper on lm_head
        return f"the output embedding is a {type(head).__module__}.{type(head).__qualname__}, not a plain nn.Linear"
    if head.bias is not None:
        return "lm_head has a bias"
    transform = _logit_transform(base.config)
    if transform is not None:
        return f"the config transforms the logits ({transform})"
    return backbone, head


class TokenScorer(nn.Module):
    """Causal LM -> per-token log-probs of the input's own tokens at the masked positions.

    forward(input_ids (r, t), attention_mask (r, t), score_mask (r, t), position_ids (r, t) | None)
    -> (r, t) float32, where out[:, i] = log p(input_ids[:, i] | what position i attends to) if
    score_mask[:, i] else 0. The shift is here and only here: logits[:, i-1] score ids[:, i];
    position 0 has no logits and scores 0. A packed layout (``localpref.packing``) passes a
    (r, 1, t, t) boolean attention mask and position ids; the mask is handed to the model in the
    form its attention takes (``packed_attention_mask``), or refused for an untested model family.
    Without a ``score_mask`` it returns the raw (r, t, v) logits (``logits()``): every use of the
    model goes through this module's ``__call__``, so a wrapper's hooks run (FSDP2 gathers the
    root's sharded embedding, norm and lm_head there).

    Span-only path (``self.span_only``, chosen once here): the loss needs one number per scored
    token, so run the backbone, keep the hidden states of the scored positions only and project
    them with ``token_logps_from_hidden`` (chunked fp32, or the fused Triton kernel on CUDA); the
    (r, t, v) logits are never built. Otherwise (``span_only=False``, or a model for which it
    would not be exact, see ``causal_lm_parts``; the reason is in ``self.span_only_reason``) the
    full logits are built and gathered. Both give the same values and gradients.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32", span_only: bool = True):
        super().__init__()
        self.model = model
        self.precision = precision
        parts = causal_lm_parts(model) if span_only else "span_only=False was asked for"
        self.span_only = not isinstance(parts, str)
        self.span_only_reason = None if self.span_only else parts

    def _autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _attention(self, attention_mask: Tensor) -> Any:
        """A packed layout's (r, 1, t, t) bool mask in the model's form; a 2D padding mask as it is."""
        return packed_attention_mask(self.model, attention_mask) if attention_mask.ndim == 4 else attention_mask

    def logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> Tensor:
        """(r, t, v) raw logits (model dtype; autocast to bf16 when precision=bf16)."""
        return self(input_ids, attention_mask, None, position_ids)

    def _logits(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None) -> Tensor:
        with self._autocast(input_ids.device):
            return self.model(input_ids=input_ids, attention_mask=self._attention(attention_mask),
                              position_ids=position_ids, use_cache=False).logits

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                score_mask: Tensor | None = None, position_ids: Tensor | None = None, *,
                keep: Tensor | None = None, project: Tensor | None = None) -> Any:
        """Log-probs (r, t) of ``score_mask``'s tokens (class docstring); without a score mask the
        (r, t, v) logits. ``keep`` (r, t) bool also returns, as ``(log-probs, rows)``, the rows the
        head reads to predict each kept token (token i: the hidden state at i - 1), (n_keep, d) in
        row-major order; ``project=rows`` alone turns such rows into (n, v) fp32 logits. With the
        full-logits path the rows are already logits and ``project`` only casts them. (Evaluation
        uses these for its KL; they are modes of ``forward`` so that a wrapper's hooks run.)"""
        if project is not None:
            return self._project(project)
        if score_mask is None:
            return self._logits(input_ids, attention_mask, position_ids)  # (r, t, v)
        if not self.span_only:
            logits = self._logits(input_ids, attention_mask, position_ids)  # (r, t, v)
            scored = token_logps(logits[:, :-1], input_ids[:, 1:], score_mask[:, 1:])  # (r, t-1) fp32
            out = torch.nn.functional.pad(scored, (1, 0))  # (r, t): re-align to input positions
            return out if keep is None else (out, logits[:, :-1][keep[:, 1:]])
        # Looked up per call rather than stored: registering them again as submodules would
        # duplicate their weights in state_dict.
        backbone, head = self._parts()
        with self._autocast(input_ids.device):
            hidden = backbone(input_ids=input_ids, attention_mask=self._attention(attention_mask),
                              position_ids=position_ids, use_cache=False).last_hidden_state
        mask = score_mask[:, 1:]  # (r, t-1): hidden[:, i-1] scores ids[:, i]
        h = hidden[:, :-1][mask]  # (n, d)
        weight = head.weight  # (v, d)
        if self.precision == "bf16":
            # What autocast would hand lm_head: bf16 operands. Outside autocast the projection
            # accumulates in fp32 (autocast would round the logits themselves to bf16).
            h, weight = h.to(torch.bfloat16), weight.to(torch.bfloat16)
        row_logps = token_logps_from_hidden(h, weight, input_ids[:, 1:][mask])  # (n,) fp32
        scored = torch.zeros(mask.shape, dtype=row_logps.dtype, device=row_logps.device)
        out = torch.nn.functional.pad(scored.masked_scatter(mask, row_logps), (1, 0))  # (r, t)
        return out if keep is None else (out, hidden[:, :-1][keep[:, 1:]])

    def _parts(self) -> tuple[nn.Module, nn.Module]:
        parts = causal_lm_parts(self.model)
        if isinstance(parts, str):
            raise RuntimeError(f"the model changed after TokenScorer chose the span-only path: {parts}")
        return parts

    def _project(self, rows: Tensor) -> Tensor:
        """(n, d) hidden rows -> (n, v) fp32 logits, as the span-only path computes them (or cast logits rows)."""
        if not self.span_only:
            return rows.float()
        weight = self._parts()[1].weight  # (v, d)
        if self.precision == "bf16":  # bf16 operands, fp32 accumulation: as token_logps_from_hidden
            rows, weight = rows.to(torch.bfloat16), weight.to(torch.bfloat16)
        return rows.float() @ weight.float().T


def score_batch(scorer: nn.Module, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of the tokens in ``batch.masks(mask_kind)`` (0 elsewhere): (chosen (b, t), rejected (b, t))."""
    masks = batch.masks(mask_kind)
    per_token = scorer(score_mask=batch.to_rows(*masks), **batch.model_inputs())  # (r, t) in the batch's layout
    return _own(batch, per_token, masks)


def score_and_keep(scorer: nn.Module, batch, mask_kind: str, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``score_batch`` plus the head's input rows (n_keep, d) for the row tokens ``keep`` (r, t)
    marks (``TokenScorer``'s ``keep``), from the same forward."""
    masks = batch.masks(mask_kind)
    per_token, rows = scorer(score_mask=batch.to_rows(*masks), keep=keep, **batch.model_inputs())
    return (*_own(batch, per_token, masks), rows)


def _own(batch, per_token: Tensor, masks: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    # In a packed row a token this pair does not score may be scored for another pair: keep each pair's own.
    chosen, rejected = batch.split(per_token)
    return torch.where(masks[0], chosen, 0.0), torch.where(masks[1], rejected, 0.0)


class ModelReference:
    """Reference log-probs from a model: a frozen copy, or the policy with LoRA disabled.

    Always scored in eval mode, so the reference is a fixed function whatever the model's
    dropout: ``adapter_disabled`` shares the policy, which is in train mode while it trains.
    """

    def __init__(self, scorer: TokenScorer, adapter_disabled: bool):
        self.scorer = scorer
        self.adapter_disabled = adapter_disabled

    @contextlib.contextmanager
    def _context(self):
        """Eval mode (and adapters off for ``adapter_disabled``) for one call; the mode is restored."""
        was_training = self.scorer.training
        self.scorer.eval()
        try:
            with self.scorer.model.disable_adapter() if self.adapter_disabled else contextlib.nullcontext():
                yield
        finally:
            self.scorer.train(was_training)

    @torch.no_grad()
    def token_logps(self, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
        with self._context():
            return score_batch(self.scorer, batch, mask_kind)

    @torch.no_grad()
    def score_and_keep(self, batch, mask_kind: str, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``reference.score_and_keep`` with the reference (for evaluation's KL)."""
        with self._context():
            return score_and_keep(self.scorer, batch, mask_kind, keep)

    @torch.no_grad()
    def is_policy(self, policy: "TokenScorer") -> bool:
        """True when the reference computes exactly what ``policy`` computes now (before training),
        so one forward can serve both. ``adapter_disabled``: every LoRA B matrix is zero (PEFT's
        init) and nothing else trains; ``copy``: every parameter and buffer equals the copy's.
        False whenever that cannot be told cheaply (DoRA, sharded weights, other names)."""
        if policy is self.scorer:  # adapter_disabled: the adapters' contribution must be exactly 0
            for name, param in policy.model.named_parameters():
                if any(k in name for k in ("lora_magnitude_vector", "modules_to_save", "trainable_tokens")):
                    return False  # DoRA, saved modules, trainable tokens: not an exact zero, trained or not
                if "lora_B" in name or "lora_embedding_B" in name:  # trainable or not (a loaded adapter)
                    if bool(param.any()):
                        return False
                elif param.requires_grad and "lora_A" not in name and "lora_embedding_A" not in name:
                    return False  # anything else that trains (DoRA magnitudes, modules_to_save)
            return True
        mine = {**dict(self.scorer.model.named_parameters()), **dict(self.scorer.model.named_buffers())}
        theirs = {**dict(policy.model.named_parameters()), **dict(policy.model.named_buffers())}
        if mine.keys() != theirs.keys() or _computation(self.scorer) != _computation(policy):
            return False  # other config, attention, dtypes, precision or lm_head path
        return all(type(a.data) is torch.Tensor and type(b.data) is torch.Tensor and a.device == b.device
                   and a.dtype == b.dtype and torch.equal(a.data, b.data)
                   for a, b in ((mine[k], theirs[k]) for k in mine))

    @torch.no_grad()
    def project(self, rows: Tensor) -> Tensor:
        """(n, d) rows of ``score_and_keep`` -> (n, v) fp32 logits through the *reference's* head
        (a ``copy`` reference's lm_head is not the trained policy's)."""
        with self._context():
            return self.scorer(project=rows)


def make_model_reference(kind: str, policy: TokenScorer) -> ModelReference:
    """A ``copy`` or ``adapter_disabled`` reference of the policy as it is now (before training).

    ``adapter_disabled`` scores through the policy's own ``TokenScorer`` (so through its FSDP
    root once it is sharded in place); ``copy`` through a frozen copy with the same precision
    and lm_head path.
    """
    if kind == "copy":
        frozen = copy.deepcopy(policy.model).eval()
        frozen.requires_grad_(False)
        return ModelReference(TokenScorer(frozen, policy.precision, policy.span_only), adapter_disabled=False)
    if kind == "adapter_disabled":
        if not hasattr(policy.model, "disable_adapter"):
            raise ValueError("reference=adapter_disabled needs peft=lora (the policy has no adapters)")
        return ModelReference(policy, adapter_disabled=True)
    raise ValueError(f"no model reference of kind {kind!r}")


def _computation(scorer: TokenScorer) -> str:
    """What decides the reference's log-probs besides weights and data, as canonical JSON: the
    model's config (architecture, heads, RoPE, norms: equal weights can compute different
    things), its attention implementation (not in the config's dict), its parameter dtypes
    (weights are hashed as fp32), and the scorer's autocast precision and lm_head path."""
    model = scorer.model
    config = model.config.to_dict()
    config.pop("_name_or_path", None)  # where the model was read from, not what it computes
    return json.dumps({"config": config, "attn_implementation": getattr(model.config, "_attn_implementation", None),
                       "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                       "precision": scorer.precision, "span_only": scorer.span_only}, sort_keys=True, default=str)


def _fingerprint(scorer: TokenScorer, examples: Sequence) -> str:
    """sha256 of how the scorer computes (``_computation``), the model's weights and the
    tokenized pairs (ids and masks): the precomputed cache's key."""
    model = scorer.model
    h = hashlib.sha256(_computation(scorer).encode())
    for name, t in sorted(model.state_dict().items()):
        if "lora_" in name:  # adapters are off in the reference; their (random) init must not matter
            continue
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    for e in examples:
        for seq in (e.chosen_ids, e.rejected_ids, e.chosen_span_mask, e.rejected_span_mask,
                    e.chosen_completion_mask, e.rejected_completion_mask):
            h.update(bytes(str(list(map(int, seq))), "ascii"))
    return h.hexdigest()[:24]


class PrecomputedReference:
    """Reference log-probs looked up from a cache of the span/completion tokens of every pair.

    For pair ``i`` the cache holds ``chosen/i`` and ``rejected/i``: 1-D float32 log-probs of the
    tokens at the positions where span | completion mask is True, in position order. It is built
    on the pairs as tokenized, so the runs of a sweep share it whatever their loss's mask; a pair
    that training cut after its last scored token (``drop_unread_tail``) reads the leading ones.
    """

    def __init__(self, table: dict[str, Tensor]):
        self.table = table

    def token_logps(self, batch, mask_kind: str) -> tuple[Tensor, Tensor]:
        out = []
        for side, (span, completion), kind_mask in zip(
                ("chosen", "rejected"), zip(*(batch.masks("span"), batch.masks("completion"))),
                batch.masks(mask_kind)):
            stored = span | completion  # (b, t) the positions the cache holds, in order
            logps = torch.zeros(stored.shape, dtype=torch.float32)
            for row, i in enumerate(batch.index.tolist()):
                # Training may run a pair cut after its last scored token (drop_unread_tail): its
                # stored positions are then the first ones of the table's, in position order.
                where = stored[row].cpu()
                values = self.table[f"{side}/{i}"]
                if int(where.sum()) > values.numel():
                    raise ValueError(f"the reference table holds {values.numel()} {side} log-probs of pair {i}, "
                                     f"the batch asks for {int(where.sum())}: table and data do not match")
                logps[row, where] = values[:int(where.sum())]
            out.append(logps.to(kind_mask.device) * kind_mask)
        return out[0], out[1]

    def is_policy(self, policy: "TokenScorer") -> bool:
        """A table is never re-derived from the policy (it is cheap to read)."""
        return False

    def score_and_keep(self, batch, mask_kind: str, keep: Tensor) -> tuple[Tensor, Tensor, None]:
        """No model is kept, so no rows: drift KL is not available with precomputed references."""
        return (*self.token_logps(batch, mask_kind), None)

    @classmethod
    @torch.no_grad()
    def build(cls, reference: ModelReference, examples: Sequence, pad_id: int, *, batch_size: int,
              device: torch.device, layout: str = "unpacked",
              progress: Progress | None = None) -> tuple["PrecomputedReference", Path]:
        """Load the cached table for (model, weights, precision, examples) or compute and store it
        atomically, scoring ``batch_size`` pairs at a time in ``layout``; ``progress`` (a
        ``localpref.log.Progress``) advances by the pairs scored. The layout is not in the key:
        the layouts agree to fp32 rounding, and a sweep over layouts shares one table."""
        key = _fingerprint(reference.scorer, examples)
        folder = cache_root() / "reflogps" / key
        if (folder / "logps.safetensors").exists():
            return cls(load_file(str(folder / "logps.safetensors"))), folder
        table: dict[str, Tensor] = {}
        for start in range(0, len(examples), batch_size):
            idx = list(range(start, min(start + batch_size, len(examples))))
            batch = collate(examples, idx, pad_id, layout=layout).to(device)
            stored = tuple(s | c for s, c in zip(batch.masks("span"), batch.masks("completion")))
            with reference._context():
                chosen, rejected = batch.split(reference.scorer(score_mask=batch.to_rows(*stored),
                                                                **batch.model_inputs()))
            for row, i in enumerate(idx):
                table[f"chosen/{i}"] = chosen[row][stored[0][row]].cpu().contiguous()
                table[f"rejected/{i}"] = rejected[row][stored[1][row]].cpu().contiguous()
            if progress is not None:
                progress.update(advance=len(idx))
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".tmp-{key}-{os.getpid()}")
        tmp.mkdir(exist_ok=True)
        save_file(table, str(tmp / "logps.safetensors"))
        try:
            os.rename(tmp, folder)
        except OSError:  # a parallel run of the sweep wrote the same table first
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(table), folder
