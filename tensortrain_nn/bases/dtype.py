"""The dtype an adapter's own tensors (TT cores, adp biases) take: the ``adapter_dtype`` option.

As peft's ``autocast_adapter_dtype``: an adapter on a half-precision or quantized base keeps its
tensors in float32 and computes there; its input is cast to that dtype and its output back to
the base output's dtype, at the boundary (:func:`~tensortrain_nn._wrapper.cast_like`).

Example:
    >>> from torch import nn
    >>> adapter_dtype("auto", nn.Linear(2, 2, dtype=torch.bfloat16))
    torch.float32
    >>> adapter_dtype("base", nn.Linear(2, 2, dtype=torch.bfloat16))
    torch.bfloat16
"""

from __future__ import annotations

import torch
from torch import nn

from tensortrain_nn._options import check_choice
from tensortrain_nn.bases.quantized import compute_dtype, quant_kind

#: Fixed dtypes by name.
FIXED_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: What ``adapter_dtype`` takes: ``"auto"`` (default: float32 on a half-precision or quantized
#: base, the base's dtype on a float32/float64 one), ``"base"`` (the base's compute dtype,
#: half precision included) or a fixed dtype's name.
ADAPTER_DTYPES: tuple[str, ...] = ("auto", "base", *FIXED_DTYPES)
_HALF = (torch.float16, torch.bfloat16)


def check_adapter_dtype(value: object) -> str:
    """``value`` if it is one of :data:`ADAPTER_DTYPES`, else a TTValueError listing them.

    Example:
        >>> check_adapter_dtype("int8")
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: adapter_dtype must be one of ['auto', 'base', ...
    """
    return check_choice("adapter_dtype", value, ADAPTER_DTYPES)


def adapter_dtype(option: str, base: nn.Module) -> torch.dtype:
    """The dtype of an adapter's tensors on ``base`` under ``adapter_dtype=option``.

    Args:
        option: one of :data:`ADAPTER_DTYPES`.
        base: the frozen layer (or sublayer) the adapter wraps.
    """
    if option in FIXED_DTYPES:
        return FIXED_DTYPES[option]
    dtype = compute_dtype(base)
    if option == "base":
        return dtype
    quantized = any(quant_kind(m) is not None for m in base.modules())
    return torch.float32 if quantized or dtype in _HALF else dtype
