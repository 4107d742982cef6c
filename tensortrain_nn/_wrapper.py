"""What TTReparam and TTAdapter share: a frozen ``base_layer`` plus named adapters, one active.

:class:`AdapterWrapper` is the layer half of a mode (peft's ``LoraLayer``): it holds the adapters,
switches between them, and answers the verbs surgery calls on every wrapper alike (merge,
unmerge, restore the base, finish a load); a mode whose adapters cannot be merged keeps the
defaults here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import nn

from tensortrain.errors import TTTypeError, TTValueError


def is_linear_like(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a transformers ``Conv1D`` (GPT-2): the one check for both.

    Example:
        >>> is_linear_like(nn.Linear(4, 2)), is_linear_like(nn.ReLU())
        (True, False)
    """
    if isinstance(module, nn.Linear):
        return True
    return type(module).__name__ == "Conv1D" and isinstance(
        getattr(module, "weight", None), torch.Tensor
    )


def linear_features(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, transposed)`` of an ``nn.Linear`` or GPT-2's ``Conv1D``.

    ``Conv1D`` stores its weight as ``(in, out)``; ``transposed`` says so.

    Raises:
        TTTypeError: ``module`` is neither (see :func:`is_linear_like`).

    Example:
        >>> linear_features(nn.Linear(4, 2))
        (4, 2, False)
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if is_linear_like(module):
        w = cast(torch.Tensor, module.weight)
        return int(w.shape[0]), int(w.shape[1]), True
    raise TTTypeError(
        f"base_layer must be an nn.Linear or a transformers Conv1D, got {type(module).__name__}"
    )


def check_adapter_name(name: str | None, known: Iterable[str], what: str = "adapter_name") -> str:
    """``name`` if it is one of ``known``, else a TTValueError listing them (the one message).

    Example:
        >>> check_adapter_name("a", ["a", "b"])
        'a'
        >>> check_adapter_name("c", ["a", "b"])
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: adapter_name must be one of ['a', 'b'], got 'c'
    """
    names = list(known)
    if name is None or name not in names:
        raise TTValueError(f"{what} must be one of {names}, got {name!r}")
    return name


class AdapterWrapper(nn.Module):
    """A frozen ``base_layer`` and a dict of named adapters; the active one runs in ``forward``.

    Attributes:
        base_layer: the wrapped module (its parameters are frozen by the wrapper).
        adapters: ``nn.ModuleDict`` of adapter name to adapter module.
        active_adapter: the adapter used by ``forward`` (None: none).
        adapters_disabled: when True, ``forward`` is the base layer's alone.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.adapters_disabled = False
        for p in base_layer.parameters():
            p.requires_grad_(False)

    def _add(self, name: str, adapter: nn.Module) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise TTValueError(f"adapter_name must be a Python identifier, got {name!r}")
        if name in self.adapters:
            raise TTValueError(f"adapter_name {name!r} already exists on this layer")
        self.adapters[name] = adapter
        if self.active_adapter is None:
            self.active_adapter = name

    def add_adapter(self, adapter_name: str, options: Any = None, **fields: Any) -> None:
        """Add a named adapter built from a mode's ``options`` (each wrapper defines it)."""
        raise NotImplementedError(f"{type(self).__name__} does not define add_adapter")

    def set_adapter(self, name: str) -> None:
        """Make ``name`` the adapter that ``forward`` uses."""
        self.active_adapter = check_adapter_name(name, self.adapters)

    def delete_adapter(self, name: str) -> None:
        """Remove an adapter (it must not be merged); the next one, if any, becomes active."""
        self.set_adapter(name)
        self._before_delete(name)
        del self.adapters[name]
        self.active_adapter = next(iter(self.adapters), None)

    def _before_delete(self, name: str) -> None:
        """Hook for subclasses (TTReparam refuses to delete a merged adapter)."""

    def restore_base(self, keep: str | None = None) -> nn.Module:
        """Undo every change this wrapper's adapters made to ``base_layer`` except adapter
        ``keep``'s, and return it (taking the wrapper out is then putting this module back).
        The default: adapters that never change the base."""
        return self.base_layer

    def check_merge(self, adapter_name: str | None = None, safe: bool = True) -> None:
        """Raise if :meth:`merge` would fail, changing nothing. The default: a wrapper whose
        adapters cannot be folded into a weight (nonlinear) always raises."""
        name = adapter_name or self.active_adapter
        raise TTValueError(
            f"{type(self).__name__} adapter {name!r} is a nonlinear adapter: it cannot be merged "
            "into a weight; use unpatch(), or keep the adapter"
        )

    def merge(self, adapter_name: str | None = None, safe_merge: bool = True) -> None:
        """Fold an adapter into the base weight (the default refuses, see :meth:`check_merge`)."""
        self.check_merge(adapter_name, safe_merge)

    def unmerge(self, adapter_name: str | None = None) -> None:
        """Take merged adapters out of the base weight (the default: none can be merged)."""
        if adapter_name is not None:
            check_adapter_name(adapter_name, self.adapters)

    @property
    def merged_adapters(self) -> list[str]:
        """Names of the adapters folded into the base weight (the default: none)."""
        return []

    def after_load(self, name: str) -> list[Callable[[], object]]:
        """Hook run once adapter ``name``'s saved tensors are loaded; returns undo steps."""
        return []

    def _active(self) -> nn.Module | None:
        if self.adapters_disabled or self.active_adapter is None:
            return None
        return self.adapters[self.active_adapter]

    def __getattr__(self, name: str) -> Any:
        """Attributes not found here come from ``base_layer`` (``weight``, ``in_features``...)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        return f"active_adapter={self.active_adapter!r}, disabled={self.adapters_disabled}"


def cast_like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` in ``ref``'s dtype (no copy when it already is)."""
    return t if t.dtype == ref.dtype else t.to(ref.dtype)
