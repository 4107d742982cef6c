"""Resumable training checkpoints: atomic, checksummed, newest valid one wins.

A checkpoint is one file ``<run>/checkpoints/step-00000012.ckpt``: a header line
``TTCKPT1 <sha256 hex> <payload bytes>`` and a newline, then a ``torch.save`` payload with the
trainable tensors, the optimizer and scheduler states, the RNG states of every rank (torch, CUDA,
``random``, numpy), the data position (epoch, step within the epoch, the epoch's permutation and
the generator state after drawing it), the history so far and a digest of the config. It is
written to a temporary file in the same folder, flushed and fsynced, then renamed over its final
name (``os.replace``), so a reader sees a whole file or none. A file whose header, length or
checksum is wrong is skipped with a warning; ``torch.load(weights_only=True)`` never runs on
unchecked bytes.

Example:
    >>> path = save_checkpoint(folder, step=12, payload=state)
    >>> found = latest_checkpoint(folder)       # (path, payload) of the newest valid one, or None
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.finetune.distributed import DistInfo, gather
from tensortrain_nn.finetune.errors import FinetuneError

MAGIC = b"TTCKPT1"
CHECKPOINT_DIR = "checkpoints"
#: How many checkpoints stay on disk (the newest ones); older ones are deleted after a save.
KEEP = 2
_NAME = re.compile(r"^step-(\d{8})\.ckpt$")
#: Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = ("progress", "resume", "checkpoint_every", "device", "output_dir", "save")


class CheckpointError(FinetuneError):
    """A checkpoint file is unreadable: bad header, wrong length or checksum, bad payload."""


def checkpoint_dir(run_dir: Path) -> Path:
    """The folder of a run's checkpoints."""
    return run_dir / CHECKPOINT_DIR


