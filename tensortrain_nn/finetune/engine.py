"""The engine under the loop: accelerate's state, the device, and what a run measures of it.

Every use of accelerate's private state is here, each in one small documented helper.

Example::

    acc = make_accelerator(config)          # Accelerator for the config's device and precision
    peak_memory_mb(acc.device)
"""

from __future__ import annotations

import resource
import sys
from typing import Any

import torch

from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.tasks import FinetuneError


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def check_device(device: str) -> None:
    """Refuse a CUDA device this torch cannot see (``auto`` and ``cpu`` always work).

    Raises:
        FinetuneError: ``--device cuda`` (or ``cuda:N``) without that CUDA device.
    """
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        seen = f"{count} CUDA devices" if count else "no CUDA device (a CPU build or no GPU)"
        raise FinetuneError(f"--device {device}: this torch sees {seen}; use --device cpu or auto")


def on_cpu(device: str) -> bool:
    """Whether ``device`` means the CPU (``auto`` on a machine without CUDA does).

    accelerate needs to be told: without ``cpu=True`` it runs a torchrun job on a CPU-only
    machine as independent single processes.
    """
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def make_accelerator(config: FinetuneConfig, find_unused: bool = False) -> Any:
    """An ``Accelerator`` for ``config`` (device, bf16, DDP options); resets a previous run's."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs

    check_device(config.device)
    if ":" in config.device:
        torch.cuda.set_device(torch.device(config.device))
    reset_accelerate(partial=False)  # mixed precision may differ per run
    return Accelerator(
        cpu=on_cpu(config.device),
        mixed_precision="bf16" if config.bf16 else "no",
        dataloader_config=DataLoaderConfiguration(split_batches=True),  # scheduler: once a step
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
    )


def reset_accelerate(*, partial: bool) -> None:
    """Forget accelerate's process-wide state (``partial``: the process group's too).

    accelerate keeps one ``AcceleratorState`` per process and offers no public way to reset it;
    a job that runs several times in one process (``compare``, tests) must, as accelerate's own
    tests do, through this one private call.
    """
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=partial)


def forget_prepared(acc: Any, *objects: Any) -> None:
    """Drop prepared optimizers / schedulers from ``acc`` (not its model, unlike ``free_memory``).

    accelerate's public ``free_memory`` drops every prepared object, the model included; after a
    budget rounding only the stale optimizer and scheduler must go, so that the new ones alone
    are stepped, clipped and saved. This is the one place that touches accelerate's lists.
    """
    for registry in (acc._optimizers, acc._schedulers):
        for stale in objects:
            if stale in registry:
                registry.remove(stale)
