"""Planning :func:`tensortrain.tt_linear`: the paths, their modelled costs, and :class:`Plan`.

A path is one way to compute ``x (B, N) @ W.T`` for a TT-matrix ``W`` of shape ``(M, N)``:

* ``tt``: group consecutive cores into blocks ``(R_{j-1}, M_j, N_j, R_j)`` and sweep the blocks
  from last to first (:mod:`tensortrain._running`), one matrix product per block;
* ``dense``: reconstruct the ``(M, N)`` matrix as :func:`tensortrain._blocks.dense` does, then run
  one ``(B, N) @ (N, M)`` GEMM.

Paths are compared by modelled time, not bare FLOPs, because a product with a narrow operand runs
far below the GEMM peak on CPU and a batched product pays per matrix. Each matrix product
``(a, k) @ (k, q)`` is charged

    ``2 a k q (1 + SMALL_K / k + SMALL_A / a + SMALL_Q / q) + CALL``

FLOP-equivalents (``CALL`` once per matrix of a batched product). The constants are fitted to
timed paths of random shapes and live in the generated :mod:`tensortrain._plan_constants`
(``python benchmarks/plan_bench.py --fit`` refits them on a new machine). The ``tt`` cost is that of
the cheapest grouping into at least two blocks (one when ``d = 1``: a single block is the dense
matrix), found by dynamic programming; it counts the merges inside each block as bare FLOPs plus
the sweep. The dense cost counts the two half-merges, the batched rebuild and the GEMM. The
cheaper path runs: large batches with small or thin matrices densify, large TT-matrices at
moderate batch sizes stay in TT form.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from tensortrain._plan_constants import CALL, SMALL_A, SMALL_K, SMALL_Q
from tensortrain.errors import TTShapeError

#: Most cores a TT-matrix may have in :func:`tensortrain.tt_linear` (the search is ``O(d^2)``).
MAX_CORES = 64
#: Paths a plan lists as its alternatives (the chosen one included), least modelled cost first.
ALTERNATIVES = 4
#: Cores up to which a plan ranks every grouping (``2^(d-1) - 1`` of them) for its alternatives;
#: past it, the alternatives are the cheapest grouping and the dense path.
ENUMERATE_MAX_CORES = 8

PlanKind = Literal["tt", "dense"]
Groups = tuple[tuple[int, int], ...]  # blocks of consecutive cores, as (start, stop) ranges
Terms = tuple[float, float, float, float, float]  # FLOPs, FLOPs / k, FLOPs / a, FLOPs / q, matrices


class Signature(NamedTuple):
    """What a plan depends on: the batch and the TT-matrix's modes and full ranks."""

    batch: int
    row_modes: tuple[int, ...]
    col_modes: tuple[int, ...]
    ranks: tuple[int, ...]


class Path(NamedTuple):
    """One way to run ``x @ W.T``: ``kind`` ``"tt"`` with its blocks, or ``"dense"`` (no blocks)."""

    kind: PlanKind
    groups: Groups = ()

    def __str__(self) -> str:
        if self.kind == "dense":
            return "dense"
        return "tt " + " ".join(f"[{k0}:{k1}]" for k0, k1 in self.groups)


#: The dense path: reconstruct the matrix, then one GEMM.
DENSE = Path("dense")


@dataclass(frozen=True)
class CostModel:
    """The constants of the cost model (module docstring); :data:`FITTED` is the one in use."""

    small_k: float
    small_a: float
    small_q: float
    call: float

    def cost(self, terms: Terms) -> float:
        """Modelled cost of ``terms`` in FLOP-equivalents, linear in the constants (for the fit)."""
        f, per_k, per_a, per_q, count = terms
        surcharge = self.small_k * per_k + self.small_a * per_a + self.small_q * per_q
        return f + surcharge + self.call * count


#: The cost model with the constants of :mod:`tensortrain._plan_constants`.
FITTED = CostModel(SMALL_K, SMALL_A, SMALL_Q, CALL)


class Alternative(NamedTuple):
    """A path a plan considered, with its modelled cost and its FLOPs."""

    path: Path
    cost: float
    flops: int


