"""Helpers for tests at extreme magnitudes: errors measured in exactly rescaled float64."""

import math

import torch

from tensortrain._scale import exponent, times_pow2
from tensortrain.ops import full
from tensortrain.testing import tolerance

WIDE = {torch.float32: torch.float64, torch.complex64: torch.complex128}


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 (complex128 for complex): exact, and with room for any float32 value."""
    return t.to(WIDE.get(t.dtype, t.dtype))


def power_range(dtype: torch.dtype, margin: int = 8) -> tuple[int, int]:
    """Exponents ``k`` for which ``2^k`` times an order-1 tensor is a normal tensor of ``dtype``."""
    info = torch.finfo(dtype)
    return math.ceil(math.log2(info.tiny)) + margin, math.floor(math.log2(info.max)) - 3


def rel_err(cores: list[torch.Tensor], ref_unit: torch.Tensor, ref_power: int) -> float:
    """``||tt - x|| / ||x||`` for the TT ``cores`` and ``x = ref_unit * 2^ref_power``.

    Each core is divided by the power of two of its largest entry (exact), so the dense
    reconstruction of either side is of order 1 in float64 whatever the magnitudes.
    """
    unit, power = [], 0
    for c in cores:
        e = exponent(c)
        unit.append(times_pow2(wide(c.detach()), -e))
        power += e
    got = full(unit).reshape(ref_unit.shape)
    ref = times_pow2(wide(ref_unit), ref_power - power)
    return float(torch.linalg.vector_norm(got - ref) / torch.linalg.vector_norm(ref))


def bound(eps: float | None, dtype: torch.dtype) -> float:
    """The Oseledets bound ``eps`` widened by the dtype's tolerance (0 when ``eps`` is None)."""
    real = torch.empty((), dtype=dtype).real.dtype
    tol = tolerance(real)
    return (eps or 0.0) * (1 + tol) + tol
