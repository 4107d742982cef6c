"""After patch(): switch, disable, delete, merge and unload adapters, or undo the surgery."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import AdapterWrapper
from tensortrain_nn.adapter import TTAdapter
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.reparam import TTReparam
from tensortrain_nn.surgery.patch import replace_module
from tensortrain_nn.surgery.state import (
    STATE_ATTR,
    apply_trainable,
    get_state,
    restore_flags,
    tt_modules,
)


def _wrappers(model: nn.Module) -> list[tuple[str, AdapterWrapper]]:
    return [(n, m) for n, m in tt_modules(model) if isinstance(m, AdapterWrapper)]


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter ``name`` the one that runs and trains (others frozen and inactive).

    Layers that ``name`` does not patch run their base layer alone.

    Example:
        >>> patch(model, mode="rep", adapter_name="sst2"); patch(model, adapter_name="mnli")
        >>> set_adapter(model, "sst2")
    """
    state = get_state(model)
    assert state is not None
    if name not in state.configs:
        raise TTValueError(f"adapter name must be one of {list(state.configs)}, got {name!r}")
    for _, wrapper in _wrappers(model):
        if name in wrapper.adapters:
            wrapper.set_adapter(name)
        else:
            wrapper.active_adapter = None
    state.active = name
    apply_trainable(model, state)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """A context in which every TT wrapper runs its base layer alone (merged updates included).

    ``mode="linear"`` layers are replacements, not adapters: they keep running.

    Example:
        >>> with disable_adapters(model):
        ...     base_logits = model(**batch).logits
    """
    get_state(model)
    wrappers = [w for _, w in _wrappers(model)]
    before = [w.adapters_disabled for w in wrappers]
    for w in wrappers:
        w.adapters_disabled = True
    try:
        yield model
    finally:
        for w, flag in zip(wrappers, before, strict=True):
            w.adapters_disabled = flag


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; wrappers left without adapters give their base layer back.

    Deleting the last adapter is :func:`unpatch`. Merged updates are unmerged first.
    """
    state = get_state(model)
    assert state is not None
    if name not in state.configs:
        raise TTValueError(f"adapter name must be one of {list(state.configs)}, got {name!r}")
    if len(state.configs) == 1:
        unpatch(model)
        return
    for path, wrapper in _wrappers(model):
        if name in wrapper.adapters:
            if isinstance(wrapper, TTReparam) and name in wrapper.merged_adapters:
                wrapper.unmerge()
            wrapper.delete_adapter(name)
            if not wrapper.adapters:
                replace_module(model, path, wrapper.base_layer)
    del state.configs[name]
    state.targets.pop(name, None)
    set_adapter(model, state.active if state.active in state.configs else next(iter(state.configs)))


def _check_reversible(model: nn.Module, what: str) -> None:
    linear = [n for n, m in tt_modules(model) if isinstance(m, TTLinear)]
    if linear:
        raise TTValueError(
            f"cannot {what}: {linear[0]!r} (and {len(linear) - 1} more) were replaced by "
            "mode='linear' TTLinear layers, whose dense weights are gone; reload the base "
            "model, or use merge_and_unload to get plain nn.Linear layers back"
        )


def unpatch(model: nn.Module) -> nn.Module:
    """Take every adapter out and give the original model back (weights and ``requires_grad``).

    Merged updates are subtracted first (exact up to round-off).

    Raises:
        TTValueError: The model is not patched, or has ``mode="linear"`` layers.

    Example:
        >>> unpatch(patch(model)) is model
        True
    """
    state = get_state(model)
    assert state is not None
    _check_reversible(model, "unpatch")
    with torch.no_grad():
        for path, wrapper in _wrappers(model):
            if isinstance(wrapper, TTReparam):
                wrapper.unmerge()
            replace_module(model, path, wrapper.base_layer)
    restore_flags(state)
    model.__dict__.pop(STATE_ATTR, None)
    return model


def _dense(layer: TTLinear) -> nn.Linear:
    """A plain ``nn.Linear`` with the TT layer's weight (materialised) and bias."""
    weight = layer.weight.detach()
    out = nn.Linear(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(weight)
        if layer.bias is not None and out.bias is not None:
            out.bias.copy_(layer.bias)
    return out


def merge_and_unload(model: nn.Module, safe_merge: bool = True) -> nn.Module:
    """Fold the active rep updates into the base weights and return a plain model.

    rep wrappers become their (updated) base layers; ``mode="linear"`` TTLinears become
    ``nn.Linear`` with the dense weight (materialised: ``O(out * in)`` each). Inactive adapters
    are dropped. Original ``requires_grad`` flags are restored.

    Raises:
        TTValueError: An active adp adapter (nonlinear: it cannot be folded into a weight), or
            with ``safe_merge`` a merge that would write non-finite values; nothing changed.

    Example:
        >>> plain = merge_and_unload(model)  # same logits, no TT module left
    """
    state = get_state(model)
    assert state is not None
    wrappers = _wrappers(model)
    for path, w in wrappers:
        if isinstance(w, TTAdapter) and w.active_adapter is not None and not w.adapters_disabled:
            raise TTValueError(
                f"{path!r} holds active adp adapter {w.active_adapter!r}: a nonlinear adapter "
                "cannot be merged into a weight; use unpatch(), or keep the adapter"
            )
    merged: list[TTReparam] = []
    with torch.no_grad():
        try:
            for _, w in wrappers:
                if isinstance(w, TTReparam):
                    w.unmerge()
                    if w.active_adapter is not None and not w.adapters_disabled:
                        w.merge(w.active_adapter, safe_merge=safe_merge)
                    merged.append(w)
        except Exception:
            for w in merged:
                w.unmerge()
            raise
        for path, w in wrappers:
            replace_module(model, path, w.base_layer)
        for path, layer in list(tt_modules(model)):
            if isinstance(layer, TTLinear):
                replace_module(model, path, _dense(layer))
    restore_flags(state)
    model.__dict__.pop(STATE_ATTR, None)
    return model
