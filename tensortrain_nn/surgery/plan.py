"""Check before change: resolve and check every target of a patch, and build its new modules.

Nothing here modifies a model except :func:`replace_module`; :func:`plan_targets` raises on any
problem (targets, ranks, a name in use, a constructor error in a meta-device dry build) before the
owner (:class:`~tensortrain_nn.surgery.state.SurgeryState`) touches anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import choose_modes
from tensortrain_nn._wrapper import AdapterWrapper, linear_features
from tensortrain_nn.adapter import TTAdapter, TTBottleneck
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.reparam import TTReparam, TTUpdate
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.targets import adapter_features, placement_of, resolve_targets

#: The wrapper class each adapter mode installs (linear mode installs a plain TTLinear).
WRAPPERS: dict[str, type[AdapterWrapper]] = {"rep": TTReparam, "adp": TTAdapter}


@dataclass
class Plan:
    """One target: its name, the module now there, and the shapes its TT factors will have."""

    name: str
    module: nn.Module
    features: int = 0
    placement: str = "after"
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


def _check_ranks(config: PatchConfig, plan: Plan, in_f: int, out_f: int) -> None:
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
    if rank is None or (config.mode != "linear" and config.layout == "paper"):
        return  # the paper layout does not clip ranks: any rank builds
    for label, fin, fout in plan.factors:
        limit = _max_bond(fin, fout)
        if rank > limit:
            option = "max_rank" if config.mode == "linear" else "tt_rank"
            raise TTShapeError(
                f"{option}={rank} is larger than any bond of {plan.name!r}.{label} allows "
                f"({fout} x {fin} TT-matrix, largest possible rank {limit})"
            )


def _dry_build(config: PatchConfig, plan: Plan) -> None:
    """Build the adapter on the meta device: any constructor error surfaces before we touch."""
    kw = config.layer_kwargs()
    if config.mode == "rep":
        in_f, out_f = plan.factors[0][1], plan.factors[-1][2]
        TTUpdate(in_f, out_f, device="meta", **kw)
    elif config.mode == "adp":
        TTBottleneck(plan.features, device="meta", **kw)


def _check_stackable(config: PatchConfig, name: str, module: nn.Module, adapter_name: str) -> None:
    """A target that already is a wrapper takes a second adapter of its own mode only."""
    wrapper = WRAPPERS.get(config.mode)
    if wrapper is None or not isinstance(module, wrapper):
        raise TTValueError(
            f"{name!r} is already a {type(module).__name__}; mode={config.mode!r} "
            "cannot be stacked on it (use the same mode, or other target_modules)"
        )
    if isinstance(module, TTAdapter):
        want = placement_of(name, config.placement)
        if module.placement != want:
            raise TTValueError(
                f"{name!r} holds adapters placed {module.placement!r} its sublayer; "
                f"placement={config.placement!r} would put this one {want!r} it"
            )
    if adapter_name in module.adapters:
        raise TTValueError(f"{name!r} already has an adapter named {adapter_name!r}")
    if isinstance(module, TTReparam) and config.init == "svd":
        try:
            module.check_svd_slot(adapter_name)
        except TTValueError as exc:
            raise TTValueError(f"{name!r}: {exc}") from None


def _adp_features(model: nn.Module, base: nn.Module, name: str, placement: str) -> int:
    """The size an adp adapter works on: the target's output (after) or input (before)."""
    if placement == "after":
        return adapter_features(model, base, name)
    try:
        return linear_features(base)[0]
    except TTTypeError:
        raise TTTypeError(
            f"placement='before' needs an nn.Linear or Conv1D target (its input size), but "
            f"{name!r} is a {type(base).__name__}"
        ) from None


def _check_svd_weight(name: str, base: nn.Module) -> None:
    """``init="svd"`` decomposes the target's weight: it must be finite (meta: not checked)."""
    weight = cast(torch.Tensor, base.weight)
    if not weight.is_meta and not bool(torch.isfinite(weight).all()):
        raise TTValueError(
            f"init='svd' needs a finite weight, but {name!r} holds NaN or inf values"
        )


def plan_targets(model: nn.Module, config: PatchConfig, adapter_name: str) -> list[Plan]:
    """Resolve and check every target of ``config``; raises before anything is modified.

    Raises:
        TTValueError: No target matches, a target cannot take this mode or name.
        TTTypeError: A rep / linear target that is not linear-like.
        TTShapeError: A rank the target's shapes cannot hold.
    """
    plans = []
    for name, module in resolve_targets(model, config.target_modules, config.mode):
        if isinstance(module, AdapterWrapper):
            _check_stackable(config, name, module, adapter_name)
        base = module.base_layer if isinstance(module, AdapterWrapper) else module
        plan = Plan(name, module)
        if config.mode == "adp":
            plan.placement = placement_of(name, config.placement)
            plan.features = getattr(module, "features", None) or _adp_features(
                model, base, name, plan.placement
            )
            in_f = out_f = plan.features
        else:
            in_f, out_f, _ = linear_features(base)
        plan.factors = _factors(config, in_f, out_f)
        _check_ranks(config, plan, in_f, out_f)
        if config.mode == "rep" and config.init == "svd":
            _check_svd_weight(name, base)
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


def build(
    config: PatchConfig, plan: Plan, adapter_name: str, svd_from_weight: bool = True
) -> nn.Module:
    """The new module for a target that is not a wrapper yet (in the target's train/eval mode).

    Wrapping freezes the base layer's parameters (the owner records and restores their flags).
    ``svd_from_weight=False``: an ``init="svd"`` update is left for the loader to fill and correct.
    """
    kw = config.layer_kwargs()
    new: nn.Module
    if config.mode == "rep":
        new = TTReparam(
            plan.module, adapter_name=adapter_name, svd_from_weight=svd_from_weight, **kw
        )
    elif config.mode == "adp":
        new = TTAdapter(
            plan.module,
            features=plan.features,
            placement=plan.placement,  # type: ignore[arg-type]
            adapter_name=adapter_name,
            **kw,
        )
    else:
        new = TTLinear.from_linear(_as_linear(plan.module), **kw)
    return new.train(plan.module.training)


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
