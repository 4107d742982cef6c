"""tensortrain: tensor-train (TT) tensors and TT-matrices on PyTorch.

Conventions:

* A TT tensor of shape ``(n_1, ..., n_d)`` is a list of cores ``G_k`` of shape
  ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``.
* A TT-matrix of shape ``(M, N)``, ``M = prod(m_k)``, ``N = prod(n_k)``, has cores
  ``(r_{k-1}, m_k, n_k, r_k)``; ``m`` are the row (output) modes, ``n`` the column (input) modes,
  and the row and column indices are the usual row-major multi-indices.
* "ranks" always means the full tuple ``(r_0, ..., r_d)``, boundary 1s included.
* Cores are plain ``torch.Tensor`` objects on any device and dtype; autograd flows through every
  operation. Nothing densifies unless its name or docstring says so.

Example:
    >>> import torch
    >>> from tensortrain import tt_svd
    >>> x = torch.randn(8, 8, 8, dtype=torch.float64)
    >>> tt = tt_svd(x, max_rank=4)
    >>> tt.ranks
    (1, 4, 4, 1)
"""

from tensortrain.contract import Plan, plan, plan_mode, set_plan_mode, tt_linear
from tensortrain.decomposition import tt_matrix_svd, tt_svd
from tensortrain.errors import TTError, TTShapeError, TTTypeError, TTValueError
from tensortrain.matrix import TTMatrix
from tensortrain.ops import inner, norm, orthogonalize, round_cores
from tensortrain.tensor import TTTensor

__all__ = [
    "Plan",
    "TTError",
    "TTMatrix",
    "TTShapeError",
    "TTTensor",
    "TTTypeError",
    "TTValueError",
    "inner",
    "norm",
    "orthogonalize",
    "plan",
    "plan_mode",
    "round_cores",
    "set_plan_mode",
    "tt_linear",
    "tt_matrix_svd",
    "tt_svd",
]

__version__ = "0.1.0"
