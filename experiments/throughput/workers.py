"""One measurement: a warm-up and a measured optimizer step (or a few) of one system on one data
set, in a process of its own.

``spec`` names the system (``cases.py``: base, precision, allocator, tokens per micro-batch), the
model, the data file, ``warmup`` (steps before timing starts) and ``measure`` (the optimizer steps
to time, by index: step ``i`` holds the same pairs in every system). The worker builds the model
(``localpref.models.build_model``: the same weights for both systems), adds LoRA, runs steps
``0 .. warmup-1`` and then the ``measure`` steps, and returns (as a dict):

* ``step_seconds``: wall time of each measured step (the warm-up steps are left out);
* ``pairs``: pairs in the measured steps; ``steers_per_s`` = pairs / their total time;
* ``peak_rss``: the process's resident-set high-water mark over all its steps, warm-up
  included (``VmHWM`` of /proc/self/status, reset just before the first step), and
  ``start_rss``: the resident set when training starts (weights, optimizer, runtime);
* ``tokens`` (real row tokens the policy forwards ran, padding excluded) and ``padded`` (their
  rows x longest row), summed over the measured steps; ``precision``: the precision it ran at
  (``auto`` resolved).

localpref's step is the training loop's (``localpref.train``: set-up, then steps 1-3 without
logging), made of its own functions so the bench follows them when they change: the set-up
calls ``resolve_precision``, ``resolve_cpu_allocator`` / ``return_freed_memory``,
``drop_unread_tail``, ``TokenScorer`` and ``make_optimizer`` as ``train`` does, on typed
``TrainerConfig`` / ``DataConfig`` / ``LossConfig`` objects (schema defaults for every field the
bench does not set); the step calls ``epoch_order``, ``micro_batches``, ``collate``, ``normalizer``
and ``micro_batch_loss``. (If ``train``'s set-up gains a step, e.g. storing LoRA's frozen base in
bf16 under bf16, ``localpref_setup`` must call it too: it mirrors ``train`` line by line.)
TRL's is ``DPOTrainer.train``, timed by a callback, reading the same steers in the same order
(a sequential sampler over rows laid out in localpref's ``epoch_order``), so that step ``i``
holds the same pairs in both systems.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cases import parse_system  # experiments/throughput/cases.py (the worker runs from that folder)

LORA = dict(r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_peak_rss() -> int:
    """Reset the resident-set high-water mark (Linux ``clear_refs`` 5); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _kib("VmRSS")


def peak_rss() -> int:
    return _kib("VmHWM")


def _model(spec: dict[str, Any], lora: bool):
    from localpref.config import ModelConfig, PeftConfig
    from localpref.models import build_model

    model_cfg = ModelConfig(source=spec["model"], **spec.get("tiny", {}))
    peft_cfg = PeftConfig(kind="lora" if lora else "none", r=LORA["r"], alpha=LORA["alpha"],
                          target_modules=LORA["target_modules"])
    return build_model(model_cfg, peft_cfg, seed=0)


def _steps(spec: dict[str, Any]) -> list[int]:
    """The optimizer steps a worker runs, by index: the warm-up ones, then the measured ones."""
    return list(range(spec["warmup"])) + list(spec["measure"])


def _tokenized(spec: dict[str, Any], tokenizer: Any, layout: str, tokens_per_micro_batch: int | None):
    """(data config, tokenized steers of ``spec["data"]``) as ``train`` tokenizes its training set
    (before ``drop_unread_tail``); both systems read the same steers this way."""
    from localpref.config import DataConfig
    from localpref.data.load import load_steers
    from localpref.data.tokenize import tokenize_steers

    data_cfg = DataConfig(source="jsonl", path=spec["data"], layout=layout, max_length=spec["max_length"],
                          tokens_per_micro_batch=tokens_per_micro_batch)
    tok = dict(span=data_cfg.span, max_length=data_cfg.max_length, context_after=data_cfg.context_after,
               min_match=data_cfg.min_match, on_error=data_cfg.on_error)
    return data_cfg, tokenize_steers(load_steers(spec["data"]), tokenizer, **tok)[0]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    return run_trl(spec) if parse_system(spec["system"]).base == "trl" else run_localpref(spec)


