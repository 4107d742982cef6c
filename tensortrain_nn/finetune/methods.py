"""Fine-tuning methods as a registry: name -> how to set a model up, save it and load it back.

Methods: ``rep`` (LoRETTA_rep) and ``adp`` (LoRETTA_adp) through :func:`tensortrain_nn.patch`,
``lora`` through peft, ``head`` (only the classification head trains) and ``full``.

Example::

    model, description = METHODS["lora"].setup(model, {"r": 4})
    METHODS["lora"].save(model, Path("runs/x/adapter"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from tensortrain_nn._files import atomic_write, read_safetensors
from tensortrain_nn.budget import check_budget, split_budget_options
from tensortrain_nn.surgery.targets import is_head_parameter
from tensortrain_nn.tasks import AdapterError, FinetuneError

Setup = Callable[[nn.Module, dict[str, Any], str], tuple[nn.Module, str]]
Save = Callable[[nn.Module, Path], None]
Load = Callable[[nn.Module, Path], nn.Module]

#: Default learning rate of each method (``FinetuneConfig.lr`` overrides it).
DEFAULT_LR: dict[str, float] = {
    "head": 1e-3,
    "lora": 1e-3,
    "full": 5e-5,
    "rep": 3e-3,
    "adp": 4e-3,
    "none": 1e-3,  # unused: nothing trains
}
#: LoRETTA options used unless ``method_options`` sets them: norms train too, as in the LoRETTA
#: code (the settings compared on the default task are in docs/finetune.md).
TT_DEFAULTS: dict[str, dict[str, Any]] = {
    "rep": {"trainable_norms": True},
    "adp": {"trainable_norms": True, "bottleneck": 16, "tt_rank": 3, "activation": "gelu"},
}
#: peft LoRA options used unless ``method_options`` sets them.
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05}
#: Attention projections that LoRA targets, by the names a model's modules use.
LORA_TARGETS = (("query", "value"), ("q_proj", "v_proj"), ("query_proj", "value_proj"))
TENSORS_FILE = "trainable.safetensors"


@dataclass(frozen=True)
class Method:
    """One fine-tuning method.

    Attributes:
        setup: ``setup(model, options, task) -> (model, description)``: returns the model ready
            to train (only what the method trains has ``requires_grad``) and a one-line
            description; ``task`` is ``classify`` or ``lm``.
        save: ``save(model, folder)``: writes what was trained into ``folder``.
        load: ``load(base_model, folder) -> model``: puts a saved adapter onto a fresh base model.
        lr: Default learning rate.
    """

    setup: Setup
    save: Save
    load: Load
    lr: float


def _freeze_all_but_head(model: nn.Module) -> int:
    count = 0
    for name, param in model.named_parameters():
        param.requires_grad_(is_head_parameter(name))
        count += param.numel() if param.requires_grad else 0
    if count == 0:
        raise FinetuneError("found no classification head (a 'classifier' or 'score' module)")
    return count


def _no_options(method: str, options: dict[str, Any]) -> None:
    if options:
        raise FinetuneError(f"method {method!r} takes no options, got: {', '.join(options)}")


def _setup_head(model: nn.Module, options: dict[str, Any], task: str) -> tuple[nn.Module, str]:
    if task != "classify":
        raise FinetuneError("--method head needs --task classify (a causal LM has no task head)")
    _no_options("head", options)
    count = _freeze_all_but_head(model)
    return model, f"head only ({count:,} parameters)"


def _setup_none(model: nn.Module, options: dict[str, Any], task: str) -> tuple[nn.Module, str]:
    if task != "lm":
        raise FinetuneError("--method none (zero-shot) needs --task lm")
    _no_options("none", options)
    model.requires_grad_(False)
    return model, "zero-shot (no training)"


def _setup_full(model: nn.Module, options: dict[str, Any], task: str) -> tuple[nn.Module, str]:
    _no_options("full", options)
    for param in model.parameters():
        param.requires_grad_(True)
    return model, "full fine-tuning"


def lora_targets(model: nn.Module) -> list[str] | None:
    """LoRA's default target modules for ``model``: query/value projections, by their names."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for pair in LORA_TARGETS:
        if set(pair) <= leaves:
            return list(pair)
    return None


