"""Applying a TT-matrix to a dense batch, with the contraction planned from shapes.

``tt_linear(x, w)`` computes ``x @ w.full().T`` (the convention of ``torch.nn.functional.linear``)
without forming the dense matrix, unless the cost model says that forming it is cheaper.

The ``tt`` path groups consecutive cores into blocks ``(R_{j-1}, M_j, N_j, R_j)`` (merging the cores
of a block is cheap: the blocks stay far smaller than the matrix) and sweeps the blocks from last to
first. The running tensor keeps the layout ``(B, N_1..N_{j-1}, N_j R_j, M_{j+1}..M_G)``, so each
step is one matrix product (a single GEMM for the last block, a batched one with the block's
``(R_{j-1} M_j, N_j R_j)`` matrix broadcast otherwise) and no step permutes or copies its input.

The plan, made once per ``(batch, row_modes, col_modes, ranks)`` and cached, compares modelled
times, not bare FLOPs: on CPU a product with a narrow operand runs far below the GEMM peak (a
``(B N, 8) @ (8, 16)`` step costs several times its FLOPs), so the FLOP-minimal grouping is often
not the fastest. Each matrix product ``(a, k) @ (k, q)`` is charged

    ``2 a k q (1 + SMALL_K / k + SMALL_A / a + SMALL_Q / q) + CALL``

FLOP-equivalents (``CALL`` once per matrix of a batched product). The constants live in the
generated :mod:`tensortrain._plan_constants`; ``python benchmarks/plan_bench.py --fit`` refits them
on a new machine from timed paths of random shapes (``benchmarks/README.md``, planning section):

* ``tt`` cost: the cheapest grouping of the cores into at least two consecutive blocks (one block
  when ``d = 1``), by dynamic programming: the merges inside each block (``2 r M_a N_a s m n t``
  FLOPs per merged core) plus the sweep, per block one batched product of ``B N_{<j}`` matrices
  ``(R_{j-1} M_j, N_j R_j) @ (N_j R_j, M_{>j})`` (a single GEMM for the last block).
* ``dense`` cost: reconstructing the ``(M, N)`` matrix as :func:`tensortrain._blocks.dense` does
  (the two halves of the cores merged, bare FLOPs, then a batched product of ``M`` matrices
  ``(N_1, r) @ (r, N_2)``), plus the ``(B, N) @ (N, M)`` GEMM.
* The cheaper one runs. Large batches with small or thin matrices densify; large TT-matrices at
  moderate batch sizes stay in TT form.

On CPU the ``tt`` path sweeps the batch in chunks of rows sized so that the intermediates stay
in cache (:data:`CHUNK_BYTES`): every step is independent per row, so the result is the same, and a
chain of small products then runs near the FLOP rate of one large GEMM.

Both paths are differentiable with respect to ``x`` and the cores. The ``tt`` path runs through a
custom autograd function that stores only ``x`` and the blocks and recomputes the sweep's
intermediates in the backward pass, chunk by chunk (each is up to ``R`` times the size of ``x``;
recomputing costs one forward sweep but the last step, on data already in cache; it is skipped
when no core needs a gradient). Storing them instead would save that step, at ``R`` times the
memory of ``x``, but little time: on the 4096x4096 bench case the 32 MiB they take is fresh memory
at every call, whose page faults cost most of what the step does (forward + backward measured
6% faster stored at a load of 1.3 on 2 cores, 1-8% slower at loads of 5-7).

Planning is plain Python on shapes, cached, and opaque to ``torch.compile``
(``torch.compiler.assume_constant_result``), so compiled layers never trace it. Under compile the
batch is planned for the power of two at or above it, so that a symbolic batch (dynamic shapes)
needs one graph per bucket, and the ``tt`` path's autograd function (the blocks passed as one
flat tensor, a signature dynamo traces) compiles whole with its backward (``fullgraph=True``).
The cores' shapes must be static there, as dynamo keeps those of parameters.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch

from tensortrain._base import TTBase
from tensortrain._blocks import dense, merge_block
from tensortrain._checks import check_int
from tensortrain._cores import check_cores, check_modes, ranks_of
from tensortrain._plan_constants import CALL, SMALL_A, SMALL_K, SMALL_Q
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import check_ranks

# The cost model's constants SMALL_K, SMALL_A, SMALL_Q and CALL (see the module docstring) live in
# the generated tensortrain/_plan_constants.py: ``python benchmarks/plan_bench.py --fit`` refits
# them on a new machine.
#: Most cores a TT-matrix may have in :func:`tt_linear` (the grouping search is ``O(d^2)``).
MAX_CORES = 64

Groups = tuple[tuple[int, int], ...]  # blocks of consecutive cores, as (start, stop) ranges


@dataclass(frozen=True)
class Plan:
    """How :func:`tt_linear` contracts one shape signature.

    Attributes:
        kind: ``"tt"`` (contract blocks of cores with the input) or ``"dense"`` (reconstruct, then
            matmul).
        tt_flops: FLOPs of the chosen TT grouping (merges plus sweep).
        dense_flops: FLOPs of reconstruction plus dense matmul.
        groups: the blocks of the ``tt`` path as ``(start, stop)`` core ranges, in order.
        tt_cost: modelled cost of the ``tt`` path, in FLOP-equivalents.
        dense_cost: modelled cost of the dense path, in FLOP-equivalents.
    """

    kind: Literal["tt", "dense"]
    tt_flops: int
    dense_flops: int
    groups: Groups
    tt_cost: float
    dense_cost: float


Terms = tuple[float, float, float, float, float]  # FLOPs, FLOPs / k, FLOPs / a, FLOPs / q, matrices


def _product_terms(count: int, a: int, k: int, q: int) -> Terms:
    """The cost model's terms for ``count`` products ``(a, k) @ (k, q)``."""
    f = 2.0 * count * a * k * q
    return (f, f / k, f / a, f / q, float(count))


