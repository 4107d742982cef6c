"""The TT-matrix format: cores ``(r_{k-1}, m_k, n_k, r_k)``, row (output) modes ``m`` first."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from tensortrain import ops
from tensortrain._base import TTBase
from tensortrain._blocks import dense
from tensortrain._cores import check_cores, merge_modes, split_modes
from tensortrain.contract import tt_linear
from tensortrain.errors import TTShapeError, TTTypeError
from tensortrain.tensor import TTTensor


class TTMatrix(TTBase):
    """A matrix of shape ``(M, N) = (prod(m), prod(n))`` in TT-matrix format.

    Entry ``(i, j)`` with row multi-index ``(i_1..i_d)`` and column multi-index ``(j_1..j_d)``
    (both row-major) is ``G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]``.

    Args:
        cores: ``d >= 1`` tensors of shape ``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1``.

    Example:
        >>> w = TTMatrix([torch.randn(1, 2, 3, 4), torch.randn(4, 5, 6, 1)])
        >>> w.shape, w.row_modes, w.col_modes
        ((10, 18), (2, 5), (3, 6))
        >>> x = torch.randn(7, 18)
        >>> torch.allclose(w.apply(x), x @ w.full().T, atol=1e-5)
        True
    """

    core_ndim = 4

    def __init__(self, cores: Sequence[torch.Tensor]) -> None:
        self._cores = check_cores(cores, 4)

    def _merged(self) -> list[torch.Tensor]:
        return merge_modes(self._cores)

    def _like(self, cores: Sequence[torch.Tensor]) -> TTMatrix:
        return TTMatrix(split_modes(cores, self.row_modes, self.col_modes))

    def _modes_key(self) -> tuple[Any, ...]:
        return (self.row_modes, self.col_modes)

    @property
    def row_modes(self) -> tuple[int, ...]:
        """``(m_1, ..., m_d)``: the output modes."""
        return tuple(int(c.shape[1]) for c in self._cores)

    @property
    def col_modes(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``: the input modes."""
        return tuple(int(c.shape[2]) for c in self._cores)

    @property
    def shape(self) -> tuple[int, int]:
        """``(M, N)``."""
        return math.prod(self.row_modes), math.prod(self.col_modes)

    @property
    def ndim(self) -> int:
        """Always 2."""
        return 2

    @property
    def T(self) -> TTMatrix:
        """The transpose: each core's ``m`` and ``n`` axes swapped."""
        return TTMatrix([c.transpose(1, 2) for c in self._cores])

    def full(self) -> torch.Tensor:
        """Materialise the dense ``(M, N)`` matrix: ``O(M N r)`` time, ``O(M N)`` memory.

        Built by :func:`tensortrain._blocks.dense` from two merged halves of the cores, written
        directly in row-major ``(M, N)`` order.
        """
        return dense(self._cores)

    to_dense = full

    def to_tensor(self) -> TTTensor:
        """The same cores viewed as a TT tensor of shape ``(m_1 n_1, ..., m_d n_d)``."""
        return TTTensor(self._merged())

    @classmethod
    def from_tensor(
        cls, tt: TTTensor, row_modes: Sequence[int], col_modes: Sequence[int]
    ) -> TTMatrix:
        """Inverse of :meth:`to_tensor`: split each mode ``m_k n_k`` into ``(m_k, n_k)``."""
        sizes = tuple(m * n for m, n in zip(row_modes, col_modes, strict=True))
        if len(row_modes) != len(col_modes) or sizes != tt.shape:
            raise TTShapeError(
                f"row_modes {tuple(row_modes)} times col_modes {tuple(col_modes)} must give the "
                f"tensor's shape {tt.shape}"
            )
        return cls(split_modes(tt.cores, row_modes, col_modes))

    def __getitem__(self, index: tuple[int, int]) -> torch.Tensor:
        """Entry ``(i, j)`` as a 0-d tensor, in ``O(d r^2)`` without densifying."""
        if not (isinstance(index, tuple) and len(index) == 2):
            raise TTTypeError(f"index must be a pair (row, column) of ints, got {index!r}")
        M, N = self.shape
        multi = []
        for name, i, size, modes in (
            ("row", index[0], M, self.row_modes),
            ("column", index[1], N, self.col_modes),
        ):
            if isinstance(i, bool) or not isinstance(i, int):
                raise TTTypeError(f"{name} index must be an int, got {type(i).__name__}")
            if not -size <= i < size:
                raise IndexError(f"{name} index {i} is out of range for size {size}")
            multi.append(_unravel(i % size, modes))
        out = self._cores[0].new_ones(1, 1)
        for core, i, j in zip(self._cores, *multi, strict=True):
            out = out @ core[:, i, j, :]
        return out.reshape(())

    def __matmul__(self, other: TTMatrix | TTTensor | torch.Tensor) -> Any:
        """``TTMatrix @ TTMatrix -> TTMatrix``; ``@ TTTensor`` (a TT vector) ``-> TTTensor``;
        ``@ dense (N,) or (N, K)`` -> dense ``(M,)`` or ``(M, K)`` through :func:`tt_linear`."""
        if isinstance(other, TTMatrix):
            if other.row_modes != self.col_modes:
                raise TTShapeError(
                    f"matmul: left col_modes {self.col_modes} do not match right row_modes "
                    f"{other.row_modes}"
                )
            return TTMatrix(ops.matmul(self._cores, other._cores))
        if isinstance(other, TTTensor):
            if other.shape != self.col_modes:
                raise TTShapeError(
                    f"matvec: matrix col_modes {self.col_modes} do not match vector shape "
                    f"{other.shape}"
                )
            return TTTensor(ops.matvec(self._cores, other.cores))
        if isinstance(other, torch.Tensor):
            if other.ndim not in (1, 2):
                raise TTShapeError(f"matmul: dense operand must be 1-D or 2-D, got {other.ndim}-D")
            return self.apply(other.mT).mT if other.ndim == 2 else self.apply(other)
        return NotImplemented

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ self.T`` for a dense batch ``x[..., N] -> y[..., M]`` (see :func:`tt_linear`)."""
        return tt_linear(x, self)


def _unravel(i: int, modes: Sequence[int]) -> list[int]:
    out = []
    for size in reversed(modes):
        i, r = divmod(i, size)
        out.append(r)
    return out[::-1]
