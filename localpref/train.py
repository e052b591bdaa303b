"""The training loop: one loop for SFT, DPO and the localized loss (the ``loss`` group decides).

    localpref train loss=localized                      # or python -m localpref.train ...
    localpref train -m loss=sft,dpo,localized seed=0,1  # a sweep (Hydra multirun)
    torchrun --nproc-per-node 2 -m localpref.train ...   # DDP or FSDP2 (localpref.distributed)

Read top to bottom: ``train`` sets up (config, processes, model, data, reference, optimizer,
resume), then each optimizer step takes one global batch, counts its pairs (or tokens, for SFT)
over all micro-batches and processes, and back-propagates ``loss_sum / global_count`` per
micro-batch, so gradient accumulation and data parallelism give the gradient of one big batch.
"""

from __future__ import annotations

import math
import os
import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from localpref.checkpoint import TrainState, export_pretrained, latest_checkpoint, load_checkpoint, save_checkpoint
from localpref.config import DataConfig, LossConfig, TrainConfig, TuneConfig, validate
from localpref.distributed import (all_reduce_sum, gather_full_state_dict, gathered_root, init_processes,
                                   no_grad_sync, wrap_for_processes)
from localpref.evaluate import evaluate, load_hook
from localpref.hardware import resolve_cpu_allocator, resolve_precision
from localpref.log import Progress, RunLogger, log_examples, read_metrics, span_stats, summary_table
from localpref.losses import REFERENCE_FREE, preference_loss, preference_metrics, sft_loss
from localpref.memory import return_freed_memory
from localpref.models import build_model
from localpref.packing import check_packed_attention, collate, epoch_order, micro_batches
from localpref.reference import PrecomputedReference, TokenScorer, make_model_reference, score_batch
from localpref.tasks import family_names
from localpref.tasks.pretrain import model_folder

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------------------
# Set-up helpers
# ------------------------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS determinism
        torch.use_deterministic_algorithms(True)


def load_data(cfg: DataConfig) -> tuple[list, list, dict[str, int]]:
    """(train steers, held-out steers, load-time counts: ``skipped/<reason>``, ``collected/<what>``).
    A split of one file holds out whole source records (``localpref.data.split``) and never depends
    on the run's seed, so all runs of a seed sweep are evaluated on the same steers."""
    skipped: dict[str, int] = {}
    if cfg.source == "examples":
        from localpref.data.examples import example_steers

        train, held = example_steers("train"), example_steers("eval")
    elif cfg.source == "collected":
        from localpref.data.collected import load_collected, steer_cost
        from localpref.tasks import solve

        budget = cfg.cost_budget if cfg.cost_share is None else int(cfg.cost_share * steer_cost(cfg.path, cfg.on_error))
        train, taken = load_collected(cfg.path, form=cfg.form, cost_budget=budget, on_error=cfg.on_error, solve=solve)
        taken["budget"] = -1 if budget is None else budget  # -1: no budget (all of the file)
        skipped.update(train.skipped)
        if cfg.eval_path is None:
            raise ValueError("data=collected needs data.eval_path (held-out trajectories): a split of the "
                             "training file would hold out prompts the budget paid for")
        held, _ = load_collected(cfg.eval_path, form="steers", on_error=cfg.on_error)
    elif cfg.source == "defacto":
        from localpref.data.importers import import_defacto

        results = import_defacto(cfg.path, None, splits=("train", "val"), on_error=cfg.on_error)
        train, held = results["train"].steers, results["val"].steers
        for r in results.values():
            skipped.update({k: skipped.get(k, 0) + v for k, v in r.skipped.items()})
    else:
        from localpref.data.load import load_steers

        train = load_steers(cfg.path, on_error=cfg.on_error)
        skipped.update(train.skipped)
        if cfg.eval_path is not None:
            held = load_steers(cfg.eval_path, on_error=cfg.on_error)
        else:  # whole source records (trajectories, edited answers), by seed 0
            from localpref.data.split import split_by_record

            train, held = split_by_record(train, cfg.eval_fraction)
    counts = {f"skipped/{k}": v for k, v in skipped.items()}
    if cfg.source == "collected":
        counts.update({f"collected/{k}": v for k, v in taken.items()})
    return list(train)[:cfg.n_train], list(held)[:cfg.n_eval], counts


