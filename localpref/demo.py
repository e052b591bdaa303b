"""The main job: ``localpref demo`` (run by ``bash scripts/run.sh demo``).

Trains the localized loss on the built-in example steers with SmolLM2-135M-Instruct + LoRA on CPU
(``conf/experiment/demo.yaml``), prints held-out preference accuracy before and after, and writes
``metrics.jsonl``, ``config.yaml``, ``demo.png`` (loss, reward accuracy, before/after bars) and an
exported model folder into the run directory (``outputs/demo/<time>`` unless ``run_dir=`` is given).
"""

from __future__ import annotations

import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from localpref.log import read_metrics
from localpref.train import CONF_DIR, train

SHOWN = [("eval/span/logp_accuracy", "span log-prob accuracy: log p(corrected) > log p(rejected)"),
         ("eval/span/reward_accuracy", "reward accuracy: policy margin > reference's (tie: 1/2)"),
         ("eval/span/nll", "NLL per token of the corrected span"),
         ("eval/drift/nll", "NLL per token of whole corrected completions (drift)"),
         ("eval/drift/kl", "KL(policy || reference) per completion token (drift)")]


def run_demo(overrides: list[str]) -> int:
    """Run the demo with extra Hydra overrides; returns a process exit code."""
    default_dir = Path("outputs") / "demo" / time.strftime("%Y-%m-%d_%H-%M-%S")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo", f"run_dir={default_dir}", *overrides])
    run_dir = Path(cfg.run_dir)
    start = time.time()
    train(cfg)
    minutes = (time.time() - start) / 60
    rows = read_metrics(run_dir)
    evals = [r for r in rows if "eval/span/logp_accuracy" in r]
    before, after = evals[0], evals[-1]
    n_eval = next((r["data/eval_pairs"] for r in rows if "data/eval_pairs" in r), "?")
    print(f"\nheld-out preference metrics on {n_eval} steers, before -> after training:")
    for key, text in SHOWN:
        if key in after:
            print(f"  {text:<62} {before[key]:8.4f} -> {after[key]:8.4f}")
    plot = plot_run(rows, run_dir / "demo.png")
    print(f"\n{minutes:.1f} min; run directory {run_dir}: metrics.jsonl, config.yaml, {plot.name}, export/")
    return 0


def plot_run(rows: list[dict], path: Path) -> Path:
    """Train loss and reward accuracy per step, and held-out accuracies before vs after."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train_rows = [r for r in rows if "train/loss" in r]
    evals = [r for r in rows if "eval/span/logp_accuracy" in r]
    fig, (ax_loss, ax_acc, ax_eval) = plt.subplots(1, 3, figsize=(14, 4))
    steps = [r["step"] for r in train_rows]
    ax_loss.plot(steps, [r["train/loss"] for r in train_rows])
    ax_loss.set(title="train loss", xlabel="step")
    if train_rows and "train/rewards/accuracies" in train_rows[0]:
        ax_acc.plot(steps, [r["train/rewards/accuracies"] for r in train_rows], label="reward accuracy")
        ax_acc.plot(steps, [r["train/rewards/margins"] for r in train_rows], label="reward margin")
        ax_acc.legend()
    ax_acc.set(title="train rewards (per step)", xlabel="step")
    keys = ["eval/span/logp_accuracy", "eval/span/reward_accuracy"]
    for i, (label, r) in enumerate([("before", evals[0]), ("after", evals[-1])]):
        ax_eval.bar([k + 0.4 * i for k in range(len(keys))], [r[k] for k in keys], width=0.4, label=label)
    ax_eval.set_xticks([k + 0.2 for k in range(len(keys))], ["log-prob acc.", "reward acc."])
    ax_eval.set(title="held-out preference accuracy", ylim=(0, 1))
    ax_eval.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
