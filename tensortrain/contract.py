"""Applying a TT-matrix to a dense batch, with the contraction order planned by opt_einsum.

``tt_linear(x, w)`` computes ``x @ w.full().T`` (the convention of ``torch.nn.functional.linear``)
without forming the dense matrix, unless the cost model says that forming it is cheaper.

The plan, made once per ``(batch, row_modes, col_modes, ranks)`` and cached:

* ``tt`` cost: the FLOP count of the contraction path that opt_einsum's optimiser finds for
  ``x (B, n_1..n_d)`` with the ``d`` cores.
* ``dense`` cost: the FLOPs to reconstruct the ``(M, N)`` matrix core by core,
  ``sum_k 2 (prod_{j<k} m_j n_j) r_{k-1} m_k n_k r_k``, plus ``2 B M N`` for the matmul.
* The dense path is taken when its cost is below ``DENSE_SPEEDUP = 2`` times the ``tt`` cost: one
  large GEMM runs about twice as many FLOP/s as a chain of small contractions with transposes
  (measured on CPU: ``benchmarks/``). This happens for large batches with small or thin matrices;
  large square TT-matrices at moderate batch sizes stay in TT form.

Both paths are differentiable with respect to ``x`` and the cores.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import opt_einsum
import torch

from tensortrain._cores import check_cores, ranks_of
from tensortrain.errors import TTShapeError, TTTypeError
from tensortrain.matrix import TTMatrix

_LETTERS = string.ascii_letters  # torch.einsum accepts only these
#: How many times more FLOP/s a dense GEMM achieves than the TT contraction chain (cost model).
DENSE_SPEEDUP = 2.0


@dataclass(frozen=True)
class Plan:
    """How :func:`tt_linear` contracts one shape signature.

    Attributes:
        kind: ``"tt"`` (contract cores with the input) or ``"dense"`` (reconstruct, then matmul).
        tt_flops: FLOPs of the best TT contraction path.
        dense_flops: FLOPs of reconstruction plus dense matmul.
        expression: the compiled opt_einsum expression for the ``tt`` path (None for ``dense``).
    """

    kind: Literal["tt", "dense"]
    tt_flops: int
    dense_flops: int
    expression: Any


def _equation(d: int) -> str:
    if 3 * d + 2 > len(_LETTERS):
        raise TTShapeError(f"tt_linear supports at most {(len(_LETTERS) - 2) // 3} cores, got {d}")
    it = iter(_LETTERS)
    batch = next(it)
    rank = [next(it) for _ in range(d + 1)]
    row = [next(it) for _ in range(d)]
    col = [next(it) for _ in range(d)]
    terms = [batch + "".join(col)]
    terms += [rank[k] + row[k] + col[k] + rank[k + 1] for k in range(d)]
    return ",".join(terms) + "->" + batch + "".join(row)


@functools.lru_cache(maxsize=512)
def plan(
    batch: int, row_modes: tuple[int, ...], col_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> Plan:
    """The cached contraction plan for a batch of ``batch`` rows (see the module docstring).

    Example:
        >>> p = plan(256, (8, 8, 8, 8), (8, 8, 8, 8), (1, 8, 8, 8, 1))
        >>> p.kind
        'tt'
    """
    d = len(row_modes)
    eq = _equation(d)
    shapes = [(batch, *col_modes)]
    shapes += [(ranks[k], row_modes[k], col_modes[k], ranks[k + 1]) for k in range(d)]
    path, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize="auto-hq")
    tt_flops = int(info.opt_cost)
    M, N = math.prod(row_modes), math.prod(col_modes)
    dense_flops = 2 * batch * M * N
    prefix = 1
    for k in range(d):
        dense_flops += 2 * prefix * ranks[k] * row_modes[k] * col_modes[k] * ranks[k + 1]
        prefix *= row_modes[k] * col_modes[k]
    if dense_flops <= DENSE_SPEEDUP * tt_flops:
        return Plan("dense", tt_flops, dense_flops, None)
    expression = opt_einsum.contract_expression(eq, *shapes, optimize=path)
    return Plan("tt", tt_flops, dense_flops, expression)


def dense_weight(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The dense ``(M, N)`` matrix of TT-matrix cores (materialises it: ``O(M N)`` memory)."""
    return TTMatrix(cores).full()


def tt_linear(
    x: torch.Tensor,
    weight: TTMatrix | Sequence[torch.Tensor],
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``y = x @ W.T + bias`` with ``W`` a TT-matrix, planned by shape and cached.

    Args:
        x: dense input of shape ``(..., N)``, ``N = prod(col_modes)``; same dtype and device as the
            cores.
        weight: a :class:`TTMatrix` of shape ``(M, N)`` or its cores ``(r_{k-1}, m_k, n_k, r_k)``.
        bias: optional ``(M,)``.

    Returns:
        ``(..., M)``.

    Example:
        >>> w = TTMatrix([torch.randn(1, 4, 4, 3), torch.randn(3, 4, 4, 1)])
        >>> x = torch.randn(2, 5, 16)
        >>> tt_linear(x, w).shape
        torch.Size([2, 5, 16])
    """
    cores = weight.cores if isinstance(weight, TTMatrix) else check_cores(weight, 4, "weight")
    if not isinstance(x, torch.Tensor):
        raise TTTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    row_modes = tuple(int(c.shape[1]) for c in cores)
    col_modes = tuple(int(c.shape[2]) for c in cores)
    M, N = math.prod(row_modes), math.prod(col_modes)
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
    lead = x.shape[:-1]
    batch = math.prod(lead)
    p = plan(max(batch, 1), row_modes, col_modes, ranks_of(cores))
    if p.kind == "dense" or batch == 0:
        y = x @ dense_weight(cores).T
    else:
        y = p.expression(x.reshape(batch, *col_modes), *cores, backend="torch").reshape(*lead, M)
    return y if bias is None else y + bias