def make_optimizer(params: list[torch.nn.Parameter], cfg) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer and a LambdaLR of linear warmup then constant / linear / cosine decay to 0."""
    if cfg.optimizer == "adamw":
        # The fused kernel (one pass over all parameters; CPU and CUDA) does AdamW's arithmetic in
        # one loop per tensor: 3.5x faster than the per-tensor default on a tiny model's 1.1M
        # parameters on CPU (2.7 -> 0.8 ms a step). Sharded (DTensor) parameters keep the default.
        fused = all(type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                fused=fused or None)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr)

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return {"constant": 1.0, "linear": 1.0 - progress,
                "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}[cfg.schedule]

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


# ------------------------------------------------------------------------------------------------
# The loss of one micro-batch: the only place the methods differ, and only through cfg.loss
# ------------------------------------------------------------------------------------------------


def needs_reference(cfg: LossConfig) -> bool:
    return cfg.objective == "preference" and cfg.loss_type not in REFERENCE_FREE


def normalizer(batch, cfg: LossConfig) -> int:
    """What the loss is divided by: pairs (preference) or scored tokens (SFT), for this micro-batch."""
    if cfg.objective == "sft":
        return int(batch.masks(cfg.mask)[0].sum())
    return batch.num_pairs


def micro_batch_loss(policy, reference, batch, cfg: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss sum (), detached metric sums) of one micro-batch; the caller divides by global counts."""
    chosen_mask, rejected_mask = batch.masks(cfg.mask)
    if cfg.objective == "sft":  # the chosen sequences only: half the forward of a preference loss
        policy_chosen_logps, _ = score_batch(policy, batch.chosen_only(), cfg.mask)
        out = sft_loss(policy_chosen_logps, chosen_mask)
        return out.sum, {"span/tokens": chosen_mask.sum().float()}
    anchor_mask = None
    if cfg.sft_weight and cfg.anchor != "span":  # the anchor reads completion tokens the span does not hold
        completion = batch.masks("completion")[0]  # (b, t)
        before_span = chosen_mask.long().cumsum(-1) == 0  # positions before the corrected span starts
        anchor_mask = completion & before_span if cfg.anchor == "accepted" else completion
        policy_chosen_logps, policy_rejected_logps = score_batch(policy, batch, "completion")  # (b, t) each
        policy_rejected_logps = torch.where(rejected_mask, policy_rejected_logps, 0.0)
    else:
        policy_chosen_logps, policy_rejected_logps = score_batch(policy, batch, cfg.mask)  # (b, t) each
    ref_chosen_logps, ref_rejected_logps = (reference.token_logps(batch, cfg.mask) if needs_reference(cfg)
                                            else (None, None))
    out = preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          chosen_mask, rejected_mask, beta=cfg.beta, loss_type=cfg.loss_type,
                          aggregation=cfg.aggregation, sft_weight=cfg.sft_weight,
                          policy_chosen_nll_mask=anchor_mask, **cfg.params)
    # preference_metrics gives batch means; times the pair count they sum across micro-batches.
    metrics = {k: v * out.count for k, v in preference_metrics(out).items()}
    return out.sum, metrics


# ------------------------------------------------------------------------------------------------
# Set-up of a run: data, references, the evaluation
# ------------------------------------------------------------------------------------------------


