"""Several processes (torchrun): who is who, how the policy is wrapped, and the collectives the loop needs.

DDP and FSDP2 both run on CPU (gloo) and GPU (NCCL). Under FSDP2 (``fully_shard``) every decoder
layer is a unit and the root holds the rest (embedding, final norm, lm_head); its hooks gather a
unit's shards around that unit's forward, so every model call goes through ``TokenScorer.__call__``
(see ``localpref.reference``), or, for generation, runs inside ``gathered_root``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist

from localpref.reference import TokenScorer


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")


def init_processes(device: str) -> Processes:
    """One process, or one of several launched by torchrun (RANK/WORLD_SIZE/LOCAL_RANK set)."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if "RANK" not in os.environ:
        return Processes(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        torch.cuda.set_device(local)
    return Processes(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


def wrap_for_processes(scorer: TokenScorer, procs: Processes, strategy: str) -> torch.nn.Module:
    """DDP, or FSDP2 (shards every decoder layer, then the rest at the root), when there are
    several processes; both run on CPU (gloo) and GPU (NCCL)."""
    if procs.world == 1:
        return scorer
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(scorer, device_ids=[procs.device.index] if procs.device.type == "cuda" else None)
    # FSDP2's gradient reduce-scatter also averages over processes, so the loop's world-size
    # scaling holds for it too. fully_shard changes `scorer` in place (and returns it): the
    # adapter_disabled reference, which shares it, goes through the same root.
    from torch.distributed.fsdp import fully_shard

    for module in scorer.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    return fully_shard(scorer)


@contextmanager
def gathered_root(policy: torch.nn.Module):
    """The FSDP2 root's own weights (embedding, norm, lm_head) gathered for code that calls the
    model without the root's forward (generation); decoder layers gather in their own hooks."""
    policy.unshard()
    try:
        yield
    finally:
        policy.reshard()


def gather_full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Unsharded CPU state dict of an FSDP2 model (a collective: every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def no_grad_sync(policy: torch.nn.Module, sync: bool):
    """Skip the gradient reduction on all but the last micro-batch of a step (DDP / FSDP2)."""
    if hasattr(policy, "set_requires_gradient_sync"):  # FSDP2: a flag, set for every micro-batch
        policy.set_requires_gradient_sync(sync)
        return nullcontext()
    if not sync and hasattr(policy, "no_sync"):
        return policy.no_sync()
    return nullcontext()


def all_reduce_sum(x: torch.Tensor, procs: Processes) -> torch.Tensor:
    if procs.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