def _setup_lora(model: nn.Module, options: dict[str, Any], task: str) -> tuple[nn.Module, str]:
    from peft import LoraConfig, TaskType, get_peft_model

    settings = {**LORA_DEFAULTS, **options}
    settings.setdefault("target_modules", lora_targets(model))
    try:
        kind = TaskType.SEQ_CLS if task == "classify" else TaskType.CAUSAL_LM
        config = LoraConfig(task_type=kind, **settings)
    except TypeError as exc:
        raise FinetuneError(f"bad option for method 'lora': {exc}") from exc
    peft_model = get_peft_model(model, config)
    targets = settings["target_modules"] or "peft defaults"
    text = f"LoRA r={config.r} alpha={config.lora_alpha} on {targets} (peft)"
    return peft_model, text


def _save_tensors(model: nn.Module, folder: Path) -> None:
    from safetensors.torch import save

    tensors = {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / TENSORS_FILE, save(tensors))


def _read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of ``path``; a missing file is an AdapterError, a damaged one a named error."""
    if not path.is_file():
        raise AdapterError(f"adapter folder {path.parent} has no {path.name}")
    return read_safetensors(path)


def _load_tensors(model: nn.Module, folder: Path) -> nn.Module:
    tensors = _read_safetensors(folder / TENSORS_FILE)
    params = dict(model.named_parameters())
    for name, tensor in tensors.items():
        if name not in params:
            raise AdapterError(f"adapter tensor {name!r} has no parameter in the base model")
        if params[name].shape != tensor.shape:
            raise AdapterError(
                f"adapter tensor {name!r} has shape {tuple(tensor.shape)} but the base model's "
                f"has {tuple(params[name].shape)}"
            )
    model.load_state_dict(tensors, strict=False)
    return model


def _save_lora(model: nn.Module, folder: Path) -> None:
    model.save_pretrained(str(folder))  # type: ignore[operator]


def _load_lora(model: nn.Module, folder: Path) -> nn.Module:
    from peft import PeftModel

    for name in ("adapter_config.json", "adapter_model.safetensors"):
        if not (folder / name).is_file():
            raise AdapterError(f"the LoRA adapter folder {folder} has no {name}")
    _read_safetensors(folder / "adapter_model.safetensors")
    try:
        return PeftModel.from_pretrained(model, str(folder))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise AdapterError(f"the LoRA adapter in {folder} does not fit the model: {first}") from exc


def _tensortrain_nn() -> Any:
    import tensortrain_nn

    if not hasattr(tensortrain_nn, "patch"):
        raise FinetuneError(
            "methods 'rep' and 'adp' need tensortrain_nn.patch, which this install lacks"
        )
    return tensortrain_nn


def _tt_setup(mode: str) -> Setup:
    def setup(model: nn.Module, options: dict[str, Any], task: str) -> tuple[nn.Module, str]:
        options = {**TT_DEFAULTS[mode], **options}
        patch_options, budget = split_budget_options(options)
        patched = _tensortrain_nn().patch(model, mode=mode, **patch_options)
        model = patched if isinstance(patched, nn.Module) else model
        if budget:  # one out of reach is refused now; the loop rounds to it
            check_budget(model, budget["budget"])
        shown = ", ".join(f"{k}={v}" for k, v in options.items())
        return model, f"LoRETTA_{mode}" + (f" ({shown})" if shown else "")

    return setup


def _save_tt(model: nn.Module, folder: Path) -> None:
    _tensortrain_nn().save_adapter(model, str(folder))


def _load_tt(model: nn.Module, folder: Path) -> nn.Module:
    loaded = _tensortrain_nn().load_adapter(model, str(folder))
    return loaded if isinstance(loaded, nn.Module) else model


METHODS: dict[str, Method] = {
    "rep": Method(_tt_setup("rep"), _save_tt, _load_tt, DEFAULT_LR["rep"]),
    "adp": Method(_tt_setup("adp"), _save_tt, _load_tt, DEFAULT_LR["adp"]),
    "lora": Method(_setup_lora, _save_lora, _load_lora, DEFAULT_LR["lora"]),
    "head": Method(_setup_head, _save_tensors, _load_tensors, DEFAULT_LR["head"]),
    "full": Method(_setup_full, _save_tensors, _load_tensors, DEFAULT_LR["full"]),
    "none": Method(_setup_none, lambda model, folder: None, lambda model, folder: model, 0.0),
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; the error lists the valid names."""
    if name not in METHODS:
        raise FinetuneError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]
