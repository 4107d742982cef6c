"""Check before change: resolve and check every target of a patch, and build its new modules.

Nothing here modifies a model except :func:`replace_module`; :func:`plan_targets` raises on any
problem (targets, ranks, a name in use, a constructor error in a meta-device dry build) before the
owner (:class:`~tensortrain_nn.surgery.state.SurgeryState`) touches anything. What is checked and
built for a target is the mode's (:class:`~tensortrain_nn.modes.base.Mode`): this module only
calls its hooks.
"""

from __future__ import annotations

import torch
from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import AdapterWrapper
from tensortrain_nn.bases.offload import check_in_memory
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.modes import Mode, Target
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.targets import resolve_targets

#: A target of a patch (the name this module gave it before modes owned planning).
Plan = Target


def _check_stackable(mode: Mode, target: Target, adapter_name: str) -> None:
    """A target that already is a wrapper takes a second adapter of its own mode only."""
    module = target.module
    assert isinstance(module, AdapterWrapper)
    if mode.wrapper is None or not isinstance(module, mode.wrapper):
        raise TTValueError(
            f"{target.name!r} is already a {type(module).__name__}; mode={mode.name!r} "
            "cannot be stacked on it (use the same mode, or other target_modules)"
        )
    if adapter_name in module.adapters:
        raise TTValueError(f"{target.name!r} already has an adapter named {adapter_name!r}")
    mode.check_stack(target, adapter_name)


def plan_targets(
    model: nn.Module, config: PatchConfig, adapter_name: str, verb: str = "patch"
) -> list[Target]:
    """Resolve and check every target of ``config``; raises before anything is modified.

    ``verb`` names the caller in errors; ``"load_adapter"`` also refuses targets whose weights
    are on the meta device (saved tensors cannot be loaded there).

    Raises:
        TTValueError: No target matches, a target cannot take this mode or name, or is
            offloaded by accelerate (all such targets named).
        TTTypeError: A rep / linear target that is not linear-like.
        TTShapeError: A rank the target's shapes cannot hold.
    """
    mode = config.mode_object
    targets = []
    for name, module in resolve_targets(model, config.target_modules, config.mode):
        target = Target(name, module)
        if isinstance(module, AdapterWrapper):
            _check_stackable(mode, target, adapter_name)
        mode.plan(model, target)
        targets.append(target)
    meta_counts = verb != "patch"
    check_in_memory(model, [t.name for t in targets], verb, meta_counts=meta_counts)
    for target in {t.shape_key: t for t in targets}.values():  # one dry build per shape
        mode.dry_build(target)
    return targets


def build(
    config: PatchConfig, target: Target, adapter_name: str, svd_from_weight: bool = True
) -> nn.Module:
    """The new module for a target that is not a wrapper yet (in the target's train/eval mode).

    Wrapping freezes the base layer's parameters (the owner records and restores their flags).
    ``svd_from_weight=False``: nothing is computed from the base weights (the loader does it).
    """
    new = config.mode_object.build(target, adapter_name, svd_from_weight)
    return new.train(target.module.training)


def dense_linear(layer: TTLinear) -> nn.Linear:
    """A plain ``nn.Linear`` with a TTLinear's weight (materialised: ``O(out * in)``) and bias."""
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


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` inside ``model``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
