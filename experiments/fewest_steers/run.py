"""Which loss makes a model need the fewest steers, at equal annotation cost?

    python experiments/fewest_steers/run.py --out outputs/fewest_steers      # the dial (see below; hours on 2 cores)
    python experiments/fewest_steers/run.py --out /tmp/fs --quick             # every code path, minutes
    python experiments/fewest_steers/analyze.py outputs/fewest_steers         # tables, figures -> paper/

Parts (``--parts``). The **systematicity dial**: a tiny task family (``ranges``, ``arith``) in each
error regime of its pretraining answers (``model.errors``, ``localpref.tasks.base``): ``tiny-ranges``
and ``tiny-arith`` (random: one wrong unit drawn at random, noise no steer can teach a rule for),
``tiny-<family>-systematic`` (one rule wherever the prompt fires it, learnt and made greedily on new
prompts) and ``tiny-<family>-mixed`` (half each); full fine-tuning, three seeds, every method and the
positive control. ``ranges`` is ``lists`` cut to the two rules a tiny model learns (even and odd
numbers in a range; ``localpref.tasks.ranges``): on the whole ``lists`` family most greedy errors
were of capability, in every regime (the pilot: ``--pilot`` runs ``tiny-lists*``). ``smollm2-style``:
SmolLM2-135M-Instruct + LoRA on its own habit (American spellings against a British house style,
``localpref.tasks.style``). Only when asked for: ``tiny-lists*``, ``smollm2-lists`` and ``defacto``
(SmolLM2 + LoRA on real human corrections of summaries).

Methods (``METHODS``): 1 SFT on spans, 2 SFT on rewrites, 3 DPO on rewrites, 4 localized DPO, 5
localized + SFT anchor, 6 Step-DPO, 7 the localized variant chosen on val, 8 DPOP and 9 Cal-DPO
(localized, both keeping the corrected span likely), and the **positive control** (``CONTROL``): SFT
on full correct answers of every prompt of a train collection ``Part.control_scale`` (default 4)
times the methods' size (a finite family with fewer train prompts: all of them; tiny ranges has
450, 3x the methods' 150; tiny lists 249, the methods' own; smollm2-style: scale 1), with no
annotation budget: not an option a user has, but proof that the protocol can detect a gain; a part
whose control does not beat the base model has no power, and no conclusion is drawn from it.

Collection decodes greedily by default (``Part.temperature`` 0), as the evaluation does, so training
steers fix the errors the evaluation meets (greedy decoding ignores the seed, so the first seed's
greedy collection is copied to the others); ``tiny-ranges-systematic`` also collects at temperature
1.0 and trains the core methods on that (``final_t1``, the second condition).

Per task part (tiny-*, smollm2-*), in order (each stage resumable: a job whose ``result.json``
exists is skipped, so rerunning the command continues where it stopped):

1. ``collect``: per seed, the base model steers on train prompts (at ``temperature``, greedy by
   default), on the control's larger set of train prompts, at temperature 1.0 where ``t1``, and
   held-out steers on val and heldout prompts (for the preference metrics of the trainer).
2. ``base``: the base model evaluated exactly as the trained ones (a run of one step at learning
   rate 0): greedy steering on val and heldout prompts, preference metrics on the held-out steers.
3. ``variant``: the small study choosing method 7 among localized variants aimed at likelihood
   displacement (``VARIANTS``): each at the grid's middle learning rate, seed 0, on val.
4. ``tune``: every method x every learning rate of ``lr_grid`` (the same grid, hence the same
   tuning budget, for every method), seed 0, main budget, evaluated on **val** prompts; the
   learning rate with the fewest steers to verify wins (every prompt counts, an unverified one as
   the budget + 1: ``localpref.steering.steers_to_verify``; ties: higher pass rate).
5. ``final``: every method at its learning rate x ``seeds`` x ``budgets`` (the control: no budget),
   evaluated once on **heldout** prompts (never used for any choice); ``final_t1``: the same on the
   temperature-1.0 collection, main budget.
6. ``trainprompts`` (a diagnostic): every method, seed 0, steering on the train prompts its steers
   came from; ``iterate``: the two best methods on val: round 1 trains on the first half of the budget, the
   round-1 model collects new steers on train prompts round 1 did not use, round 2 trains it on
   the other half; compared in the analysis with one round at the whole budget (same cost).

``defacto``: DeFacto train rows -> steers (first correction) and rewrites; each method trains at the
same annotation budget and is evaluated once on the **test** split (preference metrics only).

Every run's config, metrics and a ``result.json`` (what analyze.py reads) land under
``OUT/<part>/runs/<stage>/<name>/``; ``OUT/timing.jsonl`` records the wall-clock of each stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

# What each method changes in conf/experiment/fewest_steers.yaml (one config group per choice).
METHODS: dict[str, list[str]] = {
    "sft_span": ["loss=sft", "loss.mask=span"],                      # 1 SFT on the corrected spans
    "sft_rewrite": ["loss=sft", "data.form=rewrites"],               # 2 SFT on fully corrected outputs
    "dpo_rewrite": ["loss=dpo", "data.form=rewrites"],               # 3 DPO: model output vs rewrite
    "localized": ["loss=localized"],                                 # 4 localized DPO (hunk spans)
    "localized_anchor": ["loss=localized_anchor"],                   # 5 + SFT anchor on the span
    "step_dpo": ["loss=localized", "data.span=continuation"],        # 6 Step-DPO: whole continuation
    "dpop": ["loss=dpop"],                                           # 8 DPOP: localized, chosen kept likely
    "cal_dpo": ["loss=cal_dpo"],                                     # 9 Cal-DPO: localized, calibrated log-ratios
}
# The positive control: SFT on full correct answers (the model's answer rewritten) of every prompt of
# a collection CONTROL_SCALE times the size of the methods' (at most the family's train split), with
# no annotation budget. It is not a
# method a user could afford: it shows whether the protocol can detect a gain at all.
CONTROL: list[str] = ["loss=sft", "data.form=rewrites"]
CONTROL_SCALE = 4
# The base model's evaluation: one SGD step at learning rate 0 (weights unchanged), evaluated like the rest.
BASE = ["loss=localized", "trainer.optimizer=sgd", "trainer.max_steps=1", "trainer.warmup_steps=0"]
# Candidates for method 7, aimed at the corrected span becoming *less* likely under plain localized DPO.
VARIANTS: dict[str, list[str]] = {
    "apo_zero": ["loss=localized", "loss.loss_type=apo_zero"],      # pushes chosen up, rejected down
    "anchor_strong": ["loss=localized_anchor", "loss.sft_weight=1.0"],  # the NLL anchor at full weight
    "mean": ["loss=localized_mean"],                                 # token-averaged log-ratios
    "ipo": ["loss=localized_ipo"],                                   # squared loss, bounded margins
}


@dataclass
class Part:
    """One model x data setting of the experiment."""

    name: str
    family: str | None  # task family (None: defacto)
    model: list[str]  # model/peft/reference overrides
    lr_grid: list[float]
    seeds: list[int]
    budgets: list[float]  # annotation budgets as shares of the main collection's steer cost
    n_train: int  # train prompts to collect on (or DeFacto train rows)
    n_val: int
    n_heldout: int
    errors: str = "random"  # tiny task models: how their pretraining answers err (random | systematic | mixed)
    temperature: float = 0.0  # collection sampling temperature (0: greedy, as the evaluation decodes)
    t1: bool = False  # also collect at temperature 1.0 and train the methods on it (a second condition)
    t1_methods: list[str] | None = None  # which methods train on the T=1.0 collection (None: all but the control)
    control: bool = True  # the positive control (CONTROL) in tune and final
    control_scale: int = CONTROL_SCALE  # the control's train prompts per method's one (capped by the split)
    steer_budget: int = 4  # steers per prompt
    max_new_tokens: int = 96  # per generation pass; a pass that runs out goes on, up to max_task_tokens
    max_task_tokens: int | None = None  # tokens per prompt over all passes (None: 4 x max_new_tokens)
    gen_batch: int = 64
    trainer: list[str] = field(default_factory=list)
    micro_batch: int = 16  # pairs per step (fewer when a budget buys fewer)
    methods: list[str] = field(default_factory=lambda: list(METHODS))  # (quick runs: fewer)
    curve_methods: list[str] | None = None  # which methods run at every budget (None: all; the rest: the main one)
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    tune: bool = True  # variant study and learning-rate sweep on val (else: lr_grid[0], the -systematic part's variant)
    iterate: bool = True  # iterated on-policy rounds
    trainprompts: bool = True  # the train-prompts diagnostic (steering on prompts trained on)
    tiny_steps: int | None = None  # quick runs: a cheaper tiny task model


def tiny_part(family: str, errors: str) -> str:
    """A tiny part's name: ``tiny-<family>`` in the random regime (the name of the runs before the
    regimes existed), ``tiny-<family>-<errors>`` otherwise."""
    return f"tiny-{family}" if errors == "random" else f"tiny-{family}-{errors}"


def parts(quick: bool, pilot: bool = False) -> dict[str, Part]:
    tiny_trainer = ["trainer.max_steps=60", "trainer.warmup_steps=6"]
    smol = ["model=smollm2-135m", "peft=lora", "reference=adapter_disabled"]
    # The dial: each tiny family in each error regime, full fine-tuning, three seeds, every method and
    # the control, tuned on val (three learning rates, the same three for every method). On
    # tiny-ranges-systematic (the regime built to be teachable) also curves over annotation budgets
    # (the core methods), the temperature-1.0 collection, the train-prompts diagnostic and iterated
    # rounds. A tiny-model run is ~20 core-seconds (trees layout, precomputed reference, steering
    # evaluation included). ``ranges`` is the dial's family (lists' even/odd ranges: errors a tiny
    # model makes by rule, not for want of a capability); the ``tiny-lists*`` parts, the pilot's,
    # and ``tiny-arith*`` run when asked for.
    full: dict[str, Part] = {}
    sizes = {"ranges": (150, 90, 225), "lists": (249, 81, 111), "arith": (300, 100, 125)}
    for family in ("ranges", "lists", "arith"):
        for errors in ("random", "systematic", "mixed"):
            main = (family, errors) == ("ranges", "systematic")
            name = tiny_part(family, errors)
            full[name] = Part(name, family, ["model=tiny_task", f"model.family={family}"], [3e-5, 1e-4, 3e-4],
                              [0, 1, 2], [0.1, 0.25, 0.5, 1.0] if main else [1.0], *sizes[family], errors=errors,
                              trainer=tiny_trainer, t1=main, trainprompts=main, iterate=main,
                              curve_methods=["sft_span", "dpo_rewrite", "localized", "dpop"] if main else None,
                              t1_methods=["sft_span", "localized", "dpop"] if main else None,
                              max_new_tokens=48 if family == "ranges" else 96)  # a 5-item range is ~20 tokens
    # SmolLM2 on CPU: ~2 core-seconds per short training pair, ~50 s per steering evaluation of 32
    # prompts: the core comparison at one learning rate (not tuned; LoRA's usual 5e-4), no rounds.
    smol_part = dict(gen_batch=48, micro_batch=8, tune=False, iterate=False, trainprompts=False, max_new_tokens=64,
                     max_task_tokens=256, methods=["sft_span", "dpo_rewrite", "localized", "localized_anchor", "dpop"],
                     trainer=["trainer.max_steps=8", "trainer.warmup_steps=1", "data.n_eval=32"])
    # style: SmolLM2's own habit (American spellings) against a house style (localpref.tasks.style).
    # The control trains on rewrites of the methods' own train prompts (control_scale 1): a SmolLM2
    # collection costs ~1.5 s a prompt, and 8 steps of 8 pairs read 64 of them anyway.
    # Four methods (SFT and DPO baselines, localized DPO, DPOP) and the control: a SmolLM2 run is
    # ~4 core-minutes here, and the three-hour budget of the whole dial holds ~20 of them.
    full["smollm2-style"] = Part("smollm2-style", "style", smol, [5e-4], [0, 1, 2], [1.0], 96, 0, 32,
                                 control_scale=1, **{**smol_part, "methods": ["sft_span", "dpo_rewrite", "localized",
                                                                              "dpop"], "variants": []})
    full["smollm2-lists"] = Part("smollm2-lists", "lists", smol, [5e-4], [0, 1, 2], [1.0], 96, 0, 32,
                                 **{**smol_part, "methods": smol_part["methods"][:4]})
    # DeFacto pairs are ~390 tokens (~10 core-seconds each): three methods, 24 pairs per run.
    full["defacto"] = Part("defacto", None, smol, [5e-4], [0, 1, 2], [1.0], 96, 0, 32, micro_batch=4,
                           methods=["sft_span", "localized", "localized_anchor"], variants=[], control=False,
                           trainer=["trainer.max_steps=6", "trainer.warmup_steps=1", "data.max_length=384",
                                    "trainer.eval_batch_size=4"])
    if pilot:
        # A first look at the dial, in well under an hour on 2 cores: the tiny lists and arith parts
        # (``--parts`` picks), the core methods and the control, one learning rate for every method
        # (no tuning: the same, empty, tuning budget for all), the main budget, three seeds.
        return {k: replace(p, lr_grid=[1e-4], tune=False, budgets=[1.0], variants=[], t1=False, trainprompts=False,
                           iterate=False, methods=["sft_span", "dpo_rewrite", "localized", "localized_anchor", "dpop",
                                                   "cal_dpo"])
                for k, p in full.items() if k.startswith(("tiny-lists", "tiny-arith"))}
    if not quick:
        return full
    # Quick: every code path once, on tiny sizes (tiny-lists: all methods, two learning rates, two
    # budgets, two seeds, the T=1.0 condition, the diagnostic and rounds; the other parts only what
    # differs in them: their model, regime and data).
    q = dict(seeds=[0], budgets=[1.0], n_train=12, n_val=6, n_heldout=6, max_new_tokens=24, gen_batch=16,
             lr_grid=[1e-4], tiny_steps=40, methods=["localized", "dpo_rewrite"], variants=["apo_zero"],
             t1=False, trainprompts=False, iterate=False)
    out = {k: replace(full[k], **q, trainer=[*full[k].trainer, "trainer.max_steps=2"])
           for k in ("tiny-lists", "tiny-arith-systematic", "smollm2-style", "defacto")}
    out["tiny-lists"] = replace(out["tiny-lists"], lr_grid=[1e-4, 3e-4], budgets=[0.5, 1.0], seeds=[0, 1],
                                methods=list(METHODS), curve_methods=[m for m in METHODS if m != "step_dpo"],
                                variants=list(VARIANTS), t1=True,
                                t1_methods=["localized", "dpo_rewrite"], trainprompts=True, iterate=True)
    for name in ("smollm2-style", "defacto"):  # SmolLM2 steps are slow on CPU: one step of two pairs
        out[name] = replace(out[name], methods=["localized"], variants=out[name].variants[:1], n_train=4,
                            n_heldout=2, micro_batch=2, max_new_tokens=16, max_task_tokens=32,
                            trainer=[*full[name].trainer, "trainer.max_steps=1", "data.max_length=256"])
    return out


# ------------------------------------------------------------------------------------------------
# Jobs: plain functions of JSON-able arguments, run in worker processes


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # workers share the cores; one thread each avoids oversubscription


def _model_dir(part: dict) -> str | None:
    if part["family"] is None or not part["model"][0].startswith("model=tiny_task"):
        return None
    from localpref.tasks.pretrain import default_spec, task_model_dir

    spec = default_spec(part["family"], part["errors"])
    if part["tiny_steps"] is not None:
        spec = replace(spec, steps=part["tiny_steps"], warmup_steps=5)
    return str(task_model_dir(part["family"], spec))


def job_model_info(part: dict, out: str) -> dict:
    """Build (or find) the part's tiny task model; keep its pretrain.json (size, loss, wall-clock)."""
    info = json.loads((Path(_model_dir(part)) / "pretrain.json").read_text())
    info = {k: v for k, v in info.items() if k != "loss"} | {"final_loss": info["loss"][-1]}
    Path(out).write_text(json.dumps(info, indent=1))
    return info


