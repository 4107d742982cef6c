"""The adapter folder format: ``tt_adapter_config.json`` + ``tt_adapter_model.safetensors``.

This module knows files only (it touches no model); the owner of a model's surgery
(:class:`~tensortrain_nn.surgery.state.SurgeryState`) decides what goes in and where it comes back.

Format version 1 (file contents unchanged since the first release):

* ``tt_adapter_config.json``: the :class:`PatchConfig` fields plus ``format_version`` (1),
  ``adapter_name``, ``model_type`` (or null) and ``target_names`` (the patched module names).
* ``tt_adapter_model.safetensors``: the adapter's parameters and every other trainable tensor,
  keyed by their names in the patched model with the adapter's name dropped
  (``....query.adapters.A.cores.0``, ``classifier.weight``, ``bert.pooler.dense.bias``).

The names are not peft's: a LoRETTA folder handed to peft or transformers stops at their own
"no adapter_config.json" error instead of being misread as a peft adapter (``KeyError:
'peft_type'``). Folders written before with peft's names (:data:`LEGACY_NAMES`) still load, and
saving into one replaces its old-named LoRETTA files (a peft LoRA's files there are left alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from tensortrain.errors import TTError, TTValueError
from tensortrain_nn._files import atomic_write, read_json_object, read_safetensors
from tensortrain_nn._optional import require
from tensortrain_nn.surgery.config import PatchConfig

WEIGHTS_NAME = "tt_adapter_model.safetensors"
CONFIG_NAME = "tt_adapter_config.json"
#: ``(config, weights)`` names of folders written before: peft's, read still.
LEGACY_NAMES = ("adapter_config.json", "adapter_model.safetensors")
FORMAT_VERSION = 1
META_KEYS = ("format_version", "adapter_name", "model_type", "target_names")


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return key
    return None


def write_adapter(
    folder: str | os.PathLike[str],
    config: PatchConfig,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> Path:
    """Write an adapter folder (created if missing); every check runs before the first byte.

    Each file goes to a temp file and is moved into place (:func:`~tensortrain_nn._files.
    atomic_write`): a crash never leaves a half file under its final name.

    Args:
        folder: the output folder.
        config: the adapter's config. meta: ``adapter_name``, ``model_type``, ``target_names``.
        tensors: portable name -> tensor (any device; written as contiguous CPU copies).

    Raises:
        TTValueError: A tensor holds NaN or infinity (the message names the first such tensor);
            nothing is written.
        MissingDependencyError: safetensors is not installed (the ``hf`` extra).

    Example:
        >>> import tempfile
        >>> folder = write_adapter(tempfile.mkdtemp(), PatchConfig(), {}, {"w": torch.ones(2)})
        >>> read_adapter(folder)[2]
        {'w': tensor([1., 1.])}
    """
    st_save = require("safetensors.torch", "save_adapter").save
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise TTValueError(
            f"cannot save adapter: tensor {bad!r} holds non-finite values (NaN or inf); "
            f"nothing was written to {str(folder)!r}"
        )
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    data = {**config.to_dict(), **{k: meta.get(k) for k in META_KEYS}}
    data["format_version"] = FORMAT_VERSION
    weights = st_save(cpu, metadata={"format": "pt"})
    text = (json.dumps(data, indent=2) + "\n").encode()
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, weights)
    atomic_write(path / CONFIG_NAME, text)
    if _legacy_is_ours(path):  # the old-named copy would be read by peft (and misread)
        for fname in LEGACY_NAMES:
            (path / fname).unlink(missing_ok=True)
    return path


def _legacy_is_ours(path: Path) -> bool:
    """Whether ``path`` holds a LoRETTA config under peft's name (not a peft one)."""
    legacy = path / LEGACY_NAMES[0]
    if not legacy.is_file():
        return False
    try:
        data = read_json_object(legacy)
    except TTValueError:
        return False
    return "format_version" in data and "peft_type" not in data


def _names(path: Path) -> tuple[str, str]:
    """The ``(config, weights)`` file names of folder ``path``: ours, or the legacy ones."""
    if not (path / CONFIG_NAME).is_file() and _legacy_is_ours(path):
        return LEGACY_NAMES
    return CONFIG_NAME, WEIGHTS_NAME


def _read_config(file: Path) -> tuple[PatchConfig, dict[str, Any]]:
    data = read_json_object(file)
    meta = {k: data.pop(k, None) for k in META_KEYS}
    if meta["format_version"] != FORMAT_VERSION:
        raise TTValueError(
            f"{file} has format_version {meta['format_version']!r}; this version "
            f"reads {FORMAT_VERSION}"
        )
    try:
        return PatchConfig.from_dict(data), meta
    except TTError as exc:  # name the file; keep the type (TTValueError / TTTypeError)
        raise type(exc)(f"{file}: {exc}") from exc


def read_adapter(
    folder: str | os.PathLike[str],
) -> tuple[PatchConfig, dict[str, Any], dict[str, torch.Tensor]]:
    """Read and check an adapter folder: ``(config, metadata, tensors)``; touches no model.

    Args:
        folder: a folder written by :func:`~tensortrain_nn.save_adapter` (or by an earlier
            version, under peft's file names).

    Returns:
        The :class:`PatchConfig`, the metadata (``format_version``, ``adapter_name``,
        ``model_type``, ``target_names``) and the tensors by portable name (on the CPU).

    Raises:
        TTValueError: A file is missing, not valid JSON / safetensors (corrupted or truncated),
            or of another format version; the message names the file.
        TTTypeError: A config field of the wrong type (the message names the file).
    """
    path = Path(folder)
    names = _names(path)
    for fname in names:
        if not (path / fname).is_file():
            peft = (path / LEGACY_NAMES[0]).is_file() and not _legacy_is_ours(path)
            hint = " (it holds a peft adapter: use tensortrain_nn.from_lora)" if peft else ""
            raise TTValueError(f"adapter folder {str(path)!r} has no {fname}{hint}")
    config, meta = _read_config(path / names[0])
    tensors = read_safetensors(path / names[1])
    return config, meta, tensors
