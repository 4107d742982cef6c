"""Operations on lists of TT cores: the source of truth behind the TT classes.

Every function takes TT tensor cores ``(r_{k-1}, n_k, r_k)``; TT-matrix operations that do not
depend on the row/column split work on the merged view ``(r_{k-1}, m_k n_k, r_k)``. Nothing here
forms the dense tensor except :func:`full`, whose name says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensortrain._cores import bond_caps, check_cores, check_eps, same_family
from tensortrain._scale import check_finite_cores, exponent, put_scale, times_pow2
from tensortrain._svd import GRAM_MIN_DELTA2, truncated_svd
from tensortrain.errors import TTShapeError, TTValueError

Cores = Sequence[torch.Tensor]


def full(cores: Cores) -> torch.Tensor:
    """Materialise the dense tensor ``(n_1, ..., n_d)``: ``O(prod(n) * r)`` memory and time."""
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for core in cores[1:]:
        out = (out @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
    return out.reshape([c.shape[1] for c in cores])


def _positive(s: torch.Tensor) -> torch.Tensor:
    """``s`` where positive, else 1 (a safe divisor for rescaling without a branch)."""
    return torch.where(s > 0, s, torch.ones_like(s))


def _normalised(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``t / max|t|`` and ``log(max|t|)`` in float64 (``t`` and 0 for a zero tensor)."""
    m = _positive(t.detach().abs().max())
    return t / m, torch.log(m.double())


def safe_norm(t: torch.Tensor) -> torch.Tensor:
    """Frobenius norm that neither overflows nor underflows: ``max|t| * ||t / max|t|||``."""
    m = _positive(t.detach().abs().max())
    return m * torch.linalg.vector_norm(t / m)


def check_same_shape(a: Cores, b: Cores, what: str) -> None:
    """Raise unless two TT tensors have the same mode sizes."""
    sa, sb = tuple(c.shape[1] for c in a), tuple(c.shape[1] for c in b)
    if sa != sb:
        raise TTShapeError(f"{what}: operands have shapes {sa} and {sb}")


def add(a: Cores, b: Cores) -> list[torch.Tensor]:
    """Sum of two TT tensors of the same shape; bond ranks add (``r_k = ra_k + rb_k``)."""
    check_same_shape(a, b, "add")
    d = len(a)
    if d == 1:
        return [a[0] + b[0]]
    cores = [torch.cat([a[0], b[0]], dim=2)]
    for ca, cb in zip(a[1:-1], b[1:-1], strict=True):
        top = torch.cat([ca, ca.new_zeros(ca.shape[0], ca.shape[1], cb.shape[2])], dim=2)
        bottom = torch.cat([cb.new_zeros(cb.shape[0], cb.shape[1], ca.shape[2]), cb], dim=2)
        cores.append(torch.cat([top, bottom], dim=0))
    cores.append(torch.cat([a[-1], b[-1]], dim=0))
    return cores


def scale(a: Cores, alpha: complex | torch.Tensor) -> list[torch.Tensor]:
    """``alpha * a``: the first core is scaled, ranks are unchanged."""
    return [a[0] * alpha, *a[1:]]


def hadamard(a: Cores, b: Cores) -> list[torch.Tensor]:
    """Elementwise product; bond ranks multiply (``r_k = ra_k * rb_k``)."""
    check_same_shape(a, b, "hadamard")
    return [
        torch.einsum("anb,cnd->acnbd", ca, cb).reshape(
            ca.shape[0] * cb.shape[0], ca.shape[1], ca.shape[2] * cb.shape[2]
        )
        for ca, cb in zip(a, b, strict=True)
    ]


