"""Preparing a quantized (k-bit) or half-precision base for training an adapter on it."""

from __future__ import annotations

import torch
from torch import nn

from tensortrain.errors import TTTypeError
from tensortrain_nn.bases.quantized import quant_kind

_HALF = (torch.float16, torch.bfloat16)
#: The model's method that turns on activation checkpointing and its options' keyword, newest
#: transformers name first.
_CHECKPOINTING = (
    ("activation_checkpointing_enable", "activation_checkpointing_kwargs"),
    ("gradient_checkpointing_enable", "gradient_checkpointing_kwargs"),
)


def _checkpointing(model: nn.Module) -> tuple[object, str]:
    return next(
        ((getattr(model, n), k) for n, k in _CHECKPOINTING if hasattr(model, n)), (None, "")
    )


def prepare_kbit_training(
    model: nn.Module, *, gradient_checkpointing: bool = False, upcast: bool = True
) -> nn.Module:
    """Make a 4-bit, 8-bit or half-precision base train stably (peft's
    ``prepare_model_for_kbit_training``); call it before or after ``patch``.

    What it changes, and nothing else (``requires_grad`` flags are kept: ``patch`` sets them):

    * ``upcast``: every float16/bfloat16 parameter outside the quantized layers (norms,
      embeddings, the head) becomes float32, as peft does, so that the residual stream and the
      loss are computed in float32 while the quantized layers keep their compute dtype.
    * ``gradient_checkpointing``: the model's activation checkpointing (non-reentrant) and
      ``enable_input_require_grads`` (checkpointed blocks see an input that needs gradients
      although the embeddings are frozen).

    Args:
        model: the base (a transformers model for ``gradient_checkpointing``).
        gradient_checkpointing: turn it on, as above.
        upcast: cast half-precision parameters of non-quantized layers to float32.

    Returns:
        ``model`` itself.

    Raises:
        TTTypeError: ``model`` is not a module, or ``gradient_checkpointing`` on a model without
            a checkpointing switch (not a transformers model); nothing was changed.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).to(torch.bfloat16)
        >>> prepare_kbit_training(model)[1].weight.dtype
        torch.float32
    """
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    enable, keyword = _checkpointing(model)
    if gradient_checkpointing and not callable(enable):
        raise TTTypeError(
            f"gradient_checkpointing=True needs a transformers model (with "
            f"{_CHECKPOINTING[0][0]}), got {type(model).__name__}"
        )
    if upcast:
        for module in model.modules():
            if quant_kind(module) is not None:
                continue
            for param in module.parameters(recurse=False):
                if param.dtype in _HALF:
                    param.data = param.data.to(torch.float32)
    if gradient_checkpointing and callable(enable):
        enable(**{keyword: {"use_reentrant": False}})
        getattr(model, "enable_input_require_grads", lambda: None)()
    return model
