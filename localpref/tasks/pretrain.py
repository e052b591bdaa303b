"""Tiny task models: a small Llama pretrained on one family's answers, some of them wrong on purpose.

A model that never errs needs no steers, and a random one writes nothing a person could steer. A
tiny task model sits between: it is trained (SFT, next-token loss on the answer and its end of
turn) on prompts of the family's **pretrain** split with answers from ``family.write``, a share
``error_rate`` of which hold one wrong unit (a wrong list item, a wrong sum carried on as if it were
right). So it writes in the family's format and makes the family's mistakes, at a rate set here
plus whatever it fails to learn. Prompts of the other splits (train: where steers are collected;
val; heldout) are never seen, so the model is steered on prompts new to it, as a user would.

How the wrong answers err is ``TinySpec.errors`` (``localpref.tasks.base``, "error regimes"):
``random`` (one unit wrong at random: noise a steer cannot generalize from), ``systematic`` (the
family's rule wherever its prompt fires it, e.g. arith's additions that never carry) or ``mixed``.
``error_profile`` measures what a model makes of it: on held-out prompts, the greedy pass rate and
how many first errors are the rule's.

Each model has its own small byte-level BPE tokenizer (``TinySpec.vocab_size`` tokens, digits
always single tokens, any text encodable), trained on the same pretrain-split text, with a ChatML
chat template (``<|im_start|>user ... <|im_end|>``, no system prompt added) whose ``<|im_end|>``
ends the turn. SmolLM2's 49152-token vocabulary would make the output layer 97% of every forward
of a model this small; with 1024 tokens the model trains and writes several times faster. Default
size (``TinySpec``): 4 layers, width 128, 4 heads, MLP 512, tied embeddings, about 1.1M
parameters. It is cached as an ordinary Hugging Face folder (with
``pretrain.json``: settings, loss curve, wall-clock) under ``cache_root()/models/tiny-<family>-<hash>``,
keyed by the settings and ``VERSION``, and built on first use::

    localpref steer pretrain --family lists      # or implicitly: --model tiny
    localpref steer pretrain --family arith --errors systematic --profile 200   # and its error profile
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from localpref.models import cache_root, publish_folder, tiny_llama_config
from localpref.tasks.base import check_errors

VERSION = 5  # bump when the corpus or the loop below changes: models are rebuilt in a new folder
# (4: arith's numbers stay within 0..99; TinySpec.errors. 5: ranges over windows of the number line)


@dataclass(frozen=True)
class TinySpec:
    """How a tiny task model is built (every field is part of its cache key)."""

    hidden_size: int = 128  # width
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads
    intermediate_size: int = 512  # MLP width
    steps: int = 1200  # optimizer steps
    batch_size: int = 32  # answers per step
    lr: float = 3e-3  # AdamW peak learning rate (linear warmup, cosine decay)
    warmup_steps: int = 50  # warmup steps
    error_rate: float = 0.25  # share of training answers holding an error (over the pretrain split)
    seed: int = 0  # initialization, prompt order and sampled answers
    vocab_size: int = 1024  # tokens of the model's own byte-level BPE tokenizer
    errors: str = "random"  # how wrong answers err: random | systematic | mixed (localpref.tasks.base.ERRORS)

    def __post_init__(self):
        check_errors(self.errors)


# Per-family changes to TinySpec's defaults. arith: after 400 steps (one-digit operands) the model
# still got only 46% of result digits and 85% of copied numbers right given the right text before
# them (teacher-forced, val prompts), its greedy pass rate 0.00, and the loss was still falling.
# After 3000 steps (random regime; `localpref steer pretrain --family arith --profile 100`) it
# passes 0.99 of held-out chains of the pretrained kind (79 of 80) and none of the never-trained
# chains of five (its first line is wrong); 23 minutes at one thread on a shared 2-core box.
# ranges, ranges_desc: 800 steps. A 1200-step systematic ranges build passes 0.68 of 300 held-out
# prompts greedily, the rule's error on 94% of those it fires on, other errors 4%; a 600-step one
# 0.65, 94%, 8% (594 and 276 s at one thread on a shared core). Five builds per part are what the
# fewest-steers study replicates over, so the build's cost counts.
_FAMILY_SPECS: dict[str, dict] = {"arith": {"steps": 3000}, "ranges": {"steps": 800}, "ranges_desc": {"steps": 800}}


def default_spec(family: str, errors: str = "random", build: int = 0, steps: int | None = None) -> TinySpec:
    """The spec a family's tiny task model is built with in regime ``errors`` (ValueError when the
    family has no systematic rule and ``errors`` is not ``random``). ``build`` is its pretraining
    seed (``TinySpec.seed``: initialization, tokenizer sample, sampled answers and their order):
    builds are independent models of the same recipe, the replicates of an experiment. ``steps``
    replaces the family's pretraining steps (quick runs: a cheap, worse model)."""
    from localpref.tasks import get_family

    check_errors(errors)
    if errors != "random" and get_family(family).trigger_share is None:
        raise ValueError(f"task family {family!r} has no systematic rule: only errors=random")
    if build < 0:
        raise ValueError(f"build must be >= 0, got {build}")
    spec = TinySpec(errors=errors, seed=build, **_FAMILY_SPECS.get(family, {}))
    if steps is not None:
        spec = dataclasses.replace(spec, steps=steps, warmup_steps=min(spec.warmup_steps, max(1, steps // 10)))
    return spec


def _key(family: str, spec: TinySpec) -> str:
    blob = json.dumps({"family": family, "version": VERSION, **dataclasses.asdict(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def task_model_dir(family: str, spec: TinySpec | None = None, *, build: bool = True) -> Path:
    """The cached tiny model folder of ``family`` (pretrained now if missing and ``build``); ``spec``
    defaults to ``default_spec(family)``."""
    spec = spec or default_spec(family)
    out = cache_root() / "models" / f"tiny-{family}-{_key(family, spec)}"
    if not (out / "pretrain.json").exists():
        if not build:
            raise FileNotFoundError(f"{out} does not exist; run `localpref steer pretrain --family {family} "
                                    f"--errors {spec.errors}`")
        pretrain(family, spec, out)
    return out


def model_folder(model_cfg) -> Path | None:
    """``localpref.models.build_model``'s ``folder`` for the ``model`` config group: the tiny task
    model of ``model.family`` in regime ``model.errors``, build ``model.build``, when ``model.source`` is ``tiny_task`` (built on
    first use), else None (the other sources name their weights themselves)."""
    if model_cfg.source != "tiny_task":
        return None
    return task_model_dir(model_cfg.family, default_spec(model_cfg.family, model_cfg.errors, model_cfg.build,
                                                         model_cfg.pretrain_steps))


class _Regime:
    """A family whose ``write`` errs in regime ``errors``: what ``pretrain`` samples answers from (for
    ``random`` it uses the family itself, so a family written before the regimes still pretrains)."""

    def __init__(self, family, errors: str):
        self.family, self.errors = family, errors

    def __getattr__(self, name: str):
        return getattr(self.family, name)

    def write(self, meta: dict, rng: random.Random, error_rate: float) -> str:
        return self.family.write(meta, rng, error_rate, errors=self.errors)


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (deterministic), ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=CHATML, clean_up_tokenization_spaces=False)


def _batch(family, tasks, tokenizer, rng: random.Random, size: int, error_rate: float,
           prompts: dict[str, tuple[str, int, str]] | None = None):
    """(input_ids (b, t), attention_mask (b, t), completion mask (b, t)) of sampled answers.

    ``prompts`` caches each task's (rendered prompt, its token count, end-of-turn text) across
    calls: the chat template and the prompt's tokenization are the same every time a task is
    drawn. Each row is still tokenized whole (prompt + answer, one batched call), as before.
    """
    from localpref.data.tokenize import end_of_turn_text, render_prompt

    prompts = {} if prompts is None else prompts
    texts, n_prompts = [], []
    for task in rng.sample(tasks, size) if size <= len(tasks) else rng.choices(tasks, k=size):
        if task.id not in prompts:
            prompt = render_prompt(tokenizer, task.prompt)
            prompts[task.id] = (prompt, len(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
                                end_of_turn_text(tokenizer, task.prompt))
        prompt, n_prompt, end = prompts[task.id]
        texts.append(prompt + family.write(task.meta, rng, error_rate) + end)
        n_prompts.append(n_prompt)
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    t = max(len(ids) for ids in rows)
    ids = torch.full((len(rows), t), tokenizer.pad_token_id or 0)
    lengths = torch.tensor([len(row) for row in rows])
    for r, row in enumerate(rows):
        ids[r, :len(row)] = torch.tensor(row)
    pos = torch.arange(t)
    attention = (pos < lengths[:, None]).long()
    scored = (pos >= torch.tensor(n_prompts)[:, None]) & (pos < lengths[:, None])  # the answer and its end of turn
    return ids, attention, scored


def pretrain(family_name: str, spec: TinySpec, out: Path) -> Path:
    """Train a tiny model on ``family_name``'s pretrain prompts and save it atomically to ``out``."""
    from transformers import AutoModelForCausalLM

    from localpref.log import Progress
    from localpref.reference import TokenScorer
    from localpref.tasks import get_family

    family = get_family(family_name)
    family = family if spec.errors == "random" else _Regime(family, spec.errors)  # how its answers err
    tasks = family.tasks("pretrain", n=None if family.finite else 20_000, seed=spec.seed)
    rng = random.Random(spec.seed)
    sample = [tasks[rng.randrange(len(tasks))] for _ in range(4000)]
    tokenizer = train_tokenizer([t for task in sample for t in (*(m["content"] for m in task.prompt),
                                                                  family.write(task.meta, rng, spec.error_rate))],
                                spec.vocab_size)
    config = tiny_llama_config(vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                               num_heads=spec.num_heads, intermediate_size=spec.intermediate_size)
    config.tie_word_embeddings = True
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
    scorer = TokenScorer(model)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, fused=True)  # one pass: 3.5x faster
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / spec.warmup_steps, 0.5 * (
        1 + math.cos(math.pi * min(1.0, (s - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps))))))
    losses, start, prompts = [], time.time(), {}
    progress = Progress(spec.steps, 0, label=f"pretrain tiny-{family_name}", unit="steps")
    model.train()
    for step in range(spec.steps):
        ids, attention, scored = _batch(family, tasks, tokenizer, rng, spec.batch_size, spec.error_rate, prompts)
        logps = scorer(ids, attention, scored)  # (b, t) fp32, 0 off the answer
        loss = -logps.sum() / scored.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        progress.update(loss=losses[-1])
    progress.close()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent if out.parent.exists() else None))
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {"family": family_name, "version": VERSION, "spec": dataclasses.asdict(spec),
                "parameters": sum(p.numel() for p in model.parameters()), "train_prompts": len(tasks),
                "seconds": round(time.time() - start, 1), "loss": losses}
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=1))
        publish_folder(tmp, out, "pretrain.json")  # a concurrent build may have finished first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def greedy_answers(family, model, tokenizer, tasks: list, *, max_new_tokens: int = 128,
                   batch_size: int = 32) -> list[str]:
    """Each task's greedy answer, cut just past its first wrong unit (nothing after it is needed)."""
    from localpref.generation import generate_batch

    texts = []
    for i in range(0, len(tasks), batch_size):
        chunk = tasks[i:i + batch_size]

        def wrong(k: int, text: str, chunk=chunk) -> bool:
            return family.first_error(chunk[k].meta, text, final=False) is not None

        results = generate_batch(model, tokenizer, [t.prompt for t in chunk], [""] * len(chunk),
                                 temperature=0.0, max_new_tokens=max_new_tokens, stop=wrong)
        texts += [r.text for r in results]
    return texts


