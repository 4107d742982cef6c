"""What an adapter mode is (:class:`Mode`), what it plans for a target (:class:`Target`), and
the registry of modes (:data:`MODES`, :func:`register_mode`, :func:`get_mode`).

A mode is peft's tuner split in one class: its options (a frozen :class:`~tensortrain_nn._options.
Options` dataclass, checked once), how it sizes and checks a target, and how it builds its layer
or adds an adapter to a layer it built before. Merging, unmerging and restoring the base are the
layer's (:class:`~tensortrain_nn._wrapper.AdapterWrapper`); saving is by tensor names and needs
no hook. Surgery (:mod:`tensortrain_nn.surgery`) only ever calls the hooks here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from torch import nn

from tensortrain.errors import TTShapeError, TTValueError
from tensortrain.shapes import choose_modes
from tensortrain_nn._options import Options
from tensortrain_nn._wrapper import AdapterWrapper, linear_features
from tensortrain_nn.bases.quantized import check_plain

#: Every registered mode by name, in registration order (see :func:`register_mode`).
MODES: dict[str, type[Mode]] = {}
ModeT = TypeVar("ModeT", bound="type[Mode]")


@dataclass
class Target:
    """One target of a patch: its name, the module there now, and what the mode builds for it.

    Attributes:
        name: the module's dotted name in the model.
        module: the module there now (a plain layer, or a wrapper of this mode to stack on).
        features: the width an adapter works on (modes that need it; 0 otherwise).
        placement: ``"after"`` or ``"before"`` the module (modes that place; else ``"after"``).
        factors: ``(label, in, out)`` of every TT factor the mode builds for it.
    """

    name: str
    module: nn.Module
    features: int = 0
    placement: str = "after"
    factors: list[tuple[str, int, int]] = field(default_factory=list)

    @property
    def base(self) -> nn.Module:
        """The plain layer: ``module``, or the layer a wrapper holds."""
        return self.module.base_layer if isinstance(self.module, AdapterWrapper) else self.module

    @property
    def shape_key(self) -> tuple[object, ...]:
        """Targets with equal keys build identical layers (one dry build checks them all)."""
        return (self.features, self.placement, tuple(self.factors))


def max_bond(in_features: int, out_features: int) -> int:
    """The largest TT rank any bond of an ``(out, in)`` TT-matrix with default modes allows.

    Example:
        >>> max_bond(16, 16)
        16
    """
    rows, cols = choose_modes(out_features, in_features)
    sizes = [m * n for m, n in zip(rows, cols, strict=True)]
    caps = [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))]
    return max(caps, default=1)


def check_bond_ranks(target: Target, rank: int | None, option: str) -> None:
    """A TT ``rank`` (given as ``option``) that no bond of a factor can hold is an error."""
    if rank is None:
        return
    for label, fin, fout in target.factors:
        limit = max_bond(fin, fout)
        if rank > limit:
            raise TTShapeError(
                f"{option}={rank} is larger than any bond of {target.name!r}.{label} allows "
                f"({fout} x {fin} TT-matrix, largest possible rank {limit})"
            )


class Mode:
    """One adapter mode: its options and how it plans, checks and builds for a target.

    A mode sets the class attributes and overrides :meth:`build` (and :meth:`add_to` if its
    layer takes several named adapters); the other hooks have defaults for a mode that turns a
    linear layer into one TT layer. Register it with :func:`register_mode`.

    Attributes:
        name: the ``mode=`` string.
        options_class: the frozen :class:`~tensortrain_nn._options.Options` dataclass of its
            options (their one list and their one check).
        wrapper: the :class:`~tensortrain_nn._wrapper.AdapterWrapper` it installs (several
            named adapters per target), or None for a mode that replaces the target.
        target_family: which list of :data:`~tensortrain_nn.surgery.targets.DEFAULT_TARGETS`
            it takes when ``target_modules`` is None (``"rep"`` or ``"adp"``).
        linear_targets: whether targets must be ``nn.Linear`` / ``Conv1D``.
        rank_option: the option that ``patch(rank=...)`` sets.
        options: this instance's options.

    Example:
        >>> mode = get_mode("rep").from_values({"r": 4, "tt_rank": 2})
        >>> mode.options.r, mode.wrapper.__name__
        (4, 'TTReparam')
    """

    name: ClassVar[str]
    options_class: ClassVar[type[Options]]
    wrapper: ClassVar[type[AdapterWrapper] | None] = None
    target_family: ClassVar[str] = "rep"
    linear_targets: ClassVar[bool] = True
    rank_option: ClassVar[str] = "tt_rank"

    def __init__(self, options: Options) -> None:
        if not isinstance(options, self.options_class):
            raise TTValueError(
                f"options must be a {self.options_class.__name__} for mode={self.name!r}, "
                f"got {type(options).__name__}"
            )
        self.options: Any = options

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> Mode:
        """The mode with options built (and checked) from ``values``."""
        return cls(cls.options_class.build(values))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The names of this mode's options."""
        return cls.options_class.names()

    # ------------------------------------------------------------------ planning (no change)

    def plan(self, model: nn.Module, target: Target) -> None:
        """Fill ``target``'s sizes and factors, and raise if it cannot take this mode.

        The default: a linear-like target, one factor ``(in, out)``, ranks checked.
        """
        in_f, out_f, _ = linear_features(target.base)
        check_plain(
            target.base,
            target.name,
            f"build mode={self.name!r} from the weight",
            "load the base in float32/bfloat16/float16 for this mode, or use mode='rep'/'adp'",
        )
        target.factors = [("weight", in_f, out_f)]
        check_bond_ranks(target, getattr(self.options, self.rank_option, None), self.rank_option)

    def check_stack(self, target: Target, adapter_name: str) -> None:
        """Raise if ``target.module``, a wrapper of this mode, cannot take one more adapter."""

    def dry_build(self, target: Target) -> None:
        """Build the layer on the meta device, so a constructor error surfaces before any
        change (the default: nothing to build ahead)."""

    # ------------------------------------------------------------------ building

    def build(self, target: Target, adapter_name: str, from_weight: bool = True) -> nn.Module:
        """The new module for a target that is not a wrapper yet (it may freeze the base).

        ``from_weight=False`` (loading): nothing is computed from the base weights; the loader
        puts the saved tensors in and calls the wrapper's ``after_load``.
        """
        raise NotImplementedError(f"mode {self.name!r} does not build layers")

    def add_to(self, wrapper: AdapterWrapper, adapter_name: str, from_weight: bool = True) -> None:
        """Add adapter ``adapter_name`` to a wrapper this mode built before."""
        wrapper.add_adapter(adapter_name, self.options)


def register_mode(mode: ModeT) -> ModeT:
    """Register a :class:`Mode` subclass under its ``name`` (a class decorator, or a call).

    Raises:
        TTValueError: The name is taken by another class.

    Example:
        >>> sorted(MODES)
        ['adp', 'linear', 'rep']
    """
    held = MODES.get(mode.name)
    if held is not None and held is not mode:
        raise TTValueError(f"mode {mode.name!r} is already registered to {held.__name__}")
    MODES[mode.name] = mode
    return mode


def get_mode(name: object) -> type[Mode]:
    """The registered mode called ``name``.

    Raises:
        TTValueError: No such mode (the message lists the registered ones).

    Example:
        >>> get_mode("adp").__name__
        'AdpMode'
    """
    if not isinstance(name, str) or name not in MODES:
        raise TTValueError(f"mode must be one of {list(MODES)}, got {name!r}")
    return MODES[name]
