"""2 CPU processes (torchrun over gloo; DDP, and FSDP2) give the loss and gradient of 1 process on the same global batch.

One SGD step with lr=1 and no clipping moves every weight by exactly minus its gradient, so equal
weights after the step mean equal gradients. The global batch is 4 pairs in all runs: 1 process x
4 pairs, 2 processes x 2 pairs, and 2 processes x 2 micro-batches of 1 pair (no_sync + accumulation),
with DDP and (for the localized loss) with FSDP2, whose weights come from a sharded checkpoint.
A stopped FSDP run resumes from its sharded checkpoint to the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from localpref.checkpoint import checkpoint_weights

REPO = Path(__file__).resolve().parents[1]
# max_grad_norm=1e9 never clips but makes every run log the global gradient norm.
STEP = ["debug=tiny", "trainer.optimizer=sgd", "trainer.lr=1.0", "trainer.schedule=constant",
        "trainer.max_grad_norm=1e9", "trainer.max_steps=1"]


def _launch(run_dir: Path, processes: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
                if processes > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "localpref.train", *args, f"run_dir={run_dir}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def _run(run_dir: Path, processes: int, *overrides: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the first train row, the trainable weights after step 1) of a one-step run."""
    _launch(run_dir, processes, *STEP, *overrides)
    return _train_rows(run_dir)[0], checkpoint_weights(run_dir / "checkpoints" / "step-00000001")


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["localized", "sft"])
def test_two_processes_equal_one(loss, tmp_path):
    # SFT divides by the token count, which differs between the two processes' shares: a
    # per-process mean (what DDP's averaging alone would give) fails this test.
    one_row, one = _run(tmp_path / "one", 1, f"loss={loss}", "trainer.micro_batch_size=4")
    variants = [("ddp", ["trainer.micro_batch_size=2"]),
                ("ddp_accum", ["trainer.micro_batch_size=1", "trainer.grad_accum=2"])]
    if loss == "localized":  # FSDP2 on CPU/gloo: sharded weights, reduce-scatter, sharded checkpoint
        variants.append(("fsdp_accum", ["trainer.micro_batch_size=1", "trainer.grad_accum=2",
                                        "trainer.strategy=fsdp"]))
    for name, overrides in variants:
        two_row, two = _run(tmp_path / name, 2, f"loss={loss}", *overrides)
        # fp32 throughout. The loss is a sum of per-token (SFT) or per-pair terms of one sign,
        # regrouped by process and micro-batch: a few ulps of the total (rel 1e-6 is 8 ulps). The
        # gradient norm inherits the relative error of its largest entries, each a sum over tokens
        # (regrouped, and all-reduced in fp32 by gloo) with cancellation: eps32 times its condition
        # number sum|terms| / |sum|. rel 1e-5 allows a condition of ~80 (measured: 1.1e-6).
        assert two_row["train/loss"] == pytest.approx(one_row["train/loss"], rel=1e-6), name
        assert two_row["train/grad_norm"] == pytest.approx(one_row["train/grad_norm"], rel=1e-5), name
        assert one.keys() == two.keys()
        changed = 0
        for k in one:
            # Gradients summed in a different order (per process, then all-reduced): fp32 ulps.
            torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
            changed += int(not torch.equal(one[k], _initial(k)))
        assert changed > 0  # the step did move the weights


GENERATE = """
import torch
def score(model, tokenizer, steers, cfg):
    ids = tokenizer("Count: one two", return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    return {"new_tokens": out.shape[1] - ids.shape[1]}
"""


@pytest.mark.slow
def test_fsdp_run_resumes_from_its_sharded_checkpoint(tmp_path, monkeypatch):
    # AdamW (sharded moments), warmup + cosine (scheduler state), 16 pairs at 4 per step (the data
    # position), one checkpoint per step. A second run directory holding only the step-1 checkpoint
    # of the first run must resume there and reach bit-exactly the same step-2 weights and losses.
    # Both also generate (the root's weights gathered outside its forward) and export (gathered).
    (tmp_path / "gen_hook.py").write_text(GENERATE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    overrides = ["debug=tiny", "trainer.strategy=fsdp", "trainer.max_steps=2", "trainer.checkpoint_every=1",
                 "trainer.warmup_steps=1", "trainer.lr=1e-2", "generation_eval=gen_hook:score",
                 "trainer.export=true"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _launch(whole, 2, *overrides)
    assert (whole / "checkpoints" / "step-00000001" / "sharded").is_dir()  # written by both processes
    shutil.copytree(whole / "checkpoints" / "step-00000001", resumed / "checkpoints" / "step-00000001")
    (resumed / "checkpoints" / "latest").write_text("step-00000001")
    proc = _launch(resumed, 2, *overrides)
    assert "resumed from" in proc.stdout and "step 1" in proc.stdout
    a, b = (checkpoint_weights(d / "checkpoints" / "step-00000002") for d in (whole, resumed))
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses = lambda d: [(r["step"], r["train/loss"]) for r in _train_rows(d)]  # noqa: E731
    assert losses(resumed) == losses(whole)[1:] and len(losses(whole)) == 2
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval/generation/new_tokens"] for r in rows if "eval/generation/new_tokens" in r] == [3, 3]
    exported = load_file(str(whole / "export" / "model.safetensors"))
    for name in a:
        assert torch.equal(exported[name], a[name]), name


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