def inner(a: Cores, b: Cores) -> torch.Tensor:
    """Inner product ``<a, b> = sum(a * b)`` (conjugating ``a`` if complex), in ``O(d n r^3)``.

    The running contraction is rescaled at every step and the scale kept in log space, so the
    result is finite whenever it is representable, however large or small the cores are.

    Raises:
        TTValueError: a core of ``a`` or ``b`` holds NaN or inf (named, e.g. ``b[1]``).
        TTShapeError, TTTypeError: invalid cores, or operands of different shapes or dtypes.
    """
    a, b = check_cores(a, 3, "a"), check_cores(b, 3, "b")
    same_family(a, b, "inner")
    check_same_shape(a, b, "inner")
    check_finite_cores(a, "a")
    check_finite_cores(b, "b")
    v = a[0].new_ones(1, 1)
    log_scale = a[0].new_zeros((), dtype=torch.float64).real
    for ca, cb in zip(a, b, strict=True):
        (ca, la), (cb, lb) = _normalised(ca), _normalised(cb)
        v, lv = _normalised(torch.einsum("ab,anc,bnd->cd", v, ca.conj(), cb))
        log_scale = log_scale + la + lb + lv
    return v.reshape(()) * torch.exp(log_scale).to(v.real.dtype)


def _orthogonalize(cores: Cores) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Right-to-left QR sweep with normalisation: ``a = exp(log_scale) * cores``.

    Cores ``1..d-1`` of the result are right-orthogonal (``C C^H = I`` over ``(n_k, r_k)``);
    all of the norm sits in core 0 times ``exp(log_scale)``.
    """
    out = list(cores)
    log_scale = out[0].new_zeros((), dtype=torch.float64).real
    for k in range(len(out) - 1, 0, -1):
        core = out[k]
        r_prev, n, r = core.shape
        q, rr = torch.linalg.qr(core.reshape(r_prev, n * r).mT)
        s = _positive(safe_norm(rr.detach()))
        rr = rr / s
        log_scale = log_scale + torch.log(s.double())
        out[k] = q.mT.reshape(-1, n, r)
        out[k - 1] = torch.einsum("anb,cb->anc", out[k - 1], rr)
    out[0], log_s0 = _normalised(out[0])
    return out, log_scale + log_s0


def orthogonalize(cores: Cores) -> list[torch.Tensor]:
    """Right-to-left orthogonalisation by QR: the same tensor, cores ``1..d-1`` right-orthogonal.

    Ranks may shrink where ``r_{k-1} > n_k r_k`` (the QR is reduced). The norm of the tensor is the
    Frobenius norm of core 0.

    Raises:
        TTValueError: a core holds NaN or inf, or the tensor's norm is beyond the dtype's range
            (core 0 cannot hold it).
    """
    cores = check_cores(cores, 3)
    check_finite_cores(cores)
    out, log_scale = _orthogonalize(cores)
    power = float(log_scale) / math.log(2)
    scaled = put_scale(out, 0, power)
    if len(out) > 1 and scaled[1] is not out[1]:
        raise TTValueError(
            f"orthogonalize: the tensor's norm (about 2^{power:.0f}) is beyond the range of "
            f"{out[0].dtype}; core 0 cannot carry it"
        )
    return scaled


def norm(cores: Cores) -> torch.Tensor:
    """Frobenius norm via orthogonalisation: no overflow or underflow of intermediate products.

    The result is inf only when the norm itself is beyond the dtype's range.

    Raises:
        TTValueError: a core holds NaN or inf.
    """
    cores = check_cores(cores, 3)
    check_finite_cores(cores)
    out, log_scale = _orthogonalize(cores)
    core_norm = safe_norm(out[0])
    return core_norm * torch.exp(log_scale).to(core_norm.dtype)


def round_cores(
    cores: Cores, eps: float | None = None, max_rank: int | Sequence[int] | None = None
) -> list[torch.Tensor]:
    """TT rounding: orthogonalise right-to-left, then truncate by SVD left-to-right.

    With ``eps``, ``||a - round(a)||_F <= eps * ||a||_F``; ``max_rank`` caps the ranks and wins
    over ``eps``. Never forms the dense tensor: ``O(d n r^3)``. Float64 and float32 without
    autograd take the Gram path (:func:`_gram_round`) where its margins keep the error; otherwise,
    or when it declines, the QR and SVD sweeps run. Every intermediate is normalised, so the bound
    holds at any magnitude; the scale goes back on the last core (spread over all cores when the
    tensor's norm is beyond the dtype's range).

    Args:
        cores: TT cores ``(r_{k-1}, n_k, r_k)``, real or complex.
        eps: relative Frobenius error allowed, ``>= 0``.
        max_rank: an int for every bond, or ``d - 1`` per-bond caps.

    Returns:
        New cores (the input is not modified); all but the last left-orthogonal.

    Raises:
        TTValueError: a core holds NaN or inf (named: ``cores[2] contains NaN or inf``), or a bad
            ``eps`` / ``max_rank``.

    Example:
        >>> a = [torch.randn(1, 4, 3), torch.randn(3, 4, 3), torch.randn(3, 4, 1)]
        >>> [tuple(c.shape) for c in round_cores(a, max_rank=2)]
        [(1, 4, 2), (2, 4, 2), (2, 4, 1)]
    """
    cores = check_cores(cores, 3)
    eps = check_eps(eps)
    d = len(cores)
    caps = bond_caps(max_rank, d)
    check_finite_cores(cores)
    if _gram_round_applies(cores, eps) and (out := _gram_round(cores, eps, caps)) is not None:
        return out
    out, log_scale = _orthogonalize(cores)
    if d == 1:
        return put_scale(out, 0, float(log_scale) / math.log(2))
    delta = 0.0
    if eps is not None:
        delta = eps / math.sqrt(d - 1) * float(safe_norm(out[0].detach()))
    for k in range(d - 1):
        r_prev, n, r = out[k].shape
        u, s, vh = truncated_svd(out[k].reshape(r_prev * n, r), delta, caps[k])
        out[k] = u.reshape(r_prev, n, -1)
        out[k + 1] = torch.einsum("ab,bnc->anc", s[:, None] * vh, out[k + 1])
    return put_scale(out, d - 1, float(log_scale) / math.log(2))


def _gram_round_applies(cores: Cores, eps: float | None) -> bool:
    """Float64 or float32, no autograd, two cores or more, and ``eps`` (if any) not tiny."""
    dtype = cores[0].dtype
    if len(cores) < 2 or dtype not in GRAM_ROUND_MIN or any(c.dtype != dtype for c in cores):
        return False
    if torch.is_grad_enabled() and any(c.requires_grad for c in cores):
        return False
    return eps is None or eps == 0.0 or eps**2 / (len(cores) - 1) >= GRAM_ROUND_MIN[dtype]


#: Smallest share of an unfolding's energy (tolerance, discarded energy or gap at the cut) on
#: which the Gram path may base a truncation, by dtype: far above the error of its Gram matrices.
GRAM_ROUND_MIN = {torch.float64: GRAM_MIN_DELTA2, torch.float32: 1e-3}


def _unit_cores(cores: Cores) -> tuple[list[torch.Tensor], float]:
    """Cores with extreme magnitudes divided by their largest entry, and the log of the factors.

    Cores whose largest entry lies in ``2^-e .. 2^e`` (``e`` a fifth of the dtype's exponent
    range: 204 in float64, 25 in float32) stay as they are: products of two such cores and a
    normalised matrix can neither overflow nor underflow.
    """
    safe = 2.0 ** (int(math.log2(torch.finfo(cores[0].dtype).max)) // 5)
    out, log_scale = [], 0.0
    for core in cores:
        lo, hi = torch.aminmax(core)
        peak = max(-float(lo), float(hi))
        if peak > 0 and not 1 / safe <= peak <= safe:
            core, log_scale = core / peak, log_scale + math.log(peak)
        out.append(core)
    return out, log_scale


def _tail_rank(tail2: list[float], delta2: float, cap: int | None) -> int:
    """The rank rule of :func:`tensortrain._svd.rank_from_tail` on a Python list."""
    rank = max(1, sum(t > delta2 for t in tail2))
    return rank if cap is None else min(rank, cap)


def _right_grams(units: Cores) -> tuple[list[torch.Tensor], list[int]]:
    """Normalised Gram matrices of the parts right of each core, and a bound on their ranks.

    ``grams[k]`` is ``(r_k, r_k)``: the Gram matrix of the unfolding of cores ``k+1..d-1`` (one GEMM
    pair per core, right to left), divided by its largest entry; ``grams[d-1]`` is ``[[1]]``.
    """
    grams, dims = [units[0].new_ones(1, 1)], [1]
    for c in reversed(units[1:]):
        r_prev, n, r = c.shape
        # P is symmetric; its transposed view ran this tall product 15-30% faster in isolation
        w = (c.reshape(r_prev * n, r) @ grams[-1].mT).reshape(r_prev, n * r)
        gram = w @ c.reshape(r_prev, n * r).mT
        grams.append(times_pow2(gram, -exponent(gram)))
        dims.append(min(r_prev, n * dims[-1]))
    return grams[::-1], dims[::-1]


class _Declined(Exception):
    """The Gram path cannot vouch for a truncation: the caller runs the QR and SVD sweeps."""


@dataclass
class _Cut:
    """One bond's truncation: the kept eigenvectors ``w`` of ``K``, dropped and total energy."""

    w: torch.Tensor
    dropped: float
    total: float


