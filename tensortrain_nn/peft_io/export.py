"""LoRETTA_rep -> peft LoRA: a rep update ``(alpha / r) B A`` is a rank-``r`` LoRA as it stands."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain._checks import check_int
from tensortrain.errors import TTTypeError, TTValueError
from tensortrain_nn._files import check_output_folder
from tensortrain_nn._wrapper import check_adapter_name
from tensortrain_nn.adapter import TTAdapter
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.peft_io._format import lora_config, write_lora
from tensortrain_nn.reparam import TTReparam, TTUpdate

#: peft task types by the suffix of a transformers model class name (first match wins).
TASK_TYPES = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
)
_KEEP = object()
#: The largest relative update error (Frobenius, per module) the ``export-lora`` command writes
#: without ``--allow-lossy`` or an explicit ``--rank``: ``form="full"`` updates go through a
#: truncated SVD, every other export is exact (to round-off).
LOSSY_EXPORT_THRESHOLD = 0.01


class LossyExportError(TTValueError):
    """An export whose update error exceeds ``max_error``; nothing was written.

    Attributes:
        error: the largest relative update error. path: the module it occurs on.
        rank: the LoRA rank that was tried. form: the adapter's form.
    """

    def __init__(self, error: float, path: str, rank: int, form: str, max_error: float) -> None:
        self.error, self.path, self.rank, self.form = error, path, rank, form
        super().__init__(
            f"the LoRA would be lossy: form={form!r} updates at rank {rank} have relative error "
            f"up to {error:.3g} (on {path!r}), above max_error={max_error:g}; nothing was written"
        )


def task_type(model: nn.Module) -> str | None:
    """peft's ``task_type`` for a transformers model class, None when not known."""
    cls = type(model).__name__
    return next((t for suffix, t in TASK_TYPES if cls.endswith(suffix)), None)


def _wrappers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every TT wrapper and TTLinear, outermost only, in model order."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(p + ".") for p, _ in found):
            continue
        if isinstance(module, TTReparam | TTAdapter | TTLinear):
            found.append((name, module))
    return found


Wrapper = TTReparam | TTAdapter


def rep_updates(
    model: nn.Module, adapter_name: str | None
) -> tuple[str, list[tuple[str, TTReparam, TTUpdate]], list[tuple[str, Wrapper]]]:
    """``(name, [(path, wrapper, update)], all wrappers)`` of one rep adapter on ``model``.

    Raises:
        TTValueError: No such adapter, an adp adapter (nonlinear), ``mode="linear"`` layers
            (their dense base weights are gone), a merged update, or no adapter active.
    """
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    found_all = _wrappers(model)
    linear = [n for n, m in found_all if isinstance(m, TTLinear)]
    if linear:
        raise TTValueError(
            f"cannot export a LoRA: {linear[0]!r} was replaced by a mode='linear' TTLinear, so "
            "the base model a LoRA applies to is gone"
        )
    wrappers = [(n, m) for n, m in found_all if isinstance(m, TTReparam | TTAdapter)]
    if not wrappers:
        raise TTValueError(
            "model carries no LoRETTA adapter (never patched, or merged and unloaded): there is "
            "no rep update to export"
        )
    if adapter_name is None:
        active = {m.active_adapter for _, m in wrappers if m.active_adapter is not None}
        if len(active) != 1:
            raise TTValueError(
                f"adapter_name=None needs exactly one active adapter on the model, found "
                f"{sorted(str(a) for a in active)}; patch the model, or pass adapter_name"
            )
        adapter_name = str(active.pop())
    check_adapter_name(adapter_name, sorted({str(a) for _, m in wrappers for a in m.adapters}))
    found = []
    for path, module in wrappers:
        if adapter_name not in module.adapters:
            continue
        if isinstance(module, TTAdapter):
            raise TTValueError(
                f"adapter {adapter_name!r} on {path!r} is LoRETTA_adp (a nonlinear bottleneck "
                "after the layer): it is not a weight update, so it cannot be a LoRA; only "
                "mode='rep' adapters export"
            )
        update = module.adapters[adapter_name]
        assert isinstance(module, TTReparam) and isinstance(update, TTUpdate)
        if update.is_merged:
            raise TTValueError(
                f"adapter {adapter_name!r} is merged into {path!r}'s weight: a LoRA is relative "
                "to the unmerged base; call unmerge() on the layer first"
            )
        found.append((path, module, update))
    return adapter_name, found, wrappers


