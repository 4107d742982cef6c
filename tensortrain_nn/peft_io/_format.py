"""peft's LoRA folder format: reading and checking one, writing one. Touches no model.

A peft LoRA folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. Tensor names
are ``base_model.model.<module path>.lora_A.weight`` (``(r, in)``) and ``...lora_B.weight``
(``(out, r)``); a module in ``modules_to_save`` is saved under its plain parameter names,
``base_model.model.<module path>.<param>``. The update of a module is ``(lora_alpha / r) B A``
(``lora_alpha / sqrt(r)`` with ``use_rslora``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tensortrain.errors import TTShapeError, TTValueError
from tensortrain_nn._files import atomic_write, read_json_object, read_safetensors
from tensortrain_nn._optional import require

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"
#: Config fields whose non-default value a LoRETTA_rep adapter cannot express.
_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "use_dora": (False, "DoRA's magnitude vector has no LoRETTA_rep counterpart"),
    "rank_pattern": ({}, "every module must share one r (LoRETTA_rep has one r per adapter)"),
    "alpha_pattern": ({}, "every module must share one lora_alpha"),
    "bias": ("none", "trained biases are not exported/imported; use bias='none'"),
    "lora_bias": (False, "a bias on lora_B has no LoRETTA_rep counterpart"),
    "target_parameters": (None, "LoRA on bare parameters (not modules) is not supported"),
    "trainable_token_indices": (None, "trainable tokens are not supported"),
    "layer_replication": (None, "layer replication is not supported"),
    "use_qalora": (False, "QA-LoRA pooling is not supported"),
}


@dataclass
class LoraFile:
    """A checked peft LoRA folder.

    Attributes:
        folder: where it was read from.
        config: the raw ``adapter_config.json``.
        r: the LoRA rank. alpha: ``lora_alpha`` with ``use_rslora`` folded in, so that the
            update's scale is ``alpha / r`` in every case. dropout: ``lora_dropout``.
        pairs: module path -> ``(A (r, in), B (out, r))``, in file order.
        saved: parameter name -> tensor of the ``modules_to_save`` (head, norms).
    """

    folder: Path
    config: dict[str, Any]
    r: int
    alpha: float
    dropout: float
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)


def _is_default(value: Any, default: Any) -> bool:
    return bool(value == default or value is None or value is False or value in ({}, []))


def check_config(config: dict[str, Any], where: str) -> None:
    """Refuse a config that is not a plain LoRA; the error names the field and its value."""
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise TTValueError(
            f"{where}: peft_type must be 'LORA', got {peft_type!r} (only LoRA adapters "
            "convert to LoRETTA_rep; IA3, prefix tuning, prompt tuning, ... do not)"
        )
    for key, (default, why) in _UNSUPPORTED.items():
        value = config.get(key, default)
        if not _is_default(value, default):
            raise TTValueError(f"{where}: {key}={value!r} is not supported ({why})")
    r = config.get("r")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise TTValueError(f"{where}: r must be a positive int, got {r!r}")
    alpha = config.get("lora_alpha", 8)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise TTValueError(f"{where}: lora_alpha must be a number, got {alpha!r}")
    dropout = config.get("lora_dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise TTValueError(f"{where}: lora_dropout must be in [0, 1), got {dropout!r}")


def read_lora(folder: str | os.PathLike[str]) -> LoraFile:
    """Read and check a peft LoRA folder (config fields, tensor names and shapes).

    Raises:
        TTValueError: A file is missing, unreadable or truncated; the config is not a plain
            LoRA (the field is named); a tensor of another kind (``lora_embedding_A``, DoRA...).
        TTShapeError: ``lora_A`` / ``lora_B`` shapes disagree with ``r`` or with each other.
    """
    path = Path(folder)
    for fname in (CONFIG_NAME, WEIGHTS_NAME):
        if not (path / fname).is_file():
            raise TTValueError(f"peft_folder {str(path)!r} has no {fname}")
    config = read_json_object(path / CONFIG_NAME)
    check_config(config, str(path / CONFIG_NAME))
    tensors = read_safetensors(path / WEIGHTS_NAME)
    r = int(config["r"])
    alpha = float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):
        alpha *= math.sqrt(r)  # rsLoRA scales by alpha / sqrt(r) = (alpha sqrt(r)) / r
    out = LoraFile(path, config, r, alpha, float(config.get("lora_dropout", 0.0)))
    a_parts: dict[str, torch.Tensor] = {}
    b_parts: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PREFIX)
        if name.endswith(A_SUFFIX):
            a_parts[name.removesuffix(A_SUFFIX)] = tensor
        elif name.endswith(B_SUFFIX):
            b_parts[name.removesuffix(B_SUFFIX)] = tensor
        elif "lora_" in name:
            raise TTValueError(
                f"{path / WEIGHTS_NAME}: tensor {key!r} is not a plain LoRA factor (embedding or "
                "convolution LoRA, DoRA magnitude, ...): only Linear / Conv1D targets convert"
            )
        else:
            out.saved[name] = tensor
    if set(a_parts) != set(b_parts) or not a_parts:
        odd = sorted(set(a_parts) ^ set(b_parts)) or ["(no lora_A / lora_B tensors at all)"]
        raise TTValueError(f"{path / WEIGHTS_NAME}: lora_A and lora_B do not pair up: {odd[0]}")
    for name, a in a_parts.items():
        b = b_parts[name]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise TTShapeError(
                f"{path / WEIGHTS_NAME}: {name!r} has lora_A {tuple(a.shape)} and lora_B "
                f"{tuple(b.shape)}; expected (r, in) and (out, r) with r={r} (2-D Linear LoRA)"
            )
        out.pairs[name] = (a, b)
    return out


def lora_config(
    *,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: list[str],
    modules_to_save: list[str] | None,
    fan_in_fan_out: bool,
    base_model_name_or_path: str | None,
    task_type: str | None,
) -> dict[str, Any]:
    """A plain LoRA ``adapter_config.json`` (fields peft reads; the rest take peft's defaults)."""
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": dropout,
        "target_modules": target_modules,
        "modules_to_save": modules_to_save,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": None,
    }


def write_lora(
    folder: str | os.PathLike[str],
    config: dict[str, Any],
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
    saved: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a LoRA folder atomically file by file; ``extra`` goes to ``tt_export.json``."""
    st_save = require("safetensors.torch", "writing a peft LoRA folder").save
    tensors: dict[str, torch.Tensor] = {}
    for name, (a, b) in pairs.items():
        tensors[PREFIX + name + A_SUFFIX] = a.detach().cpu().contiguous()
        tensors[PREFIX + name + B_SUFFIX] = b.detach().cpu().contiguous()
    for name, tensor in saved.items():
        tensors[PREFIX + name] = tensor.detach().cpu().contiguous()
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_NAME, st_save(tensors, metadata={"format": "pt"}))
    atomic_write(path / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
    if extra is not None:
        atomic_write(path / EXPORT_NOTE, (json.dumps(extra, indent=2) + "\n").encode())
    return path


#: Side file of an export: the source adapter and each module's relative error (peft ignores it).
EXPORT_NOTE = "tt_export.json"
