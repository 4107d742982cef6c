"""Quantized linear layers a LoRETTA layer may wrap: a registry of kinds, matched by class name.

A quantized layer (bitsandbytes ``Linear4bit``, ``Linear8bitLt``) computes its frozen output
itself; an adapter on it adds its update in its own dtype. Its weight is packed integers, so
nothing that writes the weight (``merge``, ``init="svd"``, ``mode="linear"``) can run on it: those
are refused by :func:`check_plain`, before anything changes. Kinds are matched by the names in a
class's MRO, so nothing here imports bitsandbytes.

Example:
    >>> from torch import nn
    >>> quant_kind(nn.Linear(4, 4)) is None
    True
    >>> sorted(QUANT_KINDS)
    ['bnb-4bit', 'bnb-8bit']
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tensortrain.errors import TTTypeError


@dataclass(frozen=True)
class QuantKind:
    """One kind of quantized linear layer.

    Attributes:
        name: the registry key (``"bnb-4bit"``).
        package: the top-level package its class lives in (``"bitsandbytes"``).
        class_name: its class name (a subclass matches too).
        details: what tells two layers of the kind apart (``"nf4, double quant"``).
    """

    name: str
    package: str
    class_name: str
    details: Callable[[nn.Module], str]

    def matches(self, module: nn.Module) -> bool:
        """Whether ``module`` is of this kind (its class or a base class has the name)."""
        return any(
            c.__name__ == self.class_name and c.__module__.split(".")[0] == self.package
            for c in type(module).__mro__
        )


def _details_4bit(module: nn.Module) -> str:
    state = getattr(module.weight, "quant_state", None)
    quant = getattr(state, "quant_type", None) or getattr(module, "quant_type", "4bit")
    double = " double quant" if getattr(state, "nested", False) else ""
    return f"{quant}{double}"


#: Every known kind of quantized linear layer, by name.
QUANT_KINDS: dict[str, QuantKind] = {}


def register_quant_kind(kind: QuantKind) -> QuantKind:
    """Add a kind of quantized layer (its name must be new or the same kind again).

    Example:
        >>> register_quant_kind(QUANT_KINDS["bnb-8bit"]).class_name
        'Linear8bitLt'
    """
    held = QUANT_KINDS.get(kind.name)
    if held is not None and held != kind:
        raise TTTypeError(f"quant kind {kind.name!r} is already registered as {held}")
    QUANT_KINDS[kind.name] = kind
    return kind


register_quant_kind(QuantKind("bnb-4bit", "bitsandbytes", "Linear4bit", _details_4bit))
register_quant_kind(QuantKind("bnb-8bit", "bitsandbytes", "Linear8bitLt", lambda m: "int8"))


def quant_kind(module: nn.Module) -> QuantKind | None:
    """The :class:`QuantKind` of ``module``, or None for a plain layer."""
    return next((k for k in QUANT_KINDS.values() if k.matches(module)), None)


def describe(module: nn.Module) -> str:
    """A short name for a layer, with its quantization (``"bitsandbytes Linear4bit (nf4)"``).

    Example:
        >>> describe(nn.Linear(2, 2))
        'Linear'
    """
    kind = quant_kind(module)
    if kind is None:
        return type(module).__name__
    return f"{kind.package} {kind.class_name} ({kind.details(module)})"


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a layer computes its output in: a quantized layer's ``compute_dtype`` (else its
    bias's, else float32); a plain layer's first floating parameter's (else float32).

    Example:
        >>> compute_dtype(nn.Linear(2, 2, dtype=torch.float16))
        torch.float16
    """
    kinds = [m for m in module.modules() if quant_kind(m) is not None]
    if kinds:
        layer = kinds[0]
        declared = getattr(layer, "compute_dtype", None)
        if isinstance(declared, torch.dtype):
            return declared
        bias = getattr(layer, "bias", None)
        return bias.dtype if isinstance(bias, torch.Tensor) else torch.float32
    floats = (p.dtype for p in module.parameters() if p.is_floating_point())
    return next(floats, torch.float32)


def check_plain(module: nn.Module, where: str, what: str, instead: str) -> None:
    """Raise if ``module`` is quantized: ``what`` (an action on ``where``) cannot run on it.

    Args:
        module: the layer. where: its name, for the message. what: the refused action
            (``"merge adapter 'default' into its weight"``). instead: what to do instead.

    Raises:
        TTTypeError: ``module`` is a quantized layer (one line, naming it and its kind).

    Example:
        >>> check_plain(nn.Linear(2, 2), "fc", "merge", "keep it")  # a plain layer passes
    """
    if quant_kind(module) is not None:
        raise TTTypeError(
            f"cannot {what} on {where!r}: it is a {describe(module)}, whose packed weight "
            f"cannot take it exactly; {instead}"
        )
