"""What surgery remembers on a patched model, and which parameters train."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import AdapterWrapper
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.targets import HEAD_NAMES, is_norm

#: The attribute under which a patched model keeps its :class:`SurgeryState`.
STATE_ATTR = "tt_surgery"
_ADAPTER_KEY = re.compile(r"(^|\.)adapters\.([^.]+)\.")


@dataclass
class SurgeryState:
    """Per-model bookkeeping (kept on the model as ``model.tt_surgery``).

    Attributes:
        configs: adapter name -> the config it was patched with.
        targets: adapter name -> the module names it patched.
        active: the adapter that runs and trains.
        model_type: ``model.config.model_type`` at patch time (None without a HF config).
        original_flags: every parameter's ``requires_grad`` before the first patch.
    """

    configs: dict[str, PatchConfig] = field(default_factory=dict)
    targets: dict[str, list[str]] = field(default_factory=dict)
    active: str | None = None
    model_type: str | None = None
    original_flags: list[tuple[nn.Parameter, bool]] = field(default_factory=list)


def get_state(model: nn.Module, required: bool = True) -> SurgeryState | None:
    """The model's :class:`SurgeryState` (raises when ``required`` and it was never patched)."""
    state = model.__dict__.get(STATE_ATTR)
    if state is None and required:
        raise TTValueError("the model is not patched: call tensortrain_nn.patch(model, ...) first")
    return state


def tt_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every TT wrapper (TTReparam / TTAdapter) and TTLinear in the model, outermost only."""
    seen: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p in seen):
            continue
        if isinstance(module, AdapterWrapper | TTLinear):
            seen.append(name)
            yield name, module


def adapter_of(param_name: str) -> str | None:
    """The adapter a parameter belongs to (``....adapters.<name>....``), None for base ones."""
    m = _ADAPTER_KEY.search(param_name)
    return None if m is None else m.group(2)


def portable_name(param_name: str) -> str:
    """The parameter name with the adapter name dropped (``adapters.task1.A`` -> ``adapters.A``)."""
    return _ADAPTER_KEY.sub(r"\1adapters.", param_name, count=1)


def extra_trainable(model: nn.Module, config: PatchConfig) -> set[int]:
    """ids of base parameters that ``config`` trains: head, norms, biases as it asks."""
    ids: set[int] = set()
    for name, module in model.named_modules():
        head = config.trainable_head and name.rsplit(".", 1)[-1] in HEAD_NAMES
        if head or (config.trainable_norms and is_norm(module)):
            ids.update(id(p) for p in module.parameters())
    if config.trainable_biases:
        ids.update(id(p) for n, p in model.named_parameters() if n.endswith("bias"))
    return ids


def apply_trainable(model: nn.Module, state: SurgeryState) -> None:
    """Set ``requires_grad``: the active adapter, TTLinear cores, and what its config adds."""
    config = state.configs[state.active] if state.active else None
    extra = extra_trainable(model, config) if config else set()
    ttlinear = {
        id(p) for _, m in tt_modules(model) if isinstance(m, TTLinear) for p in m.parameters()
    }
    for name, param in model.named_parameters():
        owner = adapter_of(name)
        if owner is not None:
            param.requires_grad_(owner == state.active)
        else:
            param.requires_grad_(id(param) in extra or id(param) in ttlinear)


def restore_flags(state: SurgeryState) -> None:
    """Put every original parameter's ``requires_grad`` back."""
    for param, flag in state.original_flags:
        param.requires_grad_(flag)
