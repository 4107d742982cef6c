"""Applying a TT-matrix to a dense batch, with the contraction planned from shapes.

``tt_linear(x, w)`` computes ``x @ w.full().T`` (the convention of ``torch.nn.functional.linear``)
without forming the dense matrix, unless the cost model says that forming it is cheaper. Three
modules do the work, each on its own:

* planning (:mod:`tensortrain._planning`): the paths (``tt``: the cores merged into blocks and
  swept; ``dense``: the matrix reconstructed), their modelled costs, and the :class:`Plan`;
* measuring (:mod:`tensortrain._measuring`): :data:`plan`, the one :class:`~._measuring.Planner`,
  owns the plan cache, the mode (:func:`set_plan_mode`, :func:`plan_mode`) and the measured picks;
* running (:mod:`tensortrain._running`): the block sweep and its autograd function.

Both paths are differentiable with respect to ``x`` and the cores.

Planning is plain Python on shapes, cached, and opaque to ``torch.compile``
(``torch.compiler.assume_constant_result``), so compiled layers never trace it. Under compile the
batch is planned for the power of two at or above it, so that a symbolic batch (dynamic shapes)
needs one graph per bucket, and the ``tt`` path compiles whole with its backward
(``fullgraph=True``). The cores' shapes must be static there, as dynamo keeps those of parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch

from tensortrain._base import TTBase
from tensortrain._blocks import dense
from tensortrain._cores import check_cores, ranks_of
from tensortrain._measuring import PlanMode, Planner
from tensortrain._planning import DENSE, MAX_CORES, Groups, Path, Plan, PlanKind, Signature
from tensortrain._running import run_tt
from tensortrain.errors import TTShapeError, TTTypeError

__all__ = [
    "MAX_CORES",
    "Groups",
    "Path",
    "Plan",
    "PlanKind",
    "PlanMode",
    "plan",
    "plan_mode",
    "run_path",
    "set_plan_mode",
    "tt_linear",
]


def run_path(x: torch.Tensor, cores: Sequence[torch.Tensor], path: Path) -> torch.Tensor:
    """``x (B, N) @ W.T`` by ``path``: the block sweep, or the dense matrix and one GEMM."""
    return run_tt(x, cores, path.groups) if path.kind == "tt" else x @ dense(cores).T


#: The planner :func:`tt_linear` uses: ``plan(batch, row_modes, col_modes, ranks)`` returns the
#: cached :class:`Plan`; ``plan.cache_info()`` reports the cache.
plan = Planner(run_path)


def set_plan_mode(mode: PlanMode) -> PlanMode:
    """Choose how :func:`tt_linear` picks its path; returns the mode that was in force.

    ``"model"`` (the default) takes the cost model's pick (:data:`plan`), from shapes alone.
    ``"measure"`` times, on the first call for each signature (batch, modes, ranks, dtype,
    device, torch threads), the plan's alternatives (the paths of least modelled cost) on that
    call's own input, without autograd, and keeps the fastest, as ``torch.backends.cudnn.benchmark``
    does: worth it for fixed shapes on a machine the constants were not fitted on (a GPU, say).
    Results may then differ in the last bits from run to run, as the path may. Compiled code
    (``torch.compile``) plans by the model. Every call clears the measured picks.
    :func:`plan_mode` does the same for a ``with`` block.

    Args:
        mode: ``"model"`` or ``"measure"``.

    Returns:
        The mode before the call.

    Raises:
        TTValueError: ``mode`` is neither.

    Example:
        >>> before = set_plan_mode("measure")
        >>> w = [torch.randn(1, 8, 8, 4), torch.randn(4, 8, 8, 1)]
        >>> tt_linear(torch.randn(32, 64), w).shape
        torch.Size([32, 64])
        >>> set_plan_mode(before)
        'measure'
    """
    return plan.set_mode(mode)


def plan_mode(mode: PlanMode) -> AbstractContextManager[PlanMode]:
    """:func:`set_plan_mode` for a ``with`` block: the mode before comes back at its end.

    The block's value is the mode before. The mode is restored when the block raises too, and,
    as with :func:`set_plan_mode`, entering and leaving clear the measured picks.

    Args:
        mode: ``"model"`` or ``"measure"``.

    Raises:
        TTValueError: ``mode`` is neither (on entering, nothing changed).

    Example:
        >>> w = [torch.randn(1, 8, 8, 4), torch.randn(4, 8, 8, 1)]
        >>> with plan_mode("measure"):
        ...     tt_linear(torch.randn(32, 64), w).shape
        torch.Size([32, 64])
        >>> plan.mode
        'model'
    """
    return plan.using(mode)


@torch.compiler.assume_constant_result
def _planned(
    batch: int, row_modes: tuple[int, ...], col_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> Path:
    """The modelled path of a checked signature: plain data to dynamo, which never traces it."""
    return plan.cached(Signature(batch, row_modes, col_modes, ranks)).path


def _plan_batch(batch: int) -> int:
    """The batch to plan for: ``batch``, or under ``torch.compile`` the power of two at or above
    it (a symbolic batch, with dynamic shapes, cannot key the plan; the comparisons here guard
    the graph to its bucket)."""
    if not torch.compiler.is_compiling():
        return batch
    bucket = 1
    while bucket < batch:
        bucket *= 2
    return bucket


def _choose_path(x: torch.Tensor, cores: Sequence[torch.Tensor]) -> Path:
    """The path for ``x (B, N)``: dense for an empty batch, else the measured or modelled one."""
    batch = x.shape[0]
    if not batch:
        return DENSE
    row_modes = tuple(int(c.shape[1]) for c in cores)
    col_modes = tuple(int(c.shape[2]) for c in cores)
    ranks = ranks_of(cores)
    if not torch.compiler.is_compiling() and plan.mode == "measure":
        return plan.measure(x, cores, Signature(batch, row_modes, col_modes, ranks))
    return _planned(_plan_batch(batch), row_modes, col_modes, ranks)


def tt_linear(
    x: torch.Tensor,
    weight: TTBase | Sequence[torch.Tensor],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` with ``W`` a TT-matrix, planned by shape and cached.

    Elementwise like ``torch.nn.functional.linear``: NaN or inf in ``x``, the cores or ``bias``
    propagate to the entries they touch, as in a dense matmul.

    Args:
        x: dense input of shape ``(..., N)``, ``N = prod(col_modes)``; same dtype and device as the
            cores.
        weight: a :class:`~tensortrain.TTMatrix` of shape ``(M, N)`` or its cores
            ``(r_{k-1}, m_k, n_k, r_k)``.
        bias: optional ``(M,)``, same dtype and device as ``x`` (never cast: a float64 bias with
            float32 ``x`` is refused, as a float64 ``x`` with float32 cores is).

    Returns:
        ``(..., M)``, in the dtype of ``x``.

    Raises:
        TTTypeError: ``weight`` is not a TT-matrix (or its cores), ``x`` or ``bias`` is not a
            tensor, or their dtypes or devices differ from the cores'.
        TTShapeError: ``x`` is not ``(..., N)`` or ``bias`` is not ``(M,)``.

    Example:
        >>> from tensortrain import TTMatrix
        >>> w = TTMatrix([torch.randn(1, 4, 4, 3), torch.randn(3, 4, 4, 1)])
        >>> x = torch.randn(2, 5, 16)
        >>> tt_linear(x, w).shape
        torch.Size([2, 5, 16])
    """
    cores = _checked_weight(weight, x)
    M = math.prod([int(c.shape[1]) for c in cores])
    N = math.prod([int(c.shape[2]) for c in cores])
    if bias is not None:
        _check_bias(bias, M, x)
    lead = x.shape[:-1]
    flat = x.reshape(math.prod(lead), N)
    y = run_path(flat, cores, _choose_path(flat, cores)).reshape(*lead, M)
    return y if bias is None else y + bias


