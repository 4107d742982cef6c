"""Consecutive TT-matrix cores merged into blocks, and the dense matrix built from two blocks.

The one block merge of the package: :func:`tensortrain.contract.tt_linear` merges the cores of
each planned block with it, and :func:`dense` (behind :meth:`TTMatrix.full`) builds the dense
matrix from two of them. Works on already validated cores ``(r_{k-1}, m_k, n_k, r_k)``.

Example:
    >>> cores = [torch.randn(1, 2, 3, 4), torch.randn(4, 5, 6, 2), torch.randn(2, 1, 2, 1)]
    >>> tuple(merge_block(cores, 0, 2).shape)
    (1, 10, 18, 2)
    >>> tuple(dense(cores).shape)
    (10, 36)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def merge_block(cores: Sequence[torch.Tensor], k0: int, k1: int) -> torch.Tensor:
    """Cores ``k0..k1-1`` merged into one ``(r_{k0}, prod m, prod n, r_{k1})`` block.

    Row and column indices of the block are row-major over the merged cores' modes.
    """
    blk = cores[k0]
    for core in cores[k0 + 1 : k1]:
        r, m, n, _ = blk.shape
        _, m2, n2, t = core.shape
        blk = torch.einsum("amns,sxyt->amxnyt", blk, core).reshape(r, m * m2, n * n2, t)
    return blk


def dense(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The dense ``(M, N)`` matrix of validated TT-matrix cores: ``O(M N r)`` time.

    For hot paths (a layer rebuilding its weight every forward): no validation, no object. The
    cores are split into a left and a right half, each merged into a block ``(M_1, N_1, r)`` and
    ``(r, M_2, N_2)``; one batched matmul over ``(M_1, M_2)`` then writes the result directly in
    row-major ``(M, N)`` order, with no transpose of the big matrix.
    """
    d = len(cores)
    if d == 1:
        return cores[0][0, :, :, 0]
    k = d // 2
    left = merge_block(cores, 0, k)[0]  # (M_1, N_1, r)
    right = merge_block(cores, k, d)[..., 0]  # (r, M_2, N_2)
    out = torch.matmul(left.unsqueeze(1), right.transpose(0, 1).unsqueeze(0))
    # (M_1, M_2, N_1, N_2) is row-major (M, N)
    return out.reshape(out.shape[0] * out.shape[1], out.shape[2] * out.shape[3])