def typed_config(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """The typed, validated ``TrainConfig`` of a composed (Hydra) or typed config."""
    if isinstance(cfg, DictConfig):
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:  # to_object would silently fall back to the schema's default for these
            raise ValueError(f"missing required config values (???): {', '.join(missing)}")
        cfg = OmegaConf.to_object(cfg)  # the typed TrainConfig
    validate(cfg, families=family_names())
    return cfg


@dataclass
class Data:
    """A run's data, tokenized once."""

    train: list  # training pairs as trained (the tail no loss reads dropped)
    whole_train: list  # the same pairs whole (what a precomputed reference is built on)
    eval: list  # held-out pairs, whole
    train_steers: list  # the steers behind `whole_train` (for the example table)
    eval_steers: list  # the steers behind `eval` (for the generation hook)
    stats: dict[str, Any]  # data/... statistics logged at step 0


def prepare_data(cfg: TrainConfig, tokenizer, procs) -> Data:
    """The run's ``Data``: steers loaded, tokenized and counted.

    Training runs no token after the last one its loss reads (hunk mode: the tail after each side's
    span); the statistics describe the steers as tokenized, and evaluation keeps them whole. A
    precomputed reference table is built on the whole pairs (a sweep over masks shares it). With
    ``trainer.epochs`` the step count is set here (``cfg.trainer.max_steps``), from the pairs."""
    from localpref.data.tokenize import drop_unread_tail, tokenize_steers

    t = cfg.trainer
    train_steers, eval_steers, load_counts = load_data(cfg.data)
    tok = dict(span=cfg.data.span, max_length=cfg.data.max_length, context_after=cfg.data.context_after,
               min_match=cfg.data.min_match, on_error=cfg.data.on_error)
    train_set, train_skipped = tokenize_steers(train_steers, tokenizer, **tok)
    eval_set, eval_skipped = tokenize_steers(eval_steers, tokenizer, **{**tok, "span": cfg.data.eval_span or cfg.data.span})
    stats = {"data/train_pairs": len(train_set), "data/eval_pairs": len(eval_set),
             **{f"data/{k}": v for k, v in load_counts.items()},
             **{f"data/skipped/{k}": v + load_counts.get(f"skipped/{k}", 0) for k, v in train_skipped.items()},
             **{f"data/eval_skipped/{k}": v for k, v in eval_skipped.items()}, **span_stats(train_set)}
    global_batch = t.micro_batch_size * t.grad_accum * procs.world
    if 0 < len(train_set) < global_batch and t.fit_batch_to_data and procs.world == 1 and t.grad_accum == 1:
        t.micro_batch_size = global_batch = len(train_set)  # a small budget: all its pairs in each step
    if len(train_set) < global_batch:
        raise ValueError(f"{len(train_set)} training pairs after tokenization, fewer than one global batch "
                         f"({global_batch} = micro_batch_size x grad_accum x processes); skipped: {train_skipped}")
    if t.epochs is not None:  # passes over the pairs, not steps: runs on more data train for longer
        t.max_steps = max(1, math.ceil(t.epochs * len(train_set) / global_batch))
    if t.warmup_ratio is not None:
        t.warmup_steps = int(t.warmup_ratio * t.max_steps)
    stats.update({"trainer/max_steps": t.max_steps, "trainer/warmup_steps": t.warmup_steps,
                  "trainer/micro_batch_size": t.micro_batch_size})
    unread = [drop_unread_tail(e, cfg.loss.mask) for e in train_set]
    return Data(unread, train_set, eval_set, train_steers, eval_steers, stats)


def make_references(cfg: TrainConfig, scorer: TokenScorer, whole_train_set: list, eval_set: list, pad_id: int,
                    device: torch.device, progress) -> tuple[Any, Any, dict[str, Any]]:
    """(training reference, evaluation reference, statistics). Made before any checkpoint is loaded:
    the reference is the initial model. Precomputed log-probs come from the LoRA base (adapters off)
    or from a temporary frozen copy."""
    source = cfg.reference.kind
    if source == "precomputed":
        source = "adapter_disabled" if cfg.peft.kind == "lora" else "copy"
    model_ref = make_model_reference(source, scorer)
    if cfg.reference.kind != "precomputed":
        return model_ref, model_ref, {}
    build = dict(batch_size=cfg.reference.batch_size, device=device, layout=cfg.data.layout)
    with progress("reference", len(whole_train_set), "pairs") as bar:
        train_ref, cache = PrecomputedReference.build(model_ref, whole_train_set, pad_id, **build, progress=bar)
    if cfg.reference.eval_with_model:
        eval_ref = model_ref  # held-out KL needs the reference's distributions, not a table
    else:
        with progress("reference", len(eval_set), "pairs") as bar:
            eval_ref, _ = PrecomputedReference.build(model_ref, eval_set, pad_id, **build, progress=bar)
    return train_ref, eval_ref, {"data/reference_cache": str(cache)}


def make_evaluation(cfg: TrainConfig, run, eval_ref, eval_set: list, eval_steers: list):
    """``run_eval(step) -> eval metrics``: held-out pairs (``localpref.evaluate``), then the steering
    evaluation and the generation hook when configured; logged at ``step``."""
    t, procs, model = cfg.trainer, run.procs, run.model
    sharded = procs.world > 1 and t.strategy == "fsdp"
    eval_cache: dict = {}  # the reference's outputs on the held-out pairs, kept across evaluations

    def run_eval(step: int) -> dict[str, float]:
        with run.progress("eval", len(eval_set), "pairs") as bar:
            metrics = evaluate(run.scorer, eval_ref, eval_set, run.pad_id, batch_size=t.eval_batch_size,
                               device=procs.device, layout=cfg.data.layout, progress=bar, reference_cache=eval_cache)
        # Under FSDP every process generates (the shards are gathered in step) with the root's own
        # weights gathered for the whole call; rank 0 logs.
        if cfg.steer_eval.family is not None and (step > 0 or cfg.steer_eval.before) and (procs.rank == 0 or sharded):
            with gathered_root(run.policy) if sharded else nullcontext():
                metrics.update(steer_metrics(model, run.tokenizer, cfg.steer_eval, run.run_dir,
                                             final=step == t.max_steps, rank0=procs.rank == 0, show_progress=t.progress))
        if cfg.generation_eval is not None and (procs.rank == 0 or sharded):
            hook, was_training = load_hook(cfg.generation_eval), model.training
            model.eval()
            with gathered_root(run.policy) if sharded else nullcontext():
                metrics.update({f"generation/{k}": v for k, v in hook(model, run.tokenizer, eval_steers, cfg).items()})
            model.train(was_training)
        metrics = {f"eval/{k}": v for k, v in metrics.items()}
        run.logger.log_metrics(step, metrics)
        return metrics

    return run_eval


@dataclass
class Run:
    """What the loop's steps share: the processes, the model and its scorer, the run's folder."""

    procs: Any
    model: torch.nn.Module
    tokenizer: Any
    scorer: TokenScorer
    policy: torch.nn.Module  # the scorer, wrapped for DDP/FSDP
    logger: RunLogger
    run_dir: Path
    pad_id: int
    progress: Callable[..., Progress]


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


def train_step(cfg: TrainConfig, run: Run, train_ref, train_set: list, state: TrainState, optimizer,
               scheduler) -> tuple[TrainState, dict[str, float]]:
    """One optimizer step on this step's global batch; returns the next state and train/ metrics."""
    t, procs = cfg.trainer, run.procs
    global_batch = t.micro_batch_size * t.grad_accum * procs.world
    # 1. This step's global batch: a slice of this epoch's permutation (data.shuffle: pairs one by
    #    one, or a trajectory's steers side by side); each process takes a contiguous share of it and
    #    cuts that into micro-batches (grad_accum of them, or as data.tokens_per_micro_batch fills
    #    them) in data.layout. The layout changes how pairs are laid out, never which pairs a step has.
    if state.index + global_batch > len(train_set):
        state = TrainState(state.step, state.epoch + 1, 0)
    shuffle = cfg.data.shuffle or ("trajectories" if cfg.data.layout == "trees" else "pairs")  # null: by layout
    order = epoch_order(train_set, torch.Generator().manual_seed(cfg.seed * 1_000_003 + state.epoch),
                        by_trajectory=shuffle == "trajectories")
    share = global_batch // procs.world
    mine = order[state.index + procs.rank * share: state.index + (procs.rank + 1) * share]
    micro = [collate(train_set, idx, run.pad_id, layout=cfg.data.layout).to(procs.device)
             for idx in micro_batches(train_set, mine, layout=cfg.data.layout, micro_batch_size=t.micro_batch_size,
                                      tokens_per_micro_batch=cfg.data.tokens_per_micro_batch)]
    # 2. Global normalizer: pairs (or SFT tokens) of all micro-batches on all processes.
    count = all_reduce_sum(torch.tensor(float(sum(normalizer(b, cfg.loss) for b in micro)), device=procs.device),
                           procs)
    # 3. Backward per micro-batch. DDP/FSDP average gradients over processes, so multiplying by the
    #    world size turns their average into the sum we want: grad of (global sum / count).
    sums: dict[str, torch.Tensor] = {}
    for k, batch in enumerate(micro):
        with no_grad_sync(run.policy, sync=k == len(micro) - 1):
            loss_sum, metrics = micro_batch_loss(run.policy, train_ref, batch, cfg.loss)
            (loss_sum * procs.world / count).backward()
        for name, value in {"loss": loss_sum.detach(), **metrics}.items():
            sums[name] = sums.get(name, 0) + value.float()
    # What the layout saves: input tokens (padding excluded) per pair, logged as train/tokens_per_pair.
    sums["tokens_per_pair"] = torch.tensor(float(sum(b.num_tokens for b in micro)), device=procs.device)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, t.max_grad_norm) if t.max_grad_norm is not None
                 else torch.tensor(float("nan")))
    lr = optimizer.param_groups[0]["lr"]  # the lr this step uses (scheduler.step() sets the next one)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    # 4. Metrics: sums over all processes / the global count.
    names = sorted(sums)
    totals = all_reduce_sum(torch.stack([sums[n] for n in names]), procs).tolist()
    row = {f"train/{n}": v / (count.item() if n == "loss" else global_batch) for n, v in zip(names, totals)}
    state = TrainState(state.step + 1, state.epoch, state.index + global_batch)
    row.update({"train/lr": lr, "train/grad_norm": float(grad_norm), "train/epoch": state.epoch})
    return state, row