def _checked_weight(weight: TTBase | Sequence[torch.Tensor], x: object) -> list[torch.Tensor]:
    """The cores of ``weight``, checked against ``x`` (a tensor ``(..., N)``, same dtype/device)."""
    if isinstance(weight, TTBase):
        if weight.core_ndim != 4:
            raise TTTypeError(
                f"weight must be a TTMatrix or its cores, got a {type(weight).__name__}"
            )
        cores = list(weight.cores)
    else:
        cores = list(check_cores(weight, 4, "weight"))
    if not isinstance(x, torch.Tensor):
        raise TTTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    M = math.prod(tuple(int(c.shape[1]) for c in cores))
    N = math.prod(tuple(int(c.shape[2]) for c in cores))
    if x.ndim < 1 or x.shape[-1] != N:
        raise TTShapeError(
            f"x must have shape (..., {N}) to match weight of shape ({M}, {N}), "
            f"got {tuple(x.shape)}"
        )
    if x.dtype != cores[0].dtype or x.device != cores[0].device:
        raise TTTypeError(
            f"x has dtype {x.dtype} on {x.device} but weight has {cores[0].dtype} on "
            f"{cores[0].device}"
        )
    return cores


def _check_bias(bias: object, rows: int, x: torch.Tensor) -> None:
    """Raise unless ``bias`` is an ``(M,)`` tensor of the dtype and device of ``x``."""
    if not isinstance(bias, torch.Tensor):
        raise TTTypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    if tuple(bias.shape) != (rows,):
        raise TTShapeError(
            f"bias must have shape (M,) = ({rows},) to match weight's rows, got {tuple(bias.shape)}"
        )
    if bias.dtype != x.dtype or bias.device != x.device:
        raise TTTypeError(
            f"bias has dtype {bias.dtype} on {bias.device} but x has {x.dtype} on {x.device}"
        )