@dataclass(frozen=True)
class Plan:
    """How :func:`tensortrain.tt_linear` contracts one shape signature; ``print`` shows a table.

    Attributes:
        kind: ``"tt"`` (contract blocks of cores with the input) or ``"dense"`` (reconstruct, then
            matmul).
        tt_flops: FLOPs of the cheapest TT grouping (merges plus sweep).
        dense_flops: FLOPs of reconstruction plus dense matmul.
        groups: the blocks of the cheapest ``tt`` path as ``(start, stop)`` core ranges, in order
            (kept when ``kind`` is ``"dense"``, for comparison).
        tt_cost: modelled cost of the ``tt`` path, in FLOP-equivalents.
        dense_cost: modelled cost of the dense path, in FLOP-equivalents.
        alternatives: up to :data:`ALTERNATIVES` paths of least modelled cost, cheapest first.
        signature: the batch, modes and ranks planned for.

    Example:
        >>> from tensortrain import plan
        >>> p = plan(256, (8, 8, 8, 8), (8, 8, 8, 8), (1, 8, 8, 8, 1))
        >>> p.kind, str(p.path)
        ('tt', 'tt [0:2] [2:4]')
        >>> print(p)  # doctest: +ELLIPSIS
        tt_linear plan: batch 256, modes (8, 8, 8, 8) x (8, 8, 8, 8), ranks (1, 8, 8, 8, 1)
          chosen path:    tt [0:2] [2:4]
        ...
    """

    kind: PlanKind
    tt_flops: int
    dense_flops: int
    groups: Groups
    tt_cost: float
    dense_cost: float
    alternatives: tuple[Alternative, ...] = field(default=(), repr=False)
    signature: Signature | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        """The chosen path."""
        return DENSE if self.kind == "dense" else Path("tt", self.groups)

    @property
    def cost(self) -> float:
        """The chosen path's modelled cost, in FLOP-equivalents."""
        return self.dense_cost if self.kind == "dense" else self.tt_cost

    def __str__(self) -> str:
        return plan_table(self)


def plan_table(p: Plan) -> str:
    """``p`` as a table a reader scans: the chosen path, its cost, then every alternative.

    The header gives the batch, the row modes ``x`` the column modes, and the ranks. Costs are
    modelled FLOP-equivalents; ``vs chosen`` is an alternative's cost over the chosen path's
    (``*`` marks the chosen path).
    """
    chosen, flops = p.path, p.dense_flops if p.kind == "dense" else p.tt_flops
    lines = []
    if p.signature is not None:
        b, rows, cols, ranks = p.signature
        lines.append(f"tt_linear plan: batch {b}, modes {rows} x {cols}, ranks {ranks}")
    lines += [
        f"  chosen path:    {chosen}",
        f"  modelled cost:  {p.cost:.4g} FLOP-equivalents ({flops:.4g} FLOPs)",
        f"  tt / dense:     {p.tt_cost:.4g} / {p.dense_cost:.4g} FLOP-equivalents",
        "  " + "-" * 68,
        f"  {'path':<30}{'modelled cost':>14}{'FLOPs':>12}{'vs chosen':>12}",
    ]
    for alt in p.alternatives:
        mark = "*" if alt.path == chosen else " "
        ratio = alt.cost / p.cost if p.cost else math.nan
        lines.append(f"{mark} {alt.path!s:<30}{alt.cost:>14.4g}{alt.flops:>12.4g}{ratio:>11.2f}x")
    return "\n".join(lines)


def product_terms(count: int, a: int, k: int, q: int) -> Terms:
    """The cost model's terms for ``count`` products ``(a, k) @ (k, q)``."""
    f = 2.0 * count * a * k * q
    return (f, f / k, f / a, f / q, float(count))


def _add(x: Terms, y: Terms) -> Terms:
    return (x[0] + y[0], x[1] + y[1], x[2] + y[2], x[3] + y[3], x[4] + y[4])


def merge_flops(sig: Signature, k0: int, k1: int) -> int:
    """FLOPs to merge cores ``k0..k1-1`` into one block."""
    rows, cols, ranks = sig.row_modes, sig.col_modes, sig.ranks
    flops, m, n = 0, rows[k0], cols[k0]
    for k in range(k0 + 1, k1):
        flops += 2 * ranks[k0] * m * n * ranks[k] * rows[k] * cols[k] * ranks[k + 1]
        m, n = m * rows[k], n * cols[k]
    return flops


def step_terms(sig: Signature, k0: int, k1: int) -> Terms:
    """The cost model's terms of the sweep step of block ``k0..k1-1``, its merge included.

    The step is a batched product of ``B N_{<k0}`` matrices ``(R M_j, N_j R') @ (N_j R', M_{>j})``,
    or one GEMM for the last block; merging the block's cores counts its bare FLOPs.
    """
    n_before, n_j = math.prod(sig.col_modes[:k0]), math.prod(sig.col_modes[k0:k1])
    m_j, m_after = math.prod(sig.row_modes[k0:k1]), math.prod(sig.row_modes[k1:])
    p, a, k = sig.batch * n_before, sig.ranks[k0] * m_j, n_j * sig.ranks[k1]
    terms = product_terms(1, p, k, a) if m_after == 1 else product_terms(p, a, k, m_after)
    return (terms[0] + merge_flops(sig, k0, k1), *terms[1:])


