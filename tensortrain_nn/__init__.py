"""tensortrain_nn: tensor-train layers and LoRETTA model surgery on PyTorch.

* :class:`TTLinear`: a drop-in ``nn.Linear`` whose weight is a TT-matrix.
* :class:`TTAdapter` (LoRETTA_adp): a bottleneck adapter with TT projections after a sublayer.
* :class:`TTReparam` (LoRETTA_rep): a frozen linear layer plus a TT low-rank update, mergeable.
* :func:`patch` / :func:`save_adapter` / :func:`load_adapter` / :func:`merge_and_unload` /
  :func:`unpatch` / :func:`disable_adapters` / :func:`set_adapter` and peft's names
  (:func:`add_adapter`, :func:`unload`, :func:`disable_adapter`,
  :func:`print_trainable_parameters`...): model surgery (see :mod:`tensortrain_nn.surgery`).
* :func:`fit_budget` / :func:`fit_ranks`: round an adapter's TT ranks down to a parameter
  budget or a rank per module (see :mod:`tensortrain_nn.budget`).
* :func:`export_lora` / :func:`from_lora` / :func:`compress_lora`: interop with peft LoRA
  folders (see :mod:`tensortrain_nn.peft_io`).
* Bases in half precision, 4-bit / 8-bit (bitsandbytes) or offloaded: the ``adapter_dtype``
  option (:data:`ADAPTER_DTYPES`), :func:`prepare_kbit_training` (see
  :mod:`tensortrain_nn.bases`).

Example:
    >>> import torch
    >>> from torch import nn
    >>> import tensortrain_nn as ttnn
    >>> model = ttnn.patch(nn.Sequential(nn.Linear(16, 16)), target_modules=["0"], r=2, tt_rank=2)
    >>> model(torch.ones(3, 16)).shape
    torch.Size([3, 16])
"""

from tensortrain_nn.adapter import TTAdapter, TTBottleneck
from tensortrain_nn.bases import ADAPTER_DTYPES, prepare_kbit_training
from tensortrain_nn.budget import fit_budget, fit_ranks
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.peft_io import (
    compress_lora,
    export_lora,
    export_lora_folder,
    from_lora,
)
from tensortrain_nn.reparam import TTReparam
from tensortrain_nn.surgery import (
    PatchConfig,
    TrainableReport,
    add_adapter,
    delete_adapter,
    disable_adapter,
    disable_adapters,
    inactive_adapter_parameters,
    load_adapter,
    merge_adapter,
    merge_and_unload,
    patch,
    print_trainable_parameters,
    save_adapter,
    set_adapter,
    trainable_report,
    unload,
    unmerge_adapter,
    unpatch,
)
from tensortrain_nn.update import TTUpdate

__all__ = [
    "ADAPTER_DTYPES",
    "PatchConfig",
    "TTAdapter",
    "TTBottleneck",
    "TTLinear",
    "TTReparam",
    "TTUpdate",
    "TrainableReport",
    "add_adapter",
    "compress_lora",
    "delete_adapter",
    "disable_adapter",
    "disable_adapters",
    "export_lora",
    "export_lora_folder",
    "fit_budget",
    "fit_ranks",
    "from_lora",
    "inactive_adapter_parameters",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "patch",
    "prepare_kbit_training",
    "print_trainable_parameters",
    "save_adapter",
    "set_adapter",
    "trainable_report",
    "unload",
    "unmerge_adapter",
    "unpatch",
]
