"""One measurement: a few optimizer steps of one system on one data set, in a process of its own.

Each worker builds the model (``localpref.models.build_model``: the same weights for both
systems), adds LoRA, trains ``warmup + steps`` optimizer steps and returns (as a dict):

* ``step_seconds``: wall time of each measured step (the warm-up steps are left out);
* ``pairs``: pairs in the measured steps; ``steers_per_s`` = pairs / their total time;
* ``peak_rss``: the process's resident-set high-water mark over all its steps, warm-up
  included (``VmHWM`` of /proc/self/status, reset just before the first step), and
  ``start_rss``: the resident set when training starts (weights, optimizer, runtime);
* localpref only: ``tokens`` (real row tokens the policy forward ran) and ``padded`` (rows x
  longest row), summed over the measured steps.

localpref's step is the training loop's (``localpref.train``: steps 1-3 without logging), with
its own functions: ``epoch_order``, ``micro_batches``, ``collate``, ``micro_batch_loss``, and
``return_freed_memory`` (which ``train`` calls on CPU).
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


def run_localpref(spec: dict[str, Any]) -> dict[str, Any]:
    """A few localpref training steps in ``spec["layout"]`` (see the module docstring)."""
    from localpref.config import LossConfig
    from localpref.data.load import load_steers
    from localpref.data.tokenize import tokenize_steers
    from localpref.memory import return_freed_memory
    from localpref.packing import collate, epoch_order, micro_batches
    from localpref.reference import TokenScorer, make_model_reference
    from localpref.train import micro_batch_loss, normalizer

    model, tokenizer = _model(spec, lora=True)
    examples, _ = tokenize_steers(load_steers(spec["data"]), tokenizer, max_length=spec["max_length"], on_error="skip")
    loss_cfg = LossConfig()  # the localized loss: sigmoid, span masks, beta 0.1
    if not spec["system"].endswith("+heap"):  # pairs+heap: glibc's default allocator, to show the trade
        return_freed_memory()  # as train() does on CPU
    policy = TokenScorer(model)
    reference = make_model_reference("adapter_disabled", policy)
    policy.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    order = epoch_order(examples, torch.Generator().manual_seed(0), by_trajectory=True)  # data.shuffle=trajectories
    layout, per_step = spec["layout"], spec["micro_batch_size"]

    start_rss = reset_peak_rss()
    times, tokens, padded = [], 0, 0
    for step in range(spec["warmup"] + spec["steps"]):
        begin = time.perf_counter()
        idx = [order[(step * per_step + j) % len(order)] for j in range(per_step)]
        cuts = micro_batches(examples, idx, layout=layout, micro_batch_size=per_step,
                             tokens_per_micro_batch=spec.get("tokens_per_micro_batch"))
        micro = [collate(examples, m, tokenizer.pad_token_id, layout=layout) for m in cuts]
        count = sum(normalizer(b, loss_cfg) for b in micro)
        for batch in micro:
            loss_sum, _ = micro_batch_loss(policy, reference, batch, loss_cfg)
            (loss_sum / count).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= spec["warmup"]:
            times.append(time.perf_counter() - begin)
            tokens += sum(b.num_tokens for b in micro)
            padded += sum(b.input_ids.numel() for b in micro)
    return dict(step_seconds=times, pairs=per_step * len(times), peak_rss=peak_rss(), start_rss=start_rss,
                tokens=tokens, padded=padded, steers_per_s=per_step * len(times) / sum(times),
                n_examples=len(examples))


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """A few steps of TRL's DPOTrainer on the same steers, LoRA through its ``peft_config``."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from localpref.data.load import load_steers
    from localpref.data.tokenize import tokenize_steers
    from localpref.packing import epoch_order
    from data import trl_rows  # experiments/throughput/data.py (the worker runs from that folder)

    if spec["system"] == "trl+mmap":  # TRL with the allocator setting localpref's training uses
        from localpref.memory import return_freed_memory

        return_freed_memory()
    model, tokenizer = _model(spec, lora=False)
    steers = {s.id: s for s in load_steers(spec["data"])}
    # The steers localpref trains on (those that tokenize within max_length), in its order, read
    # sequentially: every step holds the same pairs as localpref's step.
    examples = tokenize_steers(steers.values(), tokenizer, max_length=spec["max_length"], on_error="skip")[0]
    per_step, total = spec["micro_batch_size"], spec["warmup"] + spec["steps"]
    order = epoch_order(examples, torch.Generator().manual_seed(0), by_trajectory=True)  # data.shuffle=trajectories
    rows = trl_rows([steers[examples[order[j % len(order)]].id] for j in range(per_step * total)], tokenizer)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.start_rss = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_rss = reset_peak_rss()

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.begin)

    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=per_step, gradient_accumulation_steps=1,
                         max_steps=total, learning_rate=1e-4, lr_scheduler_type="constant", beta=0.1,
                         max_length=spec["max_length"], max_grad_norm=1.0, logging_steps=10**6,
                         save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,  # localpref runs on CPU here too
                         dataloader_num_workers=0, seed=0, bf16=False, train_sampling_strategy="sequential")
        lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                          target_modules=LORA["target_modules"], task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=lora, callbacks=[timer])
        trainer.train()
    times = timer.times[spec["warmup"]:]
    return dict(step_seconds=times, pairs=per_step * len(times), peak_rss=peak_rss(), start_rss=timer.start_rss,
                steers_per_s=per_step * len(times) / sum(times), n_examples=len(examples))
