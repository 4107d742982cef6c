"""Offloaded and meta layers: found before any change, and refused by name.

accelerate's ``dispatch_model`` / ``cpu_offload`` / ``from_pretrained(device_map=...)`` with cpu or
disk offload leave a layer's weights on the ``meta`` device and load them (from a weights map
keyed by the layer's own tensor names) only inside its forward. A wrapper around such a layer
would rename those tensors and put its own where the map cannot find them, and copying saved
tensors into ``meta`` ones silently does nothing. So surgery refuses targets under an offload
hook (:func:`check_in_memory`), and ``load_adapter`` / ``merge`` also refuse targets whose
weights are on ``meta`` (a model built on the meta device may still be patched, to count
parameters).

Example:
    >>> from torch import nn
    >>> check_in_memory(nn.Sequential(nn.Linear(2, 2)), ["0"], "patch")  # in memory: passes
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from tensortrain.errors import TTValueError

#: How many module names an error lists before "and N more".
SHOWN = 4


def _hook_offloads(module: nn.Module) -> bool:
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    return any(bool(getattr(h, "offload", False)) for h in hooks)


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    parts = name.split(".") if name else []
    return [model.get_submodule(".".join(parts[:k])) for k in range(len(parts))]


def is_offloaded(model: nn.Module, name: str, meta_counts: bool = False) -> bool:
    """Whether module ``name`` of ``model`` (or a part of it, or a parent) is offloaded by an
    accelerate hook; with ``meta_counts``, also whether any of its tensors is on ``meta``.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2, device="meta"))
        >>> is_offloaded(model, "0"), is_offloaded(model, "0", meta_counts=True)
        (False, True)
    """
    module = model.get_submodule(name)
    if any(_hook_offloads(m) for m in [*module.modules(), *_ancestors(model, name)]):
        return True
    tensors = [*module.parameters(), *module.buffers()]
    return meta_counts and any(t.is_meta for t in tensors)


def check_in_memory(
    model: nn.Module, names: Sequence[str], verb: str, meta_counts: bool = False
) -> None:
    """Raise, naming them, if any of modules ``names`` is offloaded (see :func:`is_offloaded`).

    Args:
        model: the model. names: the modules ``verb`` would change. verb: ``"patch"``...
        meta_counts: also refuse modules whose tensors are on ``meta`` (load, merge).

    Raises:
        TTValueError: One line naming the offloaded modules (the first :data:`SHOWN`).
    """
    found = [n for n in names if is_offloaded(model, n, meta_counts)]
    if not found:
        return
    shown = ", ".join(repr(n) for n in found[:SHOWN])
    more = f" and {len(found) - SHOWN} more" if len(found) > SHOWN else ""
    raise TTValueError(
        f"cannot {verb}: {shown}{more} {'is' if len(found) == 1 else 'are'} offloaded (weights "
        "on the meta device, loaded from cpu/disk only inside forward); nothing was changed. "
        "Keep the adapted modules in memory (a device_map that puts them on a device), or "
        "choose target_modules outside the offloaded layers"
    )