def _factors(update: TTUpdate, rank: int | None, path: str) -> tuple[torch.Tensor, ...]:
    """``(A (k, in), B (out, k), relative error)`` with ``(alpha / k) B A`` the update."""
    dtype = update.B.cores[0].dtype
    svd = update.svd_init is not None
    if rank is None and update.A is not None and not svd:
        return update.A.weight.detach(), update.B.weight.detach(), torch.zeros(())
    # An init="svd" update moved (alpha / r) B0 A0 out of the frozen weight: against the original
    # base, the net change is (alpha / r) (B A - B0 A0), of rank <= 2r, exported exactly at 2r.
    k = (2 * update.r if svd else update.r) if rank is None else rank
    delta = update.delta_weight(torch.float64).detach()
    if svd:
        delta = delta - update.init_delta(torch.float64)
    if k > min(delta.shape):
        raise TTValueError(
            f"rank={k} exceeds min(out, in)={min(delta.shape)} of {path!r}: choose rank <= "
            f"{min(delta.shape)}"
        )
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    total = torch.linalg.vector_norm(s)
    error = torch.linalg.vector_norm(s[k:]) / total if total > 0 else torch.zeros(())
    root = (s[:k] / (update.alpha / k)).sqrt()
    return (root[:, None] * vh[:k]).to(dtype), (u[:, :k] * root).to(dtype), error


