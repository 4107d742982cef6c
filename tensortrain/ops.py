"""Operations on lists of TT cores: the source of truth behind the TT classes.

Every function takes TT tensor cores ``(r_{k-1}, n_k, r_k)``; TT-matrix operations that do not
depend on the row/column split work on the merged view ``(r_{k-1}, m_k n_k, r_k)``. Nothing here
forms the dense tensor except :func:`full`, whose name says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tensortrain._cores import bond_caps, check_eps
from tensortrain._svd import truncated_svd
from tensortrain.errors import TTShapeError

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
    """
    check_same_shape(a, b, "inner")
    v = a[0].new_ones(1, 1)
    log_scale = a[0].new_zeros((), dtype=torch.float64).real
    for ca, cb in zip(a, b, strict=True):
        sa, sb = _positive(ca.detach().abs().max()), _positive(cb.detach().abs().max())
        v = torch.einsum("ab,anc,bnd->cd", v, (ca / sa).conj(), cb / sb)
        sv = _positive(v.detach().abs().max())
        v = v / sv
        log_scale = (
            log_scale + torch.log(sa.double()) + torch.log(sb.double()) + torch.log(sv.double())
        )
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
    s0 = _positive(out[0].detach().abs().max())
    out[0] = out[0] / s0
    return out, log_scale + torch.log(s0.double())


def orthogonalize(cores: Cores) -> list[torch.Tensor]:
    """Right-to-left orthogonalisation by QR: the same tensor, cores ``1..d-1`` right-orthogonal.

    Ranks may shrink where ``r_{k-1} > n_k r_k`` (the QR is reduced). The norm of the tensor is the
    Frobenius norm of core 0.
    """
    out, log_scale = _orthogonalize(cores)
    out[0] = out[0] * torch.exp(log_scale).to(out[0].real.dtype)
    return out


def norm(cores: Cores) -> torch.Tensor:
    """Frobenius norm via orthogonalisation: no overflow or underflow of intermediate products."""
    out, log_scale = _orthogonalize(cores)
    core_norm = safe_norm(out[0])
    return core_norm * torch.exp(log_scale).to(core_norm.dtype)


def round_cores(
    cores: Cores, eps: float | None = None, max_rank: int | Sequence[int] | None = None
) -> list[torch.Tensor]:
    """TT rounding: orthogonalise right-to-left, then truncate by SVD left-to-right.

    With ``eps``, ``||a - round(a)||_F <= eps * ||a||_F``; ``max_rank`` caps the ranks and wins
    over ``eps``. Never forms the dense tensor: ``O(d n r^3)``.
    """
    check_eps(eps)
    d = len(cores)
    caps = bond_caps(max_rank, d)
    out, log_scale = _orthogonalize(cores)
    if d == 1:
        out[0] = out[0] * torch.exp(log_scale).to(out[0].real.dtype)
        return out
    delta = 0.0
    if eps is not None:
        delta = eps / math.sqrt(d - 1) * float(safe_norm(out[0].detach()))
    for k in range(d - 1):
        r_prev, n, r = out[k].shape
        u, s, vh = truncated_svd(out[k].reshape(r_prev * n, r), delta, caps[k])
        out[k] = u.reshape(r_prev, n, -1)
        out[k + 1] = torch.einsum("ab,bnc->anc", s[:, None] * vh, out[k + 1])
    out[-1] = out[-1] * torch.exp(log_scale).to(out[-1].real.dtype)
    return out


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
