"""Behaviour shared by :class:`TTTensor` and :class:`TTMatrix`: arithmetic, rounding, norms, moves.

A subclass provides ``_merged()`` (its cores as TT tensor cores ``(r, size, r')``) and
``_like(cores)`` (a new object of its own kind from such cores, with its own mode split);
everything else lives here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import torch

from tensortrain import ops
from tensortrain._cores import ranks_of, same_family
from tensortrain.errors import TTShapeError, TTTypeError

T = TypeVar("T", bound="TTBase")
Scalar = int | float | complex | torch.Tensor


class TTBase:
    """Common base of the TT formats. Not instantiated directly."""

    _cores: list[torch.Tensor]
    #: Dimensions of one core: 3 for a TT tensor, 4 for a TT-matrix.
    core_ndim: ClassVar[int]

    def _merged(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def _like(self: T, cores: Sequence[torch.Tensor]) -> T:
        raise NotImplementedError

    def _modes_key(self) -> tuple[Any, ...]:
        raise NotImplementedError

    @property
    def cores(self) -> list[torch.Tensor]:
        """The cores, in order (a new list holding the same tensors)."""
        return list(self._cores)

    @property
    def d(self) -> int:
        """Number of cores."""
        return len(self._cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Ranks ``(r_0, ..., r_d)`` including the boundary ranks ``r_0 = r_d = 1``."""
        return ranks_of(self._cores)

    @property
    def num_parameters(self) -> int:
        """Total number of entries in the cores."""
        return sum(c.numel() for c in self._cores)

    @property
    def dtype(self) -> torch.dtype:
        """The cores' dtype."""
        return self._cores[0].dtype

    @property
    def device(self) -> torch.device:
        """The cores' device."""
        return self._cores[0].device

    def to(self: T, *args: Any, **kwargs: Any) -> T:
        """Move or cast every core, with the arguments of :meth:`torch.Tensor.to`."""
        return self._like([c.to(*args, **kwargs) for c in self._merged()])

    def detach(self: T) -> T:
        """The same cores, detached from the autograd graph."""
        return self._like([c.detach() for c in self._merged()])

    def _check_operand(self, other: object, what: str) -> list[torch.Tensor]:
        if type(other) is not type(self):
            raise TTTypeError(
                f"{what}: expected a {type(self).__name__}, got {type(other).__name__}"
            )
        assert isinstance(other, TTBase)
        if self._modes_key() != other._modes_key():
            raise TTShapeError(
                f"{what}: operands have modes {self._modes_key()} and {other._modes_key()}"
            )
        same_family(self._cores, other._cores, what)
        return other._merged()

    def __add__(self: T, other: T) -> T:
        return self._like(ops.add(self._merged(), self._check_operand(other, "add")))

    def __sub__(self: T, other: T) -> T:
        merged = self._check_operand(other, "subtract")
        return self._like(ops.add(self._merged(), ops.scale(merged, -1)))

    def __neg__(self: T) -> T:
        return self._like(ops.scale(self._merged(), -1))

    def __mul__(self: T, other: Scalar | T) -> T:
        """A scalar times this, or (with another TT of the same shape) the Hadamard product."""
        if isinstance(other, TTBase):
            return self._like(ops.hadamard(self._merged(), self._check_operand(other, "hadamard")))
        if isinstance(other, torch.Tensor) and other.ndim != 0:
            raise TTTypeError(
                f"multiply: expected a scalar or a {type(self).__name__}, got a tensor of shape "
                f"{tuple(other.shape)}"
            )
        if not isinstance(other, (int, float, complex, torch.Tensor)):
            return NotImplemented
        return self._like(ops.scale(self._merged(), other))

    __rmul__ = __mul__

    def __truediv__(self: T, other: Scalar) -> T:
        return self * (1 / other)

    def hadamard(self: T, other: T) -> T:
        """Elementwise product; ranks multiply."""
        return self * other

    def inner(self, other: TTBase) -> torch.Tensor:
        """Inner product ``sum(conj(self) * other)`` as a 0-d tensor, without densifying."""
        return ops.inner(self._merged(), self._check_operand(other, "inner"))

    def norm(self) -> torch.Tensor:
        """Frobenius norm, computed through orthogonalisation (no overflow or underflow)."""
        return ops.norm(self._merged())

    def orthogonalize(self: T) -> T:
        """The same tensor with cores ``1..d-1`` right-orthogonal (:func:`ops.orthogonalize`)."""
        return self._like(ops.orthogonalize(self._merged()))

    def round(self: T, eps: float | None = None, max_rank: int | Sequence[int] | None = None) -> T:
        """Recompress: ``||self - out||_F <= eps * ||self||_F``; ``max_rank`` wins over ``eps``."""
        return self._like(ops.round_cores(self._merged(), eps=eps, max_rank=max_rank))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={tuple(self.shape)}, ranks={self.ranks}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    @property
    def shape(self) -> tuple[int, ...]:
        raise NotImplementedError
