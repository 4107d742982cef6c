"""Resumable checkpoints over accelerate's ``save_state`` / ``load_state``: atomic, verified.

A checkpoint is a folder ``<run>/checkpoints/step-00000012/``: what ``Accelerator.save_state``
writes (the *trainable* tensors only, the optimizer, the scheduler, every process's RNG states),
``position.json`` (data position, history, config digest) and ``MANIFEST.json`` (size and sha256 of
every other file). Every process writes into ``.step-00000012.tmp``; after a barrier the main
process fsyncs the files, writes the manifest and renames the folder to its final name, so a crash
never leaves a half checkpoint under a final name. A folder whose files do not match its manifest
is skipped with a warning, and nothing in it is unpickled. The two newest checkpoints are kept.

Example::

    store = Checkpoints(run_dir / "checkpoints", accelerator, config_digest(config.to_dict()))
    store.save(step=12, position={...})
    found = store.latest()          # (path, position) of the newest valid one, or None
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain_nn._files import atomic_write, file_fingerprint, fsync_dir
from tensortrain_nn.tasks import FinetuneError

MANIFEST = "MANIFEST.json"
POSITION = "position.json"
#: How many checkpoints stay on disk (the newest ones); older ones are deleted after a save.
KEEP = 2
_NAME = re.compile(r"^step-(\d{8})$")
#: Config fields that may change between a run and its resumption.
RESUMABLE_CHANGES = (
    "progress",
    "resume",
    "checkpoint_every",
    "device",
    "output_dir",
    "save",
    "overwrite",
)
#: The key of :func:`config_digest` that holds the data files' fingerprints.
DATA_KEY = "data_fingerprint"


def data_fingerprints(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Size and sha256 (:func:`~tensortrain_nn._files.file_fingerprint`) of ``data`` and
    ``test_data`` when they name files or folders (the built-in data has none)."""
    paths = {key: config.get(key) for key in ("data", "test_data")}
    return {
        key: file_fingerprint(Path(value))
        for key, value in paths.items()
        if isinstance(value, str) and Path(value).exists()
    }


class CheckpointError(FinetuneError):
    """A checkpoint folder is unusable: no manifest, a missing, short or altered file."""


def config_digest(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that a resumed run must share with the run that wrote the checkpoint:
    its fields, and the fingerprints of its data files (under :data:`DATA_KEY`)."""
    kept = {k: v for k, v in config.items() if k not in RESUMABLE_CHANGES}
    return {**kept, DATA_KEY: data_fingerprints(config)}


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders in ``folder``, oldest first (by step)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _NAME.match(p.name) and p.is_dir())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path) -> dict[str, Any]:
    """Check a checkpoint folder against its manifest; returns its position record.

    Raises:
        CheckpointError: No or unreadable manifest, a file missing, of another size (truncated)
            or with another checksum, or a position record that is not JSON.
    """
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: no valid {MANIFEST} (an incomplete write?)") from exc
    for name, (size, digest) in manifest.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path.name}: {name} is missing")
        if file.stat().st_size != size:
            raise CheckpointError(
                f"{path.name}: {name} is truncated ({file.stat().st_size} of {size} bytes)"
            )
        if _sha256(file) != digest:
            raise CheckpointError(f"{path.name}: {name} fails its checksum")
    try:
        return dict(json.loads((path / POSITION).read_text()))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: unreadable {POSITION}") from exc


def latest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``folder`` that verifies, skipping bad ones with a warning."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, verify(path)
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2)
    return None


def check_config(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Raise :class:`FinetuneError` when a checkpoint was written by a run with another config
    or on other data (a checkpoint written before data was fingerprinted skips that check)."""
    now = config_digest(current)
    _check_data(saved.get(DATA_KEY), now.get(DATA_KEY, {}), current, path)
    saved = {k: v for k, v in saved.items() if k != DATA_KEY}
    now = {k: v for k, v in now.items() if k != DATA_KEY}
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if json.dumps(saved.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)
    ]
    if diffs:
        raise FinetuneError(
            f"cannot resume from {path}: it was written with another config ({'; '.join(diffs)})"
        )


def _check_data(
    saved: dict[str, Any] | None, now: dict[str, Any], config: dict[str, Any], path: Path
) -> None:
    """Refuse a resume whose data files changed since ``path`` was written."""
    if saved is None:
        return
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            raise FinetuneError(
                f"cannot resume from {path}: --{key.replace('_', '-')} {config.get(key)} changed "
                f"since the checkpoint was written (size/sha256 {_short(saved.get(key))} -> "
                f"{_short(now.get(key))}); resume needs the same data: restore the file, or "
                "start a new run (--overwrite or another --output-dir)"
            )