def train(cfg: DictConfig | TrainConfig) -> dict[str, float]:
    """Train as configured; returns the final held-out metrics (``eval/...``)."""
    cfg = typed_config(cfg)
    t = cfg.trainer
    procs = init_processes(t.device)
    sharded = procs.world > 1 and t.strategy == "fsdp"
    if sharded and t.export and cfg.peft.kind == "lora":  # found now, not after training
        raise ValueError("exporting an FSDP-sharded LoRA model is not supported: set trainer.export=false "
                         "(sharded checkpoints are still written) or use trainer.strategy=ddp")
    seed_everything(cfg.seed, t.deterministic)
    run_dir = Path(cfg.run_dir or _hydra_output_dir())
    run_dir.mkdir(parents=True, exist_ok=True)

    def progress(label: str, total: int, unit: str, done: int = 0) -> Progress:
        """A bar on a terminal, plain lines every trainer.progress_every seconds in a log; rank 0."""
        return Progress(total, done, label=label, unit=unit, enabled=t.progress and procs.rank == 0,
                        every_seconds=t.progress_every)

    # Model, data (tokenized once; trainer.epochs sets max_steps), then the config as it runs.
    model, tokenizer = build_model(cfg.model, cfg.peft, seed=cfg.seed, folder=model_folder(cfg.model))
    model.to(procs.device)
    if cfg.data.layout != "unpacked":
        check_packed_attention(model)  # an untested model family fails here, not at the first forward
    precision = resolve_precision(t.precision, procs.device)  # auto: by what the hardware does
    if procs.device.type == "cpu" and resolve_cpu_allocator(t.cpu_allocator) == "release":
        return_freed_memory()  # freed activations leave the resident set (see localpref.memory)
    data = prepare_data(cfg, tokenizer, procs)
    data.stats["trainer/precision"] = precision  # what trainer.precision=auto chose on this machine
    if procs.rank == 0:
        OmegaConf.save(OmegaConf.structured(cfg), run_dir / "config.yaml")
    logger = RunLogger(run_dir, cfg.logger, OmegaConf.to_container(OmegaConf.structured(cfg)), rank=procs.rank)
    log_examples(logger, data.train_steers, data.whole_train, tokenizer, cfg.logger.example_table)
    scorer = TokenScorer(model, precision, t.span_only_lm_head)
    train_ref, eval_ref, ref_stats = make_references(cfg, scorer, data.whole_train, data.eval, tokenizer.pad_token_id,
                                                     procs.device, progress)
    data.stats.update(ref_stats)
    policy = wrap_for_processes(scorer, procs, t.strategy)  # FSDP2 shards `scorer` in place
    run = Run(procs, model, tokenizer, scorer, policy, logger, run_dir, tokenizer.pad_token_id, progress)
    optimizer, scheduler = make_optimizer([p for p in model.parameters() if p.requires_grad], t)
    state = TrainState()
    checkpoint = latest_checkpoint(run_dir) if t.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler, sharded=sharded)
        logger.truncate_after(state.step)  # steps logged after the checkpoint will be redone
        print(f"resumed from {checkpoint} at step {state.step}")
    else:
        logger.log_metrics(0, data.stats)
    run_eval = make_evaluation(cfg, run, eval_ref, data.eval, data.eval_steers)

    before = (run_eval(0) if t.eval_before else {}) if state.step == 0 else _logged_eval(run_dir, step=0)
    bar = progress("train", t.max_steps, "steps", done=state.step)
    policy.train()
    while state.step < t.max_steps:
        state, row = train_step(cfg, run, train_ref, data.train, state, optimizer, scheduler)
        if state.step % cfg.logger.log_every == 0:
            logger.log_metrics(state.step, row)
        bar.update(loss=row["train/loss"], **{short: row[k] for k, short in (
            ("train/rewards/margins", "margin"), ("train/rewards/accuracies", "acc")) if k in row})
        if t.eval_every and state.step % t.eval_every == 0 and state.step < t.max_steps:
            run_eval(state.step)
        if (t.checkpoint_every and state.step % t.checkpoint_every == 0) or state.step == t.max_steps:
            if procs.rank == 0 or sharded:  # FSDP: every process writes its shards
                save_checkpoint(run_dir, model, optimizer, scheduler, state, keep=t.keep_checkpoints, sharded=sharded)
            if procs.world > 1:
                dist.barrier()
    bar.close()

    after = run_eval(state.step)
    if t.export:
        full = gather_full_state_dict(model) if sharded else None  # a collective: all ranks take part
        if procs.rank == 0:
            export_pretrained(model, tokenizer, run_dir / "export", merge_lora=cfg.peft.merge_on_export, state_dict=full)
    if procs.world > 1:
        dist.destroy_process_group()
    if procs.rank == 0:
        summary_table(before, after, run_dir)
    logger.finish(after)
    return after


