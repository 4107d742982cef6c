"""How a base model is loaded: its dtype and bitsandbytes quantization (:class:`BaseForm`).

:class:`BaseForm` is checked once when built and turns into the keyword arguments of
``from_pretrained`` (``dtype``, ``quantization_config``); :func:`base_memory_bytes` and
:func:`describe_base` say what was loaded. Nothing here imports transformers or bitsandbytes
until a form is turned into keyword arguments.

Example:
    >>> BaseForm(dtype="bfloat16").label
    'bfloat16'
    >>> BaseForm(quantize="8bit", quant_type="fp4")
    Traceback (most recent call last):
    ...
    tensortrain.errors.TTValueError: --quant-type applies to --quantize 4bit only, got ...
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn.bases.quantized import describe, quant_kind

#: Dtypes a base may be loaded in (``--dtype``).
BASE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
#: bitsandbytes quantization of a base (``--quantize``): none, 4-bit or 8-bit weights.
QUANTIZE: tuple[str, ...] = ("none", "4bit", "8bit")
#: 4-bit data types (``--quant-type``).
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")


def _check_choice(flag: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TTValueError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class BaseForm:
    """The form a base model is loaded in.

    Attributes:
        dtype: one of :data:`BASE_DTYPES`; with ``quantize``, the dtype of the layers that stay
            unquantized and the quantized layers' compute dtype.
        quantize: one of :data:`QUANTIZE`. 4-bit uses double quantization (as QLoRA).
        quant_type: one of :data:`QUANT_TYPES` (4-bit only).

    Raises:
        TTValueError: a value outside its choices, ``quant_type`` other than nf4 without 4-bit.
        ImportError: ``quantize`` without bitsandbytes installed (names the ``quant`` extra).
    """

    dtype: str = "float32"
    quantize: str = "none"
    quant_type: str = "nf4"

    def __post_init__(self) -> None:
        _check_choice("--dtype", self.dtype, BASE_DTYPES)
        _check_choice("--quantize", self.quantize, QUANTIZE)
        _check_choice("--quant-type", self.quant_type, QUANT_TYPES)
        if self.quant_type != "nf4" and self.quantize != "4bit":
            raise TTValueError(
                f"--quant-type applies to --quantize 4bit only, got --quant-type "
                f"{self.quant_type} with --quantize {self.quantize}"
            )
        if self.quantized and importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError(
                f"--quantize {self.quantize} needs bitsandbytes: pip install 'tensortrain[quant]'"
            )

    @property
    def quantized(self) -> bool:
        """Whether the linear layers are loaded as bitsandbytes layers."""
        return self.quantize != "none"

    @property
    def label(self) -> str:
        """A short name: ``"float32"``, ``"4bit nf4 (double quant), compute bfloat16"``."""
        if self.quantize == "4bit":
            return f"4bit {self.quant_type} (double quant), compute {self.dtype}"
        if self.quantize == "8bit":
            return f"8bit int8, other layers {self.dtype}"
        return self.dtype

    def pretrained_kwargs(self) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments: ``dtype`` and ``quantization_config``."""
        kwargs: dict[str, Any] = {"dtype": getattr(torch, self.dtype)}
        if not self.quantized:
            return kwargs
        from transformers import BitsAndBytesConfig

        if self.quantize == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=getattr(torch, self.dtype),
            )
        return kwargs

    @classmethod
    def from_values(cls, values: dict[str, Any], **overrides: str | None) -> BaseForm:
        """The form in ``values`` (a run's config: missing keys are float32, unquantized), with
        the ``overrides`` that are not None.

        Example:
            >>> BaseForm.from_values({}, dtype="float16", quantize=None).label
            'float16'
        """
        names = ("dtype", "quantize", "quant_type")
        given = {k: values[k] for k in names if values.get(k) is not None}
        given.update({k: v for k, v in overrides.items() if k in names and v is not None})
        return cls(**given)


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is a quantized (bitsandbytes) layer.

    Example:
        >>> is_quantized(nn.Linear(2, 2))
        False
    """
    return any(quant_kind(m) is not None for m in model.modules())


def base_memory_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers as stored (packed 4-bit weights as packed).

    Example:
        >>> base_memory_bytes(nn.Linear(2, 2))
        24
    """
    seen: dict[int, int] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def describe_base(model: nn.Module) -> str:
    """The dtype(s) of ``model``'s floating parameters, and its quantized layers if any.

    Example:
        >>> describe_base(nn.Linear(2, 2, dtype=torch.bfloat16))
        'bfloat16'
    """
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    floats = [d for d in dtypes if d.startswith(("float", "bfloat"))]
    text = "/".join(floats) or "no floating parameters"
    layers = [m for m in model.modules() if quant_kind(m) is not None]
    if layers:
        text = f"{len(layers)} x {describe(layers[0])}, other layers {text}"
    return text
