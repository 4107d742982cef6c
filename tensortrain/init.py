"""Initialisation of TT cores: a chosen entry std for the reconstructed tensor, or zero output."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import check_ranks

__all__ = ["linear_init_std", "random_cores"]

_STD_SCHEMES: dict[str, Callable[[int, int], float]] = {
    "torch": lambda fan_in, fan_out: 1.0 / math.sqrt(3 * fan_in),
    "glorot": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "xavier": lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out)),
    "kaiming": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
    "he": lambda fan_in, fan_out: math.sqrt(2.0 / fan_in),
    "lecun": lambda fan_in, fan_out: 1.0 / math.sqrt(fan_in),
}


def linear_init_std(fan_in: int, fan_out: int, scheme: str = "torch") -> float:
    """Entry std of a dense ``(fan_out, fan_in)`` weight under a standard init scheme.

    Schemes: ``"torch"`` (``nn.Linear``'s default, kaiming_uniform with ``a=sqrt(5)``:
    ``1/sqrt(3*fan_in)``), ``"glorot"``/``"xavier"`` (``sqrt(2/(fan_in+fan_out))``),
    ``"kaiming"``/``"he"`` (``sqrt(2/fan_in)``) and ``"lecun"`` (``1/sqrt(fan_in)``).

    Args:
        fan_in: Input features, ``>= 1``.
        fan_out: Output features, ``>= 1``.
        scheme: One of the names above.

    Returns:
        The std, to pass as ``std`` to :func:`random_cores`.

    Raises:
        TTValueError: Unknown ``scheme``, or a fan ``< 1``.

    Example:
        >>> linear_init_std(768, 768, "lecun") == 1 / 768**0.5
        True
    """
    check_int("fan_in", fan_in)
    check_int("fan_out", fan_out)
    if scheme not in _STD_SCHEMES:
        raise TTValueError(f"scheme must be one of {sorted(_STD_SCHEMES)}, got {scheme!r}")
    return _STD_SCHEMES[scheme](fan_in, fan_out)


def _check_mode_shapes(mode_shapes: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    shapes = [
        tuple(check_int(f"mode_shapes[{k}][{j}]", n) for j, n in enumerate(shape))
        for k, shape in enumerate(mode_shapes)
    ]
    if not shapes:
        raise TTShapeError("mode_shapes must hold at least one core, got []")
    if not shapes[0] or any(len(s) != len(shapes[0]) for s in shapes):
        raise TTShapeError(
            f"mode_shapes must be non-empty tuples of one length (1 for a TT tensor, 2 for a "
            f"TT-matrix), got {shapes}"
        )
    return shapes


def _check_random_args(
    mode_shapes: Sequence[Sequence[int]],
    ranks: Sequence[int],
    std: float,
    zero_core: int | None,
    dtype: torch.dtype | None,
) -> tuple[list[tuple[int, ...]], tuple[int, ...], torch.dtype]:
    """Checked ``(mode shapes, full ranks, dtype)`` of :func:`random_cores`."""
    shapes = _check_mode_shapes(mode_shapes)
    d = len(shapes)
    full = check_ranks(ranks, d)
    check_number("std", std, minimum=0.0)
    if zero_core is not None and not -d <= check_int("zero_core", zero_core, minimum=None) < d:
        raise TTValueError(f"zero_core must be in [{-d}, {d - 1}] for {d} cores, got {zero_core}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TTTypeError(f"dtype must be a floating dtype, got {dtype}")
    return list(shapes), tuple(full), dtype


def random_cores(
    mode_shapes: Sequence[Sequence[int]],
    ranks: Sequence[int],
    *,
    std: float = 1.0,
    zero_core: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Gaussian TT cores whose reconstructed tensor has entries of standard deviation ``std``.

    Each core is iid ``N(0, s**2)``. A reconstructed entry then has variance
    ``s**(2d) * prod(ranks)``, so ``s = (std**2 / prod(ranks)) ** (1 / (2d))``: the scale is split
    evenly across cores (computed in log space), so no core under- or overflows for large ranks or
    many cores. Entries are uncorrelated but not Gaussian (a product of Gaussians).

    Args:
        mode_shapes: ``mode_shapes[k]`` is ``(n_k,)`` for a TT tensor or ``(m_k, n_k)`` for a
            TT-matrix.
        ranks: Full ranks ``(1, r_1, ..., r_{d-1}, 1)``.
        std: Target std of every reconstructed entry, ``>= 0``.
        zero_core: Index of a core to set to zero (negative counts from the end), so the
            reconstruction is exactly zero while the other cores keep their scale (zero-output
            adapter init). None draws every core.
        generator: Random generator; cores are drawn on its device, then moved to ``device``.
        dtype: Floating dtype of the cores; default ``torch.get_default_dtype()``.
        device: Device of the cores; default the generator's device, else the default device.

    Returns:
        ``d`` cores, core ``k`` of shape ``(ranks[k], *mode_shapes[k], ranks[k + 1])``.

    Raises:
        TTShapeError: Inconsistent ``mode_shapes`` or ``ranks``.
        TTValueError: Negative or non-finite ``std``, ``zero_core`` out of range, a size ``< 1``.
        TTTypeError: Non-floating ``dtype`` or a non-int size.

    Example:
        >>> cores = random_cores([(4, 8), (8, 4)], (1, 5, 1), std=0.02, zero_core=-1)
        >>> [tuple(c.shape) for c in cores]
        [(1, 4, 8, 5), (5, 8, 4, 1)]
    """
    shapes, full, dtype = _check_random_args(mode_shapes, ranks, std, zero_core, dtype)
    d = len(shapes)
    scale = std ** (1 / d) * math.exp(-sum(math.log(r) for r in full) / (2 * d))
    draw_device = generator.device if generator is not None else device
    cores = []
    for k, shape in enumerate(shapes):
        core_shape = (full[k], *shape, full[k + 1])
        core = torch.randn(core_shape, generator=generator, dtype=dtype, device=draw_device)
        if zero_core is not None and k == zero_core % d:
            core.zero_()  # drawn anyway, so the other cores match those drawn without zero_core
        else:
            core.mul_(scale)
        cores.append(core.to(device) if device is not None else core)
    return cores
