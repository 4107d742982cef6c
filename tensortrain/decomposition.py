"""TT-SVD: dense tensors and matrices to tensor-train format (Oseledets, 2011)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tensortrain._cores import bond_caps, check_eps, check_modes, split_modes
from tensortrain._scale import check_finite, exponent, put_scale, times_pow2
from tensortrain._svd import truncated_svd
from tensortrain.errors import TTShapeError, TTTypeError
from tensortrain.matrix import TTMatrix
from tensortrain.tensor import TTTensor


def svd_cores(
    x: torch.Tensor, max_rank: int | Sequence[int] | None = None, eps: float | None = None
) -> list[torch.Tensor]:
    """TT-SVD on plain tensors: the cores of :func:`tt_svd`."""
    if not isinstance(x, torch.Tensor):
        raise TTTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TTTypeError(f"x must have a floating or complex dtype, got {x.dtype}")
    if x.ndim < 1 or x.numel() == 0:
        raise TTShapeError(
            f"x must have at least one dimension and no zero sizes, got {tuple(x.shape)}"
        )
    eps = check_eps(eps)
    d = x.ndim
    caps = bond_caps(max_rank, d)
    check_finite(x, "x")
    power = exponent(x)
    rest = times_pow2(x, -power)  # largest entry in [0.5, 1): no square over- or underflows
    delta = 0.0
    if eps is not None and d > 1:
        delta = eps / math.sqrt(d - 1) * float(torch.linalg.vector_norm(rest.detach()))
    cores = []
    r_prev = 1
    for k in range(d - 1):
        n = x.shape[k]
        u, s, vh = truncated_svd(rest.reshape(r_prev * n, -1), delta, caps[k])
        r = s.shape[0]
        cores.append(u.reshape(r_prev, n, r))
        rest = s[:, None].to(vh.dtype) * vh
        r_prev = r
    cores.append(rest.reshape(r_prev, x.shape[-1], 1))
    return put_scale(cores, d - 1, power)


def tt_svd(
    x: torch.Tensor, max_rank: int | Sequence[int] | None = None, eps: float | None = None
) -> TTTensor:
    """Decompose a dense tensor into tensor-train format by sequential truncated SVDs.

    With ``eps``, each of the ``d - 1`` SVDs drops singular values whose tail norm is at most
    ``eps / sqrt(d - 1) * ||x||_F``, so the result satisfies ``||x - tt||_F <= eps * ||x||_F``.
    With ``max_rank``, no bond rank exceeds it. With both, ``max_rank`` wins: the ranks are capped
    even where that breaks the ``eps`` bound. With neither, only exactly-zero singular values are
    dropped and the reconstruction is exact to round-off. The first ``d - 1`` cores are
    left-orthogonal. Half-precision input is decomposed in float32 and cast back.

    Real and complex input are supported (complex: cores left-orthogonal under the conjugate
    transpose). The input is scaled by an exact power of two before the SVDs, so the bound holds
    at any magnitude; the factor goes back on the last core (spread over all cores when the norm
    of ``x`` is beyond the dtype's range).

    Args:
        x: dense tensor of shape ``(n_1, ..., n_d)``, ``d >= 1``.
        max_rank: an int for every bond, or ``d - 1`` per-bond caps (``d + 1`` with the
            boundary 1s).
        eps: relative Frobenius error allowed, ``>= 0``.

    Returns:
        A :class:`TTTensor` with cores ``(r_{k-1}, n_k, r_k)``.

    Raises:
        TTValueError: ``x`` contains NaN or inf; a bad ``eps`` or ``max_rank`` (named).
        TTTypeError: ``x`` is not a floating or complex tensor.
        TTShapeError: ``x`` has no dimension or a zero size.

    Example:
        >>> x = torch.randn(4, 5, 6, dtype=torch.float64)
        >>> tt = tt_svd(x, eps=0.1)
        >>> bool(torch.linalg.norm(tt.full() - x) <= 0.1 * torch.linalg.norm(x))
        True
    """
    return TTTensor(svd_cores(x, max_rank=max_rank, eps=eps))


def tt_matrix_svd(
    x: torch.Tensor,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    max_rank: int | Sequence[int] | None = None,
    eps: float | None = None,
) -> TTMatrix:
    """Decompose a dense ``(M, N)`` matrix into a TT-matrix with the given mode shapes.

    The matrix is viewed as the tensor of shape ``(m_1 n_1, ..., m_d n_d)`` (row multi-index
    ``(i_1..i_d)`` and column multi-index ``(j_1..j_d)`` in row-major order, interleaved) and
    decomposed by :func:`tt_svd`, so the same ``eps`` / ``max_rank`` guarantees hold on the matrix.

    Args:
        x: dense matrix of shape ``(M, N)`` with ``M = prod(row_modes)``, ``N = prod(col_modes)``.
        row_modes: ``(m_1, ..., m_d)``, the output modes.
        col_modes: ``(n_1, ..., n_d)``, the input modes, same length.
        max_rank: as in :func:`tt_svd`.
        eps: as in :func:`tt_svd`.

    Returns:
        A :class:`TTMatrix` with cores ``(r_{k-1}, m_k, n_k, r_k)``.

    Example:
        >>> w = torch.randn(12, 20, dtype=torch.float64)
        >>> tt = tt_matrix_svd(w, (3, 4), (4, 5))
        >>> torch.allclose(tt.full(), w)
        True
    """
    if not isinstance(x, torch.Tensor):
        raise TTTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    row_modes, col_modes = check_modes("row_modes", row_modes), check_modes("col_modes", col_modes)
    if len(row_modes) != len(col_modes):
        raise TTShapeError(
            f"row_modes and col_modes must be of equal length, got {row_modes} and {col_modes}"
        )
    expected = (math.prod(row_modes), math.prod(col_modes))
    if x.ndim != 2 or tuple(x.shape) != expected:
        raise TTShapeError(
            f"x must have shape (prod(row_modes), prod(col_modes)) = {expected}, "
            f"got {tuple(x.shape)}"
        )
    d = len(row_modes)
    perm = [i for k in range(d) for i in (k, d + k)]
    merged = x.reshape(*row_modes, *col_modes).permute(perm)
    merged = merged.reshape([m * n for m, n in zip(row_modes, col_modes, strict=True)])
    cores = svd_cores(merged, max_rank=max_rank, eps=eps)
    return TTMatrix(split_modes(cores, row_modes, col_modes))