def steer_metrics(model, tokenizer, cfg, run_dir: Path, *, final: bool, rank0: bool = True,
                  show_progress: bool = True) -> dict[str, float]:
    """``steer/...`` metrics of greedy steering on ``cfg.family`` (``localpref.steering``); rank 0
    keeps the final evaluation's trajectories in ``cfg.out`` (default ``run_dir/steer_eval.jsonl``).
    The final evaluation also steers ``cfg.extra_split`` when set (``steer_<split>/...``)."""
    from localpref.steering import flat_metrics, run_tasks, summarize_by
    from localpref.tasks import get_family

    family = get_family(cfg.family)
    splits = [(cfg.split, cfg.n, "steer", Path(cfg.out) if cfg.out else run_dir / "steer_eval.jsonl")]
    if final and cfg.extra_split is not None:  # reported beside the main split, never read for a choice
        splits.append((cfg.extra_split, cfg.extra_n, f"steer_{cfg.extra_split}",
                       run_dir / f"steer_eval_{cfg.extra_split}.jsonl"))
    metrics = {}
    for split, n, name, path in splits:
        out = path if final and rank0 else None
        if out is not None and out.exists():
            out.unlink()  # a resumed run re-evaluates the final model from scratch
        records = run_tasks(model, tokenizer, family, family.tasks(split, n=n, seed=cfg.task_seed), out=out,
                            budget=cfg.budget, temperature=0.0, max_new_tokens=cfg.max_new_tokens,
                            max_task_tokens=cfg.max_task_tokens, batch_size=cfg.batch_size,
                            progress_label=f"steer eval {cfg.family}/{split}", show_progress=show_progress and rank0)
        for group, summary in summarize_by(records).items():
            prefix = f"{name}/" if group == "all" else f"{name}/{group.split('=')[-1]}/"
            metrics.update(flat_metrics(summary, prefix))
    return metrics