def _cut(k_mat: torch.Tensor, dim: int, share: float, cap: int | None) -> _Cut:
    """Rank and kept eigenvectors of ``K = R P R^T`` for a tolerance of ``share * trace(K)``.

    Raises :class:`_Declined` where the eigenvalues' round-off (``4 k^2 eps_mach trace(K)``, with
    the ``eps_mach`` of the cores' dtype) could decide the rank.
    """
    eps_mach = torch.finfo(k_mat.dtype).eps
    evals, evecs = torch.linalg.eigh(k_mat)  # ascending
    lam = [max(x, 0.0) for x in reversed(evals.tolist())][:dim]  # past dim: 0 (the rank bound)
    tail2 = list(itertools.accumulate(reversed(lam)))[::-1]  # tail2[i] = sum(lam[i:])
    total = tail2[0]
    margin = 4 * len(lam) ** 2 * eps_mach * total
    allowed = share * total
    if 0 < allowed < 2 * margin:
        raise _Declined  # the tolerance is within reach of the Gram matrices' round-off
    rank = _tail_rank(tail2, max(allowed - margin, 0.0), cap)
    dropped = 0.0
    if rank < len(lam) and total > 0:
        dropped, gap = tail2[rank], lam[rank - 1] - lam[rank]
        if max(allowed, dropped, gap) < GRAM_ROUND_MIN[k_mat.dtype] * total:
            raise _Declined
    w = evecs[:, evecs.shape[1] - rank :].flip(1)
    return _Cut(w, dropped, total)