def model_overrides(part: dict) -> list[str]:
    """The part's model overrides; a quick tiny model is passed as a folder."""
    folder = _model_dir(part)
    if folder and part["tiny_steps"]:
        return ["model=local", f"model.path={folder}"]
    return [*part["model"], f"model.errors={part['errors']}"] if folder else list(part["model"])


def job_collect(part: dict, split: str, n: int, seed: int, temperature: float, out: str,
                model_path: str | None = None, skip: int = 0) -> dict:
    """Steering trajectories of the base model (or ``model_path``) on the first ``n`` prompts of
    ``split``, leaving out the first ``skip`` of them."""
    from localpref.steer_cli import load_generation_model
    from localpref.steering import run_tasks, summarize_by
    from localpref.tasks import get_family

    family = get_family(part["family"])
    folder = _model_dir(part)
    spec = model_path or (folder if folder else ("smollm2" if "smollm2" in " ".join(part["model"]) else "tiny"))
    model, tokenizer, model_id = load_generation_model(spec, part["family"])
    tasks = family.tasks(split, n=n)[skip:]
    records = run_tasks(model, tokenizer, family, tasks, out=out, budget=part["steer_budget"],
                        temperature=temperature, seed=seed, max_new_tokens=part["max_new_tokens"],
                        max_task_tokens=part["max_task_tokens"],
                        batch_size=part["gen_batch"], progress_label=f"{part['name']} collect {split} s{seed}",
                        extra_meta={"model": model_id, "split": split})
    summary = summarize_by(records)
    Path(out).with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    return summary["all"]