def _short(fingerprint: dict[str, Any] | None) -> str:
    if not fingerprint:
        return "none"
    return f"{fingerprint['size']} bytes, {str(fingerprint['sha256'])[:12]}"


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _keep_trainable(models: list[nn.Module], weights: list[dict], _: str) -> None:
    """save_state hook: the model files hold the trainable tensors only (not the frozen base)."""
    for model, state in zip(models, weights, strict=True):
        names = set(_trainable(model))
        for key in [k for k in state if k not in names]:
            del state[key]


def _load_trainable(models: list[nn.Module], folder: str) -> None:
    """load_state hook: put the saved trainable tensors back, names and shapes checked."""
    from safetensors.torch import load_file

    for index, model in enumerate(models):
        saved = load_file(
            str(Path(folder) / f"model{'' if index == 0 else f'_{index}'}.safetensors")
        )
        params = _trainable(model)
        if set(saved) != set(params):
            extra, missing = (
                sorted(set(saved) - set(params))[:3],
                sorted(set(params) - set(saved))[:3],
            )
            raise CheckpointError(
                f"checkpoint tensors do not fit the model: not in the model {extra}, "
                f"not in the checkpoint {missing}"
            )
        with torch.no_grad():
            for name, param in params.items():
                if param.shape != saved[name].shape:
                    raise CheckpointError(
                        f"checkpoint tensor {name!r} has shape {tuple(saved[name].shape)}, "
                        f"the model's has {tuple(param.shape)}"
                    )
                param.copy_(saved[name])
    models.clear()  # loaded here; accelerate must not load the model files again


class Checkpoints:
    """The checkpoint folder of one run, written and read through an ``Accelerator``.

    Args:
        folder: ``<run>/checkpoints``.
        accelerator: The run's accelerator (after ``prepare``).
        digest: :func:`config_digest` of the run's config (a resumed run must match it).
    """

    def __init__(self, folder: Path, accelerator: Any, digest: dict[str, Any]) -> None:
        self.folder, self.accelerator, self.digest = folder, accelerator, digest
        accelerator.register_save_state_pre_hook(_keep_trainable)
        accelerator.register_load_state_pre_hook(_load_trainable)

    def refuse_stale(self) -> None:
        """A fresh run must not share its folder with another run's checkpoints.

        Raises:
            FinetuneError: The folder already holds checkpoints.
        """
        found = list_checkpoints(self.folder)
        if found:
            raise FinetuneError(
                f"{self.folder} already holds checkpoints of another run ({found[-1].name}): "
                "pass --resume to continue that run, --overwrite to replace it, or choose another "
                "--output-dir"
            )

    def save(self, step: int, position: dict[str, Any]) -> None:
        """Write checkpoint ``step`` (every process must call this at the same step)."""
        acc = self.accelerator
        final = self.folder / f"step-{step:08d}"
        tmp = self.folder / f".{final.name}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            record = {**position, "config": self.digest, "world_size": acc.num_processes}
            (tmp / POSITION).write_text(json.dumps(record) + "\n")
            manifest = {}
            for file in sorted(tmp.iterdir()):
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
                manifest[file.name] = (file.stat().st_size, _sha256(file))
            atomic_write(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fsync_dir(self.folder)
            for old in list_checkpoints(self.folder)[:-KEEP]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def resume(self) -> dict[str, Any] | None:
        """Load the newest valid checkpoint; returns its position record (None: start afresh).

        Raises:
            FinetuneError: The checkpoint was written by a run with another config.
        """
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        box: list[Any] = [latest(self.folder) if acc.is_main_process else None]
        if acc.num_processes > 1:
            broadcast_object_list(box)
        if box[0] is None:
            if acc.is_main_process:
                warnings.warn(
                    f"no valid checkpoint in {self.folder}; starting from step 0", stacklevel=2
                )
            return None
        path, position = Path(box[0][0]), box[0][1]
        check_config(position["config"], self.digest, path)
        if position["world_size"] != acc.num_processes:
            warnings.warn(
                f"{path.name} was written by {position['world_size']} processes, this job has "
                f"{acc.num_processes}: dropout streams will differ from an uninterrupted run",
                RuntimeWarning,
                stacklevel=2,
            )
        acc.load_state(str(path))
        return position
