"""Builders shared by the core tests: random cores scaled to keep the product of order one."""

import torch


def scaled_cores(rows, cols, rank, gen, dtype=torch.float64, grad=False, tensor=False):
    """TT-matrix cores ``(r, m, n, r')``, or TT tensor cores ``(r, m, r')`` with ``tensor``.

    Inner ranks are all ``rank``; each core is divided by ``sqrt(m_k r_{k-1})``.
    """
    d = len(rows)
    ranks = [1] + [rank] * (d - 1) + [1]
    return [
        torch.randn(
            ranks[k],
            rows[k],
            *(() if tensor else (cols[k],)),
            ranks[k + 1],
            generator=gen,
            dtype=dtype,
            requires_grad=grad,
        )
        / (rows[k] * ranks[k]) ** 0.5
        for k in range(d)
    ]
