"""The public verbs of model surgery: each is one call on the model's
:class:`~tensortrain_nn.surgery.state.SurgeryState`.

peft names are kept where peft has the concept: ``set_adapter``, ``add_adapter``,
``merge_and_unload``, ``unload``, ``merge_adapter``, ``unmerge_adapter``, ``delete_adapter``,
``disable_adapter`` (a context manager, as peft's), ``print_trainable_parameters``
(:mod:`~tensortrain_nn.surgery.report`). The examples below use a tiny ``nn.Sequential``; on a
Hugging Face model ``target_modules`` may be left out (per-architecture defaults).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from tensortrain.errors import TTTypeError, TTValueError
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.state import SurgeryState, get_state


def _config(mode: str | None, config: PatchConfig | None, fields: dict[str, Any]) -> PatchConfig:
    """``config`` checked against ``mode`` and ``fields``, or one built from them."""
    if config is None:
        return PatchConfig.from_options(mode or "rep", fields)
    if not isinstance(config, PatchConfig):
        raise TTTypeError(f"config must be a PatchConfig, got {type(config).__name__}")
    if fields:
        raise TTValueError(f"pass config or options, not both (got {sorted(fields)})")
    if mode is not None and mode != config.mode:
        raise TTValueError(f"mode={mode!r} contradicts config.mode={config.mode!r}")
    return config


def _module(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def patch(
    model: nn.Module,
    mode: str | None = None,
    *,
    config: PatchConfig | None = None,
    adapter_name: str = "default",
    **config_fields: Any,
) -> nn.Module:
    """Put LoRETTA TT layers into ``model`` in place and freeze everything else.

    Every check (mode, options, targets, ranks, adapter name) runs before the model is touched:
    a failed ``patch`` leaves it exactly as it was, ``requires_grad`` flags included. Patching a
    patched model with a new ``adapter_name`` adds a second adapter on the same base and makes
    it the active one.

    Args:
        model: any ``nn.Module``; defaults for ``target_modules`` come from
            ``model.config.model_type`` (Hugging Face models).
        mode: ``"rep"`` (default), ``"adp"`` or ``"linear"``; with ``config``, its mode.
        config: a :class:`PatchConfig` (then no ``config_fields``).
        adapter_name: a Python identifier naming this adapter.
        **config_fields: :class:`PatchConfig` fields for ``mode``: rep ``r, alpha, tt_rank,
            dropout, form, init, layout``; adp ``bottleneck, tt_rank, activation, scale,
            dropout, init, layout, placement``; linear ``max_rank, eps``; any mode
            ``target_modules, trainable_norms, trainable_head, trainable_biases``. ``rank`` is
            an alias of the TT rank. rep ``init="svd"``: each update starts from the TT-SVD
            of its weight's top-``r`` part, which is taken out of the frozen weight (output
            unchanged at step 0; one SVD per target at patch time; the initial cores are saved
            with the adapter and ``load_adapter`` takes the same part out of a fresh base;
            disabling, ``unpatch`` and ``merge_and_unload`` account for it).
            ``layout="paper"`` stores each factor as one TT tensor of the official LoRETTA
            code's shape (its parameter counts exactly);
            ``placement="paper"`` (adp) puts adapters before LLaMA's gate/up projections and
            after the others, as that code does.

    Returns:
        ``model`` itself, patched (only the adapter, and head/norms/biases as asked, train).

    Raises:
        TTValueError: Unknown mode or option, targets that match nothing, a name in use.
        TTShapeError: A rank larger than the shapes allow.
        TTTypeError: ``model`` is not a module, or an option has the wrong type.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> patch(model, mode="rep", r=4, tt_rank=2, target_modules=["0"])[0]
        TTReparam(...)
        >>> [n for n, p in model.named_parameters() if p.requires_grad]
        ['0.adapters.default.A.cores.0', '0.adapters.default.A.cores.1', ...]
    """
    config = _config(mode, config, config_fields)
    SurgeryState.for_model(_module(model)).add(config, adapter_name)
    return model


def add_adapter(
    model: nn.Module,
    adapter_name: str,
    config: PatchConfig | None = None,
    **config_fields: Any,
) -> nn.Module:
    """Add an adapter without making it active (peft's ``add_adapter``); on a model not yet
    patched it is :func:`patch` (the first adapter is the active one).

    Args:
        model: a model. adapter_name: the new adapter's name.
        config: a :class:`PatchConfig`; or ``config_fields`` as for :func:`patch`.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> model = patch(model, target_modules=["0"], r=2, tt_rank=2)
        >>> model = add_adapter(model, "task2", target_modules=["0"], r=4, tt_rank=2)
        >>> get_state(model).active, list(model[0].adapters)
        ('default', ['default', 'task2'])
    """
    config = _config(config_fields.pop("mode", None), config, config_fields)
    SurgeryState.for_model(_module(model)).add(config, adapter_name, activate=False)
    return model


def set_adapter(model: nn.Module, name: str) -> None:
    """Make adapter ``name`` the one that runs and trains (others frozen and inactive).

    Layers that ``name`` does not patch run their base layer alone. Base tensors that the
    previous adapter's config trained (head, norms) follow the new adapter's config; tensors you
    unfroze yourself keep their flag.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> _ = patch(model, target_modules=["0"], r=2, tt_rank=2, adapter_name="sst2")
        >>> _ = patch(model, target_modules=["0"], r=2, tt_rank=2, adapter_name="mnli")
        >>> set_adapter(model, "sst2")
        >>> model[0].active_adapter
        'sst2'
    """
    get_state(model).set_adapter(name)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """A context in which every TT wrapper runs its base layer alone (merged updates included,
    in train and eval mode). ``mode="linear"`` layers are replacements, not adapters: they
    keep running. :func:`disable_adapter` is the same (peft's name).

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> base = model(torch.ones(1, 16))
        >>> _ = patch(model, target_modules=["0"], r=2, tt_rank=2, init="paper")
        >>> with disable_adapters(model):
        ...     torch.equal(model(torch.ones(1, 16)), base)
        True
    """
    with get_state(model).disabled() as inner:
        yield inner


#: peft's name for :func:`disable_adapters` (``with model.disable_adapter(): ...``).
disable_adapter = disable_adapters


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name``; wrappers left without adapters give their base layer back.

    Deleting the last adapter is :func:`unpatch`. A merged update is unmerged first. When the
    active adapter is deleted, the first remaining one becomes active.
    """
    get_state(model).delete_adapter(name)


def merge_adapter(model: nn.Module, safe_merge: bool = True) -> None:
    """Fold the active rep update into the base weights, keeping the wrappers (peft's
    ``merge_adapter``): no inference overhead; :func:`unmerge_adapter` undoes it.

    Raises:
        TTValueError: An active adp adapter (nonlinear: it cannot be folded into a weight), or
            with ``safe_merge`` a merge that would write non-finite values; nothing changed.
    """
    get_state(model).merge(safe_merge)


def unmerge_adapter(model: nn.Module) -> None:
    """Subtract every merged update from its base weight (exact up to round-off)."""
    get_state(model).unmerge()


def unpatch(model: nn.Module) -> nn.Module:
    """Take every adapter out and give the original model back (modules and ``requires_grad``).

    Merged updates are subtracted first (exact up to round-off). Values of base tensors you
    trained (head, norms) stay trained.
    :func:`unload` is the same (peft's name; unlike peft's, merged updates do not stay).

    Raises:
        TTValueError: The model is not patched, or has ``mode="linear"`` layers.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> unpatch(patch(model, target_modules=["0"], r=2, tt_rank=2)) is model
        True
        >>> model
        Sequential(
          (0): Linear(in_features=16, out_features=16, bias=True)
        )
    """
    return get_state(model).unpatch()


#: peft's name for :func:`unpatch` (the adapters out, nothing merged).
unload = unpatch


def merge_and_unload(model: nn.Module, safe_merge: bool = True) -> nn.Module:
    """Fold the active rep updates into the base weights and return a plain model.

    rep wrappers become their (updated) base layers; ``mode="linear"`` TTLinears become
    ``nn.Linear`` with the dense weight (materialised: ``O(out * in)`` each). Inactive adapters
    are dropped. Original ``requires_grad`` flags are restored.

    Raises:
        TTValueError: An active adp adapter (nonlinear: it cannot be folded into a weight), or
            with ``safe_merge`` a merge that would write non-finite values; nothing changed.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(16, 16)).eval()
        >>> _ = patch(model, target_modules=["0"], r=2, tt_rank=2, init="paper")
        >>> x = torch.ones(1, 16)
        >>> y = model(x)
        >>> merge_and_unload(model)[0]
        Linear(in_features=16, out_features=16, bias=True)
        >>> torch.allclose(model(x), y, atol=1e-5)
        True
    """
    return get_state(model).merge_and_unload(safe_merge)


def save_adapter(
    model: nn.Module, folder: str | os.PathLike[str], adapter_name: str | None = None
) -> Path:
    """Write one adapter's tensors and config into ``folder`` (created if missing).

    Files: ``tt_adapter_model.safetensors`` (the adapter's TT cores and every other trainable
    tensor: head, norms, biases, anything you unfroze) and ``tt_adapter_config.json`` (the
    :class:`PatchConfig` plus the adapter name, model type and patched module names). Each file
    is written whole or not at all; a tensor holding NaN or inf is an error and nothing is
    written. ``get_state(model).save_pretrained(folder, **trainer_kwargs)`` does this for the
    active adapter with peft's ``save_pretrained`` signature (``model.save_pretrained`` stays the
    model's own).

    Args:
        model: a patched model. folder: the output folder.
        adapter_name: which adapter (default: the active one).

    Returns:
        The folder, as a ``Path``.

    Raises:
        TTValueError: Not patched, an unknown adapter name, or a non-finite tensor (named).

    Example:
        >>> import tempfile
        >>> model = patch(nn.Sequential(nn.Linear(16, 16)), target_modules=["0"], r=2, tt_rank=2)
        >>> folder = save_adapter(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['tt_adapter_config.json', 'tt_adapter_model.safetensors']
    """
    return get_state(model).save(folder, adapter_name)


def load_adapter(
    model: nn.Module, folder: str | os.PathLike[str], adapter_name: str | None = None
) -> nn.Module:
    """Patch ``model`` from a saved config and load the saved tensors into it.

    The files are read and checked first; then the model is patched, and every tensor is
    checked (the adapter's own, and base tensors such as the head or a pooler you unfroze: each
    must be a parameter of the same shape; the error names the first misfit) before any is
    copied. Base tensors in the file train afterwards, other base tensors do not, as when the
    adapter was saved. On any error the model is left exactly as it was (flags included).
    Loading onto a patched model adds the adapter next to the others (name clash: error).

    Args:
        model: a fresh base model of the architecture the adapter was trained on.
        folder: a folder written by :func:`save_adapter`.
        adapter_name: name to load under (default: the saved name).

    Returns:
        ``model``, patched, with the adapter active; logits equal the saved model's.

    Example:
        >>> import copy, tempfile, torch
        >>> base = nn.Sequential(nn.Linear(16, 16)).eval()
        >>> fresh = copy.deepcopy(base)
        >>> model = patch(base, target_modules=["0"], r=2, tt_rank=2, init="paper")
        >>> folder = save_adapter(model, tempfile.mkdtemp())
        >>> x = torch.ones(1, 16)
        >>> torch.equal(load_adapter(fresh, folder)(x), model(x))
        True
    """
    SurgeryState.load(_module(model), folder, adapter_name)
    return model


def inactive_adapter_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters of adapters that are not the active one, ``(name, parameter)``.

    They take no part in the forward pass (under DDP they break the second step). A model never
    patched has none: ``[]``.

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 16))
        >>> inactive_adapter_parameters(model)
        []
    """
    state = get_state(model, required=False)
    return [] if state is None else state.inactive_parameters()