def job_train(run_dir: str, overrides: list[str], info: dict) -> dict:
    """One training run (``localpref.train.train``); writes ``result.json`` = info + final metrics."""
    from hydra import compose, initialize_config_dir

    from localpref.train import CONF_DIR, train

    start = time.time()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=fewest_steers", f"run_dir={run_dir}", *overrides])
    metrics = train(cfg)
    from localpref.log import read_metrics

    data = next(r for r in read_metrics(run_dir) if "data/train_pairs" in r)
    result = {**info, "overrides": overrides, "seconds": round(time.time() - start, 1), "metrics": metrics,
              "data": {k: v for k, v in data.items() if k.startswith("data/")}}
    (Path(run_dir) / "result.json").write_text(json.dumps(result, indent=1))
    return result


def job_import_defacto(defacto_dir: str, out: str, n_train: int) -> dict:
    """DeFacto -> steer files: the first correction of each row (``steers``) and the whole corrected
    summary against the model's (``rewrites``), each priced at the characters a person typed: the
    first hunk's replacement for a steer, the whole summary for a rewrite. Training files take the
    first ``n_train`` train rows as steers, and as many rewrites as that budget pays for."""
    from localpref.data.importers import steers_from_defacto, word_hunks
    from localpref.data.load import iter_jsonl, write_steers
    from localpref.data.schema import Steer

    counts: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        steers, rewrites = [], []
        for line, row in iter_jsonl(Path(defacto_dir) / f"{split}.jsonl"):
            first = steers_from_defacto([row], split=split, on_error="skip").steers
            if not first:
                continue  # no correction, or a correction that makes no valid steer (counted by the importer)
            candidate, summary = row["candidate"].strip(), row["feedback"]["summary"].strip()
            steer = first[0]
            steer.meta = {**steer.meta, "cost": len(word_hunks(candidate, summary)[0].replacement)}
            steers.append(steer)
            rewrites.append(Steer(prompt=steer.prompt, prefix="", rejected=candidate, corrected=summary,
                                  id=f"{steer.id}/rewrite", corrected_ends_turn=True, rejected_ends_turn=True,
                                  meta={**steer.meta, "cost": len(summary)}))
        write_steers(steers, Path(out) / f"{split}.jsonl")
        counts[split] = len(steers)
        if split == "train":
            budget = sum(s.meta["cost"] for s in steers[:n_train])
            spent, paid = 0, []
            for r in rewrites:
                if spent + r.meta["cost"] > budget:
                    break
                spent += r.meta["cost"]
                paid.append(r)
            write_steers(steers[:n_train], Path(out) / "train_steers.jsonl")
            write_steers(paid, Path(out) / "train_rewrites.jsonl")
            counts.update(budget_chars=budget, train_steers=n_train, train_rewrites=len(paid),
                          rewrite_chars=spent)
    return counts


