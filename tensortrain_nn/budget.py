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

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
from torch import nn

from tensortrain import orthogonalize
from tensortrain._checks import check_int
from tensortrain._cores import bond_caps
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain_nn.linear import replace_cores, rounded_cores
from tensortrain_nn.surgery.flags import adapter_of
from tensortrain_nn.surgery.tensors import is_tt_layer

#: Method options of the fine-tuning job that this module reads (``--opt budget=N``).
BUDGET_OPTIONS = ("budget", "budget_at")
#: Default ``budget_at``: round after this fraction of the training steps.
DEFAULT_BUDGET_AT = 0.33

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


def _cost(sizes: Sequence[int], ranks: Sequence[int]) -> int:
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(sizes))


def minimum_parameters(model: nn.Module, adapter_name: str | None = None) -> int:
    """The smallest count rounding can reach: every TT rank 1 (biases kept).

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> minimum_parameters(nn.Sequential(TTLinear(16, 16, rank=2, bias=False)))
        32
    """
    layers = tt_layers(model, adapter_name).values()
    return sum(_fixed(m) + sum(_sizes(m)) for m in layers)


def bond_spectra(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Singular values of a TT tensor's unfolding at each bond, in float64, largest first.

    Bond ``k`` (``k = 1..d-1``) separates modes ``1..k`` from ``k+1..d``: the values are those of
    the dense ``(n_1...n_k, n_{k+1}...n_d)`` unfolding, computed from the cores by one QR sweep
    and one SVD sweep (``O(d n r^3)``, nothing dense). TT-matrix cores ``(r, m, n, r')`` count as
    TT cores with mode ``m n``. Bond ``k`` holds at most ``r_k`` values (fewer where the cores
    allow less).

    Example:
        >>> x = torch.randn(4, 5, 6, dtype=torch.float64)
        >>> from tensortrain import tt_svd
        >>> s = bond_spectra(tt_svd(x).cores)
        >>> torch.allclose(s[0], torch.linalg.svdvals(x.reshape(4, 30)))
        True
    """
    merged = [c.detach().to(torch.float64).reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    with torch.no_grad():
        out = orthogonalize(merged)
        spectra = []
        for k in range(len(out) - 1):
            r_prev, n, r = out[k].shape
            _, s, vh = torch.linalg.svd(out[k].reshape(r_prev * n, r), full_matrices=False)
            spectra.append(s)
            out[k + 1] = torch.einsum("ab,bnc->anc", s[:, None] * vh, out[k + 1])
    return spectra


def allocate_ranks(
    spectra: Sequence[Sequence[torch.Tensor]],
    ranks: Sequence[Sequence[int]],
    sizes: Sequence[Sequence[int]],
    budget: int,
) -> list[tuple[int, ...]]:
    """Ranks within ``budget`` by the rule of the module docstring (the caller checked it fits).

    Args:
        spectra: per layer, per bond, the singular values (any scale: each layer's are divided
            by their norm here).
        ranks: per layer, the current ranks ``(1, r_1, ..., r_{d-1}, 1)``.
        sizes: per layer, the mode sizes ``(n_1, ..., n_d)`` of its cores.
        budget: the largest total of ``sum_k r_{k-1} n_k r_k`` over the layers.

    Returns:
        Per layer, the new ranks (never above the current ones).

    Example:
        >>> s = [torch.tensor([3.0, 1.0]), torch.tensor([2.0, 0.1])]
        >>> allocate_ranks([s], [(1, 2, 2, 1)], [(4, 4, 4)], 28)
        [(1, 2, 1, 1)]
    """
    new = [list(r) for r in ranks]
    total = sum(_cost(n, r) for n, r in zip(sizes, new, strict=True))
    heap: list[tuple[float, int, int]] = []

    def push(i: int, k: int) -> None:
        r = new[i][k]
        if r > 1:
            s = spectra[i][k - 1]
            norm = float(torch.linalg.vector_norm(s))
            value = float(s[r - 1]) / norm if r - 1 < len(s) and norm > 0 else 0.0
            heapq.heappush(heap, (value, i, k))

    for i, r in enumerate(new):
        for k in range(1, len(r) - 1):
            push(i, k)
    while total > budget and heap:
        _, i, k = heapq.heappop(heap)
        r, n = new[i], sizes[i]
        total -= r[k - 1] * n[k - 1] + n[k] * r[k + 1]  # one rank less at bond k
        r[k] -= 1
        push(i, k)
    return [tuple(r) for r in new]


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
