"""Model surgery: put LoRETTA TT layers into any model, save/load adapters, merge, unpatch.

One :class:`~tensortrain_nn.surgery.state.SurgeryState` per patched model owns everything; the
functions here are verbs over it. Modules: ``config`` (PatchConfig), ``targets`` (what to patch,
the one module walker), ``plan`` (checks and builds, before any change), ``flags`` (what
trains), ``state`` (the owner), ``io`` (the folder format), ``api`` (the verbs), ``report``.

Example:
    >>> import copy, tempfile, torch
    >>> from torch import nn
    >>> import tensortrain_nn as ttnn
    >>> base = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    >>> fresh = copy.deepcopy(base)
    >>> model = ttnn.patch(base, mode="rep", r=4, tt_rank=2, target_modules=["0"])
    >>> ttnn.print_trainable_parameters(model)
    trainable params: 64 || all params: 404 || trainable%: 15.8416
    >>> folder = ttnn.save_adapter(model, tempfile.mkdtemp())
    >>> x = torch.ones(2, 16)
    >>> torch.equal(ttnn.load_adapter(fresh, folder)(x), model(x))  # identical logits
    True
    >>> plain = ttnn.merge_and_unload(model)                        # no TT module left
"""

from tensortrain_nn.surgery.api import (
    add_adapter,
    delete_adapter,
    disable_adapter,
    disable_adapters,
    inactive_adapter_parameters,
    load_adapter,
    merge_adapter,
    merge_and_unload,
    patch,
    save_adapter,
    set_adapter,
    unload,
    unmerge_adapter,
    unpatch,
)
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.io import read_adapter
from tensortrain_nn.surgery.report import (
    ReportRow,
    TrainableReport,
    print_trainable_parameters,
    trainable_report,
)
from tensortrain_nn.surgery.state import SurgeryState, get_state
from tensortrain_nn.surgery.targets import DEFAULT_TARGETS, ArchTargets

__all__ = [
    "DEFAULT_TARGETS",
    "ArchTargets",
    "PatchConfig",
    "ReportRow",
    "SurgeryState",
    "TrainableReport",
    "add_adapter",
    "delete_adapter",
    "disable_adapter",
    "disable_adapters",
    "get_state",
    "inactive_adapter_parameters",
    "load_adapter",
    "merge_adapter",
    "merge_and_unload",
    "patch",
    "print_trainable_parameters",
    "read_adapter",
    "save_adapter",
    "set_adapter",
    "trainable_report",
    "unload",
    "unmerge_adapter",
    "unpatch",
]
