"""The exported folder loads with plain transformers and computes what the trained policy computes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from localpref.checkpoint import latest_checkpoint
from localpref.config import PeftConfig
from localpref.models import build_model
from localpref.train import CONF_DIR, train


def _train(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", "trainer.export=true", "trainer.lr=1e-2",
                                           "trainer.max_steps=3", f"run_dir={run_dir}", *overrides])
    train(cfg)
    return OmegaConf.to_object(cfg)


def _trained_policy(cfg, run_dir: Path):
    """Rebuild the policy independently of the export: initial model + checkpointed trainables."""
    model, _ = build_model(cfg.model, cfg.peft, seed=cfg.seed)
    weights = load_file(str(latest_checkpoint(run_dir) / "trainable.safetensors"))
    missing = model.load_state_dict(weights, strict=False)
    assert not missing.unexpected_keys
    return model.eval()


IDS = torch.tensor([[1, 520, 3145, 17, 2049, 9], [1, 77, 78, 79, 80, 81]])


@pytest.mark.parametrize("peft", ["none", "lora"])
def test_export_round_trip(peft, tmp_path):
    cfg = _train(tmp_path, f"peft={peft}")
    export = tmp_path / "export"
    assert (export / "model.safetensors").exists() and (export / "tokenizer.json").exists()
    assert not list(export.glob("*.bin")) and not list(export.glob("*.pt"))  # no pickles
    loaded = AutoModelForCausalLM.from_pretrained(export).eval()  # trust_remote_code stays off
    policy = _trained_policy(cfg, tmp_path)
    with torch.no_grad():
        expected = policy(input_ids=IDS).logits
        got = loaded(input_ids=IDS).logits
        initial, _ = build_model(cfg.model, cfg.peft, seed=cfg.seed)
        before = initial.eval()(input_ids=IDS).logits
    # LoRA merged into the weights changes the order of fp32 operations: ~1e-6 relative.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - before).abs().max() > 1e-4  # the export holds the trained model, not the initial one


def test_export_without_merge_writes_a_loadable_adapter(tmp_path):
    from peft import PeftModel

    cfg = _train(tmp_path, "peft=lora", "peft.merge_on_export=false")
    export = tmp_path / "export"
    assert (export / "adapter_model.safetensors").exists()
    base, _ = build_model(cfg.model, PeftConfig(kind="none"), seed=cfg.seed)  # the same initial weights
    adapted = PeftModel.from_pretrained(base, export).eval()
    with torch.no_grad():
        # The same unmerged LoRA forward on the same weights: the same fp32 operations, equal in
        # practice; assert_close's fp32 defaults leave a few ulps (rtol 1.3e-6 is 11, atol 1e-5).
        torch.testing.assert_close(adapted(input_ids=IDS).logits, _trained_policy(cfg, tmp_path)(input_ids=IDS).logits)
