"""Running the ``tt`` path of :func:`tensortrain.tt_linear`: the block sweep and its autograd.

The running tensor keeps the layout ``(B, N_1..N_{j-1}, N_j R_j, M_{j+1}..M_G)``, so each step is
one matrix product (a single GEMM for the last block, a batched one with the block's
``(R_{j-1} M_j, N_j R_j)`` matrix broadcast otherwise) and no step permutes or copies its input.

On CPU the batch is swept in chunks of rows sized so that the intermediates stay in cache
(:data:`CHUNK_BYTES`): every step is independent per row, so the result is the same, and a chain
of small products then runs near the FLOP rate of one large GEMM.

The custom autograd function stores only ``x`` and the blocks and recomputes the sweep's
intermediates in the backward pass, chunk by chunk: each is up to ``R`` times the size of ``x``,
and recomputing costs one forward sweep but its last step, on data already in cache (skipped when
no core needs a gradient). The blocks travel as one flat tensor, a signature dynamo traces, so the
path compiles whole with its backward under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import torch

from tensortrain._blocks import merge_block
from tensortrain._planning import Groups

#: On CPU the batch is swept in chunks whose largest intermediate holds about this many bytes per
#: torch thread, so that each step reads the previous step's output from cache.
CHUNK_BYTES = 1 << 20

Dims = tuple[tuple[int, int, int, int], ...]  # per block (R_prev, M_j, N_j, R_j)


def _widths(dims: Dims) -> list[int]:
    """Entries per row of ``x`` and of each step's output, in sweep order (last block first)."""
    n_before, q = math.prod([n for _, _, n, _ in dims]), 1
    widths = [n_before]
    for r0, m, n, _ in reversed(dims):
        n_before, q = n_before // n, q * m
        widths.append(n_before * r0 * q)
    return widths


@torch.compiler.assume_constant_result
def _threads() -> int:
    """torch's thread count, a constant to dynamo."""
    return torch.get_num_threads()