def _logged_eval(run_dir: Path, step: int) -> dict[str, float]:
    """The eval/ metrics a resumed run logged at ``step`` before it was interrupted."""
    if not (run_dir / "metrics.jsonl").exists():
        return {}
    rows = [r for r in read_metrics(run_dir) if r["step"] == step]
    return {k: v for r in rows for k, v in r.items() if k.startswith("eval/")}


def _hydra_output_dir() -> str:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise ValueError("run_dir is not set and Hydra is not running: pass run_dir=DIR")
    return HydraConfig.get().runtime.output_dir


def hydra_main() -> None:
    """Entry point of ``localpref train`` / ``python -m localpref.train`` (a Hydra app over conf/)."""
    import hydra

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _main(cfg: DictConfig) -> float | None:
        metrics = train(cfg)
        # A sweeper optimizing something (hydra/sweeper=optuna) reads this; a plain multirun ignores it.
        return tune_objective(metrics, OmegaConf.to_object(cfg.tune))

    _main()


def tune_objective(metrics: dict[str, float], cfg: TuneConfig) -> float | None:
    """``metric + tie_weight * tie_metric`` of the final evaluation (``tune``), None without a metric;
    a metric the run did not log is an error (a sweep would otherwise optimize nothing)."""
    if cfg.metric is None:
        return None
    for key in (cfg.metric, cfg.tie_metric):
        if key is not None and key not in metrics:
            raise KeyError(f"tune: the final evaluation logged no {key!r}; it logged {', '.join(sorted(metrics))}")
    value = float(metrics[cfg.metric])
    return value + (cfg.tie_weight * float(metrics[cfg.tie_metric]) if cfg.tie_metric is not None else 0.0)


if __name__ == "__main__":
    hydra_main()
