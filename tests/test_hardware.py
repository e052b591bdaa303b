"""trainer.precision=auto and trainer.cpu_allocator=auto: the choice follows the hardware."""

from __future__ import annotations

import pytest
import torch

from localpref import hardware


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names: str) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(names))
    return set_flags


def test_auto_is_bf16_on_a_cpu_with_amx_and_fp32_without(flags):
    cpu = torch.device("cpu")
    flags("avx512f", "amx_tile", "amx_bf16")
    assert hardware.resolve_precision("auto", cpu) == "bf16"
    flags("avx512f", "avx512_bf16")  # bf16 dot products but no tiles: not measured faster, fp32
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    flags("avx2")
    assert hardware.resolve_precision("auto", cpu) == "fp32"
    # an explicit choice is kept whatever the machine
    assert hardware.resolve_precision("bf16", cpu) == "bf16"
    flags("amx_bf16")
    assert hardware.resolve_precision("fp32", cpu) == "fp32"


def test_auto_on_cuda_asks_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.resolve_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.resolve_precision("auto", torch.device("cuda")) == "fp32"


def test_cpu_flags_reads_this_machine():
    flags = hardware.cpu_flags()
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        assert "avx512f" in flags
    assert isinstance(flags, frozenset)


def test_allocator_auto_keeps_glibc_and_bad_values_are_refused():
    assert hardware.resolve_cpu_allocator("auto") == "keep"
    assert hardware.resolve_cpu_allocator("release") == "release"
    with pytest.raises(ValueError, match="cpu_allocator"):
        hardware.resolve_cpu_allocator("jemalloc")
    with pytest.raises(ValueError, match="precision"):
        hardware.resolve_precision("fp16", torch.device("cpu"))


def test_the_run_logs_what_auto_chose(tmp_path, flags):
    import json

    from hydra import compose, initialize_config_dir

    from localpref.train import CONF_DIR, train

    flags()  # no AMX: auto is fp32
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["debug=tiny", f"run_dir={tmp_path}", "trainer.precision=auto",
                                           "trainer.max_steps=1", "trainer.cpu_allocator=release"])
    train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["trainer/precision"] == "fp32"


def test_a_bf16_step_matches_fp32_within_bf16_rounding():
    """Loss and gradients of one localized step under bf16 autocast against fp32, same weights.

    bf16 keeps 8 significant bits (unit roundoff 2^-8 = 3.9e-3); autocast rounds every matmul's
    inputs to it and accumulates in fp32, so each layer adds relative errors of that order and a
    2-layer model's per-token log-probs move by ~1e-2 relative. Hence: pair losses within 3e-2
    relative (+1e-3 absolute), and every gradient tensor pointing the same way (cosine > 0.99) with
    a norm within 5%. Measured here: losses 1.3e-3 relative, cosines >= 0.99997; a wrong cast (a
    mask or position lost, fp16 overflow) is O(1)."""
    import copy

    from localpref.losses import preference_loss
    from localpref.reference import TokenScorer, score_batch
    from tests.test_packing import batch_in, random_steers, tiny

    model = tiny()
    moved = copy.deepcopy(model)  # a policy some way from the reference: margins are not all 0
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.02 * torch.randn_like(p))
    examples = random_steers(256)
    out = {}
    for precision in ("fp32", "bf16"):
        policy = TokenScorer(copy.deepcopy(moved), precision)
        reference = TokenScorer(copy.deepcopy(model).eval(), precision)
        batch = batch_in("pairs", examples)
        with torch.no_grad():
            ref = score_batch(reference, batch, "span")
        pol = score_batch(policy, batch, "span")
        res = preference_loss(*pol, *ref, *batch.masks("span"), beta=0.5)
        res.sum.backward()
        out[precision] = (res.losses.detach(), {n: p.grad for n, p in policy.named_parameters()})
    (l32, g32), (l16, g16) = out["fp32"], out["bf16"]
    assert (l32 - torch.log(torch.tensor(2.0))).abs().max() > 1e-2  # the losses are not the trivial log 2
    torch.testing.assert_close(l16, l32, rtol=3e-2, atol=1e-3)
    for name, a in g32.items():
        b = g16[name]
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        assert cos > 0.99, (name, cos)
        assert abs(b.norm().item() / a.norm().item() - 1) < 0.05, name
