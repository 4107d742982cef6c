"""Adapters on disk: ``adapter_model.safetensors`` (trainable tensors) + ``adapter_config.json``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain.errors import TTShapeError, TTValueError
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.patch import install
from tensortrain_nn.surgery.state import adapter_of, get_state, portable_name
from tensortrain_nn.surgery.targets import model_type

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
FORMAT_VERSION = 1
_META_KEYS = ("format_version", "adapter_name", "model_type", "target_names")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in ``path``'s folder, fsync, then ``os.replace`` it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def adapter_tensors(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """What ``save_adapter`` writes: adapter ``adapter_name``'s parameters plus every trainable
    parameter outside the adapters (head, norms, biases, TTLinear cores), by portable name."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        owner = adapter_of(name)
        if owner == adapter_name or (owner is None and param.requires_grad):
            out[portable_name(name)] = param
    return out


def save_adapter(
    model: nn.Module, folder: str | os.PathLike[str], adapter_name: str | None = None
) -> Path:
    """Write one adapter's tensors and config into ``folder`` (created if missing).

    Files: ``adapter_model.safetensors`` (the adapter's TT cores and every other trainable
    tensor, e.g. the head) and ``adapter_config.json`` (the :class:`PatchConfig` plus the
    adapter name, model type and patched module names). Each file is written to a temp file and
    moved into place with ``os.replace``: a crash never leaves a half file under its final name.

    Args:
        model: a patched model. folder: the output folder.
        adapter_name: which adapter (default: the active one).

    Returns:
        The folder, as a ``Path``.

    Example:
        >>> save_adapter(model, "runs/sst2")
        PosixPath('runs/sst2')
    """
    from safetensors.torch import save as st_save

    state = get_state(model)
    assert state is not None
    name = adapter_name or state.active
    if name not in state.configs:
        raise TTValueError(f"adapter_name must be one of {list(state.configs)}, got {name!r}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_tensors(model, name).items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "adapter_name": name,
        "model_type": state.model_type,
        "target_names": state.targets[name],
    }
    config = {**state.configs[name].to_dict(), **meta}
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    _atomic_write(path / WEIGHTS_NAME, st_save(tensors, metadata={"format": "pt"}))
    _atomic_write(path / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    return path


def read_adapter(
    folder: str | os.PathLike[str],
) -> tuple[PatchConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check an adapter folder: ``(config, metadata, tensors)``; touches no model.

    Raises:
        TTValueError: A file is missing, not valid JSON / safetensors (corrupted or truncated).
    """
    from safetensors.torch import load as st_load

    path = Path(folder)
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / fname).is_file():
            raise TTValueError(f"adapter folder {str(path)!r} has no {fname}")
    try:
        data = json.loads((path / CONFIG_NAME).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TTValueError(f"{path / CONFIG_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TTValueError(f"{path / CONFIG_NAME} must hold a JSON object")
    meta = {k: data.pop(k, None) for k in _META_KEYS}
    if meta["format_version"] != FORMAT_VERSION:
        raise TTValueError(
            f"{path / CONFIG_NAME} has format_version {meta['format_version']!r}; this version "
            f"reads {FORMAT_VERSION}"
        )
    config = PatchConfig.from_dict(data)
    try:
        tensors = st_load((path / WEIGHTS_NAME).read_bytes())
    except Exception as exc:  # safetensors raises its own SafetensorError (not exported stably)
        raise TTValueError(
            f"{path / WEIGHTS_NAME} is corrupted or truncated and cannot be read: {exc}"
        ) from exc
    return config, meta, tensors


def _match(
    expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], folder: str
) -> None:
    """Check names and shapes in model order; the error names the first mismatched tensor."""
    for key, param in expected.items():
        if key not in tensors:
            raise TTShapeError(
                f"adapter in {folder} lacks tensor {key!r} that the patched model trains "
                f"(shape {tuple(param.shape)}; different architecture or options?)"
            )
        want, got = tuple(param.shape), tuple(tensors[key].shape)
        if want != got:
            raise TTShapeError(
                f"adapter tensor {key!r} in {folder} has shape {got}, but the patched model's "
                f"has {want} (different model size?)"
            )
    extra = [k for k in tensors if k not in expected]
    if extra:
        raise TTShapeError(
            f"adapter tensor {extra[0]!r} in {folder} has no counterpart in the patched model "
            f"({len(extra)} such tensors; different architecture or options?)"
        )


def load_adapter(
    model: nn.Module, folder: str | os.PathLike[str], adapter_name: str | None = None
) -> nn.Module:
    """Patch ``model`` from a saved config and load the saved tensors into it.

    The files are read and checked first; then the model is patched; if a tensor does not fit
    (missing, extra, or of another shape), the patch is undone and the error names the first
    mismatched tensor: on any error the model is left as it was. Loading onto a patched model
    adds the adapter next to the others (name clash: error).

    Args:
        model: a fresh base model of the architecture the adapter was trained on.
        folder: a folder written by :func:`save_adapter`.
        adapter_name: name to load under (default: the saved name).

    Returns:
        ``model``, patched, with the adapter active; logits equal the saved model's.

    Example:
        >>> model = load_adapter(AutoModelForSequenceClassification.from_pretrained(p), "runs/sst2")
    """
    folder_s = str(folder)
    config, meta, tensors = read_adapter(folder)
    saved_type, here = meta["model_type"], model_type(model)
    if saved_type and here and saved_type != here:
        raise TTValueError(
            f"adapter in {folder_s} was trained on model_type {saved_type!r}, not {here!r}"
        )
    name = adapter_name or meta["adapter_name"] or "default"
    with torch.no_grad():
        undo = install(model, config, name)
        try:
            expected = adapter_tensors(model, name)
            _match(expected, tensors, folder_s)
            for key, tensor in tensors.items():
                expected[key].copy_(tensor)
        except BaseException:
            undo()
            raise
    return model
