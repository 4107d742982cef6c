"""Data-parallel fine-tuning on ``torch.distributed``: process group, data shards, DDP wrapping.

``torchrun --nproc_per_node N -m tensortrain_nn.cli finetune ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_from_env` reads them and joins the
group (gloo on CPU, nccl on CUDA). ``--batch-size`` stays the *global* batch: each optimizer step,
the global batch drawn from the shared permutation is split across the ranks (rank ``r`` takes
examples ``r, r + N, ...``), and each rank scales its loss so that DDP's gradient average equals
the gradient of the mean loss over the whole global batch. A run on N processes therefore follows
the same trajectory as a one-process run with the same batch size (to round-off).

Only trainable tensors are synchronised: DDP all-reduces the gradients of parameters with
``requires_grad`` (its buckets skip frozen ones), so the bytes per step are the trainable bytes.

Example:
    >>> info = init_from_env(torch.device("cpu"))
    >>> ddp_model, sync_bytes = wrap(model, info)
    >>> shutdown(info)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tensortrain_nn.finetune.errors import FinetuneError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: Global rank (0 is the main process).
        world_size: Number of processes (1: not distributed).
        local_rank: Rank on this machine (picks the CUDA device).
        owns_group: Whether :func:`init_from_env` created the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that evaluates, saves and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1


SINGLE = DistInfo()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> DistInfo:
    """Join the process group that torchrun's environment describes, or run alone.

    A group that already exists (the caller initialised it) is used as is. Otherwise, with
    ``WORLD_SIZE > 1``, the group is initialised from ``env://`` with gloo on CPU or nccl on CUDA.

    Args:
        device: The training device (chooses the backend).

    Returns:
        This process's :class:`DistInfo`; :data:`SINGLE` when not distributed.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank(), owns_group=False)
    if env_world_size() <= 1:
        return SINGLE
    if not dist.is_available():
        raise FinetuneError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank(), owns_group=True)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """On CUDA, each process takes ``cuda:<local_rank>``; CPU stays CPU."""
    if info.enabled and device.type == "cuda" and device.index is None:
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return device


def shutdown(info: DistInfo, *, clean: bool = True) -> None:
    """Barrier, then destroy the group (gloo can abort at teardown without the barrier).

    Args:
        info: What :func:`init_from_env` returned; a group it did not create is left alone.
        clean: False after an error: skip the barrier (the other ranks may never reach it).
    """
    if info.owns_group and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """A barrier across the job (nothing when not distributed)."""
    if info.enabled:
        dist.barrier()


def shard(global_idx: Sequence[int], info: DistInfo) -> tuple[list[int], float]:
    """This rank's part of one global batch, and the factor its mean loss is scaled by.

    Rank ``r`` takes ``global_idx[r::world_size]``. The factor ``n_r * world_size / n`` makes DDP's
    average of the ranks' gradients equal the gradient of the mean loss over all ``n`` examples,
    also for a last, ragged batch. A rank left without examples gets the first one at factor 0,
    so that it still runs forward and backward (DDP needs every rank in every all-reduce).

    Example:
        >>> shard([5, 1, 7, 2, 0], DistInfo(rank=1, world_size=2))
        ([1, 2], 0.8)
    """
    if not info.enabled:
        return list(global_idx), 1.0
    mine = list(global_idx[info.rank :: info.world_size])
    if not mine:
        return list(global_idx[:1]), 0.0
    return mine, len(mine) * info.world_size / len(global_idx)


def trainable_bytes(model: nn.Module) -> int:
    """Bytes of all trainable tensors: what DDP all-reduces per step (one gradient each)."""
    seen: set[int] = set()
    total = 0
    for param in model.parameters():
        if param.requires_grad and id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * param.element_size()
    return total


def inactive_adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters of tensortrain adapters that are not the active one.

    They take no part in the forward pass: under DDP they make the second step fail (or, with
    ``find_unused_parameters``, cost a graph traversal per step). A model that was never patched
    has none.
    """
    from tensortrain_nn.surgery.state import adapter_of, get_state

    state = get_state(model, required=False)
    if state is None:
        return []
    return [
        (name, p)
        for name, p in model.named_parameters()
        if p.requires_grad and adapter_of(name) not in (None, state.active)
    ]


@contextmanager
def frozen_inactive_adapters(model: nn.Module) -> Iterator[list[str]]:
    """Freeze inactive adapters' trainable parameters for the duration; restore them after.

    A warning names them when there are any. Yields their names.
    """
    found = inactive_adapter_parameters(model)
    if found:
        names = [n for n, _ in found]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        warnings.warn(
            f"{len(names)} trainable parameters belong to inactive adapters and take no part in "
            f"the forward pass ({shown}); they are frozen while training",
            RuntimeWarning,
            stacklevel=3,
        )
    for _, param in found:
        param.requires_grad_(False)
    try:
        yield [n for n, _ in found]
    finally:
        for _, param in found:
            param.requires_grad_(True)


def unused_parameters(
    model: nn.Module, run_forward: Callable[[nn.Module], torch.Tensor]
) -> list[str]:
    """Names of trainable parameters that get no gradient from one probe forward/backward.

    The probe runs with the RNG states forked (so it changes no later random draw) and its
    gradients are cleared afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        run_forward(model).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


def wrap(model: nn.Module, info: DistInfo, *, find_unused: bool = False) -> nn.Module:
    """Wrap ``model`` in DDP (a no-op when not distributed); call after patching and ``.to()``.

    Args:
        model: The model, its trainable parameters already marked with ``requires_grad``.
        info: This process's place in the job.
        find_unused: Let DDP look for parameters unused in a forward pass (slower; for models
            with conditional branches).
    """
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids: Any = None
    param = next(model.parameters())
    if param.device.type == "cuda":
        device_ids = [param.device]
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused)


def all_sum(value: float, info: DistInfo) -> float:
    """The sum of ``value`` over all ranks."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item())


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small things like metrics)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
