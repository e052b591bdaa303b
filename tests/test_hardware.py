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
