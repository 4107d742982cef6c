"""Conversion to and from NumPy arrays and tensorly's TT formats (tensorly imported lazily).

tensorly uses the same core conventions: ``(r_{k-1}, n_k, r_k)`` for ``TTTensor`` and
``(r_{k-1}, m_k, n_k, r_k)`` for ``TTMatrix``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tensortrain.matrix import TTMatrix
from tensortrain.tensor import TTTensor


def to_numpy(tt: TTTensor | TTMatrix) -> list[np.ndarray]:
    """The cores as NumPy arrays (detached, copied to the CPU)."""
    return [c.detach().cpu().numpy() for c in tt.cores]


def from_numpy(
    cores: Sequence[np.ndarray], dtype: torch.dtype | None = None
) -> TTTensor | TTMatrix:
    """A :class:`TTTensor` (3-D cores) or :class:`TTMatrix` (4-D cores) from NumPy arrays.

    Example:
        >>> tt = from_numpy([np.ones((1, 2, 3)), np.ones((3, 4, 1))])
        >>> tt.shape
        (2, 4)
    """
    tensors = [torch.as_tensor(np.asarray(c), dtype=dtype) for c in cores]
    return TTMatrix(tensors) if tensors and tensors[0].ndim == 4 else TTTensor(tensors)


def to_tensorly(tt: TTTensor | TTMatrix) -> Any:
    """A ``tensorly.tt_tensor.TTTensor`` or ``tensorly.tt_matrix.TTMatrix`` holding NumPy cores."""
    import tensorly as tl

    cores = to_numpy(tt)
    return (
        tl.tt_matrix.TTMatrix(cores) if isinstance(tt, TTMatrix) else tl.tt_tensor.TTTensor(cores)
    )


def from_tensorly(tl_tt: Any, dtype: torch.dtype | None = None) -> TTTensor | TTMatrix:
    """Convert a tensorly TT tensor or TT-matrix (any tensorly backend) to ours."""
    import tensorly as tl

    return from_numpy([tl.to_numpy(c) for c in tl_tt], dtype=dtype)
