"""The base model's form in a job (``--dtype``, ``--quantize``, ``--quant-type``) and adapter dtype.

What a method can do on a form is checked here, once, before anything is loaded or written
(:func:`check_base`); :func:`setup_options` and :func:`cast_adapters` give the adapter its dtype
when it is trained and when a saved run is loaded back.

Example:
    >>> check_base("full", BaseForm(quantize="4bit"), "auto", {})
    Traceback (most recent call last):
    ...
    tensortrain_nn.tasks.errors.FinetuneError: --method full cannot train a --quantize 4bit base ...
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tensortrain_nn.bases.dtype import ADAPTER_DTYPES, adapter_dtype
from tensortrain_nn.bases.load import BaseForm
from tensortrain_nn.tasks import FinetuneError

#: Methods that train an adapter, whose dtype ``--adapter-dtype`` sets.
ADAPTER_METHODS = ("rep", "adp", "lora")


def check_base(
    method: str, form: BaseForm, adapter_dtype: str, method_options: dict[str, Any]
) -> BaseForm:
    """Refuse, in one line, what ``method`` cannot do on a base of ``form``; returns ``form``.

    Args:
        method: the method's name.
        form: the base's dtype and quantization (checked when it was built).
        adapter_dtype: ``--adapter-dtype``, one of
            :data:`~tensortrain_nn.bases.dtype.ADAPTER_DTYPES`.
        method_options: ``--opt`` values (an ``adapter_dtype`` there must agree).

    Raises:
        FinetuneError: ``--method full`` on a quantized base; ``--adapter-dtype`` not a choice,
            or set for a method without an adapter, or against ``--opt adapter_dtype``.
    """
    if method == "full" and form.quantized:
        raise FinetuneError(
            f"--method full cannot train a --quantize {form.quantize} base (its packed weights "
            f"take no gradient); use rep, adp or lora, or drop --quantize"
        )
    if adapter_dtype not in ADAPTER_DTYPES:
        raise FinetuneError(
            f"--adapter-dtype must be one of {', '.join(ADAPTER_DTYPES)}, got {adapter_dtype!r}"
        )
    if adapter_dtype != "auto" and method not in ADAPTER_METHODS:
        raise FinetuneError(
            f"--adapter-dtype applies to methods {', '.join(ADAPTER_METHODS)}, "
            f"got --adapter-dtype {adapter_dtype} with --method {method}"
        )
    given = method_options.get("adapter_dtype", adapter_dtype)
    if adapter_dtype != "auto" and given != adapter_dtype:
        raise FinetuneError(
            f"--adapter-dtype {adapter_dtype} and --opt adapter_dtype={given} disagree; give one"
        )
    return form


def setup_options(method: str, options: dict[str, Any], adapter_dtype: str) -> dict[str, Any]:
    """``options`` for the method's setup, with ``adapter_dtype`` for rep and adp (it is saved
    with their adapter); a new dict."""
    if adapter_dtype != "auto" and method in ("rep", "adp"):
        return {**options, "adapter_dtype": adapter_dtype}
    return dict(options)


def cast_adapters(model: nn.Module, option: str) -> int:
    """Cast every adapter's own tensors to the dtype ``option`` gives on its frozen layer.

    An adapter here is any module with a ``base_layer`` (a LoRETTA wrapper, a peft LoRA layer);
    its tensors outside ``base_layer`` are cast (peft keeps LoRA in float32 by itself; this
    applies ``base`` or a fixed dtype to it, and any choice to a loaded run's adapter).

    Args:
        model: the model with its adapters.
        option: one of :data:`~tensortrain_nn.bases.dtype.ADAPTER_DTYPES`; ``"auto"`` is a no-op.

    Returns:
        How many tensors changed dtype.
    """
    if option == "auto":
        return 0
    changed = 0
    for module in model.modules():
        base = getattr(module, "base_layer", None)
        if not isinstance(base, nn.Module) or base is module:
            continue
        dtype = adapter_dtype(option, base)
        for name, param in module.named_parameters():
            if name.startswith("base_layer.") or not param.is_floating_point():
                continue
            if param.dtype != dtype:
                param.data = param.data.to(dtype)
                changed += 1
    return changed
