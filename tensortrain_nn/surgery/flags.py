"""Which parameters belong to which adapter, and which base parameters a config trains."""

from __future__ import annotations

import re

from torch import nn

from tensortrain_nn.linear import TTLinear
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.targets import is_head_parameter, is_norm, tt_modules

_ADAPTER_KEY = re.compile(r"(^|\.)adapters\.([^.]+)\.")


def adapter_of(param_name: str) -> str | None:
    """The adapter a parameter belongs to (``....adapters.<name>....``), None for base ones.

    Example:
        >>> adapter_of("encoder.query.adapters.task1.A.cores.0"), adapter_of("classifier.bias")
        ('task1', None)
    """
    m = _ADAPTER_KEY.search(param_name)
    return None if m is None else m.group(2)


def portable_name(param_name: str) -> str:
    """The parameter name with the adapter name dropped (``adapters.task1.A`` -> ``adapters.A``).

    Example:
        >>> portable_name("encoder.query.adapters.task1.A.cores.0")
        'encoder.query.adapters.A.cores.0'
    """
    return _ADAPTER_KEY.sub(r"\1adapters.", param_name, count=1)


def config_trainable(model: nn.Module, config: PatchConfig | None) -> set[int]:
    """ids of base parameters that ``config`` trains: TTLinear cores, and head, norms, biases
    as it asks (None: TTLinear cores only)."""
    ids = {id(p) for _, m in tt_modules(model) if isinstance(m, TTLinear) for p in m.parameters()}
    if config is None:
        return ids
    for name, param in model.named_parameters():
        if adapter_of(name) is not None:
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        if (
            (config.trainable_head and is_head_parameter(name))
            or (config.trainable_norms and is_norm(owner))
            or (config.trainable_biases and name.endswith("bias"))
        ):
            ids.add(id(param))
    return ids