# ------------------------------------------------------------------------------------------------
# Stages


class Runner:
    """Runs jobs in a process pool, skipping finished ones, and records each stage's wall-clock."""

    def __init__(self, out: Path, jobs: int):
        self.out, self.jobs = out, jobs
        self.pool = ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker) if jobs > 1 else None

    def map(self, fn, calls: list[tuple]) -> list:
        if self.pool is None:
            _init_worker()
            return [fn(*c) for c in calls]
        return list(self.pool.map(fn, *zip(*calls))) if calls else []

    def stage(self, part: str, stage: str, fn, calls: list[tuple]) -> list:
        start = time.time()
        print(f"[{time.strftime('%H:%M:%S')}] {part}/{stage}: {len(calls)} jobs", flush=True)
        results = self.map(fn, calls)
        with open(self.out / "timing.jsonl", "a") as f:
            f.write(json.dumps({"part": part, "stage": stage, "jobs": len(calls),
                                "seconds": round(time.time() - start, 1)}) + "\n")
        return results


def _done(run_dir: Path) -> dict | None:
    f = run_dir / "result.json"
    return json.loads(f.read_text()) if f.exists() else None


def _score(result: dict) -> tuple[float, float]:
    """Lower is better: steers to verify (every prompt counts), then minus the pass rate."""
    m = result["metrics"]
    return m["eval/steer/steers_to_verify"], -m["eval/steer/pass_rate"]


