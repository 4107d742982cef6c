"""Truncated SVD with the rank rule shared by TT-SVD and rounding."""

from __future__ import annotations

import torch

_HALF = (torch.float16, torch.bfloat16)


def truncated_svd(
    mat: torch.Tensor, delta: float | torch.Tensor, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of ``mat`` truncated to the smallest rank whose discarded tail has norm ``<= delta``.

    The rank is then capped by ``cap`` (the cap wins over ``delta``) and is at least 1.

    Args:
        mat: ``(p, q)`` matrix. Half precision is decomposed in float32 and cast back.
        delta: the largest Frobenius norm of the discarded singular values.
        cap: the largest rank allowed, or None.

    Returns:
        ``U (p, r)``, ``S (r,)``, ``Vh (r, q)`` with ``U @ diag(S) @ Vh`` the truncation.
    """
    work = mat.float() if mat.dtype in _HALF else mat
    u, s, vh = torch.linalg.svd(work, full_matrices=False)
    tail2 = torch.flip(torch.cumsum(torch.flip(s.detach() ** 2, (0,)), 0), (0,))
    delta2 = torch.as_tensor(delta, dtype=tail2.dtype, device=tail2.device) ** 2
    rank = max(1, int((tail2 > delta2).sum()))
    if cap is not None:
        rank = min(rank, cap)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if work is not mat:
        u, s, vh = u.to(mat.dtype), s.to(mat.dtype), vh.to(mat.dtype)
    return u, s, vh