def config_digest(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that a resumed run must share with the run that wrote the checkpoint."""
    return {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, ``random``, numpy) as plain tensors/lists."""
    name, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the trainable parameters, by name."""
    return {
        name: param.detach().cpu().clone()
        for name, param in model.named_parameters()
        if param.requires_grad
    }


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into ``model``; names and shapes must match exactly.

    Raises:
        CheckpointError: A name is missing on either side, or a shape differs.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(tensors):
        extra = sorted(set(tensors) - set(params))[:3]
        missing = sorted(set(params) - set(tensors))[:3]
        raise CheckpointError(
            f"checkpoint tensors do not fit the model: not in the model {extra}, "
            f"not in the checkpoint {missing}"
        )
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != tensors[name].shape:
                raise CheckpointError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                    f"the model's has {tuple(param.shape)}"
                )
            param.copy_(tensors[name])


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep: int = KEEP) -> Path:
    """Write ``payload`` atomically as ``folder/step-<step>.ckpt``; keep the ``keep`` newest.

    Args:
        folder: The checkpoint folder (created when missing).
        step: Global optimizer step (names the file).
        payload: Tensors, numbers, strings, lists and dicts (loadable with ``weights_only``).
        keep: Checkpoints to keep; older ones are deleted after the new one is in place.

    Returns:
        The path written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = b"%s %s %d\n" % (MAGIC, hashlib.sha256(body).hexdigest().encode(), len(body))
    path = folder / f"step-{step:08d}.ckpt"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    with tmp.open("wb") as handle:
        handle.write(header)
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(folder)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and verify one checkpoint file.

    Raises:
        CheckpointError: Bad header, truncated or overlong payload, checksum mismatch, or a
            payload ``torch.load(weights_only=True)`` refuses.
    """
    data = path.read_bytes()
    newline = data.find(b"\n", 0, 200)
    parts = data[:newline].split(b" ") if newline > 0 else []
    if len(parts) != 3 or parts[0] != MAGIC or not parts[2].isdigit():
        raise CheckpointError(f"{path.name}: not a checkpoint (bad header)")
    body = data[newline + 1 :]
    if len(body) != int(parts[2]):
        raise CheckpointError(f"{path.name}: truncated ({len(body)} of {int(parts[2])} bytes)")
    if hashlib.sha256(body).hexdigest().encode() != parts[1]:
        raise CheckpointError(f"{path.name}: checksum mismatch")
    try:
        payload = torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure: a bad file
        raise CheckpointError(f"{path.name}: unreadable payload ({exc})") from exc
    if not isinstance(payload, dict) or "step" not in payload:
        raise CheckpointError(f"{path.name}: payload is not a training checkpoint")
    return payload


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, oldest first (by step)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name))


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that verifies, skipping bad ones with a warning.

    Returns:
        ``(path, payload)``, or None when no checkpoint verifies.
    """
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, read_checkpoint(path)
        except (CheckpointError, OSError) as exc:
            warnings.warn(f"skipping checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2)
    return None


def check_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise :class:`FinetuneError` when a checkpoint was written by a run with another config."""
    now = config_digest(current)
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)
    ]
    if diffs:
        raise FinetuneError(
            f"cannot resume from {path}: it was written with another config ({'; '.join(diffs)})"
        )


@dataclass
class Position:
    """Where training stands: what a checkpoint records beyond model and optimizer.

    Attributes:
        epoch: Current epoch (1-based).
        step: Steps done in the current epoch.
        global_step: Optimizer steps done in all.
        order: The current epoch's permutation of the training examples (None: not drawn yet).
        loss_sum: This rank's summed training loss in the current epoch.
        seen: This rank's examples in the current epoch.
        train_seconds: Training wall time so far (checkpoint writes and evaluation excluded).
        history: Records of the finished epochs.
    """

    epoch: int = 1
    step: int = 0
    global_step: int = 0
    order: list[int] | None = None
    loss_sum: float = 0.0
    seen: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def next_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch, self.step, self.order, self.loss_sum, self.seen = self.epoch + 1, 0, None, 0, 0


def write_checkpoint(
    folder: Path,
    config: FinetuneConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    pos: Position,
    info: DistInfo,
) -> Path | None:
    """Gather every rank's RNG state and loss sums; rank 0 writes the checkpoint.

    Every rank must call this at the same step. Returns the path on rank 0, else None.
    """
    mine = {"rng": rng_state(), "loss_sum": pos.loss_sum, "seen": pos.seen}
    ranks = gather(mine, info)
    if not info.is_main:
        return None
    payload = {
        "format": 1,
        "step": pos.global_step,
        "epoch": pos.epoch,
        "step_in_epoch": pos.step,
        "order": torch.tensor(pos.order or [], dtype=torch.int64),
        "generator": generator.get_state(),
        "model": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "ranks": ranks,
        "world_size": info.world_size,
        "history": pos.history,
        "train_seconds": pos.train_seconds,
        "config": config_digest(config.to_dict()),
    }
    return save_checkpoint(folder, pos.global_step, payload)


def resume(
    folder: Path,
    config: FinetuneConfig,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    info: DistInfo,
) -> Position:
    """Load the newest valid checkpoint of ``folder`` into the training state.

    Restores the trainable tensors, optimizer, scheduler, the data generator, this rank's RNG
    states and the data position. Without a valid checkpoint, training starts from step 0 (with a
    warning).

    Raises:
        FinetuneError: The checkpoint was written by a run with a different config.
    """
    found = latest_checkpoint(folder)
    if found is None:
        if info.is_main:
            warnings.warn(f"no valid checkpoint in {folder}; starting from step 0", stacklevel=2)
        if info.rank > 0:
            torch.manual_seed(config.seed + info.rank)
        return Position()
    path, payload = found
    check_config(payload["config"], config.to_dict(), path)
    load_trainable(model, payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["generator"])
    ranks = payload["ranks"]
    if len(ranks) == info.world_size:
        set_rng_state(ranks[info.rank]["rng"])
        loss_sum, seen = ranks[info.rank]["loss_sum"], ranks[info.rank]["seen"]
    else:
        warnings.warn(
            f"{path.name} was written by {len(ranks)} processes, this job has {info.world_size}: "
            "random streams (dropout) will differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=2,
        )
        set_rng_state(ranks[0]["rng"])
        if info.rank > 0:
            torch.manual_seed(config.seed + info.rank)
        loss_sum = sum(r["loss_sum"] for r in ranks) if info.is_main else 0.0
        seen = sum(r["seen"] for r in ranks) if info.is_main else 0
    order = payload["order"].tolist()
    return Position(
        epoch=payload["epoch"],
        step=payload["step_in_epoch"],
        global_step=payload["step"],
        order=order or None,
        loss_sum=loss_sum,
        seen=seen,
        train_seconds=payload["train_seconds"],
        history=list(payload["history"]),
    )