def train_jobs(runner: Runner, part: Part, stage: str, specs: list[dict]) -> list[dict]:
    """Train runs of ``specs`` ({name, overrides, info}) not yet done; returns all their results.
    A None spec (``spec``: no training pair in its data) is left out."""
    specs = [s for s in specs if s is not None]
    root = runner.out / part.name / "runs" / stage
    for s in specs:  # a run killed before it finished, or done with other settings, starts over
        done = _done(root / s["name"])
        if (root / s["name"]).exists() and (done is None or done["overrides"] != s["overrides"]):
            shutil.rmtree(root / s["name"])
    todo = [(str(root / s["name"]), s["overrides"], {**s["info"], "part": part.name, "stage": stage, "name": s["name"]})
            for s in specs if _done(root / s["name"]) is None]
    with open(runner.out / part.name / "runs.txt", "a") as f:  # what analyze.py reads (not older runs)
        f.writelines(f"{stage}/{s['name']}\n" for s in specs)
    runner.stage(part.name, stage, job_train, todo)
    return [_done(root / s["name"]) for s in specs]


def run_task_part(runner: Runner, part: Part) -> None:
    d, p = runner.out / part.name, asdict(part)
    collect = d / "collect"
    # 1. collections per seed: steering (greedy by default, as the evaluation decodes) on train, val
    #    and heldout prompts; for the control a train collection CONTROL_SCALE times larger (as many
    #    train prompts as a finite family has, if fewer); for the second condition one at T=1.0.
    from localpref.tasks import get_family

    family = get_family(part.family)
    n_control = part.control_scale * part.n_train
    if family.finite:
        n_control = min(n_control, len(family.tasks("train")))
    calls = [(p, split, n, seed, part.temperature, str(collect / f"{split}_s{seed}.jsonl"))
             for seed in part.seeds for split, n in (("train", part.n_train), ("val", part.n_val),
                                                     ("heldout", part.n_heldout)) if n]
    calls += [(p, "train", n_control, seed, part.temperature, str(collect / f"train_control_s{seed}.jsonl"))
              for seed in part.seeds if part.control and n_control > part.n_train]
    calls += [(p, "train", part.n_train, seed, 1.0, str(collect / f"train_t1_s{seed}.jsonl"))
              for seed in part.seeds if part.t1]
    calls = [c for c in calls if c[2]]  # no val prompts where nothing is tuned
    # Greedy decoding ignores the seed: the first seed's greedy collection is every seed's (copied).
    same = {c[-1]: c[-1].replace(f"_s{c[3]}.jsonl", f"_s{part.seeds[0]}.jsonl") for c in calls if c[4] == 0}
    copies = [(src, dst) for dst, src in same.items() if src != dst]
    calls = [c for c in calls if same.get(c[-1], c[-1]) == c[-1]]
    calls = [c for c in calls if not Path(c[-1]).with_suffix(".summary.json").exists()]
    runner.stage(part.name, "collect", job_collect, calls)
    for src, dst in copies:
        shutil.copyfile(src, dst)
        shutil.copyfile(Path(src).with_suffix(".summary.json"), Path(dst).with_suffix(".summary.json"))
    from localpref.data.collected import load_collected, trajectory_cost
    from localpref.steering import read_records
    from localpref.tasks import solve

    costs: dict[Path, int] = {}

    def full_cost(data: Path) -> int:
        """Characters of every steer of a collection: the budgets are shares of it."""
        if data not in costs:
            costs[data] = sum(trajectory_cost(r, "steers") for r in read_records(data))
        return costs[data]

    model = model_overrides(p) + [f"trainer.micro_batch_size={part.micro_batch}"]

    def spec(name, method_ovs, seed, budget, lr, split, eval_seed=None, extra=(), data=None, cost_of=None):
        """A run's settings. ``budget``: a share of the steer cost of collection ``cost_of`` (default:
        the data's own; iterated rounds: the main collection's), or None (no budget: the control)."""
        s = part.seeds[0] if eval_seed is None else eval_seed
        main = collect / f"train_s{seed}.jsonl"
        data = data or main
        if method_ovs is CONTROL and (collect / f"train_control_s{seed}.jsonl").exists():
            data = collect / f"train_control_s{seed}.jsonl"  # else (control_scale 1): the methods' collection
        form = "rewrites" if "data.form=rewrites" in method_ovs else "steers"
        chars = None if budget is None else int(budget * full_cost(cost_of or data))
        taken = load_collected(data, form=form, cost_budget=chars, solve=solve)
        pairs = len(taken[0])
        if pairs == 0:  # e.g. rewrites of a collection whose wrong answers were all cut off: nothing to train
            print(f"{part.name}: {name} skipped: its data ({Path(data).name}, budget {budget}) holds no training pair")
            return None
        micro = [f"trainer.micro_batch_size={pairs}"] if pairs < part.micro_batch else []  # a small budget
        return {"name": name, "info": {"method": name.split("@")[0], "seed": seed, "budget": budget, "lr": lr,
                                       "eval_split": split, "data": Path(data).name,
                                       "budget_chars": taken[1]["chars"] if chars is None else chars},
                "overrides": [*model, *part.trainer, *method_ovs, "data=collected", f"data.path={data}",
                              f"data.eval_path={collect / f'{split}_s{s}.jsonl'}",
                              f"data.cost_budget={'null' if chars is None else chars}", f"trainer.lr={lr}",
                              f"seed={seed}", f"steer_eval.family={part.family}", f"steer_eval.split={split}",
                              f"steer_eval.n={ {'val': part.n_val, 'train': part.n_train}.get(split, part.n_heldout)}",
                              f"steer_eval.budget={part.steer_budget}",
                              f"steer_eval.max_new_tokens={part.max_new_tokens}",
                              f"steer_eval.max_task_tokens={part.max_task_tokens or 'null'}", *micro, *extra]}

    main_budget, mid_lr, s0 = max(part.budgets), part.lr_grid[len(part.lr_grid) // 2], part.seeds[0]
    # The base model, evaluated as the trained ones are: one step at learning rate 0 changes nothing.
    splits = (["val"] if part.tune else []) + ["heldout"]
    train_jobs(runner, part, "base", [spec(f"base@{split}@s{seed}", BASE, seed, main_budget, 0.0, split,
                                           eval_seed=seed) for split in splits for seed in part.seeds])
    if not part.variants:  # no method 7 in this part
        best_variant = None
    elif part.tune:
        # 3. the variant study (method 7).
        results = train_jobs(runner, part, "variant", [spec(f"{v}@{mid_lr}", VARIANTS[v], s0, main_budget, mid_lr,
                                                            "val") for v in part.variants])
        best_variant = min(results, key=_score)["method"]
        (d / "variant.json").write_text(json.dumps({"chosen": best_variant, "by": "val steers to verify"}))
    else:  # the choice made on the tiny model of the same family
        chosen_file = runner.out / tiny_part(part.family if part.family != "style" else "ranges", "systematic") / "variant.json"
        if chosen_file.exists():
            best_variant, by = json.loads(chosen_file.read_text())["chosen"], f"taken from {chosen_file.parent.name}"
        else:
            best_variant, by = part.variants[0], f"the first candidate ({chosen_file} does not exist)"
        (d / "variant.json").write_text(json.dumps({"chosen": best_variant, "by": by}))
    methods = {**{m: METHODS[m] for m in part.methods},
               **({"variant": VARIANTS[best_variant]} if best_variant else {}),
               **({"control": CONTROL} if part.control else {})}
    budget_of = lambda m, b: None if m == "control" else b  # noqa: E731  (the control has no budget)
    if part.tune:
        # 4. tuning: same learning-rate grid for every method (the control too), on val.
        results = train_jobs(runner, part, "tune", [spec(f"{m}@{lr}", ovs, s0, budget_of(m, main_budget), lr, "val")
                                                    for m, ovs in methods.items() for lr in part.lr_grid])
        best = {m: min((r for r in results if r["method"] == m), key=_score) for m in methods
                if any(r["method"] == m for r in results)}  # a method with no training pair ran nothing
        chosen = {m: best[m]["lr"] if m in best else mid_lr for m in methods}
    else:
        chosen = {m: part.lr_grid[0] for m in methods}
    (d / "tuned.json").write_text(json.dumps({"lr": chosen, "variant": best_variant, "tuned": part.tune}, indent=1))
    # 5. final: every method, seeds x budgets, on heldout (read once per run, never for a choice).
    train_jobs(runner, part, "final", [spec(f"{m}@b{b}@s{seed}", methods[m], seed, budget_of(m, b), chosen[m],
                                            "heldout", eval_seed=seed)
                                       for m in methods for seed in part.seeds
                                       for b in (part.budgets if m != "control" and (
                                           part.curve_methods is None or m in part.curve_methods) else [main_budget])])
    # 5a. the second condition: steers collected at temperature 1.0 (each method at its learning rate,
    # the main budget of that collection's own cost), on the same heldout prompts.
    if part.t1:
        train_jobs(runner, part, "final_t1", [spec(f"{m}@t1@s{seed}", methods[m], seed, main_budget, chosen[m],
                                                   "heldout", eval_seed=seed,
                                                   data=collect / f"train_t1_s{seed}.jsonl")
                                              for m in methods if m != "control" and (part.t1_methods is None or m in part.t1_methods)
                                              for seed in part.seeds])
    # 5b. a diagnostic, not a result: steering on the train prompts whose steers were trained on (seed 0,
    # main budget). If training lowers the steers needed there but not on heldout prompts, what was
    # learnt does not carry over to new prompts.
    if part.trainprompts:
        train_jobs(runner, part, "trainprompts", [spec(f"{m}@train", ovs, s0, main_budget, chosen.get(m, 0.0),
                                                       "train", eval_seed=s0)
                                                  for m, ovs in {"base": BASE, **methods}.items() if m != "control"])
    # 6. iterated on-policy rounds for the two best methods on val.
    if part.iterate:
        if not part.tune:
            raise ValueError(f"{part.name}: iterated rounds pick the two best methods on val, which needs tune=True")
        top2 = [m for m, _ in sorted(best.items(), key=lambda kv: _score(kv[1])) if m != "control"][:2]
        run_rounds(runner, part, spec, methods, chosen, top2, main_budget)


def run_rounds(runner: Runner, part: Part, spec, methods, chosen, top2, budget) -> None:
    """Round 1 at half the budget (exported), round-1 model collects on the unused train prompts,
    round 2 trains the round-1 model on half the budget of that collection."""
    from localpref.tasks import get_family

    d, p = runner.out / part.name, asdict(part)
    half = budget / 2
    specs = [spec(f"{m}@round1@s{seed}", methods[m], seed, half, chosen[m], "heldout", eval_seed=seed,
                  extra=["trainer.export=true"]) for m in top2 for seed in part.seeds]
    round1 = train_jobs(runner, part, "iterate", specs)
    calls = []
    for r in round1:
        run_dir = d / "runs" / "iterate" / r["name"]
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        out = d / "collect" / f"round2_{r['method']}_s{r['seed']}.jsonl"
        if not out.with_suffix(".summary.json").exists():  # the prompts round 1 did not pay for
            # When round 1's half budget paid for every prompt (a greedy collection whose answers are
            # mostly right costs little), round 2 goes on past them: at least half as many new ones.
            taken = int(first["data/collected/trajectories_taken"])
            n = taken + max(part.n_train - taken, part.n_train // 2)
            family = get_family(part.family)
            if family.finite:
                n = min(n, len(family.tasks("train")))
            if n <= taken:
                raise SystemExit(f"{part.name}: round 1 of {r['name']} used every train prompt of the family: "
                                 f"no prompt is left for round 2")
            calls.append((p, "train", n, r["seed"] + 100, part.temperature, str(out), str(run_dir / "export"), taken))
    runner.stage(part.name, "iterate-collect", job_collect, calls)
    specs = []
    for r in round1:
        run_dir = d / "runs" / "iterate" / r["name"]
        data = d / "collect" / f"round2_{r['method']}_s{r['seed']}.jsonl"
        s = spec(f"{r['method']}@round2@s{r['seed']}", methods[r["method"]], r["seed"], half, chosen[r["method"]],
                 "heldout", eval_seed=r["seed"], data=data, cost_of=d / "collect" / f"train_s{r['seed']}.jsonl")
        s["overrides"] = [o for o in s["overrides"] if not o.startswith(("model=", "model."))]
        s["overrides"] += ["model=local", f"model.path={run_dir / 'export'}"]
        s["info"]["round"] = 2
        specs.append(s)
    train_jobs(runner, part, "iterate", specs)


def run_defacto(runner: Runner, part: Part, defacto_dir: str) -> None:
    d = runner.out / part.name
    data = d / "data"
    if not (data / "train_steers.jsonl").exists():
        counts = runner.stage(part.name, "import", job_import_defacto, [(defacto_dir, str(data), part.n_train)])[0]
        (d / "data.json").write_text(json.dumps(counts, indent=1))
    forms = {"sft_rewrite": "train_rewrites.jsonl", "dpo_rewrite": "train_rewrites.jsonl"}
    counts = json.loads((d / "data.json").read_text())
    methods = {**{m: METHODS[m] for m in part.methods}, **{f"variant_{k}": VARIANTS[k] for k in part.variants[:2]}}
    specs = []
    for m, ovs in methods.items():
        if m in forms and counts["train_rewrites"] == 0:
            print(f"defacto: {m} skipped: the budget of {counts['budget_chars']} characters buys no rewrite")
            continue
        ovs = [o for o in ovs if not o.startswith("data.form")]
        for seed in part.seeds:
            specs.append({"name": f"{m}@s{seed}", "info": {"method": m, "seed": seed, "lr": part.lr_grid[0],
                                                            "eval_split": "test"},
                          "overrides": [*part.model, *part.trainer, *ovs, "data=jsonl",
                                        f"data.path={data / forms.get(m, 'train_steers.jsonl')}",
                                        f"data.eval_path={data / 'test.jsonl'}", f"data.n_eval={part.n_heldout}",
                                        f"trainer.lr={part.lr_grid[0]}", f"seed={seed}",
                                        f"trainer.micro_batch_size={part.micro_batch}"]})
    train_jobs(runner, part, "final", specs)
    base = {"name": "base", "info": {"method": "base", "seed": part.seeds[0], "lr": 0.0, "eval_split": "test"},
            "overrides": [*specs[0]["overrides"], *BASE, "trainer.lr=0.0"]}
    train_jobs(runner, part, "base", [base])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every code path in minutes")
    parser.add_argument("--pilot", action="store_true",
                        help="a first look at the dial: tiny lists (default) or arith parts, core methods + control, one lr, main budget")
    parser.add_argument("--parts", nargs="+", choices=list(parts(False)),
                        help="which parts, in order (smollm2-lists takes method 7 from tiny-lists-systematic); "
                             "default: the ranges and arith "
                             "parts and smollm2-style (with --quick: the quick parts; --pilot: lists')")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    parser.add_argument("--defacto", default=str(Path(os.environ.get("LOCALPREF_SHARED", "../shared")) / "data" / "defacto"))
    args = parser.parse_args()
    # DeFacto steers are ~390 tokens: scoring them on CPU costs more than the three-hour budget leaves.
    if args.quick and args.pilot:
        parser.error("--quick and --pilot are different runs: choose one")
    table = parts(args.quick, args.pilot)
    args.parts = args.parts or [k for k in table if args.quick or (k.startswith("tiny-lists") if args.pilot else (
        k.startswith(("tiny-ranges", "tiny-arith")) or k == "smollm2-style"))]
    missing = [k for k in args.parts if k not in table]
    if missing:
        raise SystemExit(f"no part {', '.join(missing)} in the {'quick' if args.quick else 'full'} run")
    args.out.mkdir(parents=True, exist_ok=True)
    settings_file = args.out / "settings.json"
    settings = (json.loads(settings_file.read_text()) if settings_file.exists()
                else {"quick": args.quick, "pilot": args.pilot, "parts": {}})
    if settings["quick"] != args.quick or settings.get("pilot", False) != args.pilot:
        raise SystemExit(f"{args.out} holds another kind of run (quick, pilot or full): use another --out")
    settings["parts"].update({k: asdict(table[k]) for k in args.parts})
    settings_file.write_text(json.dumps({**settings, "methods": METHODS, "variants": VARIANTS}, indent=1))
    for name in args.parts:  # each part lists the runs of this invocation's settings again
        (args.out / name).mkdir(exist_ok=True)
        (args.out / name / "runs.txt").write_text("")
    runner = Runner(args.out, args.jobs)
    start = time.time()
    for name in args.parts:
        part = table[name]
        if part.family is None:
            run_defacto(runner, part, args.defacto)
        else:
            if part.model[0] == "model=tiny_task":  # built once, before the workers need it
                runner.stage(part.name, "pretrain", job_model_info, [(asdict(part), str(args.out / name / "model.json"))])
            run_task_part(runner, part)
    if runner.pool is not None:
        runner.pool.shutdown()  # before exit: left to atexit, a closed pipe prints a traceback
    with open(args.out / "timing.jsonl", "a") as f:
        f.write(json.dumps({"part": "all", "stage": "all", "seconds": round(time.time() - start, 1),
                            "quick": args.quick}) + "\n")
    print(f"done in {(time.time() - start) / 60:.1f} min: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
