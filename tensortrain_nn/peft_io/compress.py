"""peft LoRA -> LoRETTA_rep: TT-SVD of each LoRA factor, at a stated error."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from tensortrain import TTMatrix, tt_matrix_svd
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import choose_modes
from tensortrain_nn._files import check_output_folder
from tensortrain_nn.modes.base import max_bond
from tensortrain_nn.peft_io._format import LoraFile, read_lora
from tensortrain_nn.peft_io._report import LoraImportReport, ModuleCompression
from tensortrain_nn.peft_io.export import _check_unpatched, _export
from tensortrain_nn.reparam import TTReparam, TTUpdate
from tensortrain_nn.surgery.targets import is_head_parameter, is_norm


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    num, den = float(torch.linalg.norm(x - ref)), float(torch.linalg.norm(ref))
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def compress_pair(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    eps: float | None = None,
    tt_rank: int | None = None,
    dtype: torch.dtype | None = None,
    name: str = "",
) -> tuple[TTMatrix, TTMatrix, ModuleCompression]:
    """TT-SVD of one LoRA pair with LoRETTA_rep's modes; errors measured on the stored cores.

    Args:
        a: ``lora_A (r, in)``. b: ``lora_B (out, r)``.
        eps: per-factor relative error bound (Oseledets); None: the round-off of ``a``'s dtype.
        tt_rank: cap on every bond.
        dtype: dtype of the returned cores (default: ``a``'s). name: the module, for the report.

    Returns:
        ``(A_tt, B_tt, row)``: TT-matrices of shapes ``(r, in)`` and ``(out, r)`` with the modes
        :func:`tensortrain.shapes.choose_modes` picks (as :class:`~tensortrain_nn.TTLinear`).

    Example:
        >>> a, b = torch.randn(4, 64), torch.randn(32, 4)
        >>> _, _, row = compress_pair(a, b, eps=0.3)
        >>> row.error_a <= 0.3 and row.error_b <= 0.3
        True
    """
    dtype = dtype or a.dtype
    if eps is None:  # a float tensor is known to its round-off: drop what lies below it
        eps = float(torch.finfo(a.dtype).eps)
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    out: list[TTMatrix] = []
    for x in (a64, b64):
        rows, cols = choose_modes(x.shape[0], x.shape[1])
        tt = tt_matrix_svd(x, rows, cols, max_rank=tt_rank, eps=eps)
        out.append(TTMatrix([c.to(dtype) for c in tt.cores]))
    a_full, b_full = (t.full().to(torch.float64) for t in out)
    ref = b64 @ a64
    bound = eps if tt_rank is None else None
    update_bound = None
    if bound is not None:
        den = float(torch.linalg.norm(ref))
        na, nb = float(torch.linalg.norm(a64)), float(torch.linalg.norm(b64))
        sa, sb = (float(torch.linalg.matrix_norm(x, 2)) for x in (a64, b64))
        num = bound * (nb * sa + (sb + bound * nb) * na)
        update_bound = num / den if den > 0 else (0.0 if num == 0 else math.inf)
    row = ModuleCompression(
        name=name,
        shape=(b.shape[0], a.shape[1]),
        ranks_a=out[0].ranks,
        ranks_b=out[1].ranks,
        error_a=_rel(a_full, a64),
        error_b=_rel(b_full, b64),
        bound=bound,
        update_error=_rel(b_full @ a_full, ref),
        update_bound=update_bound,
        lora_params=a.numel() + b.numel(),
        tt_params=sum(c.numel() for t in out for c in t.cores),
    )
    return out[0], out[1], row


def _base(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, TTReparam) else module


def _weight(module: nn.Module) -> torch.Tensor:
    weight = _base(module).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _check_model(model: nn.Module, lora: LoraFile) -> tuple[bool, bool]:
    """Every LoRA module and saved tensor fits ``model``; returns ``(head, norms)`` to train."""
    where = str(lora.folder)
    for path, (a, b) in lora.pairs.items():
        try:
            module = _base(model.get_submodule(path))
        except AttributeError:
            raise TTValueError(
                f"peft_folder {where!r} has a LoRA on {path!r}, which model lacks (target_modules "
                f"{lora.config.get('target_modules')!r}; another architecture?)"
            ) from None
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear):
            shape = (module.out_features, module.in_features)
        elif type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
            shape = (int(weight.shape[1]), int(weight.shape[0]))
        else:
            raise TTValueError(
                f"target_modules of {where!r}: {path!r} is a {type(module).__name__}; LoRETTA_rep "
                "patches only nn.Linear and Conv1D layers"
            )
        if (b.shape[0], a.shape[1]) != shape:
            raise TTShapeError(
                f"LoRA of {path!r} in {where!r} is ({b.shape[0]}, {a.shape[1]}) (out, in), but "
                f"model's layer is {shape} (another model size?)"
            )
    params = dict(model.named_parameters())
    head = norms = False
    for name, tensor in lora.saved.items():
        if name not in params or params[name].shape != tensor.shape:
            got = tuple(params[name].shape) if name in params else "nothing"
            raise TTShapeError(
                f"modules_to_save tensor {name!r} {tuple(tensor.shape)} of {where!r} finds "
                f"{got} in model"
            )
        module = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        if is_head_parameter(name):
            head = True
        elif is_norm(module):
            norms = True
        else:
            raise TTValueError(
                f"modules_to_save of {where!r} holds {name!r}, neither a task head nor a norm: "
                "LoRETTA_rep trains only its adapter, the head and the norms"
            )
    return head, norms


def _check_args(eps: object, tt_rank: object) -> None:
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, int | float) or eps < 0):
        raise TTValueError(f"eps must be a number >= 0 or None, got {eps!r}")
    if tt_rank is not None and (
        isinstance(tt_rank, bool) or not isinstance(tt_rank, int) or tt_rank < 1
    ):
        raise TTValueError(f"tt_rank must be a positive int or None, got {tt_rank!r}")


def _set_cores(update: TTUpdate, a: TTMatrix, b: TTMatrix, path: str) -> None:
    """Copy TT cores into a freshly patched update, zero-padding smaller bonds (exact)."""
    assert update.A is not None
    for layer, tt in ((update.A, a), (update.B, b)):
        modes = tuple(c.shape[1] for c in tt.cores), tuple(c.shape[2] for c in tt.cores)
        if modes != (layer.out_modes, layer.in_modes):
            raise TTShapeError(f"{path!r}: modes {modes} differ from the layer's")
        for param, core in zip(layer.cores, tt.cores, strict=True):
            param.zero_()
            param[: core.shape[0], :, :, : core.shape[3]].copy_(core)


def from_lora(
    model: nn.Module,
    peft_folder: str | os.PathLike[str],
    *,
    eps: float | None = None,
    tt_rank: int | None = None,
    adapter_name: str = "default",
) -> LoraImportReport:
    """Put a peft LoRA onto ``model`` as a LoRETTA_rep adapter, by TT-SVD of ``A`` and ``B``.

    Each ``lora_A (r, in)`` and ``lora_B (out, r)`` is decomposed with the modes LoRETTA_rep
    uses; with ``eps`` each factor's relative Frobenius error is at most ``eps`` (Oseledets),
    with ``tt_rank`` no bond exceeds it (the cap wins over ``eps``); ``eps=None`` drops only
    what lies below the LoRA dtype's round-off (``finfo.eps``, relative), so the import is exact
    to round-off. The model is patched (``mode="rep"``, the LoRA's ``r``, ``alpha``,
    dropout and modules, one TT rank: the largest reached, smaller bonds zero-padded) and the
    cores set; the LoRA's ``modules_to_save`` (head, norms) are copied and train. Materialises
    each ``B A`` (``(out, in)``, float64) once, to measure the error.

    Args:
        model: the base model the LoRA was trained on (may already carry other adapters).
        peft_folder: a peft LoRA folder (``adapter_config.json``, ``adapter_model.safetensors``).
        eps: per-factor relative error bound, ``>= 0``.
        tt_rank: cap on every TT bond rank.
        adapter_name: name of the new adapter.

    Returns:
        A :class:`LoraImportReport` (print it for a table).

    Raises:
        TTValueError: Not a plain LoRA (the field is named: ``peft_type``, ``use_dora``,
            ``rank_pattern``, ``alpha_pattern``, ``bias``...), a truncated file, modules the
            model lacks or LoRETTA_rep cannot patch, or ranks one TT rank cannot hold.
        TTShapeError: A tensor does not fit the model.
        On any error the model is left exactly as it was.

    Example (``base`` the model the LoRA was trained on)::

        report = from_lora(base, "runs/lora/adapter", eps=0.1)
        print(report)   # per-module errors and bounds, sizes
    """
    if not isinstance(model, nn.Module):
        raise TTTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_args(eps, tt_rank)
    lora = read_lora(peft_folder)
    head, norms = _check_model(model, lora)
    done = _compress_all(model, lora, eps, tt_rank)
    rank = max(max(a.ranks + b.ranks) for a, b, _ in done.values())
    _check_rank_fits(lora, rank)
    _install(model, lora, done, rank, adapter_name, head=head, norms=norms)
    return _report(model, lora, done, adapter_name, eps=eps, tt_rank=tt_rank, rank=rank)


def _report(
    model: nn.Module,
    lora: LoraFile,
    done: dict[str, tuple[TTMatrix, TTMatrix, ModuleCompression]],
    adapter_name: str,
    *,
    eps: float | None,
    tt_rank: int | None,
    rank: int,
) -> LoraImportReport:
    """What :func:`from_lora` did: per-module errors, ranks and the stored sizes."""
    stored = sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, TTReparam) and adapter_name in m.adapters
        for p in m.adapters[adapter_name].parameters()
    )
    return LoraImportReport(
        adapter_name=adapter_name,
        r=lora.r,
        alpha=lora.alpha,
        eps=eps,
        tt_rank=tt_rank,
        patched_tt_rank=rank,
        modules=tuple(row for _, _, row in done.values()),
        stored_params=stored,
        head_params=sum(t.numel() for t in lora.saved.values()),
    )


def _compress_all(
    model: nn.Module, lora: LoraFile, eps: float | None, tt_rank: int | None
) -> dict[str, tuple[TTMatrix, TTMatrix, ModuleCompression]]:
    """TT-SVD of every LoRA pair, in model order, in the dtype of the weight it updates."""
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    lora.pairs = dict(sorted(lora.pairs.items(), key=lambda item: order[item[0]]))
    done = {}
    for path, (a, b) in lora.pairs.items():
        dtype = _weight(model.get_submodule(path)).dtype
        done[path] = compress_pair(a, b, eps=eps, tt_rank=tt_rank, dtype=dtype, name=path)
    return done


def _check_rank_fits(lora: LoraFile, rank: int) -> None:
    """One TT rank serves every factor: it must fit each factor's largest bond."""
    for path, (a, b) in lora.pairs.items():
        for label, (rows, cols) in (("A", a.shape), ("B", b.shape)):
            if rank > max_bond(cols, rows):
                raise TTValueError(
                    f"the compressed factors need TT rank {rank}, but {path}.{label} ({rows} x "
                    f"{cols}) allows at most {max_bond(cols, rows)}: pass tt_rank <= that"
                )


def _install(
    model: nn.Module,
    lora: LoraFile,
    done: dict[str, tuple[TTMatrix, TTMatrix, ModuleCompression]],
    rank: int,
    adapter_name: str,
    *,
    head: bool,
    norms: bool,
) -> None:
    """Patch ``model`` for the LoRA and set the compressed cores; all or nothing."""
    from tensortrain_nn.surgery import delete_adapter, patch, set_adapter

    before_active = {m.active_adapter for m in model.modules() if isinstance(m, TTReparam)}
    params = dict(model.named_parameters())
    saved_before = {n: params[n].detach().clone() for n in lora.saved}
    patch(
        model,
        mode="rep",
        adapter_name=adapter_name,
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        tt_rank=rank,
        target_modules=list(lora.pairs),
        trainable_head=head,
        trainable_norms=norms,
    )
    try:
        with torch.no_grad():
            for path, (a_tt, b_tt, _) in done.items():
                wrapper = model.get_submodule(path)
                assert isinstance(wrapper, TTReparam)
                update = wrapper.adapters[adapter_name]
                assert isinstance(update, TTUpdate)
                _set_cores(update, a_tt, b_tt, path)
            for name, tensor in lora.saved.items():
                params[name].copy_(tensor)
    except BaseException:
        delete_adapter(model, adapter_name)
        previous = [a for a in before_active if a is not None]
        if len(previous) == 1:
            set_adapter(model, previous[0])
        with torch.no_grad():
            for name, value in saved_before.items():
                params[name].copy_(value)
        raise


def _restore(params: dict[str, nn.Parameter], before: dict[str, torch.Tensor]) -> None:
    """Copy the saved values ``before`` back into ``params`` (by name)."""
    with torch.no_grad():
        for name, value in before.items():
            params[name].copy_(value)


def _check_outputs(
    out_dir: str | os.PathLike[str], tt_dir: str | os.PathLike[str] | None, overwrite: bool
) -> None:
    """Both output folders are new or empty, or ``overwrite`` (see ``check_output_folder``)."""
    for name, folder in (("out_dir", out_dir), ("tt_dir", tt_dir)):
        if folder is not None:
            check_output_folder(Path(folder), overwrite=overwrite, name=name)


def compress_lora(
    peft_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    base_model: nn.Module,
    *,
    eps: float | None = None,
    tt_rank: int | None = None,
    tt_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> LoraImportReport:
    """Compress a peft LoRA through TT and write it back out as a LoRA (and as a TT adapter).

    :func:`from_lora` on ``base_model``, then :func:`~tensortrain_nn.peft_io.export_lora` into
    ``out_dir`` (a peft LoRA folder: the input's ``r``, ``lora_alpha``, ``task_type``,
    ``base_model_name_or_path`` and dtype; serve it with peft) and :func:`~tensortrain_nn.
    save_adapter` into ``tt_dir`` (default ``out_dir/tt_adapter``, for ``load_adapter``).
    ``base_model`` is left exactly as it was (modules, values, ``requires_grad``), also on error.

    Args:
        peft_dir: the peft LoRA folder to compress.
        out_dir: the compressed peft LoRA folder to write.
        base_model: an unpatched model of the architecture the LoRA was trained on.
        eps, tt_rank: as in :func:`from_lora`.
        tt_dir: where the LoRETTA_rep adapter goes (default ``out_dir/tt_adapter``).
        overwrite: write into a non-empty ``out_dir`` / ``tt_dir`` (else refused up front).

    Returns:
        The :class:`LoraImportReport`.

    Example::

        report = compress_lora("runs/lora/adapter", "runs/lora/compressed", base, eps=0.1)
        PeftModel.from_pretrained(base, "runs/lora/compressed")   # serve as before
    """
    from tensortrain_nn.surgery import save_adapter, unpatch

    _check_unpatched(base_model)
    _check_outputs(out_dir, tt_dir, overwrite)
    lora = read_lora(peft_dir)
    params = dict(base_model.named_parameters())
    saved_before = {n: params[n].detach().clone() for n in lora.saved if n in params}
    report = from_lora(base_model, peft_dir, eps=eps, tt_rank=tt_rank)
    try:
        _export(
            base_model,
            out_dir,
            None,
            None,
            base_model_name_or_path=lora.config.get("base_model_name_or_path"),
            task=lora.config.get("task_type"),
            overwrite=overwrite,
            dtype=next(iter(lora.pairs.values()))[0].dtype,
        )
        save_adapter(
            base_model, Path(tt_dir if tt_dir is not None else Path(out_dir) / "tt_adapter")
        )
    finally:
        unpatch(base_model)
        _restore(params, saved_before)
    return report