def path_terms(sig: Signature, path: Path) -> Terms:
    """The cost model's terms of ``path``.

    A ``tt`` path sums its steps (:func:`step_terms`). The dense path follows
    :func:`tensortrain._blocks.dense`: the merges of the two halves of the cores (bare FLOPs), the
    batched product of ``M`` matrices ``(N_1, r) @ (r, N_2)`` that writes the ``(M, N)`` matrix,
    and the ``(B, N) @ (N, M)`` GEMM.
    """
    total: Terms = (0.0, 0.0, 0.0, 0.0, 0.0)
    if path.kind == "tt":
        for k0, k1 in path.groups:
            total = _add(total, step_terms(sig, k0, k1))
        return total
    d, h = len(sig.row_modes), len(sig.row_modes) // 2
    m, n = math.prod(sig.row_modes), math.prod(sig.col_modes)
    total = product_terms(1, sig.batch, n, m)
    if d > 1:
        n1 = math.prod(sig.col_modes[:h])
        total = _add(total, product_terms(m, n1, sig.ranks[h], n // n1))
        merges = merge_flops(sig, 0, h) + merge_flops(sig, h, d)
        total = (total[0] + merges, *total[1:])
    return total


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


Steps = dict[tuple[int, int], Terms]  # the terms of each possible block (k0, k1)


def _step_table(sig: Signature) -> Steps:
    """The terms of every block ``(k0, k1)``: the search and the alternatives share them."""
    d = len(sig.row_modes)
    return {(k0, k1): step_terms(sig, k0, k1) for k0 in range(d) for k1 in range(k0 + 1, d + 1)}


def best_groups(
    sig: Signature, model: CostModel = FITTED, steps: Steps | None = None
) -> tuple[float, int, Groups]:
    """The grouping into consecutive blocks (at least two when ``d > 1``) of least modelled cost.

    Dynamic programming: a block's step depends only on the ``N`` before it and the ``M`` after
    it, so ``best[k]``, the cheapest cover of cores ``k..d-1``, needs only ``best[k1]``,
    ``k1 > k``. Returns the cost, the grouping's FLOPs and the blocks.
    """
    steps = _step_table(sig) if steps is None else steps
    d = len(sig.row_modes)
    best: list[tuple[float, int]] = [(0.0, 0)] * (d + 1)
    nxt = [d] * (d + 1)
    for k0 in range(d - 1, -1, -1):
        stops = range(k0 + 1, d + 1) if k0 or d == 1 else range(1, d)  # one block is dense
        options = []
        for k1 in stops:
            terms = steps[k0, k1]
            options.append((model.cost(terms) + best[k1][0], int(terms[0]) + best[k1][1], k1))
        cost, flops, nxt[k0] = min(options)
        best[k0] = (cost, flops)
    groups, k = [], 0
    while k < d:
        groups.append((k, nxt[k]))
        k = nxt[k]
    return best[0][0], best[0][1], tuple(groups)


def _alternatives(
    sig: Signature, model: CostModel, steps: Steps, best: Groups
) -> tuple[Alternative, ...]:
    """The :data:`ALTERNATIVES` paths of least modelled cost, cheapest first (ties: ``tt`` first).

    Every grouping is ranked up to :data:`ENUMERATE_MAX_CORES` cores; past it, ``best`` (the
    search's grouping) and the dense path.
    """
    d = len(sig.row_modes)
    found = []
    for groups in groupings(d) if d <= ENUMERATE_MAX_CORES else [best]:
        terms: Terms = (0.0, 0.0, 0.0, 0.0, 0.0)
        for block in groups:
            terms = _add(terms, steps[block])
        found.append(Alternative(Path("tt", groups), model.cost(terms), int(terms[0])))
    dense_terms = path_terms(sig, DENSE)
    found.append(Alternative(DENSE, model.cost(dense_terms), int(dense_terms[0])))
    found.sort(key=lambda alt: alt.cost)
    return tuple(found[:ALTERNATIVES])


def make_plan(sig: Signature, model: CostModel = FITTED) -> Plan:
    """The plan for ``sig`` under ``model`` (uncached; the arguments already checked).

    Raises:
        TTShapeError: more than :data:`MAX_CORES` cores.
    """
    d = len(sig.row_modes)
    if d > MAX_CORES:
        raise TTShapeError(f"tt_linear supports at most {MAX_CORES} cores, got {d}")
    steps = _step_table(sig)
    tt_cost, tt_flops, groups = best_groups(sig, model, steps)
    dense_terms = path_terms(sig, DENSE)
    dense_cost = model.cost(dense_terms)
    kind: PlanKind = "dense" if dense_cost <= tt_cost else "tt"
    alternatives = _alternatives(sig, model, steps, groups)
    return Plan(kind, tt_flops, int(dense_terms[0]), groups, tt_cost, dense_cost, alternatives, sig)
