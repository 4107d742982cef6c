"""Validation of core lists and small helpers shared by every module.

This is the one place that checks core shapes, rank chaining, boundary ranks, dtypes and devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTShapeError, TTTypeError


def check_cores(
    cores: Sequence[torch.Tensor], core_ndim: int, name: str = "cores"
) -> list[torch.Tensor]:
    """Validate a list of TT cores and return it as a list.

    Args:
        cores: ``d >= 1`` tensors of shape ``(r_{k-1}, *modes_k, r_k)``.
        core_ndim: 3 for a TT tensor, 4 for a TT-matrix.
        name: the argument's name, used in error messages.

    Raises:
        TTTypeError: a core is not a floating tensor, or dtypes/devices differ.
        TTShapeError: wrong number of dimensions, non-positive sizes, boundary ranks other than 1,
            or a rank that does not chain.
    """
    if isinstance(cores, torch.Tensor) or not isinstance(cores, Sequence):
        raise TTTypeError(f"{name} must be a sequence of tensors, got {type(cores).__name__}")
    cores = list(cores)
    if not cores:
        raise TTShapeError(f"{name} must hold at least one core, got an empty sequence")
    for k, core in enumerate(cores):
        if not isinstance(core, torch.Tensor):
            raise TTTypeError(f"{name}[{k}] must be a torch.Tensor, got {type(core).__name__}")
        if not (core.is_floating_point() or core.is_complex()):
            raise TTTypeError(f"{name}[{k}] must have a floating dtype, got {core.dtype}")
        if core.ndim != core_ndim:
            raise TTShapeError(
                f"{name}[{k}] must have {core_ndim} dimensions "
                f"{'(r_prev, n, r_next)' if core_ndim == 3 else '(r_prev, m, n, r_next)'}, "
                f"got shape {tuple(core.shape)}"
            )
        if min(core.shape) < 1:
            raise TTShapeError(f"{name}[{k}] has a non-positive size: shape {tuple(core.shape)}")
        if core.dtype != cores[0].dtype:
            raise TTTypeError(
                f"{name}[{k}] has dtype {core.dtype} but {name}[0] has {cores[0].dtype}"
            )
        if core.device != cores[0].device:
            raise TTTypeError(
                f"{name}[{k}] is on device {core.device} but {name}[0] is on {cores[0].device}"
            )
        if k > 0 and core.shape[0] != cores[k - 1].shape[-1]:
            raise TTShapeError(
                f"{name}[{k}] has left rank {core.shape[0]} but "
                f"{name}[{k - 1}] has right rank {cores[k - 1].shape[-1]}"
            )
    if cores[0].shape[0] != 1:
        raise TTShapeError(f"{name}[0] must have left rank 1, got {cores[0].shape[0]}")
    if cores[-1].shape[-1] != 1:
        raise TTShapeError(
            f"{name}[{len(cores) - 1}] must have right rank 1, got {cores[-1].shape[-1]}"
        )
    return cores


def check_modes(name: str, modes: object) -> tuple[int, ...]:
    """``modes`` as a tuple if it is a non-empty sequence of ints ``>= 1``; else raise naming it."""
    if isinstance(modes, (torch.Tensor, str)) or not isinstance(modes, Sequence) or not modes:
        raise TTTypeError(f"{name} must be a non-empty sequence of ints, got {modes!r}")
    return tuple(check_int(f"{name}[{k}]", m) for k, m in enumerate(modes))


def ranks_of(cores: Sequence[torch.Tensor]) -> tuple[int, ...]:
    """The full rank tuple ``(r_0, ..., r_d)`` of a validated core list."""
    return (1, *(int(c.shape[-1]) for c in cores))


def check_eps(eps: float | None) -> float | None:
    """``eps`` as a float if it is a finite number ``>= 0``, or None; else raise naming ``eps``."""
    return None if eps is None else check_number("eps", eps, minimum=0.0)


def bond_caps(max_rank: int | Sequence[int] | None, d: int) -> list[int | None]:
    """Turn ``max_rank`` (an int, one value per bond, or None) into ``d - 1`` per-bond caps."""
    if max_rank is None:
        return [None] * (d - 1)
    if isinstance(max_rank, bool):
        raise TTTypeError("max_rank must be an int, a sequence of ints or None, got bool")
    if isinstance(max_rank, int):
        caps: list[int] = [check_int("max_rank", max_rank)] * (d - 1)
    elif isinstance(max_rank, Sequence):
        caps = list(max_rank)
        if len(caps) == d + 1:
            caps = caps[1:-1]
        if len(caps) != d - 1:
            raise TTShapeError(
                f"max_rank must hold d - 1 = {d - 1} bond ranks (or d + 1 = {d + 1} with the "
                f"boundary 1s), got {len(max_rank)}: {tuple(max_rank)}"
            )
    else:
        raise TTTypeError(
            f"max_rank must be an int, a sequence of ints or None, got {type(max_rank).__name__}"
        )
    return [check_int(f"max_rank[{k}]", cap) for k, cap in enumerate(caps)]


def same_family(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], what: str) -> None:
    """Raise unless two core lists have the same dtype and device (for binary operations)."""
    if a[0].dtype != b[0].dtype:
        raise TTTypeError(f"{what}: operands have dtypes {a[0].dtype} and {b[0].dtype}")
    if a[0].device != b[0].device:
        raise TTTypeError(f"{what}: operands are on devices {a[0].device} and {b[0].device}")


def merge_modes(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """View TT-matrix cores ``(r, m, n, r')`` as TT tensor cores ``(r, m * n, r')``."""
    return [c.reshape(c.shape[0], c.shape[1] * c.shape[2], c.shape[3]) for c in cores]


def split_modes(
    cores: Sequence[torch.Tensor], row_modes: Sequence[int], col_modes: Sequence[int]
) -> list[torch.Tensor]:
    """Inverse of :func:`merge_modes`."""
    return [
        c.reshape(c.shape[0], m, n, c.shape[-1])
        for c, m, n in zip(cores, row_modes, col_modes, strict=True)
    ]
