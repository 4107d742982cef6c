"""The TT tensor format: cores ``(r_{k-1}, n_k, r_k)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tensortrain import ops
from tensortrain._base import TTBase
from tensortrain._cores import check_cores
from tensortrain.errors import TTShapeError, TTTypeError


class TTTensor(TTBase):
    """A tensor of shape ``(n_1, ..., n_d)`` in tensor-train format.

    Validated once at construction; the cores are plain tensors (any device and dtype) and autograd
    flows through every operation.

    Args:
        cores: ``d >= 1`` tensors of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``, all
            of one dtype and device.

    Example:
        >>> tt = TTTensor([torch.randn(1, 4, 3), torch.randn(3, 5, 2), torch.randn(2, 6, 1)])
        >>> tt.shape, tt.ranks, tt.num_parameters
        ((4, 5, 6), (1, 3, 2, 1), 54)
        >>> tt.full().shape
        torch.Size([4, 5, 6])
    """

    core_ndim = 3

    def __init__(self, cores: Sequence[torch.Tensor]) -> None:
        self._cores = check_cores(cores, 3)

    def _merged(self) -> list[torch.Tensor]:
        return self._cores

    def _like(self, cores: Sequence[torch.Tensor]) -> TTTensor:
        return TTTensor(cores)

    def _modes_key(self) -> tuple[Any, ...]:
        return self.shape

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``."""
        return tuple(int(c.shape[1]) for c in self._cores)

    @property
    def ndim(self) -> int:
        """Number of dimensions ``d``."""
        return len(self._cores)

    def full(self) -> torch.Tensor:
        """Materialise the dense tensor of shape ``(n_1, ..., n_d)``: ``O(prod(n) * r)`` memory."""
        return ops.full(self._cores)

    to_dense = full

    def __getitem__(self, index: int | slice | tuple[int | slice, ...]) -> torch.Tensor | TTTensor:
        """Index with ints and slices, one per mode, without densifying.

        All ints give a 0-d tensor (one entry, ``O(d r^2)``); slices keep their mode and return a
        :class:`TTTensor`; ints drop theirs. Missing trailing indices mean ``:``.
        """
        idx = index if isinstance(index, tuple) else (index,)
        if len(idx) > self.ndim:
            raise TTShapeError(f"index has {len(idx)} entries but the tensor has {self.ndim} modes")
        idx = idx + (slice(None),) * (self.ndim - len(idx))
        kept: list[torch.Tensor] = []
        carry: torch.Tensor | None = None  # (r_prev_kept, r) matrix from dropped modes
        for k, (i, core) in enumerate(zip(idx, self._cores, strict=True)):
            if isinstance(i, slice):
                piece = core[:, i, :]
                if piece.shape[1] == 0:
                    raise TTShapeError(
                        f"index[{k}] = {i} selects nothing from mode of size {core.shape[1]}"
                    )
            elif isinstance(i, int) and not isinstance(i, bool):
                if not -core.shape[1] <= i < core.shape[1]:
                    raise IndexError(
                        f"index[{k}] = {i} is out of range for mode of size {core.shape[1]}"
                    )
                piece = core[:, i, :]
            else:
                raise TTTypeError(f"index[{k}] must be an int or a slice, got {type(i).__name__}")
            if piece.ndim == 2:
                carry = piece if carry is None else carry @ piece
                continue
            if carry is not None:
                piece = torch.einsum("ab,bnc->anc", carry, piece)
                carry = None
            kept.append(piece)
        if not kept:
            assert carry is not None
            return carry.reshape(())
        if carry is not None:
            kept[-1] = torch.einsum("anb,bc->anc", kept[-1], carry)
        return TTTensor(kept)