def localpref_setup(spec: dict[str, Any]) -> dict[str, Any]:
    """What ``localpref.train.train`` sets up before its loop, for ``spec``'s system, as ``train``
    does it (same order, same functions; no reference table, no logging, no evaluation)."""
    from localpref.config import LossConfig, TrainerConfig
    from localpref.data.tokenize import drop_unread_tail
    from localpref.hardware import resolve_cpu_allocator, resolve_precision
    from localpref.memory import return_freed_memory
    from localpref.packing import check_packed_attention
    from localpref.reference import TokenScorer, make_model_reference
    from localpref.train import make_optimizer

    system = parse_system(spec["system"])
    t = TrainerConfig(lr=1e-4, schedule="constant", max_grad_norm=1.0, micro_batch_size=spec["micro_batch_size"],
                      precision=system.precision, cpu_allocator=system.allocator, device="cpu")
    loss_cfg = LossConfig()  # the localized loss: sigmoid, span masks, beta 0.1
    cpu = torch.device("cpu")

    model, tokenizer = _model(spec, lora=True)
    if system.base != "unpacked":
        check_packed_attention(model)
    precision = resolve_precision(t.precision, cpu)
    if resolve_cpu_allocator(t.cpu_allocator) == "release":
        return_freed_memory()
    data_cfg, examples = _tokenized(spec, tokenizer, system.base, system.tokens_per_micro_batch)
    train_set = [drop_unread_tail(e, loss_cfg.mask) for e in examples]  # no token after the last one the loss reads
    scorer = TokenScorer(model, precision, t.span_only_lm_head)
    reference = make_model_reference("adapter_disabled", scorer)  # reference.kind=adapter_disabled
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, t)
    return dict(trainer=t, data=data_cfg, loss=loss_cfg, precision=precision, train_set=train_set, scorer=scorer,
                reference=reference, trainable=trainable, optimizer=optimizer, scheduler=scheduler,
                pad_id=tokenizer.pad_token_id)