def chunks(x: torch.Tensor, dims: Dims) -> list[slice]:
    """The chunks of rows of ``x``: one off CPU, else as many rows each as fit the chunk budget.

    A while loop, not ``range``: under ``torch.compile`` with a symbolic batch its comparisons
    guard the graph to the batches that make as many chunks.
    """
    batch = x.shape[0]
    if x.device.type != "cpu":
        return [slice(0, batch)]
    rows = max(1, CHUNK_BYTES * _threads() // (max(_widths(dims)) * x.element_size()))
    parts, start = [], 0
    while start < batch:
        parts.append(slice(start, start + rows))
        start += rows
    return parts


def _sweep(
    x: torch.Tensor,
    dims: Dims,
    mats: Sequence[torch.Tensor],
    stop: int = 0,
    out: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Run the blocks from last to ``stop``; return ``x`` and each step's output, in that order.

    ``x`` is ``(B, N)``; ``mats[j]`` is block ``j`` as an ``(R_{j-1} M_j, N_j R_j)`` matrix. The
    input of step ``j`` is laid out ``(B N_{<j}, N_j R_j, M_{>j})``. The last step writes into
    ``out`` (contiguous ``(B, M)``) when given.
    """
    batch = x.shape[0]
    n_before = math.prod([n for _, _, n, _ in dims])
    q = 1
    states = [x]
    for j in range(len(dims) - 1, stop - 1, -1):
        r0, m, n, r1 = dims[j]
        n_before //= n
        p, t = batch * n_before, states[-1]
        dest = out.view(p, -1) if out is not None and j == stop else None
        if q == 1:
            states.append(torch.mm(t.reshape(p, n * r1), mats[j].mT, out=dest))
        else:  # the block broadcast over the batch without a copy: bmm writes (P, R, Q)
            dest = None if dest is None else dest.view(p, r0 * m, q)
            a = mats[j].expand(p, *mats[j].shape)
            states.append(torch.bmm(a, t.reshape(p, n * r1, q), out=dest))
        q *= m
    return states


def _backward_chunk(
    grad: torch.Tensor,
    dims: Dims,
    mats: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor | None],
    states: Sequence[torch.Tensor],
    dx: torch.Tensor | None,
) -> None:
    """Backward of one chunk of rows: add the blocks' gradients into ``grads``, write ``dx``.

    ``states`` are the inputs of the steps in sweep order (``x`` first), or ``()`` when no block
    needs its gradient.
    """
    g_count = len(dims)
    n_before, q = 1, math.prod([m for _, m, _, _ in dims])
    g = grad
    for j in range(g_count):
        r0, m, n, r1 = dims[j]
        q //= m
        p = grad.shape[0] * n_before
        acc, t = grads[j], states[g_count - 1 - j] if states else None
        more = j + 1 < g_count or dx is not None
        if q == 1:
            g2 = g.reshape(p, r0 * m)
            if acc is not None and t is not None:
                acc.addmm_(g2.mT, t.reshape(p, n * r1))
            if more:  # the last product writes dx in place
                out = dx.view(p, n * r1) if dx is not None and j + 1 == g_count else None
                g = torch.mm(g2, mats[j], out=out)
        else:
            g3 = g.reshape(p, r0 * m, q)
            if acc is not None and t is not None:  # the chunk's transposed copies are in cache
                t3 = t.reshape(p, n * r1, q).transpose(0, 1).reshape(n * r1, p * q)
                acc.addmm_(g3.transpose(0, 1).reshape(r0 * m, p * q), t3.mT)
            if more:
                a = mats[j].mT
                g = torch.bmm(a.expand(p, *a.shape), g3)
        n_before *= n


def _block_mats(flat: torch.Tensor, dims: Dims) -> list[torch.Tensor]:
    """The blocks in ``flat`` as ``(R_{j-1} M_j, N_j R_j)`` matrices (views)."""
    mats, start = [], 0
    for r0, m, n, r1 in dims:
        mats.append(flat[start : start + r0 * m * n * r1].view(r0 * m, n * r1))
        start += r0 * m * n * r1
    return mats


class _TTLinear(torch.autograd.Function):
    """``y = x @ W.T`` through the block sweep, chunk by chunk; backward recomputes the sweep."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dims: Dims, flat: torch.Tensor) -> torch.Tensor:
        ctx.dims = dims
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, flat)  # x: the blocks' grads
        mats = _block_mats(flat, dims)
        y = x.new_empty(x.shape[0], math.prod([m for _, m, _, _ in dims]))
        for part in chunks(x, dims):
            _sweep(x[part], dims, mats, out=y[part])
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        dims: Dims = ctx.dims
        x, flat = ctx.saved_tensors
        mats = _block_mats(flat, dims)
        dflat = torch.zeros_like(flat) if ctx.needs_input_grad[2] else None
        grads = [None] * len(dims) if dflat is None else _block_mats(dflat, dims)
        grad = grad.contiguous()
        dx = grad.new_empty(grad.shape[0], _widths(dims)[0]) if ctx.needs_input_grad[0] else None
        for part in chunks(grad, dims):
            # the inputs of the steps, recomputed only when a block needs its gradient
            states = [] if x is None else _sweep(x[part], dims, mats, stop=1)
            _backward_chunk(grad[part], dims, mats, grads, states, None if dx is None else dx[part])
        return dx, None, dflat


def run_tt(x: torch.Tensor, cores: Sequence[torch.Tensor], groups: Groups) -> torch.Tensor:
    """``x (B, N) @ W.T`` through the block sweep, the cores merged into the blocks ``groups``.

    Args:
        x: ``(B, N)``, ``N = prod(n_k)``.
        cores: the TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)``, checked by the caller.
        groups: the blocks as ``(start, stop)`` core ranges covering every core, in order.

    Returns:
        ``(B, M)``, ``M = prod(m_k)``.
    """
    blocks = [merge_block(cores, k0, k1) for k0, k1 in groups]
    dims = tuple(
        (int(b.shape[0]), int(b.shape[1]), int(b.shape[2]), int(b.shape[3])) for b in blocks
    )
    # the blocks travel as one flat tensor: a fixed signature, which dynamo can trace
    flat = torch.cat([b.reshape(-1) for b in blocks]) if len(blocks) > 1 else blocks[0].reshape(-1)
    return cast(torch.Tensor, _TTLinear.apply(x, dims, flat))
