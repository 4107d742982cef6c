"""Rank budgets: round an adapter's TT layers down so that it has at most N parameters.

Train at a generous TT rank, then call :func:`fit_budget` (the fine-tuning job does it at a chosen
fraction of the steps, ``--opt budget=N``): every TT layer of the adapter (the TT-matrix cores of
LoRETTA_rep's ``A`` / ``B`` and of LoRETTA_adp's ``down`` / ``up``) is rounded by TT-SVD
(:func:`tensortrain.round_cores`, in float64) to ranks chosen so that the adapter's parameter
count, cores and adapter biases together, is at most the budget.

Allocation rule ("the largest singular values survive"): the singular values of each layer at
each bond (of the weight's unfolding there, computed from the cores without densifying) are
divided by the layer's Frobenius norm; then, globally over all layers and bonds, the bond whose
smallest kept value is the smallest loses one rank, until the count fits. Measuring relative to
each layer's norm makes the rule blind to how a product splits its scale (``B A = (cB)(A/c)``);
a layer that is exactly zero (``B`` before the first step) goes to rank 1 first.

:func:`fit_ranks` takes a rank per module instead. :func:`tensortrain_nn.load_adapter` loads a
saved adapter whose ranks were rounded (its ranks come from the file's tensor shapes, through
:func:`match_ranks`).

The fine-tuning job's budget rules live here too: :func:`budget_options` reads and checks a
method's ``budget`` / ``budget_at`` options into a :class:`RankBudget`, whose
:meth:`RankBudget.apply` rounds the model and returns what the run reports.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from tensortrain_nn import patch
    >>> model = patch(nn.Sequential(nn.Linear(256, 256)), target_modules=["0"], r=16, tt_rank=8)
    >>> adapter_parameters(model)
    2688
    >>> ranks = fit_budget(model, 1500)
    >>> adapter_parameters(model) <= 1500
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from tensortrain._checks import check_int, check_number
from tensortrain._cores import bond_caps
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain_nn._allocate import allocate_ranks, bond_spectra
from tensortrain_nn.linear import replace_cores, rounded_cores
from tensortrain_nn.surgery.flags import adapter_of
from tensortrain_nn.surgery.tensors import is_tt_layer

#: Method options of the fine-tuning job that this module reads (``--opt budget=N``).
BUDGET_OPTIONS = ("budget", "budget_at")
#: Default ``budget_at``: round after this fraction of the training steps.
DEFAULT_BUDGET_AT = 0.33
#: Fine-tuning methods whose adapters have TT ranks to round.
BUDGET_METHODS = ("rep", "adp")

RankSpec = int | Sequence[int]
Ranks = Mapping[str, RankSpec] | Callable[[str, nn.Module], RankSpec | None]


def tt_layers(model: nn.Module, adapter_name: str | None = None) -> dict[str, nn.Module]:
    """The TT layers of an adapter, by module name.

    Args:
        model: a patched model, or any model holding TT layers.
        adapter_name: the adapter; None: the active one of a patched model, or every TT layer
            of a model that was never patched.

    Raises:
        TTValueError: no TT layer found (the message names the adapters there are).

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> list(tt_layers(nn.Sequential(TTLinear(8, 8, rank=2))))
        ['0']
    """
    if adapter_name is None:
        from tensortrain_nn.surgery.state import get_state

        state = get_state(model, required=False)
        adapter_name = None if state is None else state.active
    found = {
        name: m
        for name, m in model.named_modules()
        if is_tt_layer(m) and (adapter_name is None or adapter_of(f"{name}.") == adapter_name)
    }
    if not found:
        names = sorted({a for n, _ in model.named_modules() if (a := adapter_of(f"{n}."))})
        what = "the model" if adapter_name is None else f"adapter {adapter_name!r}"
        raise TTValueError(
            f"{what} has no TT layers to round (adapters in the model: {names or 'none'})"
        )
    return found


def adapter_parameters(model: nn.Module, adapter_name: str | None = None) -> int:
    """Parameters of an adapter's TT layers: cores and biases (what a budget counts).

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> adapter_parameters(nn.Sequential(TTLinear(16, 16, rank=2, bias=False)))
        64
    """
    return sum(_count(layer) for layer in tt_layers(model, adapter_name).values())


def _cores(layer: nn.Module) -> list[torch.Tensor]:
    return list(cast(nn.ParameterList, layer.cores))


def _count(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def _sizes(layer: nn.Module) -> list[int]:
    return [math.prod(c.shape[1:-1]) for c in _cores(layer)]


def _ranks(layer: nn.Module) -> tuple[int, ...]:
    return (1, *(int(c.shape[-1]) for c in _cores(layer)))


def _fixed(layer: nn.Module) -> int:
    """Parameters of the layer outside its cores (the bias)."""
    return _count(layer) - sum(c.numel() for c in _cores(layer))


def minimum_parameters(model: nn.Module, adapter_name: str | None = None) -> int:
    """The smallest count rounding can reach: every TT rank 1 (biases kept).

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> minimum_parameters(nn.Sequential(TTLinear(16, 16, rank=2, bias=False)))
        32
    """
    layers = tt_layers(model, adapter_name).values()
    return sum(_fixed(m) + sum(_sizes(m)) for m in layers)


def _check_unmerged(model: nn.Module, layers: Mapping[str, nn.Module]) -> None:
    """Refuse to round an update that is folded into its base weight."""
    for name, module in model.named_modules():
        merged = getattr(module, "merged_adapters", None)
        if not merged:
            continue
        for adapter in merged:
            if any(n.startswith(f"{name}.adapters.{adapter}.") for n in layers):
                raise TTValueError(
                    f"adapter {adapter!r} is merged into {name!r}: unmerge it before rounding "
                    "(its merged weight would no longer match its cores)"
                )


def check_budget(model: nn.Module, budget: int, *, adapter_name: str | None = None) -> int:
    """Check that :func:`fit_budget` can reach ``budget``; returns it. Changes nothing.

    Raises:
        TTValueError: ``budget`` is below :func:`minimum_parameters` (the message says both),
            or the adapter has no TT layers.
        TTTypeError: ``budget`` is not an int.

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> check_budget(nn.Sequential(TTLinear(16, 16, rank=2, bias=False)), 32)
        32
        >>> check_budget(nn.Sequential(TTLinear(16, 16, rank=2, bias=False)), 31)
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: budget must be at least 32 (every TT rank 1 in the ...
    """
    budget = check_int("budget", budget, minimum=0)
    layers = tt_layers(model, adapter_name)
    lowest = sum(_fixed(m) + sum(_sizes(m)) for m in layers.values())
    if budget < lowest:
        raise TTValueError(
            f"budget must be at least {lowest} (every TT rank 1 in the {len(layers)} TT layers, "
            f"biases included), got {budget}"
        )
    return budget


def fit_budget(
    model: nn.Module, budget: int, *, adapter_name: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Round an adapter's TT layers in place so that it has at most ``budget`` parameters.

    Ranks are chosen by the rule of the module docstring; each layer is then rounded by
    :func:`tensortrain.round_cores` with those ranks as caps (float64, cast back), so its weight
    error is at most the norm of its discarded singular values over all bonds (the TT-SVD bound).
    The cores become new Parameters (same dtype, device, ``requires_grad``): rebuild any
    optimizer over them. A budget at or above the current count changes nothing.

    Cost: per layer one QR and one SVD sweep for the spectra and one rounding,
    ``O(d (m n) r^3)``; nothing dense.

    Args:
        model: a patched model (or any model holding TT layers, see :func:`tt_layers`).
        budget: the largest number of adapter parameters (TT cores plus adapter biases, as
            :func:`adapter_parameters` counts them).
        adapter_name: the adapter to round (default: the active one).

    Returns:
        The new ranks ``(1, r_1, ..., 1)`` of every TT layer of the adapter, by module name.

    Raises:
        TTValueError: ``budget`` is below :func:`minimum_parameters`, the adapter has no TT
            layers, or it is merged; nothing changed.
        TTTypeError: ``budget`` is not an int.

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> model = nn.Sequential(TTLinear(64, 64, rank=8, bias=False))
        >>> fit_budget(model, 700)
        {'0': (1, 5, 1)}
        >>> adapter_parameters(model)
        640
    """
    budget = check_budget(model, budget, adapter_name=adapter_name)
    layers = tt_layers(model, adapter_name)
    _check_unmerged(model, layers)
    if budget >= sum(_count(m) for m in layers.values()):
        return {name: _ranks(m) for name, m in layers.items()}
    names = list(layers)
    fixed = sum(_fixed(m) for m in layers.values())
    new = allocate_ranks(
        [bond_spectra(_cores(layers[n])) for n in names],
        [_ranks(layers[n]) for n in names],
        [_sizes(layers[n]) for n in names],
        budget - fixed,
    )
    return _round_to(layers, dict(zip(names, new, strict=True)))


def _round_to(
    layers: Mapping[str, nn.Module], caps: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Round each layer named in ``caps`` to those ranks; every result before any change."""
    todo = {
        name: rounded_cores(_cores(layers[name]), max_rank=list(r)[1:-1])
        for name, r in caps.items()
        if tuple(r) != _ranks(layers[name])
    }
    for name, cores in todo.items():
        replace_cores(layers[name], cores)
    return {name: _ranks(m) for name, m in layers.items()}


def fit_ranks(
    model: nn.Module, ranks: Ranks, *, adapter_name: str | None = None
) -> dict[str, tuple[int, ...]]:
    """Round named TT layers of an adapter to given ranks (a per-module schedule).

    Args:
        model: a patched model (or any model holding TT layers).
        ranks: module name (as :func:`tt_layers` and :func:`fit_budget` name them) to a rank
            cap, an int for every bond or one per bond; or a function ``(name, layer)`` giving
            one (None: leave the layer). Layers not named keep their ranks; ranks never grow.
        adapter_name: the adapter (default: the active one).

    Returns:
        The ranks of every TT layer of the adapter afterwards, by module name.

    Raises:
        TTValueError: a name that is no TT layer of the adapter (valid names listed), a bad
            rank (named); nothing changed.

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> model = nn.Sequential(TTLinear(64, 64, rank=8), TTLinear(64, 64, rank=8))
        >>> fit_ranks(model, {"1": 2})
        {'0': (1, 8, 1), '1': (1, 2, 1)}
    """
    layers = tt_layers(model, adapter_name)
    _check_unmerged(model, layers)
    if callable(ranks):
        wanted = {n: r for n, m in layers.items() if (r := ranks(n, m)) is not None}
    elif isinstance(ranks, Mapping):
        unknown = [n for n in ranks if n not in layers]
        if unknown:
            raise TTValueError(
                f"ranks names {unknown[0]!r}, which is no TT layer of the adapter; valid names: "
                f"{', '.join(list(layers)[:4])}{', ...' if len(layers) > 4 else ''}"
            )
        wanted = dict(ranks)
    else:
        raise TTTypeError(f"ranks must be a mapping or a function, got {type(ranks).__name__}")
    caps = {}
    for name, spec in wanted.items():
        current = _ranks(layers[name])
        try:
            given = bond_caps(spec, len(current) - 1)
        except (TTValueError, TTTypeError, TTShapeError) as exc:  # name the module
            raise type(exc)(f"ranks[{name!r}]: {exc}") from exc
        bonds = [min(c or r, r) for c, r in zip(given, current[1:-1], strict=True)]
        caps[name] = (1, *bonds, 1)
    return _round_to(layers, caps)


# ---------------------------------------------------------------- the fine-tuning job's rules


@dataclass(frozen=True)
class RankBudget:
    """A run's rank budget: round the adapter to ``budget`` parameters once a fraction ``at``
    of the training steps is done (the fine-tuning job's ``--opt budget=N,budget_at=F``).

    Attributes:
        budget: the parameter budget (:func:`fit_budget`).
        at: the fraction of the steps after which to round, in ``[0, 1]``.
    """

    budget: int
    at: float = DEFAULT_BUDGET_AT

    def step(self, total_steps: int) -> int:
        """The step after which to round, of ``total_steps``.

        Example:
            >>> RankBudget(1000, at=0.5).step(10)
            5
        """
        return int(self.at * total_steps)

    def apply(self, model: nn.Module) -> dict[str, Any]:
        """Round ``model``'s active adapter to the budget (:func:`fit_budget`); returns what a run
        reports: ``budget``, ``adapter_params_before``, ``adapter_params_after``, ``ranks``.

        Example:
            >>> from tensortrain_nn import TTLinear
            >>> report = RankBudget(700).apply(nn.Sequential(TTLinear(64, 64, rank=8, bias=False)))
            >>> report["adapter_params_after"] <= 700
            True
        """
        before = adapter_parameters(model)
        ranks = fit_budget(model, self.budget)
        return {
            "budget": self.budget,
            "adapter_params_before": before,
            "adapter_params_after": adapter_parameters(model),
            "ranks": {name: list(r) for name, r in ranks.items()},
        }


def budget_options(method: str, options: Mapping[str, Any]) -> RankBudget | None:
    """The rank budget in a fine-tuning method's options (``budget``, ``budget_at``), checked
    once; None when there is none. The other options are the method's (see
    :func:`split_budget_options`).

    Raises:
        TTValueError: Budget options for a method other than rep / adp, ``budget_at`` without
            ``budget``, or ``budget_at`` outside ``[0, 1]`` (each names the option and value).
        TTTypeError: ``budget`` not an int.

    Example:
        >>> budget_options("rep", {"budget": 5000, "r": 8})
        RankBudget(budget=5000, at=0.33)
        >>> budget_options("lora", {"budget": 5000})
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: method option budget needs method rep or adp (TT ranks ...
    """
    given = [k for k in BUDGET_OPTIONS if k in options]
    if not given:
        return None
    if method not in BUDGET_METHODS:
        raise TTValueError(
            f"method option {given[0]} needs method rep or adp (TT ranks to round), "
            f"got method {method!r}"
        )
    if "budget" not in options:
        raise TTValueError("method option budget_at needs budget (the parameter budget)")
    budget = check_int("method option budget", options["budget"])
    at = options.get("budget_at", DEFAULT_BUDGET_AT)
    at = check_number("method option budget_at", at, minimum=0.0, maximum=1.0)
    return RankBudget(int(budget), float(at))


def split_budget_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` as ``(patch options, budget options)``.

    Example:
        >>> split_budget_options({"r": 8, "budget": 5000})
        ({'r': 8}, {'budget': 5000})
    """
    patch = {k: v for k, v in options.items() if k not in BUDGET_OPTIONS}
    return patch, {k: v for k, v in options.items() if k in BUDGET_OPTIONS}
