"""Steers: schema, loading, tokenization with divergence spans, importers.

Public names are re-exported lazily so that ``import localpref.data`` stays cheap (no
transformers import) and each submodule can be read on its own:

    Steer, SteerError, SkipCounter          schema.py, errors.py
    load_steers, SteerList, write_steers    load.py      JSONL / HF datasets <-> validated steers
    tokenize_steer, tokenize_steers,        tokenize.py  render, tokenize, find the span
    TokenizedSteer
    example_steers                          examples.py  built-in deterministic steers
    split_by_record                         split.py     held-out split by source record

Importers (not re-exported): ``importers.py`` (edited outputs, TRL pairs, DeFacto) and
``frontends/`` (text-generation-webui, SillyTavern, Loom, mikupad save files; ``import_tool``),
``collected.py`` (trajectories of ``localpref steer collect`` at an annotation budget).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Steer": "schema",
    "SteerError": "errors",
    "SkipCounter": "errors",
    "load_steers": "load",
    "SteerList": "load",
    "write_steers": "load",
    "tokenize_steer": "tokenize",
    "tokenize_steers": "tokenize",
    "TokenizedSteer": "tokenize",
    "example_steers": "examples",
    "split_by_record": "split",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'localpref.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"localpref.data.{_EXPORTS[name]}"), name)
