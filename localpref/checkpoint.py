"""Atomic checkpoints and HF export.

A checkpoint is a folder ``<run_dir>/checkpoints/step-<N>/`` holding

    trainable.safetensors   the trainable parameters only (frozen weights are rebuilt from the
                            model source, which is deterministic: a seeded tiny init or a file)
    optimizer.pt            optimizer state (tensors and numbers: loads with weights_only=True)
    scheduler.pt            LR scheduler state
    rng.pt                  torch CPU (and CUDA) RNG states
    state.json              step, data position (epoch, index), Python's RNG state

Under FSDP (``sharded=True``) ``trainable.safetensors`` and ``optimizer.pt`` are replaced by
``sharded/``, a ``torch.distributed.checkpoint`` folder to which every process writes its own
shards of the trainable parameters and of the optimizer state; it is read back into the same
sharding (``checkpoint_weights`` reads it whole, without processes).

It is written to ``.tmp-step-<N>`` and renamed into place, then ``latest`` (a text file naming the
folder) is replaced atomically with ``os.replace``. A run killed at any moment therefore leaves
either the previous checkpoint or the new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


@dataclass
class TrainState:
    """Where the run is: optimizer steps done and the next pair in the data order."""

    step: int = 0  # optimizer steps completed
    epoch: int = 0  # passes over the training pairs started
    index: int = 0  # position in this epoch's permutation of the next global batch


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """The trainable parameters' and the optimizer's sharded (DTensor) state dicts, by FQN."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return {"model": {n: t for n, t in model_state.items() if n in trainable}, "optimizer": optim_state}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, state: TrainState, *, keep: int = 2, sharded: bool = False) -> Path:
    """Write a checkpoint of ``state.step`` atomically; delete all but the newest ``keep``.

    Called by rank 0 only, or with ``sharded=True`` (FSDP) by every process: each writes its
    shards, rank 0 the rest, and rank 0 renames the folder into place once all shards are written.
    """
    import torch.distributed as dist

    rank = dist.get_rank() if sharded else 0
    root = Path(run_dir) / "checkpoints"
    name = f"step-{state.step:08d}"
    final, tmp = root / name, root / f".tmp-{name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if sharded:
        import torch.distributed.checkpoint as dcp

        dist.barrier()  # the folder exists before any process writes into it
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp / "sharded")  # a collective
        if rank != 0:
            return final
    else:
        save_file(_trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    py_state = random.getstate()
    (tmp / "state.json").write_text(json.dumps({**asdict(state), "python_rng": [py_state[0], list(py_state[1]),
                                                                                 py_state[2]]}))
    for f in tmp.rglob("*"):  # data on disk before the rename makes it visible
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    latest_tmp = root / ".latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The folder named by ``checkpoints/latest``, or None if the run has no checkpoint."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").exists():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def _load_weights_and_optimizer(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        raise ValueError(f"{path}: trainable parameters differ from the model's "
                         f"(missing {sorted(expected - set(weights))[:3]}, unexpected {sorted(set(weights) - expected)[:3]})")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


def _load_sharded(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    state = _sharded_state(model, optimizer)  # the layout to read into: this process's shards
    dcp.load(state, checkpoint_id=path / "sharded")  # in place; a collective
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))  # strict=False: frozen weights are not stored


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, *, sharded: bool = False) -> TrainState:
    """Restore weights, optimizer, scheduler and RNG states in place; return the data position.

    ``sharded`` (FSDP: every process calls this) must match how the checkpoint was written.
    """
    path = Path(path)
    if sharded != (path / "sharded").is_dir():
        written, now = ("FSDP", "without") if (path / "sharded").is_dir() else ("without FSDP", "with")
        raise ValueError(f"{path} was written {written} and cannot be resumed {now} it: "
                         f"resume with the trainer.strategy (and process count) that wrote it")
    if sharded:
        _load_sharded(path, model, optimizer)
    else:
        _load_weights_and_optimizer(path, model, optimizer)
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    raw = json.loads((path / "state.json").read_text())
    version, internal, gauss = raw.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return TrainState(**raw)


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    """The trainable weights stored in a checkpoint folder, as full CPU tensors by name (a
    sharded one is read whole, in this process alone)."""
    path = Path(path)
    if not (path / "sharded").is_dir():
        return load_file(str(path / "trainable.safetensors"))
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path / "sharded", Path(tmp) / "full.pt")
        return torch.load(Path(tmp) / "full.pt", weights_only=True)["model"]


def export_pretrained(model: torch.nn.Module, tokenizer, out_dir: Path, *, merge_lora: bool = True,
                      state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """An HF ``save_pretrained`` folder (safetensors) that ``AutoModelForCausalLM.from_pretrained`` loads.

    With LoRA, ``merge_lora=True`` folds the adapters into the base weights (a plain model
    folder); ``False`` writes the adapter folder only (load it with ``peft``).
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from peft import PeftModel
    except ImportError:  # peft is a dependency; this only guards odd installs
        PeftModel = ()  # type: ignore[assignment]
    if state_dict is not None and isinstance(model, PeftModel):
        raise NotImplementedError("export of a sharded (FSDP) LoRA model is not supported; use DDP for LoRA")
    if isinstance(model, PeftModel) and merge_lora:
        import copy

        # Merge into a copy: the caller's model keeps its adapters (the run may continue).
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    return out_dir