def _bond(
    mat: torch.Tensor, p: torch.Tensor, dim: int, share: float, cap: int | None
) -> tuple[torch.Tensor, torch.Tensor, _Cut]:
    """One bond by Householder QR ``mat = Q R``: the new core ``Q W``, the carry ``W^T R``."""
    h, tau = torch.geqrf(mat)  # Q kept as Householder vectors
    rm = h[: min(mat.shape)].triu()
    cut = _cut(rm @ p @ rm.mT, dim, share, cap)
    w = cut.w
    core = torch.ormqr(h, tau, torch.cat([w, w.new_zeros(mat.shape[0] - w.shape[0], w.shape[1])]))
    return core, w.mT @ rm, cut


def _gram_round(
    cores: Cores, eps: float | None, caps: Sequence[int | None]
) -> list[torch.Tensor] | None:
    """TT rounding from Gram matrices of the right parts; None where it cannot vouch for the error.

    A right-to-left sweep of GEMMs builds ``P_k``, the Gram matrix of the part right of core
    ``k`` (:func:`_right_grams`; normalised: only its eigenvectors and relative eigenvalues
    matter). The left-to-right sweep keeps the left part orthonormal: at bond ``k`` the current
    core ``M = Q R``, and the unfolding's squared singular values and left vectors follow from the
    small symmetric ``K = R P_k R^T = W diag(lambda) W^T``. The new core is ``Q W_t``, orthonormal,
    and the next core absorbs ``W_t^T R`` (the exact projection), so the result is always a product
    of orthogonal projections of the input; only the choice of subspace rests on ``K``. Its
    eigenvalues carry an absolute error of about ``k^2 eps_mach trace(K)`` (a margin taken off the
    ``eps`` budget; ``eps_mach`` of the cores' dtype); the choice is trusted where the tolerance,
    the discarded energy or the gap at the cut is at least ``GRAM_ROUND_MIN[dtype] trace(K)`` and
    the margin is at most half the tolerance; else this returns None and the QR and SVD sweeps run.

    The large products (the Gram sweep, ``Q W_t``, the next core) and ``K`` with its ``eigh`` run
    in the cores' dtype (float32 too: ``eigh``'s error, about ``k eps_mach ||K||``, is inside the
    margin). One GEMM sweep, then one small QR and ``eigh`` per bond, replaces a QR sweep and an
    SVD per bond.
    """
    d = len(cores)
    units, log_scale = _unit_cores(cores)
    grams, dims = _right_grams(units)
    budget = 0.0 if not eps else eps**2 / (d - 1)  # per bond, relative to ||a||^2
    kept = 1.0  # ||a_k||^2 / ||a||^2 after the truncations so far
    out: list[torch.Tensor] = []
    m = units[0]
    for k in range(d - 1):
        r_prev, n, r = m.shape
        try:
            core, carry, cut = _bond(
                m.reshape(r_prev * n, r), grams[k], dims[k], budget / kept, caps[k]
            )
        except _Declined:
            return None
        if cut.total > 0:
            kept *= max(1.0 - cut.dropped / cut.total, 1e-300)
        out.append(core.reshape(r_prev, n, -1))
        e = exponent(carry)
        carry = times_pow2(carry, -e)
        nxt = units[k + 1]
        m = (carry @ nxt.reshape(nxt.shape[0], -1)).reshape(-1, *nxt.shape[1:])
        log_scale = log_scale + e * math.log(2)
    out.append(m)
    return put_scale(out, d - 1, log_scale / math.log(2))


