"""Typed schemas of the training config, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``base_config`` (the ``TrainConfig`` schema
below), so every YAML file in ``conf/`` is merged *into* these dataclasses: a misspelt key or a
value of the wrong type fails at composition, before any model is built. Defaults live here;
each YAML file holds only what it changes, with a comment per key. Values required only by some
choices (``data.path`` for ``data=jsonl``) are checked by ``validate`` before anything loads:
a YAML ``???`` cannot express them, because merging ``???`` keeps the schema's default.

Which group configures what:
    model/      ModelConfig       which weights and tokenizer
    data/       DataConfig        which steers, how they are tokenized, train/eval split
    loss/       LossConfig        SFT vs preference loss, masks, beta, aggregation, anchor
    reference/  ReferenceConfig   where reference log-probs come from
    peft/       PeftConfig        none or LoRA
    trainer/    TrainerConfig     optimizer, schedule, batch, precision, intervals, resume
    logger/     LoggerConfig      JSONL always; wandb online/offline/disabled
    steer_eval  SteerEvalConfig   steering evaluation on a task family (eval/steer/...), off by default
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from localpref.losses import LOSSES, loss_params, preference_loss


@dataclass
class ModelConfig:
    source: str = MISSING  # "tiny" (random Llama-style, for tests) | "smollm2" | "local" (HF folder at `path`)
    # | "tiny_task" (the pretrained tiny model of task family `family`, localpref.tasks.pretrain)
    path: Optional[str] = None  # local HF model folder (source=local); must hold config + weights
    family: Optional[str] = None  # task family of a tiny task model (source=tiny_task): lists | ranges | arith
    errors: str = "random"  # source=tiny_task: how its pretraining answers err, random | systematic | mixed
    # source=tiny_task: which build of it (its pretraining seed): independent models of one recipe.
    # Other sources have one build: a study's part then uses it as the replicate's index (its train
    # prompts and, through seed=${model.build}, its training seed).
    build: int = 0
    pretrain_steps: Optional[int] = None  # source=tiny_task: pretraining steps instead of the family's (quick runs)
    tokenizer: Optional[str] = None  # tokenizer folder, or "smollm2"; None: the model's own folder
    dtype: str = "float32"  # weights' dtype when loaded: float32 | bfloat16 | float16
    trust_remote_code: bool = False  # off: never execute code shipped with a model folder
    gradient_checkpointing: bool = False  # recompute activations in backward (less memory)
    disable_dropout: bool = True  # zero the model's dropout probabilities, as TRL does (LoRA's: peft.dropout)
    # Sizes of the tiny model (source=tiny only); vocab = len(tokenizer).
    hidden_size: int = 32  # width of the tiny model
    num_layers: int = 2  # decoder layers of the tiny model
    num_heads: int = 2  # attention heads of the tiny model
    intermediate_size: int = 64  # MLP width of the tiny model


@dataclass
class DataConfig:
    source: str = MISSING  # "examples" (built-in steers) | "jsonl" (steer JSONL at `path`) | "defacto"
    # | "collected" (trajectories of `localpref steer collect` at `path`, see localpref.data.collected)
    path: Optional[str] = None  # steer JSONL (source=jsonl|collected) or DeFacto folder (source=defacto)
    form: str = "steers"  # source=collected: "steers" (each correction) | "rewrites" (whole answers)
    cost_budget: Optional[int] = None  # source=collected: characters of annotation to use (None: all)
    # source=collected: the budget as a share of what the file's steers cost in all (e.g. 0.5), the
    # same characters for the steer and the rewrite form; instead of cost_budget. None: cost_budget.
    cost_share: Optional[float] = None
    eval_path: Optional[str] = None  # held-out steer JSONL; None: split `eval_fraction` off the train file
    eval_fraction: float = 0.1  # share of source records (trajectories, edited answers) held out whole, by seed 0
    n_train: Optional[int] = None  # cap on training steers (None: all)
    n_eval: Optional[int] = None  # cap on held-out steers (None: all)
    span: str = "hunk"  # what the span is: "hunk" | "continuation" | "completion" (see localpref.spans)
    eval_span: Optional[str] = None  # span mode of the held-out steers' eval/span metrics (None: `span`);
    # set it to compare runs that train on different spans on the same held-out spans
    context_after: int = 0  # extra tokens after the hunk kept in the span
    min_match: int = 1  # equal tokens in a row that end a hunk; shorter equal runs join it (localpref.spans)
    max_length: Optional[int] = 512  # longer: cut the tail after the span, then the left (README); no fit: on_error
    on_error: str = "skip"  # bad steers: "raise" (stop with file/line/field) | "skip" (count and log)
    # How pairs become model inputs (localpref.packing): "unpacked" (a padded chosen row and rejected
    # row per pair) | "pairs" (one row per steer, shared tokens once) | "trees" (one row per
    # trajectory, its steers' branches on the final text). With the same data.shuffle: same pairs,
    # same loss, same gradient.
    layout: str = "unpacked"
    # Packed layouts: micro-batches take whole rows, longest first, while rows x longest row stays
    # within this many tokens (trainer.micro_batch_size x grad_accum then only sets the pairs per
    # step); None: micro_batch_size pairs per micro-batch, as unpacked.
    tokens_per_micro_batch: Optional[int] = None
    # Which pairs an optimizer step holds: each epoch permutes "pairs" (one by one) or
    # "trajectories" (a source record's steers stay side by side, in order, so `trees` can put them
    # in one row). None: "trajectories" for layout=trees, else "pairs". Runs in different layouts
    # follow the same trajectory only with the same shuffle (flat steers: both are one permutation).
    shuffle: Optional[str] = None


@dataclass
class LossConfig:
    objective: str = "preference"  # "sft" (NLL of chosen tokens) | "preference" (DPO-style log-ratio loss)
    mask: str = "span"  # tokens scored: "span" (localized) | "completion" (the whole assistant completion)
    loss_type: str = "sigmoid"  # preference loss, a name registered in localpref.losses.LOSSES
    beta: float = 0.1  # inverse temperature of the implicit reward (losses that take one)
    aggregation: str = "sum"  # how token log-ratios combine into a pair's reward: "sum" | "mean"
    sft_weight: float = 0.0  # weight of an NLL anchor on the chosen tokens added to each pair's loss (RPO)
    # The anchor's tokens: "span" (the corrected span: RPO) | "accepted" (the chosen completion before
    # the span: the text the person let stand, kept where it was) | "completion" (both). Not "span"
    # needs loss.mask=span and sft_weight > 0; the anchor is a per-pair mean over its tokens.
    anchor: str = "span"
    # The loss function's own keyword parameters (e.g. dpop_lambda, label_smoothing, ul_weight);
    # each conf/loss/*.yaml lists its loss's with a comment. Their defaults are the function's
    # (localpref.losses); a name the function does not take fails validation.
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class ReferenceConfig:
    kind: str = "copy"  # "copy" (frozen copy of the initial model) | "adapter_disabled" (LoRA off) | "precomputed"
    batch_size: int = 8  # pairs per forward when precomputing reference log-probs
    # precomputed only: evaluation scores the held-out pairs with the reference model itself, so
    # eval/drift/kl is reported (with LoRA the model is the policy, adapters off: free; a frozen
    # copy is kept in memory). false: held-out log-probs come from a table too, and no drift/kl.
    eval_with_model: bool = False


@dataclass
class PeftConfig:
    kind: str = "none"  # "none" (train all weights) | "lora"
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # LoRA dropout (0 keeps runs deterministic)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge_on_export: bool = True  # export: merge adapters into the weights (a plain HF model folder)


@dataclass
class TrainerConfig:
    optimizer: str = "adamw"  # "adamw" | "sgd"
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    schedule: str = "cosine"  # "constant" | "linear" | "cosine" decay after warmup
    warmup_steps: int = 0  # linear warmup from 0 to lr
    warmup_ratio: Optional[float] = None  # warm up for this share of the steps instead (None: warmup_steps)
    max_steps: int = 100  # optimizer steps (ignored when `epochs` is set)
    # Train for this many passes over the training pairs instead: max_steps = ceil(epochs x pairs /
    # global batch), found once the data is loaded (logged as trainer/max_steps). None: max_steps.
    epochs: Optional[float] = None
    micro_batch_size: int = 4  # pairs per forward on each process
    # Fewer training pairs than one micro-batch (a small budget): one step takes them all instead of
    # failing (one process, grad_accum 1); the run logs the size it used as trainer/micro_batch_size.
    fit_batch_to_data: bool = False
    grad_accum: int = 1  # micro-batches per optimizer step (global batch = micro * accum * world)
    max_grad_norm: Optional[float] = 1.0  # clip the global gradient norm (None: no clipping)
    precision: str = "auto"  # autocast: "fp32" | "bf16" | "auto" (bf16 where the device runs it natively: localpref.hardware)
    cpu_allocator: str = "auto"  # CPU: "keep" (glibc's default) | "release" (freed memory back to the OS at once) | "auto" (keep)
    span_only_lm_head: bool = True  # project only scored rows through lm_head when exact (TokenScorer)
    device: str = "auto"  # "auto" (cuda if available) | "cpu" | "cuda"
    strategy: str = "ddp"  # under torchrun: "ddp" | "fsdp" (FSDP2, sharded checkpoints); CPU (gloo) or GPU
    deterministic: bool = True  # torch.use_deterministic_algorithms; needed for exact resume
    eval_every: int = 0  # evaluate every N steps (0: only before and after training)
    eval_before: bool = True  # evaluate the initial model too (off in sweeps that evaluate it once, apart)
    eval_batch_size: int = 8  # pairs per evaluation forward
    checkpoint_every: int = 0  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = 2  # older checkpoints are deleted
    resume: bool = True  # continue from the run directory's latest checkpoint when there is one
    export: bool = True  # write an HF save_pretrained folder to <run_dir>/export at the end
    progress: bool = True  # show progress: a bar on a terminal, plain lines in a log (not a TTY)
    progress_every: float = 30.0  # without a terminal: seconds between plain progress lines


@dataclass
class LoggerConfig:
    wandb: str = "disabled"  # "online" | "offline" (no network; `wandb sync` later) | "disabled"
    project: str = "localpref"  # wandb project
    entity: Optional[str] = None  # wandb entity (team); None: your default
    name: Optional[str] = None  # wandb run name; None: wandb picks one
    group: Optional[str] = None  # wandb group, e.g. a sweep's name
    tags: list[str] = field(default_factory=list)  # wandb tags
    log_every: int = 1  # write train metrics every N steps
    example_table: int = 16  # steers shown (with their spans) in a wandb table at start; 0: none


@dataclass
class SteerEvalConfig:
    family: Optional[str] = None  # task family to steer on during evaluation (None: no steering eval)
    split: str = "val"  # prompts: "val" while tuning, "heldout" for reported results
    n: Optional[int] = 50  # prompts (None: all of the split, for a family with a fixed pool)
    budget: int = 4  # steers allowed per prompt
    batch_size: int = 32  # prompts steered together (a tiny task model on one thread: 64 is ~1.8x faster than 32)
    max_new_tokens: int = 128  # per generation pass; a pass that runs out goes on (see the next key)
    max_task_tokens: Optional[int] = None  # tokens per prompt over all passes (None: 4 x max_new_tokens)
    task_seed: int = 0  # which prompts of the split (their order)
    before: bool = True  # also evaluate before training (step 0); off to save time in sweeps
    out: Optional[str] = None  # write the final evaluation's trajectories here (None: run_dir/steer_eval.jsonl)
    # A second split steered at the final evaluation only, logged as eval/steer_<split>/... with its
    # trajectories in run_dir/steer_eval_<split>.jsonl: e.g. held-out prompts reported beside a
    # tuning trial's val objective (never read for a choice). None: none.
    extra_split: Optional[str] = None
    extra_n: Optional[int] = None  # prompts of extra_split (None: all of it)


@dataclass
class TuneConfig:
    # What `localpref train` returns to Hydra, so a sweeper (hydra/sweeper=optuna, conf/experiment/
    # fewest_steers_tune.yaml) can optimize it: metric + tie_weight * tie_metric, from the final
    # evaluation. None: nothing is returned (a plain run or grid).
    metric: Optional[str] = None  # a final eval metric, e.g. "eval/steer/steers_to_verify"
    tie_metric: Optional[str] = None  # breaks ties of `metric`, e.g. "eval/drift/kl" (lower KL wins)
    tie_weight: float = 0.0  # small enough never to outweigh a real difference of `metric`


@dataclass
class StudyConfig:
    # A run's place in a study made of Hydra multiruns (the fewest-steers experiment: conf/part/*.yaml
    # picks the task model and prompts, conf/method/*.yaml the loss and its data, conf/stage/*.yaml
    # tune | final | base). Training reads none of it but through interpolation (data.path=
    # ${study.out}/${study.part}/...); experiments/fewest_steers/run.py reads the sizes to collect.
    out: str = "outputs/fewest_steers"  # the study's folder: <out>/<part>/collect/..., <out>/<part>/runs/...
    part: Optional[str] = None  # the part's name (its conf/part file sets it)
    method: Optional[str] = None  # the method's name (its conf/method file sets it)
    stage: Optional[str] = None  # tune | final | base (its conf/stage file sets it)
    builds: int = 5  # task-model builds of the part (model.build 0..builds-1): the replicates
    n_train: int = 150  # train prompts each build collects its steers on (its own subset of the split)
    control_scale: int = 3  # the positive control's train prompts per method's one (capped by the split)
    n_val: Optional[int] = None  # val prompts collected and steered (None: all of the split)
    n_heldout: Optional[int] = None  # heldout prompts collected and steered (None: all of the split)
    n_frontier: int = 300  # heldout prompts every tuning trial also steers (the frontier figure; never a choice)
    temperature: float = 0.0  # collection sampling temperature (0: greedy, as the evaluation decodes)
    collect_batch: int = 64  # prompts generated together while collecting
    methods: list[str] = field(default_factory=list)  # the methods the part compares (conf/method/*.yaml)
    budgets: list[float] = field(default_factory=lambda: [1.0])  # data.cost_share of each final run (curves)
    curve_methods: list[str] = field(default_factory=list)  # the methods that run every budget (others: 1.0)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    steer_eval: SteerEvalConfig = field(default_factory=SteerEvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    seed: int = 0  # model init (tiny), data order, everything random
    run_dir: Optional[str] = None  # where metrics, checkpoints, export go; None: Hydra's output dir
    generation_eval: Optional[str] = None  # "module:function" called as fn(model, tokenizer, eval_steers, cfg) -> metrics


_CHOICES = {
    "model.source": ("tiny", "smollm2", "local", "tiny_task"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "model.errors": ("random", "systematic", "mixed"),  # localpref.tasks.base.ERRORS (no import: a ground floor)
    "data.source": ("examples", "jsonl", "defacto", "collected"),
    "data.form": ("steers", "rewrites"),
    "steer_eval.split": ("pretrain", "train", "val", "heldout"),
    "steer_eval.extra_split": (None, "pretrain", "train", "val", "heldout"),
    "data.span": ("hunk", "continuation", "completion"),
    "data.eval_span": (None, "hunk", "continuation", "completion"),
    "data.on_error": ("raise", "skip"),
    "data.layout": ("unpacked", "pairs", "trees"),
    "data.shuffle": (None, "pairs", "trajectories"),
    "loss.objective": ("sft", "preference"),
    "loss.mask": ("span", "completion"),
    "loss.aggregation": ("sum", "mean"),
    "loss.anchor": ("span", "accepted", "completion"),
    "reference.kind": ("copy", "adapter_disabled", "precomputed"),
    "peft.kind": ("none", "lora"),
    "trainer.optimizer": ("adamw", "sgd"),
    "trainer.schedule": ("constant", "linear", "cosine"),
    "trainer.precision": ("auto", "fp32", "bf16"),
    "trainer.cpu_allocator": ("auto", "keep", "release"),
    "trainer.device": ("auto", "cpu", "cuda"),
    "trainer.strategy": ("ddp", "fsdp"),
    "logger.wandb": ("online", "offline", "disabled"),
}


def validate(cfg: TrainConfig, families: Sequence[str] | None = None) -> None:
    """Checks a composed config can run, before any model or data is loaded.

    ``families``: the task family names (``localpref.tasks.family_names()``) that ``model.family``
    and ``steer_eval.family`` must be among. This module knows no task family, so the caller
    passes them; without them only that ``model=tiny_task`` names a family is checked.
    Raises ValueError / FileNotFoundError naming the offending key.
    """
    for key, allowed in _CHOICES.items():
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if cfg.model.source == "local":
        if cfg.model.path is None:
            raise ValueError("model=local needs model.path=FOLDER")
        from localpref.models import check_model_folder

        check_model_folder(cfg.model.path)
    if cfg.model.source == "tiny_task" and cfg.model.family is None:
        known = f" (one of {', '.join(families)})" if families else ""
        raise ValueError(f"model=tiny_task needs model.family{known}")
    for key, value in (("model.family", cfg.model.family if cfg.model.source == "tiny_task" else None),
                       ("steer_eval.family", cfg.steer_eval.family)):
        if families is not None and value is not None and value not in families:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(families)}")
    if cfg.data.source in ("jsonl", "defacto", "collected"):
        if cfg.data.path is None:
            raise ValueError(f"data={cfg.data.source} needs data.path")
        need = Path(cfg.data.path) / "train.jsonl" if cfg.data.source == "defacto" else Path(cfg.data.path)
        if not need.is_file():
            raise FileNotFoundError(f"data.path={cfg.data.path}: {need} does not exist")
    if cfg.data.cost_share is not None:
        if cfg.data.cost_budget is not None:
            raise ValueError("data.cost_share and data.cost_budget both set: give one")
        if not cfg.data.cost_share > 0:
            raise ValueError(f"data.cost_share={cfg.data.cost_share} must be > 0")
    if cfg.data.eval_path is not None and not Path(cfg.data.eval_path).is_file():
        raise FileNotFoundError(f"data.eval_path={cfg.data.eval_path} does not exist")
    if cfg.data.min_match < 1 or cfg.data.context_after < 0:
        raise ValueError(f"data.min_match={cfg.data.min_match} must be >= 1 and "
                         f"data.context_after={cfg.data.context_after} >= 0")
    if not 0.0 < cfg.data.eval_fraction < 1.0:
        raise ValueError(f"data.eval_fraction={cfg.data.eval_fraction} must be in (0, 1)")
    if cfg.data.tokens_per_micro_batch is not None:
        if cfg.data.layout == "unpacked":
            raise ValueError("data.tokens_per_micro_batch applies to data.layout=pairs|trees only")
        if cfg.trainer.strategy == "fsdp":  # ranks would run different numbers of forwards: FSDP hangs
            raise ValueError("data.tokens_per_micro_batch is not supported with trainer.strategy=fsdp "
                             "(processes must run the same number of forwards); use micro_batch_size")
        if cfg.data.tokens_per_micro_batch < 1:
            raise ValueError(f"data.tokens_per_micro_batch={cfg.data.tokens_per_micro_batch} must be >= 1")
    if cfg.data.layout == "trees" and cfg.data.shuffle == "pairs":
        raise ValueError("data.layout=trees needs data.shuffle=trajectories (or null): shuffled one by one, "
                         "a trajectory's steers land in different steps and cannot share a row")
    check_loss(cfg.loss)
    if cfg.loss.anchor != "span" and not (cfg.loss.objective == "preference" and cfg.loss.mask == "span"
                                          and cfg.loss.sft_weight > 0):
        raise ValueError(f"loss.anchor={cfg.loss.anchor!r} anchors a preference loss on spans: it needs "
                         "loss.objective=preference, loss.mask=span and loss.sft_weight > 0")
    if cfg.reference.kind == "adapter_disabled" and cfg.peft.kind != "lora":
        raise ValueError("reference=adapter_disabled needs peft=lora (there are no adapters to disable)")
    t = cfg.trainer
    for key in ("max_steps", "micro_batch_size", "grad_accum", "eval_batch_size", "keep_checkpoints"):
        if getattr(t, key) < 1:
            raise ValueError(f"trainer.{key}={getattr(t, key)} must be >= 1")
    if t.epochs is not None and t.epochs <= 0:
        raise ValueError(f"trainer.epochs={t.epochs} must be > 0 (or null: trainer.max_steps)")
    if t.warmup_ratio is not None and not 0.0 <= t.warmup_ratio < 1.0:
        raise ValueError(f"trainer.warmup_ratio={t.warmup_ratio} must be in [0, 1)")
    if (cfg.tune.tie_metric is not None or cfg.tune.tie_weight) and cfg.tune.metric is None:
        raise ValueError("tune.tie_metric / tune.tie_weight need tune.metric")


def check_loss(cfg: LossConfig) -> None:
    """``loss.loss_type`` is registered, ``loss.params`` are its parameters, and their values work:
    the loss is computed once on a two-token dummy pair, so a value the function rejects (DPOP's
    negative lambda, robust DPO's smoothing of 1/2) fails here, before any model loads."""
    import torch

    if cfg.loss_type not in LOSSES:
        raise ValueError(f"loss.loss_type={cfg.loss_type!r} is not one of {', '.join(LOSSES)}")
    allowed = loss_params(cfg.loss_type)
    for name in cfg.params:
        if name not in allowed:
            raise ValueError(f"loss.params.{name} is not a parameter of loss_type={cfg.loss_type!r} "
                             f"(it takes: {', '.join(allowed) or 'none'})")
    if cfg.objective != "preference":
        return
    logps, mask = torch.tensor([[-1.0, -2.0]]), torch.tensor([[True, True]])
    ref = None if LOSSES[cfg.loss_type].reference_free else logps - 0.5
    try:
        preference_loss(logps, logps - 1, ref, ref, mask, mask, beta=cfg.beta, loss_type=cfg.loss_type,
                        aggregation=cfg.aggregation, sft_weight=cfg.sft_weight, **cfg.params)
    except ValueError as e:
        raise ValueError(f"loss: {e}") from None


def register_configs() -> None:
    """Put the schema into Hydra's ConfigStore as ``base_config`` (idempotent)."""
    ConfigStore.instance().store(name="base_config", node=TrainConfig)


register_configs()