def _all_factors(
    found: list[tuple[str, TTReparam, TTUpdate]], rank: int | None, dtype: torch.dtype | None
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
    """``({path: (A, B)}, {path: relative error})`` of every update (see :func:`_factors`),
    cast to ``dtype`` when given."""
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: dict[str, float] = {}
    with torch.no_grad():
        for path, _, update in found:
            a, b, err = _factors(update, rank, path)
            pairs[path], errors[path] = (a.to(dtype or a.dtype), b.to(dtype or b.dtype)), float(err)
    return pairs, errors


def _names(chosen: set[str], pool: list[str], match: Any) -> list[str]:
    """Leaf names when they match exactly ``chosen`` among ``pool`` under ``match``, else paths."""
    leaves = sorted({c.rsplit(".", 1)[-1] for c in chosen})
    hit = {n for n in pool if any(match(n, t) for t in leaves)}
    return leaves if hit == chosen else sorted(chosen)


def _trained_outside(model: nn.Module, wrappers: list[Any]) -> dict[str, torch.Tensor]:
    """Trainable tensors outside the adapters (head, norms): peft's ``modules_to_save``."""
    inside = [p for p, _ in wrappers]
    adapter_ids = {id(t) for _, m in wrappers for t in m.adapters.parameters()}
    saved: dict[str, torch.Tensor] = {}
    for pname, param in model.named_parameters():
        if param.requires_grad and id(param) not in adapter_ids:
            if any(pname.startswith(p + ".") for p in inside):
                raise TTValueError(
                    f"trainable parameter {pname!r} lies inside a TT layer (trainable_biases?): "
                    "a LoRA export carries no biases; freeze it or patch without it"
                )
            saved[pname] = param.detach()
    return saved


def _export(
    model: nn.Module,
    folder: str | os.PathLike[str],
    adapter_name: str | None,
    rank: int | None,
    base_model_name_or_path: Any = _KEEP,
    task: Any = _KEEP,
    *,
    overwrite: bool = False,
    max_error: float | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    check_output_folder(Path(folder), overwrite=overwrite)
    if rank is not None:
        check_int("rank", rank)
    name, found, wrappers = rep_updates(model, adapter_name)
    settings = {(u.r, u.alpha, u.form) for _, _, u in found}
    if len(settings) != 1:
        raise TTValueError(f"adapter {name!r} mixes (r, alpha, form) across layers: {settings}")
    r, alpha, form = settings.pop()
    if rank is None and any(u.svd_init is not None for _, _, u in found):
        rank = 2 * r  # the net change of an init="svd" adapter: see _factors
    inside = [p for p, _ in wrappers]
    saved = _trained_outside(model, wrappers)
    pairs, errors = _all_factors(found, rank, dtype)
    worst = max(errors, key=errors.__getitem__)
    if max_error is not None and errors[worst] > max_error:
        raise LossyExportError(errors[worst], worst, rank or r, form, max_error)
    if dtype is not None:
        saved = {k: v.to(dtype) if v.is_floating_point() else v for k, v in saved.items()}
    base_names = [
        n for n, _ in model.named_modules() if not any(n.startswith(p + ".") for p in inside)
    ]
    targets = _names(set(pairs), base_names, lambda n, t: n == t or n.endswith("." + t))
    trained = {n.rsplit(".", 1)[0] for n in saved}
    to_save = _names(trained, base_names, lambda n, t: n.endswith(t)) if trained else None
    dropouts = [u.dropout.p for _, _, u in found if isinstance(u.dropout, nn.Dropout)]
    if base_model_name_or_path is _KEEP:
        config = getattr(model, "config", None)
        base_model_name_or_path = getattr(config, "_name_or_path", None) or None
    config = lora_config(
        r=rank or r,
        alpha=alpha,
        dropout=dropouts[0] if dropouts else 0.0,
        target_modules=targets,
        modules_to_save=to_save,
        fan_in_fan_out=all(type(w.base_layer).__name__ == "Conv1D" for _, w, _ in found),
        base_model_name_or_path=base_model_name_or_path,
        task_type=task_type(model) if task is _KEEP else task,
    )
    note = {
        "source": "tensortrain LoRETTA_rep",
        "adapter_name": name,
        "form": form,
        "rank": rank or r,
        "max_relative_error": max(errors.values()),
        "relative_error": errors,
    }
    return write_lora(folder, config, pairs, saved, note)


def export_lora(
    model: nn.Module,
    folder: str | os.PathLike[str],
    adapter_name: str | None = None,
    *,
    rank: int | None = None,
    overwrite: bool = False,
    max_error: float | None = None,
) -> Path:
    """Write a LoRETTA_rep adapter of ``model`` as a standard peft LoRA folder.

    A rep update ``(alpha / r) B A`` with ``A (r, in)`` and ``B (out, r)`` TT-matrices is a LoRA
    of rank ``r`` as it stands: ``lora_A.weight = A``, ``lora_B.weight = B`` (materialised, thin),
    same ``r`` and ``lora_alpha``; the export is exact. ``form="full"`` updates (one TT-matrix
    ``dW``, ``(out, in)``, materialised) go through a truncated SVD at ``rank`` (default: the
    adapter's ``r``); any form may be re-ranked this way. An ``init="svd"`` adapter exports its
    net change against the original base, ``(alpha / r) (B A - B0 A0)``, exactly at rank ``2 r``
    (default), so the LoRA loads onto the unmodified base model. The relative Frobenius error of
    every module's update is written to ``tt_export.json`` beside the peft files (peft ignores it).

    Every trainable parameter outside the adapters (the head, norms: what
    :func:`tensortrain_nn.save_adapter` saves) goes into ``modules_to_save``. ``target_modules``
    and ``modules_to_save`` are leaf names when those match exactly the same modules under
    peft's rules, else full module paths. ``fan_in_fan_out`` is True for GPT-2's ``Conv1D``.

    Args:
        model: a model patched with ``mode="rep"`` (the adapter unmerged).
        folder: output folder (created); ``adapter_config.json`` and
            ``adapter_model.safetensors`` are written atomically. A non-empty folder is refused
            unless ``overwrite``.
        adapter_name: which adapter (default: the active one).
        rank: LoRA rank of a truncated-SVD export (None: exact factors; ``r`` for ``"full"``).
        overwrite: write into a non-empty folder (files of the same names are replaced).
        max_error: refuse (:class:`LossyExportError`, nothing written) when a module's relative
            update error exceeds it (None: no limit; the command line uses
            :data:`LOSSY_EXPORT_THRESHOLD`).

    Returns:
        ``folder`` as a ``Path``; ``PeftModel.from_pretrained(base, folder)`` then gives the
        patched model's outputs (to round-off).

    Raises:
        TTValueError: An adp adapter (nonlinear: not a LoRA), ``mode="linear"`` layers, a merged
            update, trainable biases inside TT layers, an unknown adapter, a bad ``rank``, a
            non-empty ``folder`` without ``overwrite``, an error above ``max_error``.

    Example:
        >>> import tempfile, tensortrain_nn as ttnn
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> _ = ttnn.patch(model, target_modules=["0"], r=2, tt_rank=2)
        >>> out = export_lora(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in out.iterdir())
        ['adapter_config.json', 'adapter_model.safetensors', 'tt_export.json']
    """
    return _export(model, folder, adapter_name, rank, overwrite=overwrite, max_error=max_error)


def _check_unpatched(base_model: nn.Module) -> None:
    if not isinstance(base_model, nn.Module):
        raise TTTypeError(f"base_model must be an nn.Module, got {type(base_model).__name__}")
    patched = _wrappers(base_model)
    if patched:
        raise TTValueError(
            f"base_model must be an unpatched base model, but {patched[0][0]!r} is a "
            f"{type(patched[0][1]).__name__}"
        )


def export_lora_folder(
    adapter_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    base_model: nn.Module,
    *,
    rank: int | None = None,
    overwrite: bool = False,
    max_error: float | None = None,
) -> Path:
    """Turn a saved LoRETTA_rep adapter folder into a peft LoRA folder.

    An adapter folder holds only the trained tensors; the base model supplies the structure
    (module paths, ``Conv1D`` or ``Linear``, shapes), ``base_model_name_or_path`` and
    ``task_type``. ``base_model`` is patched while the export runs and left exactly as it was
    afterwards (modules, values, ``requires_grad``), also on error.

    Args:
        adapter_dir: a folder written by :func:`tensortrain_nn.save_adapter` (``mode="rep"``).
        out_dir: the peft LoRA folder to write.
        base_model: an unpatched model of the architecture the adapter was trained on.
        rank, overwrite, max_error: as in :func:`export_lora`.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        TTShapeError: The adapter's tensors do not fit ``base_model`` (another model size).
        TTValueError: The folder is unreadable, not ``mode="rep"``, or ``base_model`` is patched.

    Example (``base`` a fresh ``AutoModelForSequenceClassification``)::

        export_lora_folder("runs/rep/adapter", "runs/rep/lora", base)
        peft_model = PeftModel.from_pretrained(base, "runs/rep/lora")
    """
    from tensortrain_nn.surgery import load_adapter, read_adapter, unpatch

    _check_unpatched(base_model)
    check_output_folder(Path(out_dir), overwrite=overwrite)
    config, _, tensors = read_adapter(adapter_dir)
    if config.mode != "rep":
        raise TTValueError(
            f"adapter in {str(adapter_dir)!r} has mode={config.mode!r}; only mode='rep' is a "
            "weight update that a LoRA can hold (adp is nonlinear, linear replaces the base)"
        )
    params = dict(base_model.named_parameters())
    before = {n: params[n].detach().clone() for n in tensors if n in params}
    load_adapter(base_model, adapter_dir)
    try:
        return _export(base_model, out_dir, None, rank, overwrite=overwrite, max_error=max_error)
    finally:
        unpatch(base_model)
        with torch.no_grad():
            for n, value in before.items():
                params[n].copy_(value)