def run_localpref(spec: dict[str, Any]) -> dict[str, Any]:
    """localpref training steps of ``spec``'s system (see the module docstring)."""
    from localpref.packing import collate, epoch_order, micro_batches
    from localpref.train import micro_batch_loss, normalizer

    s = localpref_setup(spec)
    t, data_cfg, loss_cfg, train_set = s["trainer"], s["data"], s["loss"], s["train_set"]
    policy, per_step = s["scorer"], t.micro_batch_size
    policy.train()
    # data.shuffle=trajectories in every layout, so that step i holds the same pairs in all of them
    order = epoch_order(train_set, torch.Generator().manual_seed(0), by_trajectory=True)

    start_rss = reset_peak_rss()
    times, tokens, padded = [], 0, 0
    for n, step in enumerate(_steps(spec)):
        begin = time.perf_counter()
        idx = [order[(step * per_step + j) % len(order)] for j in range(per_step)]
        # 1. The step's pairs, cut into micro-batches in the layout (by data.tokens_per_micro_batch if set).
        micro = [collate(train_set, m, s["pad_id"], layout=data_cfg.layout)
                 for m in micro_batches(train_set, idx, layout=data_cfg.layout, micro_batch_size=per_step,
                                        tokens_per_micro_batch=data_cfg.tokens_per_micro_batch)]
        # 2. The normalizer; 3. backward per micro-batch, then the optimizer step.
        count = sum(normalizer(b, loss_cfg) for b in micro)
        for batch in micro:
            loss_sum, _ = micro_batch_loss(policy, s["reference"], batch, loss_cfg)
            (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(s["trainable"], t.max_grad_norm)
        s["optimizer"].step()
        s["scheduler"].step()
        s["optimizer"].zero_grad(set_to_none=True)
        if n >= spec["warmup"]:
            times.append(time.perf_counter() - begin)
            tokens += sum(b.num_tokens for b in micro)
            padded += sum(b.input_ids.numel() for b in micro)
    return dict(step_seconds=times, pairs=per_step * len(times), peak_rss=peak_rss(), start_rss=start_rss,
                tokens=tokens, padded=padded, steers_per_s=per_step * len(times) / sum(times),
                n_examples=len(train_set), precision=s["precision"])


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer on the same steers, LoRA through its ``peft_config``; bf16 through its
    ``bf16`` argument (autocast), the allocator through localpref's setting as ``trainer.cpu_allocator``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from data import trl_rows  # experiments/throughput/data.py (the worker runs from that folder)
    from localpref.data.load import load_steers
    from localpref.hardware import resolve_cpu_allocator, resolve_precision
    from localpref.memory import return_freed_memory
    from localpref.packing import epoch_order

    system = parse_system(spec["system"])
    precision = resolve_precision(system.precision, torch.device("cpu"))
    if resolve_cpu_allocator(system.allocator) == "release":  # as localpref's trainer.cpu_allocator=release
        return_freed_memory()
    model, tokenizer = _model(spec, lora=False)
    steers = {s.id: s for s in load_steers(spec["data"])}
    # The steers localpref trains on (those that tokenize within max_length), in its order, read
    # sequentially: every step holds the same pairs as localpref's step of the same index.
    examples = _tokenized(spec, tokenizer, "unpacked", None)[1]
    per_step, steps = spec["micro_batch_size"], _steps(spec)
    order = epoch_order(examples, torch.Generator().manual_seed(0), by_trajectory=True)  # data.shuffle=trajectories
    rows = trl_rows([steers[examples[order[(step * per_step + j) % len(order)]].id]
                     for step in steps for j in range(per_step)], tokenizer)

    class Timer(TrainerCallback):
        """Times each step and counts the row tokens of its policy forwards (those under grad: the
        reference's forward runs under no_grad), like localpref's ``tokens`` and ``padded``."""

        def __init__(self):
            self.times: list[float] = []
            self.counts: list[tuple[int, int]] = []
            self.tokens = self.padded = 0
            self.start_rss = 0

        def count(self, module, args, kwargs):
            ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
            if torch.is_grad_enabled() and ids is not None:
                self.padded += ids.numel()
                self.tokens += int(mask.sum()) if mask is not None else ids.numel()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_rss = reset_peak_rss()

        def on_step_begin(self, args, state, control, **kwargs):
            self.tokens = self.padded = 0
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.begin)
            self.counts.append((self.tokens, self.padded))

    timer = Timer()
    # The decoder under the LM head: PEFT calls the outer model's forward directly (no hooks run
    # there), and the head calls the decoder with keyword arguments.
    model.base_model.register_forward_pre_hook(timer.count, with_kwargs=True)
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                         max_steps=len(steps), learning_rate=1e-4, lr_scheduler_type="constant", beta=0.1,
                         max_length=spec["max_length"], max_grad_norm=1.0, logging_steps=10**6,
                         save_strategy="no", report_to="none", disable_tqdm=True,
                         use_cpu=True,  # localpref runs on CPU here too
                         bf16=precision == "bf16",  # accelerate's bf16 autocast around forward and loss
                         dataloader_num_workers=0, seed=0, train_sampling_strategy="sequential")
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                          target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora, callbacks=[timer])
        trainer.train()
    times, counts = timer.times[spec["warmup"]:], timer.counts[spec["warmup"]:]
    return dict(step_seconds=times, pairs=per_step * len(times), peak_rss=peak_rss(), start_rss=timer.start_rss,
                tokens=sum(c[0] for c in counts), padded=sum(c[1] for c in counts),
                steers_per_s=per_step * len(times) / sum(times), n_examples=len(examples), precision=precision)
