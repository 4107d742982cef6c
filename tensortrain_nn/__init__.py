"""tensortrain_nn: tensor-train layers and LoRETTA model surgery on PyTorch.

* :class:`TTLinear`: a drop-in ``nn.Linear`` whose weight is a TT-matrix.
* :class:`TTAdapter` (LoRETTA_adp): a bottleneck adapter with TT projections after a sublayer.
* :class:`TTReparam` (LoRETTA_rep): a frozen linear layer plus a TT low-rank update, mergeable.
* :func:`patch` / :func:`save_adapter` / :func:`load_adapter` / :func:`merge_and_unload` /
  :func:`unpatch` / :func:`disable_adapters` / :func:`set_adapter`: model surgery (see
  :mod:`tensortrain_nn.surgery`).
"""

from tensortrain_nn.adapter import TTAdapter, TTBottleneck
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.reparam import TTReparam, TTUpdate
from tensortrain_nn.surgery import (
    PatchConfig,
    TrainableReport,
    delete_adapter,
    disable_adapters,
    load_adapter,
    merge_and_unload,
    patch,
    save_adapter,
    set_adapter,
    trainable_report,
    unpatch,
)

__all__ = [
    "PatchConfig",
    "TTAdapter",
    "TTBottleneck",
    "TTLinear",
    "TTReparam",
    "TTUpdate",
    "TrainableReport",
    "delete_adapter",
    "disable_adapters",
    "load_adapter",
    "merge_and_unload",
    "patch",
    "save_adapter",
    "set_adapter",
    "trainable_report",
    "unpatch",
]