def matmul(a: Cores, b: Cores) -> list[torch.Tensor]:
    """TT-matrix product of cores ``(r, m, k, r')`` and ``(s, k, n, s')``; ranks multiply."""
    ka, kb = tuple(c.shape[2] for c in a), tuple(c.shape[1] for c in b)
    if len(a) != len(b) or ka != kb:
        raise TTShapeError(f"matmul: left column modes {ka} do not match right row modes {kb}")
    return [
        torch.einsum("amkb,cknd->acmnbd", ca, cb).reshape(
            ca.shape[0] * cb.shape[0], ca.shape[1], cb.shape[2], ca.shape[3] * cb.shape[3]
        )
        for ca, cb in zip(a, b, strict=True)
    ]


def matvec(a: Cores, x: Cores) -> list[torch.Tensor]:
    """TT-matrix ``(r, m, n, r')`` times TT vector ``(s, n, s')``: a TT vector; ranks multiply."""
    na, nx = tuple(c.shape[2] for c in a), tuple(c.shape[1] for c in x)
    if len(a) != len(x) or na != nx:
        raise TTShapeError(f"matvec: matrix column modes {na} do not match vector modes {nx}")
    return [
        torch.einsum("amnb,cnd->acmbd", ca, cx).reshape(
            ca.shape[0] * cx.shape[0], ca.shape[1], ca.shape[3] * cx.shape[2]
        )
        for ca, cx in zip(a, x, strict=True)
    ]
