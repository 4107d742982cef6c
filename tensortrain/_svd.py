"""Truncated SVD with the rank rule shared by TT-SVD and rounding.

Wide float64 matrices (the unfoldings of TT-SVD) take the Gram side: the eigendecomposition of the
small ``p x p`` matrix ``A A^T`` instead of an SVD of ``A``, which on CPU is many times faster for
``q >= 2 p``. Its eigenvalues carry an absolute error of about ``p * eps_mach * ||A||^2``, so that
path is taken only where this cannot move the rank decision nor the error bound: the tolerance
``delta`` must be far above that error (``delta^2 >= GRAM_MIN_DELTA2 * ||A||^2``; the error margin
is then subtracted from ``delta^2``), or zero with a rank cap below ``p`` that truncates anyway.
Everywhere else (exact decompositions, tiny tolerances, float32 and half precision, and whenever
autograd is recording) the plain SVD runs.
"""

from __future__ import annotations

import torch

#: Dtypes that ``torch.linalg.svd`` lacks, and the dtype they are decomposed in.
_WIDER = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex32: torch.complex64,
}
#: Smallest ``delta^2 / ||A||^2`` for which the Gram side may decide the rank (float64 only).
GRAM_MIN_DELTA2 = 1e-8
#: The Gram side is used when the matrix is at least this many times wider than tall.
GRAM_MIN_ASPECT = 2


def _use_gram(mat: torch.Tensor, delta: float | torch.Tensor, cap: int | None) -> bool:
    p, q = mat.shape
    if mat.dtype != torch.float64 or mat.requires_grad or q < GRAM_MIN_ASPECT * p or p < 2:
        return False
    if cap is not None and cap < p:
        return True
    return float(delta) > 0.0


def rank_from_tail(tail2: torch.Tensor, delta2: torch.Tensor, cap: int | None) -> int:
    rank = max(1, int((tail2 > delta2).sum()))
    return rank if cap is None else min(rank, cap)


def _gram_svd(
    mat: torch.Tensor, delta: float | torch.Tensor, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Truncated SVD of a wide float64 matrix from ``eigh(A A^T)``; None when not safe."""
    p = mat.shape[0]
    gram = mat @ mat.mT
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals, evecs = torch.flip(evals, (0,)), torch.flip(evecs, (1,))
    total = evals.sum().clamp_min(0)
    margin = 4 * p * torch.finfo(mat.dtype).eps * total
    delta2 = torch.as_tensor(delta, dtype=evals.dtype) ** 2
    if delta2 > 0 and delta2 < GRAM_MIN_DELTA2 * total:
        return None  # a tolerance this small needs the SVD's accuracy to pick the rank
    evals = evals.clamp_min(0)
    tail2 = torch.flip(torch.cumsum(torch.flip(evals, (0,)), 0), (0,))
    rank = rank_from_tail(tail2, (delta2 - margin).clamp_min(0), cap)
    u = evecs[:, :rank]
    rest = u.mT @ mat  # = diag(s) @ vh, exactly the projection
    s = torch.linalg.vector_norm(rest, dim=1)
    vh = rest / torch.where(s > 0, s, torch.ones_like(s))[:, None]
    return u, s, vh


def truncated_svd(
    mat: torch.Tensor, delta: float | torch.Tensor, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``mat`` truncated to the smallest rank whose discarded tail has norm ``<= delta``.

    The rank is then capped by ``cap`` (the cap wins over ``delta``) and is at least 1. Wide float64
    matrices may take the Gram side (see the module docstring): ``U`` is then orthonormal to
    round-off, ``S`` holds the row norms of ``U^T mat`` and ``diag(S) @ Vh = U^T mat`` exactly.

    Args:
        mat: ``(p, q)`` real or complex matrix, entries of order 1 at most (the squares of its
            singular values and of ``delta`` must not overflow). Half precision is decomposed in
            float32 (complex32 in complex64) and cast back.
        delta: the largest Frobenius norm of the discarded singular values.
        cap: the largest rank allowed, or None.

    Returns:
        ``U (p, r)``, ``S (r,)``, ``Vh (r, q)`` with ``U @ diag(S) @ Vh`` the truncation.
    """
    if _use_gram(mat, delta, cap):
        out = _gram_svd(mat, delta, cap)
        if out is not None:
            return out
    work = mat.to(_WIDER[mat.dtype]) if mat.dtype in _WIDER else mat
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    tail2 = torch.flip(torch.cumsum(torch.flip(s.detach() ** 2, (0,)), 0), (0,))
    delta2 = torch.as_tensor(delta, dtype=tail2.dtype, device=tail2.device) ** 2
    rank = rank_from_tail(tail2, delta2, cap)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if work is not mat:
        u, s, vh = u.to(mat.dtype), s.to(mat.dtype), vh.to(mat.dtype)
    return u, s, vh
