"""How long a run trains and on what: trainer.epochs and warmup_ratio set the steps from the data,
fit_batch_to_data takes a small budget's pairs in one step, and `localpref train` returns the
configured objective (tune.*) that a Hydra sweeper optimizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from localpref.config import TuneConfig
from localpref.train import CONF_DIR, train, tune_objective


def run(run_dir: Path, *overrides: str) -> tuple[dict, list[dict]]:
    """Train with debug=tiny (16 example steers) plus overrides: (final metrics, metrics rows)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", f"run_dir={run_dir}", *overrides])
    after = train(cfg)
    return after, [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_epochs_set_the_steps_from_the_pairs_and_warmup_a_share_of_them(tmp_path):
    _, rows = run(tmp_path, "trainer.epochs=1.5", "trainer.micro_batch_size=4", "trainer.warmup_ratio=0.5",
                  "trainer.lr=1e-3")
    stats = next(r for r in rows if "data/train_pairs" in r)
    pairs = stats["data/train_pairs"]
    steps = math.ceil(1.5 * pairs / 4)  # 1.5 passes over the pairs, 4 a step: 6 for the 16 example steers
    warmup = int(0.5 * steps)
    assert (pairs, steps, warmup) == (16, 6, 3)
    assert stats["trainer/max_steps"] == steps and stats["trainer/warmup_steps"] == warmup
    assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, steps + 1))
    lrs = [r["train/lr"] for r in rows if "train/lr" in r]
    assert lrs[:warmup + 1] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 1e-3])  # linear warmup, then the peak
    assert max(r.get("train/epoch", 0) for r in rows) == 1  # the second pass began


def test_a_budget_smaller_than_a_batch_trains_on_all_of_it_only_when_asked(tmp_path):
    with pytest.raises(ValueError, match="fewer than one global batch"):
        run(tmp_path / "a", "data.n_train=3", "trainer.micro_batch_size=4")
    _, rows = run(tmp_path / "b", "data.n_train=3", "trainer.micro_batch_size=4", "trainer.fit_batch_to_data=true")
    stats = next(r for r in rows if "data/train_pairs" in r)
    assert stats["data/train_pairs"] == 3 and stats["trainer/micro_batch_size"] == 3


def test_the_returned_objective_is_the_metric_plus_the_weighted_tie_breaker(tmp_path):
    metrics = {"eval/steer/steers_to_verify": 0.25, "eval/drift/kl": 0.5}
    assert tune_objective(metrics, TuneConfig()) is None  # a plain run returns nothing
    assert tune_objective(metrics, TuneConfig("eval/steer/steers_to_verify", "eval/drift/kl", 0.001)) == 0.2505
    with pytest.raises(KeyError, match="logged no 'eval/span/nope'"):
        tune_objective(metrics, TuneConfig("eval/span/nope"))
    # a run's own final metrics carry what a sweep would read
    after, _ = run(tmp_path, "tune.metric=eval/span/nll", "tune.tie_metric=eval/drift/kl", "tune.tie_weight=0.5")
    assert tune_objective(after, TuneConfig("eval/span/nll", "eval/drift/kl", 0.5)) == pytest.approx(
        after["eval/span/nll"] + 0.5 * after["eval/drift/kl"])
