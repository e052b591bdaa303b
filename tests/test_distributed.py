"""2 CPU processes (torchrun, DDP over gloo) give the loss and gradient of 1 process on the same global batch.

One SGD step with lr=1 and no clipping moves every weight by exactly minus its gradient, so equal
weights after the step mean equal gradients. The global batch is 4 pairs in all runs: 1 process x
4 pairs, 2 processes x 2 pairs, and 2 processes x 2 micro-batches of 1 pair (no_sync + accumulation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEP = ["debug=tiny", "trainer.optimizer=sgd", "trainer.lr=1.0", "trainer.schedule=constant",
        "trainer.max_grad_norm=null", "trainer.max_steps=1"]


def _run(run_dir: Path, processes: int, *overrides: str) -> tuple[float, dict[str, torch.Tensor]]:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "localpref.train", *STEP, *overrides, f"run_dir={run_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    loss = next(r["train/loss"] for r in rows if "train/loss" in r)
    weights = load_file(str(run_dir / "checkpoints" / "step-00000001" / "trainable.safetensors"))
    return loss, weights


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["localized", "sft"])
def test_two_processes_equal_one(loss, tmp_path):
    # SFT divides by the token count, which differs between the two processes' shares: a
    # per-process mean (what DDP's averaging alone would give) fails this test.
    one_loss, one = _run(tmp_path / "one", 1, f"loss={loss}", "trainer.micro_batch_size=4")
    for name, overrides in [("ddp", ["trainer.micro_batch_size=2"]),
                            ("ddp_accum", ["trainer.micro_batch_size=1", "trainer.grad_accum=2"])]:
        two_loss, two = _run(tmp_path / name, 2, f"loss={loss}", *overrides)
        assert two_loss == pytest.approx(one_loss, rel=1e-6), name
        assert one.keys() == two.keys()
        changed = 0
        for k in one:
            # Gradients summed in a different order (per process, then all-reduced): fp32 ulps.
            torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
            changed += int(not torch.equal(one[k], _initial(k)))
        assert changed > 0  # the step did move the weights


_INITIAL: dict[str, torch.Tensor] = {}


def _initial(name: str) -> torch.Tensor:
    """The tiny model's initial weights (debug=tiny, seed 0), to check that the step moved them."""
    if not _INITIAL:
        from hydra import compose, initialize_config_dir
        from omegaconf import OmegaConf

        from localpref.models import build_model
        from localpref.train import CONF_DIR

        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = OmegaConf.to_object(compose("config", overrides=["debug=tiny"]))
        model, _ = build_model(cfg.model, cfg.peft, seed=cfg.seed)
        _INITIAL.update({k: v.detach().clone() for k, v in model.named_parameters()})
    return _INITIAL[name]


@pytest.mark.gpu
def test_fsdp_runs_on_gpus(tmp_path):
    # Needs >= 2 GPUs; skipped without CUDA (the CPU suite cannot exercise FSDP2).
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    from transformers import AutoModelForCausalLM

    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "localpref.train", "debug=tiny", "trainer.device=cuda", "trainer.strategy=fsdp",
                           "trainer.checkpoint_every=0", "trainer.export=true", f"run_dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    AutoModelForCausalLM.from_pretrained(tmp_path / "export")
