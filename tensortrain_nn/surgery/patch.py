"""patch(): check everything, then put TT layers into a model (undoable if installing fails)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import choose_modes
from tensortrain_nn._wrapper import AdapterWrapper, linear_features
from tensortrain_nn.adapter import TTAdapter, TTBottleneck
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.reparam import TTReparam, TTUpdate
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.state import (
    STATE_ATTR,
    SurgeryState,
    apply_trainable,
    get_state,
    restore_flags,
)
from tensortrain_nn.surgery.targets import adapter_features, model_type, resolve_targets

#: The wrapper class each adapter mode installs (linear mode installs a plain TTLinear).
WRAPPERS: dict[str, type[AdapterWrapper]] = {"rep": TTReparam, "adp": TTAdapter}


@dataclass
class _Plan:
    """One target: its name, the module now there, and the shapes its TT factors will have."""

    name: str
    module: nn.Module
    features: int = 0
    factors: list[tuple[str, int, int]] = field(default_factory=list)


def _max_bond(in_features: int, out_features: int) -> int:
    """The largest TT rank any bond of an ``(out, in)`` TT-matrix with default modes allows."""
    rows, cols = choose_modes(out_features, in_features)
    sizes = [m * n for m, n in zip(rows, cols, strict=True)]
    caps = [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))]
    return max(caps, default=1)


def _factors(config: PatchConfig, in_f: int, out_f: int) -> list[tuple[str, int, int]]:
    """``(label, in, out)`` of every TT-matrix the mode builds for a target."""
    if config.mode == "rep" and config.form == "factors":
        return [("A", in_f, config.r), ("B", config.r, out_f)]
    if config.mode == "adp":
        return [("down", out_f, config.bottleneck), ("up", config.bottleneck, out_f)]
    return [("weight", in_f, out_f)]


def _check_ranks(config: PatchConfig, plan: _Plan, in_f: int, out_f: int) -> None:
    """A rank the shapes cannot support is an error naming the module and the limit."""
    if config.mode == "rep" and config.form == "factors" and config.r > min(in_f, out_f):
        raise TTShapeError(
            f"r={config.r} exceeds min(in, out)={min(in_f, out_f)} of {plan.name!r} "
            f"({out_f} x {in_f}): a rank-{config.r} update does not fit"
        )
    if config.mode == "adp" and config.bottleneck > out_f:
        raise TTShapeError(
            f"bottleneck={config.bottleneck} exceeds the {out_f} features of {plan.name!r}"
        )
    rank = config.max_rank if config.mode == "linear" else config.tt_rank
    if rank is None:
        return
    for label, fin, fout in plan.factors:
        limit = _max_bond(fin, fout)
        if rank > limit:
            option = "max_rank" if config.mode == "linear" else "tt_rank"
            raise TTShapeError(
                f"{option}={rank} is larger than any bond of {plan.name!r}.{label} allows "
                f"({fout} x {fin} TT-matrix, largest possible rank {limit})"
            )


def _dry_build(config: PatchConfig, plan: _Plan) -> None:
    """Build the adapter on the meta device: any constructor error surfaces before we touch."""
    kw = config.layer_kwargs()
    if config.mode == "rep":
        in_f, out_f = plan.factors[0][1], plan.factors[-1][2]
        TTUpdate(in_f, out_f, device="meta", **kw)
    elif config.mode == "adp":
        TTBottleneck(plan.features, device="meta", **kw)


def _plan(model: nn.Module, config: PatchConfig, adapter_name: str) -> list[_Plan]:
    """Resolve and check every target; raises before anything is modified."""
    plans = []
    wrapper = WRAPPERS.get(config.mode)
    for name, module in resolve_targets(model, config.target_modules, config.mode):
        if isinstance(module, AdapterWrapper):
            if wrapper is None or not isinstance(module, wrapper):
                raise TTValueError(
                    f"{name!r} is already a {type(module).__name__}; mode={config.mode!r} "
                    "cannot be stacked on it (use the same mode, or other target_modules)"
                )
            if adapter_name in module.adapters:
                raise TTValueError(f"{name!r} already has an adapter named {adapter_name!r}")
        base = module.base_layer if isinstance(module, AdapterWrapper) else module
        plan = _Plan(name, module)
        if config.mode == "adp":
            plan.features = getattr(module, "features", None) or adapter_features(model, base, name)
            in_f = out_f = plan.features
        else:
            in_f, out_f, _ = linear_features(base)
        plan.factors = _factors(config, in_f, out_f)
        _check_ranks(config, plan, in_f, out_f)
        plans.append(plan)
    shapes = {(p.features, tuple(p.factors)): p for p in plans}
    for plan in shapes.values():  # one dry build per distinct shape
        _dry_build(config, plan)
    return plans


def _as_linear(module: nn.Module) -> nn.Linear:
    """``module`` as an ``nn.Linear`` (a Conv1D is transposed into a new one; no mutation)."""
    if isinstance(module, nn.Linear):
        return module
    in_f, out_f, _ = linear_features(module)
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = getattr(module, "bias", None)
    linear = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().T.contiguous())
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone())
    return linear


def _install_one(config: PatchConfig, plan: _Plan, adapter_name: str) -> nn.Module | None:
    """Install one target; returns the new module to put in place (None: added in place)."""
    kw = config.layer_kwargs()
    training = plan.module.training  # new modules follow the mode (train / eval) of the target
    new: nn.Module
    if isinstance(plan.module, AdapterWrapper):
        plan.module.add_adapter(adapter_name, **kw)
        plan.module.adapters[adapter_name].train(training)
        return None
    if config.mode == "rep":
        new = TTReparam(plan.module, adapter_name=adapter_name, **kw)
    elif config.mode == "adp":
        new = TTAdapter(plan.module, features=plan.features, adapter_name=adapter_name, **kw)
    else:
        new = TTLinear.from_linear(_as_linear(plan.module), **kw)
    return new.train(training)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted path ``name`` inside ``model``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def install(model: nn.Module, config: PatchConfig, adapter_name: str) -> Callable[[], None]:
    """Check, then patch ``model``; returns a function that undoes exactly this patch.

    Raises:
        TTError: (``ValueError`` / ``TypeError``) a check failed; the model is untouched.
    """
    old_state = get_state(model, required=False)
    if old_state is not None and adapter_name in old_state.configs:
        raise TTValueError(
            f"the model already has an adapter named {adapter_name!r} "
            f"(adapters: {list(old_state.configs)}); pass another adapter_name"
        )
    plans = _plan(model, config, adapter_name)
    state = old_state or SurgeryState(
        model_type=model_type(model),
        original_flags=[(p, p.requires_grad) for p in model.parameters()],
    )
    previous_active = state.active
    done: list[tuple[_Plan, bool]] = []

    def undo() -> None:
        for plan, replaced in reversed(done):
            if replaced:
                replace_module(model, plan.name, plan.module)
            else:
                plan.module.delete_adapter(adapter_name)  # type: ignore[operator]
                if previous_active in plan.module.adapters:  # type: ignore[operator]
                    plan.module.set_adapter(previous_active)  # type: ignore[operator]
        state.configs.pop(adapter_name, None)
        state.targets.pop(adapter_name, None)
        state.active = previous_active
        if old_state is None:
            restore_flags(state)
            model.__dict__.pop(STATE_ATTR, None)
        else:
            apply_trainable(model, state)

    try:
        for plan in plans:
            new = _install_one(config, plan, adapter_name)
            if new is not None:
                replace_module(model, plan.name, new)
            done.append((plan, new is not None))
        state.configs[adapter_name] = config
        state.targets[adapter_name] = [p.name for p in plans]
        model.__dict__[STATE_ATTR] = state
        from tensortrain_nn.surgery.lifecycle import set_adapter

        set_adapter(model, adapter_name)
    except BaseException:
        undo()
        raise
    return undo


def patch(
    model: nn.Module,
    mode: str | None = None,
    *,
    config: PatchConfig | None = None,
    adapter_name: str = "default",
    **config_fields: Any,
) -> nn.Module:
    """Put LoRETTA TT layers into ``model`` in place and freeze everything else.

    Every check (mode, options, targets, ranks, adapter name) runs before the model is touched:
    a failed ``patch`` leaves it exactly as it was. Patching a patched model with a new
    ``adapter_name`` adds a second adapter on the same base (and makes it the active one).

    Args:
        model: any ``nn.Module``; defaults for ``target_modules`` come from
            ``model.config.model_type`` (Hugging Face models).
        mode: ``"rep"`` (default), ``"adp"`` or ``"linear"``; with ``config``, its mode.
        config: a :class:`PatchConfig` (then no ``config_fields``).
        adapter_name: a Python identifier naming this adapter.
        **config_fields: :class:`PatchConfig` fields for ``mode``: rep ``r, alpha, tt_rank,
            dropout, form, init``; adp ``bottleneck, tt_rank, activation, scale, dropout,
            init``; linear ``max_rank, eps``; any mode ``target_modules, trainable_norms,
            trainable_head, trainable_biases``. ``rank`` is an alias of the TT rank.

    Returns:
        ``model`` itself, patched (only the adapter, and head/norms/biases as asked, train).

    Raises:
        TTValueError: Unknown mode or option, targets that match nothing, a name in use.
        TTShapeError: A rank larger than the shapes allow.
        TTTypeError: ``model`` is not a module, or an option has the wrong type.

    Example:
        >>> model = AutoModelForSequenceClassification.from_config(BertConfig(...))
        >>> patch(model, mode="rep", r=8, tt_rank=5)
        >>> print(trainable_report(model).line)
        trainable params: ... || all params: ... || trainable%: ...
    """
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
        raise TTValueError(f"adapter_name must be a Python identifier, got {adapter_name!r}")
    if config is not None:
        if not isinstance(config, PatchConfig):
            raise TTTypeError(f"config must be a PatchConfig, got {type(config).__name__}")
        if config_fields:
            raise TTValueError(f"pass config or options, not both (got {sorted(config_fields)})")
        if mode is not None and mode != config.mode:
            raise TTValueError(f"mode={mode!r} contradicts config.mode={config.mode!r}")
    else:
        config = PatchConfig.from_options(mode or "rep", config_fields)
    with torch.no_grad():
        install(model, config, adapter_name)
    return model
