"""The main job: ``localpref demo`` (run by ``bash scripts/run.sh demo``).

Does the model need fewer steers after training on its own steers? On the ``ranges`` task family
(``localpref.tasks.ranges``), with build 0 of its tiny task model in the systematic regime (it reads
"between" inclusively: an error with a cause; ``localpref.tasks.pretrain``, built once and cached;
``model.family``/``model.errors``/``model.build`` choose another), as one build of the fewest-steers
study (``experiments/fewest_steers``) does:

1. collect steers from the model itself: its greedy answers to its 150 train prompts (the decoding
   the evaluation uses), stopped at the first wrong item, corrected by the family's program,
   resumed (``localpref.steering``), and, the same way, held-out steers on val prompts for the
   preference metrics;
2. train localized DPO on the train steers at the settings the study tuned
   (``conf/experiment/demo.yaml``; in the study its verdict said fewer on 3 of 5 builds, this one included);
3. before and after training: greedy steering on held-out prompts (steers to verify, pass rate
   without steers, share verified within the budget, 95% intervals) and the
   preference metrics on the held-out steers; then a verdict: fewer (or more) steers only when
   the two intervals of steers to verify do not overlap, else no measurable change.

Writes ``collect/``, ``metrics.jsonl``, ``config.yaml``, ``steer_eval.jsonl`` (the final
evaluation's trajectories), ``demo.png`` and ``export/`` into ``outputs/demo/<time>`` (or
``run_dir=``). Hydra overrides go after the command: ``localpref demo trainer.max_steps=200``.
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from localpref.log import read_metrics
from localpref.train import CONF_DIR, train

STEER = [("eval/steer/steers_to_verify", "steers to verify"),
         ("eval/steer/pass_rate", "pass rate without steers"),
         ("eval/steer/verified_within_budget", "verified within the budget"),
         ("eval/steer/steers_per_verified", "steers per verified output (drops tasks)")]
SHOWN = [("eval/span/logp_accuracy", "span log-prob accuracy: log p(corrected) > log p(rejected)"),
         ("eval/span/reward_accuracy", "reward accuracy: policy margin > reference's (tie: 1/2)"),
         ("eval/span/nll", "NLL per token of the corrected span"),
         ("eval/drift/nll", "NLL per token of whole corrected completions (drift)"),
         ("eval/drift/kl", "KL(policy || reference) per completion token (drift)")]
# As a build of the fewest-steers study collects: greedy, its own 150 train prompts (the split's order for
# seed = model.build), every val prompt (held-out steers for the preference metrics).
COLLECT = {"train": dict(n=150, temperature=0.0, budget=4), "val": dict(n=None, temperature=0.0, budget=4)}


def collect(cfg, run_dir: Path) -> dict[str, Path]:
    """Steers from the base model on train and val prompts (appending, resumable)."""
    from localpref.models import build_model
    from localpref.steering import run_tasks
    from localpref.tasks import get_family
    from localpref.tasks.pretrain import model_folder

    family = get_family(cfg.model.family)
    model, tokenizer = build_model(cfg.model, cfg.peft, seed=cfg.seed, folder=model_folder(cfg.model))
    paths = {}
    for split, settings in COLLECT.items():
        paths[split] = run_dir / "collect" / f"{split}.jsonl"
        task_seed = cfg.model.build if split == "train" else 0  # the build's own train prompts
        records = run_tasks(model, tokenizer, family, family.tasks(split, n=settings["n"], seed=task_seed), out=paths[split],
                            budget=settings["budget"], temperature=settings["temperature"], seed=cfg.seed,
                            max_new_tokens=cfg.steer_eval.max_new_tokens,
                            max_task_tokens=cfg.steer_eval.max_task_tokens, batch_size=cfg.steer_eval.batch_size,
                            progress_label=f"collect {split}")
        steers = sum(r["meta"]["steers"] for r in records)
        print(f"collected {steers} steers on {len(records)} {split} prompts -> {paths[split]}")
    return paths


def run_demo(overrides: list[str]) -> int:
    """Run the demo with extra Hydra overrides; returns a process exit code."""
    default_dir = Path("outputs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        base = compose("config", overrides=["experiment=demo", f"run_dir={default_dir}", *overrides])
    run_dir = Path(base.run_dir)
    start = time.time()
    paths = collect(OmegaConf.to_object(base), run_dir)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", f"run_dir={run_dir}", "data=collected",
                                           f"data.path={paths['train']}", f"data.eval_path={paths['val']}",
                                           *overrides])
    train(cfg)
    minutes = (time.time() - start) / 60
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "eval/span/logp_accuracy" in r]
    before, after = evals[0], evals[-1]
    counts = next(r for r in rows if "data/train_pairs" in r)
    split = cfg.steer_eval.split
    print(f"\nsteering {int(after['eval/steer/tasks'])} {split} prompts of '{cfg.steer_eval.family}' greedily, at most "
          f"{cfg.steer_eval.budget} steers each, before -> after training on {counts['data/train_pairs']} "
          f"steers the model needed ({counts.get('data/collected/chars', '?')} characters typed):")
    for key, text in STEER:
        if key in after:
            print(f"  {text:<40} {_with_ci(before, key)} -> {_with_ci(after, key)}")
    print(f"  (steers to verify: steers spent per prompt, {cfg.steer_eval.budget + 1} for a prompt not verified "
          f"within {cfg.steer_eval.budget}; {int(after.get('eval/steer/token_capped', 0))} prompts ended on the "
          f"token cap)")
    print(verdict(before, after))
    print(f"\nheld-out preference metrics on {counts['data/eval_pairs']} steers, before -> after training:")
    for key, text in SHOWN:
        if key in after:
            print(f"  {text:<62} {before[key]:8.4f} -> {after[key]:8.4f}")
    plot = plot_run(rows, run_dir / "demo.png")
    print(f"\n{minutes:.1f} min; run directory {run_dir}: metrics.jsonl, config.yaml, steer_eval.jsonl, "
          f"{plot.name}, export/")
    return 0


def verdict(before: dict, after: dict, key: str = "eval/steer/steers_to_verify") -> str:
    """One line: did training change the steers needed? Only intervals that do not overlap count."""
    (b, b_lo, b_hi), (a, a_lo, a_hi) = ((r[key], r[f"{key}_lo"], r[f"{key}_hi"]) for r in (before, after))
    if a_hi < b_lo:
        return f"verdict: fewer steers after training ({b:.2f} -> {a:.2f}; the 95% intervals do not overlap)"
    if a_lo > b_hi:
        return f"verdict: MORE steers after training ({b:.2f} -> {a:.2f}; the 95% intervals do not overlap)"
    return (f"verdict: no measurable change ({b:.2f} -> {a:.2f}; the 95% intervals overlap): training on these "
            f"steers did not make this model need fewer")


def _with_ci(row: dict, key: str) -> str:
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    return f"{row[key]:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None else "")


def plot_run(rows: list[dict], path: Path) -> Path:
    """Train loss per step; held-out steering metrics and preference accuracies before vs after."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train_rows = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/span/logp_accuracy" in r]
    fig, (ax_loss, ax_steer, ax_eval) = plt.subplots(1, 3, figsize=(14, 4))
    ax_loss.plot([r["step"] for r in train_rows], [r["train/loss"] for r in train_rows])
    ax_loss.set(title="train loss", xlabel="step")
    for ax, keys, labels, title in (
            (ax_steer, [k for k, _ in STEER[:3]], ["steers to verify", "pass rate", "verified ≤ budget"],
             "held-out steering (95% CI)"),
            (ax_eval, ["eval/span/logp_accuracy", "eval/span/reward_accuracy"], ["log-prob acc.", "reward acc."],
             "held-out preference accuracy")):
        for i, (label, r) in enumerate([("before", evals[0]), ("after", evals[-1])]):
            present = [k for k in keys if k in r]
            values = [r[k] for k in present]
            # clipped at 0: a bootstrap percentile interval need not hold the mean (few prompts, rounding)
            errs = [[max(0.0, r[k] - r.get(f"{k}_lo", r[k])) for k in present],
                    [max(0.0, r.get(f"{k}_hi", r[k]) - r[k]) for k in present]]
            ax.bar([j + 0.4 * i for j in range(len(present))], values, width=0.4, label=label, yerr=errs, capsize=3)
        ax.set_xticks([j + 0.2 for j in range(len(keys))], labels[:len(keys)])
        ax.set(title=title)
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
