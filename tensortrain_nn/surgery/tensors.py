"""An adapter's tensors, taken from a patched model (to save) and put back (on load).

Saved: the adapter's own parameters, its ``init="svd"`` initial cores (buffers under
``svd_init``: what the base weight's correction is made of), and every trainable parameter outside
the adapters (head, norms, biases, TTLinear cores, and whatever the user unfroze, a BERT pooler
say), keyed by :func:`~tensortrain_nn.surgery.flags.portable_name`. Whatever is saved loads back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import cast

import torch
from torch import nn

from tensortrain.errors import TTShapeError
from tensortrain_nn.linear import replace_cores
from tensortrain_nn.surgery.flags import adapter_of, portable_name


def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s parameters and every trainable base parameter, by portable name.

    Example:
        >>> from tensortrain_nn import patch
        >>> model = patch(nn.Sequential(nn.Linear(8, 8)), target_modules=["0"], r=2, tt_rank=1)
        >>> sorted(adapter_tensors(model, "default"))[:2]
        ['0.adapters.A.cores.0', '0.adapters.A.cores.1']
    """
    return {
        portable_name(n): p
        for n, p in model.named_parameters()
        if adapter_of(n) == name or (adapter_of(n) is None and p.requires_grad)
    } | _saved_buffers(model, name)


#: Adapter buffers that are saved and loaded with its parameters (a registry of name parts).
SAVED_BUFFERS = (".svd_init.",)


def _saved_buffers(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    return {
        portable_name(n): b
        for n, b in model.named_buffers()
        if adapter_of(n) == name and any(part in n for part in SAVED_BUFFERS)
    }


def _check_shape(key: str, tensor: torch.Tensor, param: torch.Tensor, folder: str) -> None:
    want, got = tuple(param.shape), tuple(tensor.shape)
    if want != got:
        raise TTShapeError(
            f"adapter tensor {key!r} in {folder} has shape {got}, but the patched model's "
            f"has {want} (different model size?)"
        )


def put_tensors(
    model: nn.Module,
    name: str,
    tensors: dict[str, torch.Tensor],
    folder: str,
    undo: list[Callable[[], object]],
) -> None:
    """Check every tensor, then copy them into adapter ``name`` and the base model.

    Every parameter of the adapter must be in ``tensors``; every other tensor must be a base
    parameter of the same shape. Afterwards base tensors in ``tensors`` train and other base
    tensors do not, as when the adapter was saved. Base values are overwritten only after all
    checks passed, and ``undo`` receives the steps that put them back. Call under ``no_grad``.

    Raises:
        TTShapeError: A missing, unknown or misshapen tensor (the first, in model order).
    """
    params = dict(model.named_parameters())
    own: dict[str, torch.Tensor] = {
        portable_name(n): p for n, p in params.items() if adapter_of(n) == name
    }
    own |= _saved_buffers(model, name)
    base = {n: p for n, p in params.items() if adapter_of(n) is None}
    for key, param in own.items():
        if key not in tensors:
            raise TTShapeError(
                f"adapter in {folder} lacks tensor {key!r} that the patched model trains "
                f"(shape {tuple(param.shape)}; different architecture or options?)"
            )
        _check_shape(key, tensors[key], param, folder)
    extra = [k for k in tensors if k not in own]
    for key in extra:
        if key not in base:
            raise TTShapeError(
                f"adapter tensor {key!r} in {folder} has no counterpart in the patched model "
                f"(not a parameter of adapter {name!r} nor of the base model; different "
                "architecture or options?)"
            )
        _check_shape(key, tensors[key], base[key], folder)
    for key in extra:
        undo.append(partial(base[key].copy_, base[key].detach().clone()))
    for key, tensor in tensors.items():
        (own[key] if key in own else base[key]).copy_(tensor)
    for key, param in base.items():
        param.requires_grad_(key in tensors)


def is_tt_layer(module: nn.Module) -> bool:
    """A :class:`TTLinear`, or any layer that keeps TT cores in a ``cores`` ParameterList.

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> is_tt_layer(TTLinear(8, 8, rank=2)), is_tt_layer(nn.Linear(8, 8))
        (True, False)
    """
    cores = getattr(module, "cores", None)
    return isinstance(cores, nn.ParameterList) and len(cores) > 0 and cores[0].ndim in (3, 4)


def match_ranks(
    model: nn.Module, tensors: Mapping[str, torch.Tensor], adapter_name: str | None
) -> list[str]:
    """Give adapter ``adapter_name``'s TT layers the ranks of saved ``tensors`` (zero cores).

    ``adapter_name=None`` means the TT layers outside any adapter (``mode="linear"`` layers,
    or a model built from :class:`TTLinear` directly).

    For loading an adapter whose ranks were rounded: ``tensors`` are keyed by portable name
    (as :func:`tensortrain_nn.save_adapter` writes them). A layer whose saved cores differ from
    its own in ranks only gets zero cores of the saved shapes, ready to be loaded into; cores
    with other mode sizes are left for the loader's shape check to report. All checks run first.

    Returns:
        The names of the layers that changed.

    Raises:
        TTShapeError: saved cores of one layer whose ranks do not chain.

    Example:
        >>> from tensortrain_nn import TTLinear
        >>> model = nn.Sequential(TTLinear(64, 64, rank=8, bias=False))
        >>> match_ranks(model, {"0.cores.0": torch.zeros(1, 8, 8, 3),
        ...                     "0.cores.1": torch.zeros(3, 8, 8, 1)}, None)
        ['0']
        >>> model[0].ranks
        (1, 3, 1)
    """
    todo: dict[str, list[torch.Tensor]] = {}
    for name, layer in model.named_modules():
        if not is_tt_layer(layer) or adapter_of(f"{name}.") != adapter_name:
            continue
        keys = [portable_name(f"{name}.cores.{k}") for k in range(len(layer.cores))]
        if not all(k in tensors for k in keys):
            continue
        saved = [tensors[k] for k in keys]
        own = list(cast(nn.ParameterList, layer.cores))
        same_modes = all(
            a.shape[1:-1] == b.shape[1:-1] and a.ndim == b.ndim
            for a, b in zip(own, saved, strict=True)
        )
        if same_modes and any(a.shape != b.shape for a, b in zip(own, saved, strict=True)):
            for k in range(1, len(saved)):
                if saved[k].shape[0] != saved[k - 1].shape[-1]:
                    raise TTShapeError(
                        f"saved tensor {keys[k]!r} has left rank {saved[k].shape[0]} but "
                        f"{keys[k - 1]!r} has right rank {saved[k - 1].shape[-1]}"
                    )
            todo[name] = [own[0].new_zeros(s.shape) for s in saved]
    layers = dict(model.named_modules())
    for name, cores in todo.items():
        replace_cores(layers[name], cores)
    return list(todo)