def _cost(terms: Terms) -> float:
    """Modelled cost of ``terms``, in FLOP-equivalents (linear in the constants, for the fit)."""
    f, per_k, per_a, per_q, count = terms
    return f + SMALL_K * per_k + SMALL_A * per_a + SMALL_Q * per_q + CALL * count


def _add(x: Terms, y: Terms) -> Terms:
    return (x[0] + y[0], x[1] + y[1], x[2] + y[2], x[3] + y[3], x[4] + y[4])


def _block_cost(
    k0: int, k1: int, row_modes: Sequence[int], col_modes: Sequence[int], ranks: Sequence[int]
) -> int:
    """FLOPs to merge cores ``k0..k1-1`` into one block."""
    cost, m, n = 0, row_modes[k0], col_modes[k0]
    for k in range(k0 + 1, k1):
        cost += 2 * ranks[k0] * m * n * ranks[k] * row_modes[k] * col_modes[k] * ranks[k + 1]
        m, n = m * row_modes[k], n * col_modes[k]
    return cost


def _step_terms(
    batch: int,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    ranks: Sequence[int],
    k0: int,
    k1: int,
) -> Terms:
    """The cost model's terms of the sweep step of block ``k0..k1-1``, its merge included.

    The step is a batched product of ``B N_{<k0}`` matrices ``(R M_j, N_j R') @ (N_j R', M_{>j})``,
    or one GEMM for the last block; merging the block's cores counts its bare FLOPs.
    """
    n_before, n_j = math.prod(col_modes[:k0]), math.prod(col_modes[k0:k1])
    m_j, m_after = math.prod(row_modes[k0:k1]), math.prod(row_modes[k1:])
    p, a, k = batch * n_before, ranks[k0] * m_j, n_j * ranks[k1]
    terms = _product_terms(1, p, k, a) if m_after == 1 else _product_terms(p, a, k, m_after)
    merge = float(_block_cost(k0, k1, row_modes, col_modes, ranks))
    return (terms[0] + merge, *terms[1:])


