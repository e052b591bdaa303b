"""Kill a run with SIGKILL between checkpoints, resume it, and get exactly the uninterrupted weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from localpref.checkpoint import TrainState, latest_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]

# AdamW with warmup + cosine (optimizer and scheduler state matter), 16 pairs at 2 per step
# (the run crosses an epoch boundary at step 8, so the data position matters), checkpoints at
# steps 4 and 8; the killed run dies right after logging step 6.
OVERRIDES = ["debug=tiny", "trainer.max_steps=10", "trainer.checkpoint_every=4", "trainer.warmup_steps=2",
             "trainer.lr=1e-2", "trainer.micro_batch_size=2", "trainer.keep_checkpoints=5"]

# The child runs the real CLI; the only addition is a SIGKILL of itself after step KILL_AT's
# metrics are written, i.e. after that optimizer step and before the next checkpoint.
CHILD = textwrap.dedent("""
    import os, signal, sys
    import localpref.log as log
    kill_at = int(os.environ.get("KILL_AT", "0"))
    log_metrics = log.RunLogger.log_metrics
    def log_then_maybe_die(self, step, metrics):
        log_metrics(self, step, metrics)
        if step == kill_at and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGKILL)
    log.RunLogger.log_metrics = log_then_maybe_die
    from localpref.cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
""")


def _train(run_dir: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "KILL_AT": str(kill_at)}
    return subprocess.run([sys.executable, "-c", CHILD, *OVERRIDES, f"run_dir={run_dir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = latest_checkpoint(run_dir)
    assert path is not None and path.name == "step-00000010"
    return load_file(str(path / "trainable.safetensors"))


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = _train(whole)
    assert proc.returncode == 0, proc.stderr[-3000:]

    proc = _train(killed, kill_at=6)
    assert proc.returncode == -9, proc.stderr[-3000:]  # really killed, not a clean exit
    assert latest_checkpoint(killed).name == "step-00000004"
    assert [s for s, _ in _losses(killed)] == [1, 2, 3, 4, 5, 6]

    proc = _train(killed)  # same command: resumes from step 4
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step 4" in proc.stdout

    a, b = _weights(whole), _weights(killed)
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name  # bit-exact, not merely close
    # The resumed log replaces the killed run's steps 5-6 and matches the uninterrupted one.
    assert _losses(killed) == _losses(whole)
    assert [s for s, _ in _losses(whole)] == list(range(1, 11))


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    save_checkpoint(tmp_path, model, opt, sched, TrainState(step=3, epoch=0, index=6))
    # A crash while writing step 5 leaves its temporary folder; `latest` still names step 3.
    (tmp_path / "checkpoints" / ".tmp-step-00000005").mkdir()
    (tmp_path / "checkpoints" / ".tmp-step-00000005" / "trainable.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path).name == "step-00000003"
    # Saving step 5 for real replaces the leftover and moves `latest`.
    save_checkpoint(tmp_path, model, opt, sched, TrainState(step=5, epoch=0, index=10))
    assert latest_checkpoint(tmp_path).name == "step-00000005"
    assert not (tmp_path / "checkpoints" / ".tmp-step-00000005").exists()