def profile_of(family, tasks: list, texts: list[str]) -> dict:
    """How final answers ``texts`` to ``tasks`` err, judged at each one's first wrong unit.

    ``pass_rate``: share right; ``systematic``: share whose first error is the family's rule
    (``family.systematic_error``); ``other``: share whose first error is anything else (a slip, or
    what the model failed to learn); these three sum to 1. ``rule_fires``: share of prompts where
    the rule could err at all; ``systematic_where_fires``: ``systematic`` among those (None if
    none). ``first_error_unit``: {index of the first wrong unit: prompts}.
    """
    n, kinds, units, fired, fired_sys = len(tasks), Counter(), Counter(), 0, 0
    for task, text in zip(tasks, texts, strict=True):
        k = family.first_error_unit(task.meta, text)
        kind = "pass" if k is None else "systematic" if family.systematic_error(task.meta, text, k) else "other"
        kinds[kind] += 1
        if k is not None:
            units[k] += 1
        if family.rule_fires(task.meta):
            fired, fired_sys = fired + 1, fired_sys + (kind == "systematic")
    return {"tasks": n, "pass_rate": kinds["pass"] / n, "systematic": kinds["systematic"] / n,
            "other": kinds["other"] / n, "rule_fires": fired / n,
            "systematic_where_fires": fired_sys / fired if fired else None,
            "first_error_unit": dict(sorted(units.items()))}


def error_profile(family, model, tokenizer, split: str = "heldout", n: int = 200, *, seed: int = 0,
                  max_new_tokens: int = 128, batch_size: int = 32) -> dict[str, dict]:
    """The greedy error profile (``profile_of``) of ``model`` on ``n`` prompts of ``split``: all of
    them (``"all"``) and each sub-family (``"seen"``, ``"unseen"``) apart. Prompts of the same
    kind as pretraining's are ``"seen"`` ones of a split the model never saw (train, val, heldout).
    An answer that reaches ``max_new_tokens`` is judged as it stands."""
    tasks = family.tasks(split, n=n, seed=seed)
    texts = greedy_answers(family, model, tokenizer, tasks, max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = {"all": profile_of(family, tasks, texts)}
    for sub in sorted({t.meta["subfamily"] for t in tasks}):
        pairs = [(t, x) for t, x in zip(tasks, texts) if t.meta["subfamily"] == sub]
        out[sub] = profile_of(family, [t for t, _ in pairs], [x for _, x in pairs])
    return out