def _path_terms(
    batch: int,
    row_modes: Sequence[int],
    col_modes: Sequence[int],
    ranks: Sequence[int],
    groups: Groups | None,
) -> Terms:
    """The cost model's terms of the ``tt`` path with ``groups``, or of the dense path (``None``).

    The dense path's terms follow :func:`tensortrain._blocks.dense`: the merges of the two halves
    of the cores (bare FLOPs), the batched product of ``M`` matrices ``(N_1, r) @ (r, N_2)`` that
    writes the ``(M, N)`` matrix, and the ``(B, N) @ (N, M)`` GEMM.
    """
    if groups is not None:
        total: Terms = (0.0, 0.0, 0.0, 0.0, 0.0)
        for k0, k1 in groups:
            total = _add(total, _step_terms(batch, row_modes, col_modes, ranks, k0, k1))
        return total
    d, h = len(row_modes), len(row_modes) // 2
    m, n = math.prod(row_modes), math.prod(col_modes)
    total = _product_terms(1, batch, n, m)
    if d > 1:
        n1 = math.prod(col_modes[:h])
        total = _add(total, _product_terms(m, n1, ranks[h], n // n1))
        merges = _block_cost(0, h, row_modes, col_modes, ranks)
        merges += _block_cost(h, d, row_modes, col_modes, ranks)
        total = (total[0] + merges, *total[1:])
    return total


def _best_groups(
    batch: int, row_modes: Sequence[int], col_modes: Sequence[int], ranks: Sequence[int]
) -> tuple[float, int, Groups]:
    """The grouping into consecutive blocks (at least two when ``d > 1``) of least modelled cost.

    Dynamic programming: a block's step depends only on the ``N`` before it and the ``M`` after
    it, so ``best[k]``, the cheapest cover of cores ``k..d-1``, needs only ``best[k1]``,
    ``k1 > k``. Returns the cost, the grouping's FLOPs and the blocks.
    """
    d = len(row_modes)
    best: list[tuple[float, int]] = [(0.0, 0)] * (d + 1)
    nxt = [d] * (d + 1)
    for k0 in range(d - 1, -1, -1):
        stops = range(k0 + 1, d + 1) if k0 or d == 1 else range(1, d)  # one block is dense
        options = []
        for k1 in stops:
            terms = _step_terms(batch, row_modes, col_modes, ranks, k0, k1)
            options.append((_cost(terms) + best[k1][0], int(terms[0]) + best[k1][1], k1))
        cost, flops, nxt[k0] = min(options)
        best[k0] = (cost, flops)
    groups, k = [], 0
    while k < d:
        groups.append((k, nxt[k]))
        k = nxt[k]
    return best[0][0], best[0][1], tuple(groups)


def plan(
    batch: int, row_modes: Sequence[int], col_modes: Sequence[int], ranks: Sequence[int]
) -> Plan:
    """The cached contraction plan for a batch of ``batch`` rows (see the module docstring).

    Args:
        batch: rows of the dense input, ``>= 1``.
        row_modes: ``(m_1, ..., m_d)``, ints ``>= 1``.
        col_modes: ``(n_1, ..., n_d)``, same length.
        ranks: the full ranks ``(1, r_1, ..., r_{d-1}, 1)``.

    Raises:
        TTTypeError, TTValueError, TTShapeError: an argument of the wrong type, value or length
            (the message names it). ``plan.cache_info()`` reports the cache.

    Example:
        >>> p = plan(256, (8, 8, 8, 8), (8, 8, 8, 8), (1, 8, 8, 8, 1))
        >>> p.kind, p.groups
        ('tt', ((0, 2), (2, 4)))
    """
    check_int("batch", batch)
    modes = [check_modes("row_modes", row_modes), check_modes("col_modes", col_modes)]
    if len(modes[0]) != len(modes[1]):
        raise TTShapeError(
            f"row_modes and col_modes must have one length, got {modes[0]} and {modes[1]}"
        )
    if isinstance(ranks, torch.Tensor) or not isinstance(ranks, Sequence):
        raise TTTypeError(f"ranks must be a sequence of ints, got {ranks!r}")
    full = check_ranks(ranks, len(modes[0]))
    return _plan(batch, modes[0], modes[1], full)


@functools.lru_cache(maxsize=512)
def _plan(
    batch: int, row_modes: tuple[int, ...], col_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> Plan:
    """:func:`plan` on validated arguments, cached by them."""
    d = len(row_modes)
    if d > MAX_CORES:
        raise TTShapeError(f"tt_linear supports at most {MAX_CORES} cores, got {d}")
    tt_cost, tt_flops, groups = _best_groups(batch, row_modes, col_modes, ranks)
    dense_terms = _path_terms(batch, row_modes, col_modes, ranks, None)
    dense_cost = _cost(dense_terms)
    kind: Literal["tt", "dense"] = "dense" if dense_cost <= tt_cost else "tt"
    return Plan(kind, tt_flops, int(dense_terms[0]), groups, tt_cost, dense_cost)


@torch.compiler.assume_constant_result
def _planned(
    batch: int, row_modes: tuple[int, ...], col_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> Groups:
    """The ``tt`` blocks of :func:`plan`, or ``()`` for the dense path: plain ints for dynamo."""
    p = _plan(batch, row_modes, col_modes, ranks)
    return p.groups if p.kind == "tt" else ()


plan.cache_info = _plan.cache_info  # type: ignore[attr-defined]

PlanMode = Literal["model", "measure"]
_mode: list[PlanMode] = ["model"]
_measured: dict[tuple[Any, ...], Groups] = {}
#: Paths that the ``"measure"`` mode times per shape signature: those of least modelled cost.
MEASURE_PATHS = 4
#: Cores up to which the ``"measure"`` mode ranks every grouping (``2^(d-1) - 1`` of them); past
#: it, only the cost model's grouping and the dense path are timed.
MEASURE_MAX_CORES = 8
#: Timed rounds of the ``"measure"`` mode, and the least time of one timing (calls are repeated).
MEASURE_ROUNDS, MEASURE_SECONDS = 5, 2e-3
_clock = time.perf_counter


def set_plan_mode(mode: PlanMode) -> PlanMode:
    """Choose how :func:`tt_linear` picks its path; returns the mode that was in force.

    ``"model"`` (the default) takes the cost model's pick (:func:`plan`), from shapes alone.
    ``"measure"`` times, on the first call for each signature (batch, modes, ranks, dtype,
    device, torch threads), the :data:`MEASURE_PATHS` paths of least modelled cost on that call's
    own input (a warm-up call each, then :data:`MEASURE_ROUNDS` interleaved rounds, each path's
    calls repeated to span at least :data:`MEASURE_SECONDS`, without autograd) and keeps the
    fastest, as ``torch.backends.cudnn.benchmark`` does: worth it for fixed shapes on a
    machine the constants were not fitted on (a GPU, say). Results may then differ in the last
    bits from run to run, as the path may. Compiled code (``torch.compile``) plans by the model.
    Every call clears the measured picks.

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
    if mode not in ("model", "measure"):
        raise TTValueError(f"mode must be 'model' or 'measure', got {mode!r}")
    before, _mode[0] = _mode[0], mode
    _measured.clear()
    return before


def groupings(d: int) -> list[Groups]:
    """Every split of ``d`` cores into at least two consecutive blocks (one block when d = 1)."""
    if d == 1:
        return [((0, 1),)]
    out = []
    for cuts in itertools.product((False, True), repeat=d - 1):
        bounds = [0, *(i + 1 for i, cut in enumerate(cuts) if cut), d]
        if len(bounds) > 2:
            out.append(tuple(itertools.pairwise(bounds)))
    return out


def _candidates(
    batch: int, row_modes: tuple[int, ...], col_modes: tuple[int, ...], ranks: tuple[int, ...]
) -> list[Groups]:
    """The :data:`MEASURE_PATHS` paths of least modelled cost, cheapest first (``()``: dense)."""
    d = len(row_modes)
    if d <= MEASURE_MAX_CORES:
        paths = groupings(d)
    else:
        paths = [_best_groups(batch, row_modes, col_modes, ranks)[2]]
    costed = [(_cost(_path_terms(batch, row_modes, col_modes, ranks, g)), g) for g in paths]
    costed.append((_cost(_path_terms(batch, row_modes, col_modes, ranks, None)), ()))
    costed.sort(key=lambda c: c[0])
    return [g for _, g in costed[:MEASURE_PATHS]]


#: On CPU the batch is swept in chunks whose largest intermediate holds about this many bytes per
#: torch thread, so that each step reads the previous step's output from cache (the 4096x4096
#: rank-8 TT-matrix at batch 256 runs its forward about 1.6x faster than unchunked; 1 MiB per
#: thread was the best of 0.5, 1, 2 and 4 MiB at one and at two threads).
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


def _chunks(x: torch.Tensor, dims: Dims) -> list[slice]:
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


def _sweep_groups(x: torch.Tensor, cores: Sequence[torch.Tensor], groups: Groups) -> torch.Tensor:
    """``x (B, N) @ W.T`` through the block sweep with the cores merged into ``groups``."""
    blocks = [merge_block(cores, k0, k1) for k0, k1 in groups]
    dims = tuple(
        (int(b.shape[0]), int(b.shape[1]), int(b.shape[2]), int(b.shape[3])) for b in blocks
    )
    # the blocks travel as one flat tensor: a fixed signature, which dynamo can trace
    flat = torch.cat([b.reshape(-1) for b in blocks]) if len(blocks) > 1 else blocks[0].reshape(-1)
    return cast(torch.Tensor, _TTLinear.apply(x, dims, flat))


def _block_mats(flat: torch.Tensor, dims: Dims) -> list[torch.Tensor]:
    """The blocks in ``flat`` as ``(R_{j-1} M_j, N_j R_j)`` matrices (views)."""
    mats, start = [], 0
    for r0, m, n, r1 in dims:
        mats.append(flat[start : start + r0 * m * n * r1].view(r0 * m, n * r1))
        start += r0 * m * n * r1
    return mats


def _run_path(x: torch.Tensor, cores: Sequence[torch.Tensor], groups: Groups) -> torch.Tensor:
    """``x (B, N) @ W.T`` by the ``tt`` path with ``groups``, or by the dense path (``()``)."""
    return _sweep_groups(x, cores, groups) if groups else x @ dense(cores).T


def _measured_groups(
    x: torch.Tensor,
    cores: Sequence[torch.Tensor],
    row_modes: tuple[int, ...],
    col_modes: tuple[int, ...],
    ranks: tuple[int, ...],
) -> Groups:
    """The fastest of the :func:`_candidates` on ``x (B, N)``, timed once per signature."""
    key = (x.shape[0], row_modes, col_modes, ranks, x.dtype, x.device, torch.get_num_threads())
    if (hit := _measured.get(key)) is not None:
        return hit
    paths = _candidates(x.shape[0], row_modes, col_modes, ranks)
    sync = torch.cuda.synchronize if x.device.type == "cuda" else lambda: None
    x, cores = x.detach(), [c.detach() for c in cores]

    def seconds(path: Groups, calls: int) -> float:
        sync()
        start = _clock()
        for _ in range(calls):
            _run_path(x, cores, path)
        sync()
        return max(_clock() - start, 1e-9) / calls

    with torch.no_grad():
        # a warm-up call each sizes the repeats so that a timing spans MEASURE_SECONDS
        calls = {p: min(100, math.ceil(MEASURE_SECONDS / seconds(p, 1))) for p in paths}
        best = dict.fromkeys(paths, math.inf)
        for _ in range(MEASURE_ROUNDS):  # interleaved: a change of load hits every path alike
            for path in paths:
                best[path] = min(best[path], seconds(path, calls[path]))
    _measured[key] = pick = min(paths, key=best.__getitem__)
    return pick


class _TTLinear(torch.autograd.Function):
    """``y = x @ W.T`` through the block sweep, chunk by chunk; backward recomputes the sweep."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dims: Dims, flat: torch.Tensor) -> torch.Tensor:
        ctx.dims = dims
        ctx.save_for_backward(x if ctx.needs_input_grad[2] else None, flat)  # x: the blocks' grads
        mats = _block_mats(flat, dims)
        y = x.new_empty(x.shape[0], math.prod([m for _, m, _, _ in dims]))
        for part in _chunks(x, dims):
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
        for part in _chunks(grad, dims):
            # the inputs of the steps, recomputed only when a block needs its gradient
            states = [] if x is None else _sweep(x[part], dims, mats, stop=1)
            _backward_chunk(grad[part], dims, mats, grads, states, None if dx is None else dx[part])
        return dx, None, dflat


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
    row_modes = tuple(int(c.shape[1]) for c in cores)
    col_modes = tuple(int(c.shape[2]) for c in cores)
    M, N = math.prod(row_modes), math.prod(col_modes)
    if bias is not None:
        _check_bias(bias, M, x)
    lead = x.shape[:-1]
    batch = math.prod(lead)
    ranks = ranks_of(cores)
    if not batch:
        groups: Groups = ()
    elif _mode[0] == "measure" and not torch.compiler.is_compiling():
        groups = _measured_groups(x.reshape(batch, N), cores, row_modes, col_modes, ranks)
    else:
        groups = _planned(_plan_batch(batch), row_modes, col_modes, ranks)
    y = _run_path(x.reshape(batch, N), cores, groups).reshape(*lead, M)
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
