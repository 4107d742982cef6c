"""Preparing a quantized (k-bit) or half-precision base for training an adapter on it."""

from __future__ import annotations

import torch
from torch import nn

from tensortrain.errors import TTTypeError

_HALF = (torch.float16, torch.bfloat16)


def prepare_kbit_training(
    model: nn.Module, *, gradient_checkpointing: bool = False, norms_float32: bool = True
) -> nn.Module:
    """Make a 4-bit, 8-bit or half-precision base train stably (peft's
    ``prepare_model_for_kbit_training``, narrowed): call it before or after ``patch``.

    What it changes, and nothing else:

    * ``norms_float32``: the parameters of normalisation layers (LayerNorm, RMSNorm, any class
      named ``*Norm``) held in float16/bfloat16 become float32 (peft casts every half parameter;
      embeddings and the head are left as they are here). ``requires_grad`` flags are kept.
    * ``gradient_checkpointing``: the model's ``gradient_checkpointing_enable`` (non-reentrant)
      and ``enable_input_require_grads`` (so the checkpointed blocks see an input that needs
      gradients though the embeddings are frozen).

    Args:
        model: the base (a transformers model for ``gradient_checkpointing``).
        gradient_checkpointing: turn it on, as above.
        norms_float32: cast half-precision norms to float32.

    Returns:
        ``model`` itself.

    Raises:
        TTTypeError: ``model`` is not a module, or ``gradient_checkpointing`` on a model without
            ``gradient_checkpointing_enable``; nothing was changed.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).to(torch.bfloat16)
        >>> prepare_kbit_training(model)[1].weight.dtype, model[0].weight.dtype
        (torch.float32, torch.bfloat16)
    """
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if gradient_checkpointing and not callable(enable):
        raise TTTypeError(
            f"gradient_checkpointing=True needs a model with gradient_checkpointing_enable "
            f"(a transformers model), got {type(model).__name__}"
        )
    from tensortrain_nn.surgery.targets import is_norm  # surgery imports this package

    if norms_float32:
        for module in model.modules():
            if is_norm(module):
                for param in module.parameters(recurse=False):
                    if param.dtype in _HALF:
                        param.data = param.data.to(torch.float32)
    if gradient_checkpointing and callable(enable):
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        getattr(model, "enable_input_require_grads", lambda: None)()
    return model
