"""Exact power-of-two scaling, and the finite-input check of the factorising routines.

TT-SVD and rounding square singular values and tolerances; near the ends of a dtype's range those
squares overflow or underflow (``1e20 ** 2`` is inf in float32, ``1e-170 ** 2`` is 0 in float64).
The routines therefore work on an input scaled by a power of two to a largest entry in
``[0.5, 1)`` (exact: only the exponent changes) and give the scale back to the result at the end
with :func:`put_scale`, which puts it on the core that carries the norm when that core can hold it
and spreads it evenly over all cores otherwise (a tensor whose norm is beyond the dtype's range).

Example:
    >>> t = torch.tensor([3e-30, -1e-31])
    >>> e = exponent(t)
    >>> float(times_pow2(t, -e).abs().max()) < 1.0, e
    (True, -98)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from tensortrain.errors import TTValueError


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``TTValueError`` naming ``name`` if ``t`` holds a NaN or an infinity."""
    if not bool(torch.isfinite(t.detach()).all()):
        raise TTValueError(f"{name} contains NaN or inf")


def check_finite_cores(cores: Sequence[torch.Tensor], name: str = "cores") -> None:
    """:func:`check_finite` for every core, naming the first bad one.

    One pass of sums and one device sync; only when a sum is not finite (a bad entry, or finite
    entries whose sum overflows) does the entrywise check run.
    """
    if bool(torch.isfinite(torch.stack([c.detach().sum() for c in cores])).all()):
        return  # a finite sum has finite terms (a NaN or inf term makes the sum NaN or inf)
    flags = torch.stack([torch.isfinite(c.detach()).all() for c in cores])
    if not bool(flags.all()):
        k = int((~flags).nonzero()[0])
        raise TTValueError(f"{name}[{k}] contains NaN or inf")


def exponent(t: torch.Tensor) -> int:
    """The ``e`` with ``max|t|`` in ``[2^(e-1), 2^e)``; 0 for a zero tensor."""
    peak = float(torch.linalg.vector_norm(t.detach(), math.inf)) if t.numel() else 0.0
    return math.frexp(peak)[1] if peak > 0 else 0


def _step_range(dtype: torch.dtype) -> tuple[int, int]:
    """Exponents ``k`` for which ``2^k`` is a normal number of ``dtype``."""
    info = torch.finfo(dtype)  # exact exponents: log2(float64 max) rounds to 1024
    return math.frexp(info.tiny)[1] - 1, math.frexp(info.max)[1] - 1


def times_pow2(t: torch.Tensor, power: float) -> torch.Tensor:
    """``t * 2^power``, exact for integer ``power`` (barring overflow or subnormal results).

    The factor is applied in steps whose factors are normal numbers of ``t``'s dtype (``2^-30``
    is no float16), so any ``power`` works. Differentiable in ``t``; never in place.
    """
    whole = math.floor(power)
    out = t if power == whole else t * 2.0 ** (power - whole)
    lo, hi = _step_range(t.dtype)
    while whole:
        step = min(max(whole, lo), hi)
        out = out * 2.0**step
        whole -= step
    return out


def put_scale(cores: Sequence[torch.Tensor], k: int, power: float) -> list[torch.Tensor]:
    """The cores with the factor ``2^power`` put back: on core ``k`` if it can hold it, else spread.

    Core ``k`` (the one carrying the norm) takes the whole factor when its largest entry stays a
    normal number of the dtype; otherwise (the tensor's norm is beyond the dtype's range) every
    core takes ``2^(power / d)``, so the tensor is right though core ``k`` is not alone in
    carrying its norm.
    """
    out = list(cores)
    if power == 0:
        return out
    peak = float(out[k].detach().abs().max())
    lo, hi = _step_range(out[k].dtype)
    if peak == 0 or lo <= math.log2(peak) + power < hi:
        out[k] = times_pow2(out[k], power)
        return out
    return [times_pow2(c, power / len(out)) for c in out]
