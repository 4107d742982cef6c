"""An adapter's tensors, taken from a patched model (to save) and put back (on load).

Saved: the adapter's own parameters, its ``init="svd"`` initial cores (buffers under
``svd_init``: what the base weight's correction is made of), and every trainable parameter outside
the adapters (head, norms, biases, TTLinear cores, and whatever the user unfroze, a BERT pooler
say), keyed by :func:`~tensortrain_nn.surgery.flags.portable_name`. Whatever is saved loads back.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from tensortrain.errors import TTShapeError
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
