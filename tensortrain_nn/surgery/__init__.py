"""Model surgery: put LoRETTA TT layers into any model, save/load adapters, merge, unpatch.

Example:
    >>> import tensortrain_nn as ttnn
    >>> ttnn.patch(model, mode="rep", r=8, tt_rank=5)      # in place; returns model
    >>> print(ttnn.trainable_report(model))
    >>> ttnn.save_adapter(model, "runs/sst2")
    >>> ttnn.load_adapter(fresh_model, "runs/sst2")       # identical logits
    >>> ttnn.merge_and_unload(model)                      # plain model, no TT module left
"""

from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.io import load_adapter, read_adapter, save_adapter
from tensortrain_nn.surgery.lifecycle import (
    delete_adapter,
    disable_adapters,
    merge_and_unload,
    set_adapter,
    unpatch,
)
from tensortrain_nn.surgery.patch import patch
from tensortrain_nn.surgery.report import ReportRow, TrainableReport, trainable_report
from tensortrain_nn.surgery.targets import DEFAULT_TARGETS, ArchTargets

__all__ = [
    "DEFAULT_TARGETS",
    "ArchTargets",
    "PatchConfig",
    "ReportRow",
    "TrainableReport",
    "delete_adapter",
    "disable_adapters",
    "load_adapter",
    "merge_and_unload",
    "patch",
    "read_adapter",
    "save_adapter",
    "set_adapter",
    "trainable_report",
    "unpatch",
]
