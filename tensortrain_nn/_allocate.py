"""The rank allocation of :mod:`tensortrain_nn.budget`: bond spectra from the cores, and the
global "largest singular values survive" rule (see that module's docstring)."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from tensortrain import orthogonalize


def _cost(sizes: Sequence[int], ranks: Sequence[int]) -> int:
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(sizes))


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
