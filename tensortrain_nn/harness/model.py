"""The ``tensortrain`` model type of lm-evaluation-harness: a base model with a LoRETTA adapter.

:func:`load_adapted` loads the base and the adapter (a run folder of ``tensortrain finetune`` or an
adapter folder of :func:`tensortrain_nn.save_adapter`); :class:`TensorTrainLM` hands the loaded
model and its tokenizer to lm-eval's ``HFLM``, so every harness task (log-likelihood, multiple
choice, rolling perplexity, generation) runs on it exactly as on a Hugging Face model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from torch import nn

from tensortrain.errors import TTError, TTValueError
from tensortrain_nn.finetune.saved import merged_model
from tensortrain_nn.surgery.io import CONFIG_NAME, LEGACY_NAMES

#: The files that mark each kind of adapter folder.
RUN_FILE = "run.json"
#: Methods of a run whose adapter folds into the weights (``merge=True``).
MERGEABLE = ("rep", "lora")
#: ``HFLM`` options that load a model from a name; here the model comes loaded.
REFUSED = ("peft", "delta", "parallelize", "tp_plan", "autogptq", "gptqmodel", "gguf_file")


class ModelArgsError(TTValueError):
    """A ``--model_args`` value of the ``tensortrain`` model type is wrong; the message names it."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _contents(path: Path, limit: int = 6) -> str:
    names = sorted(p.name for p in path.iterdir())
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return shown or "nothing"


def _config_file(folder: Path) -> Path:
    """The adapter config of ``folder``: ours, else the name folders were written under before."""
    ours = folder / CONFIG_NAME
    return ours if ours.is_file() else folder / LEGACY_NAMES[0]


def adapter_kind(adapter: str | Path) -> str:
    """What ``adapter`` is: ``"run"`` (a run folder or its ``adapter/``) or ``"adapter"``.

    Args:
        adapter: A folder written by ``tensortrain finetune`` or by
            :func:`tensortrain_nn.save_adapter`.

    Returns:
        ``"run"`` or ``"adapter"``; reads at most one small JSON file.

    Raises:
        ModelArgsError: The folder does not exist, or is neither kind (a peft LoRA folder is named
            as such, with the ``hf`` model type's ``peft=`` as the way to evaluate it).

    Example::

        adapter_kind("runs/rep")            # 'run'
        adapter_kind("runs/rep/adapter")    # 'run'
    """
    path = Path(adapter).expanduser()
    if not path.is_dir():
        what = "is a file" if path.exists() else "does not exist"
        raise ModelArgsError(
            f"adapter={str(adapter)!r} {what}: expected a run folder of tensortrain finetune "
            "or an adapter folder written by save_adapter"
        )
    if (path / RUN_FILE).is_file() or (path.parent / RUN_FILE).is_file():
        return "run"
    config = _config_file(path)
    if config.is_file():
        try:
            data = json.loads(config.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelArgsError(f"adapter={str(adapter)!r}: {config} is not valid JSON") from exc
        if isinstance(data, dict) and "peft_type" in data:
            raise ModelArgsError(
                f"adapter={str(adapter)!r} is a peft {data['peft_type']} folder, not a LoRETTA "
                f"adapter; evaluate it with --model hf --model_args pretrained=...,peft={adapter}"
            )
        if isinstance(data, dict) and "format_version" in data and "mode" in data:
            return "adapter"
    raise ModelArgsError(
        f"adapter={str(adapter)!r} is not a LoRETTA adapter: expected {RUN_FILE} (a run folder) "
        f"or a tensortrain {CONFIG_NAME}; it contains: {_contents(path)}"
    )


def _load_base(pretrained: str) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer: a packaged name, a transformers folder or a ``.gguf`` file."""
    from tensortrain_nn.models import load_model, resolve_model

    try:
        return load_model(resolve_model(pretrained))
    except (TTError, OSError) as exc:
        raise ModelArgsError(f"pretrained={pretrained!r}: {_one_line(exc)}") from exc


def _load(adapter: str | Path, pretrained: str | None) -> tuple[nn.Module, Any, str]:
    """``(model, tokenizer, method)``: the base with ``adapter`` applied (unmerged)."""
    if adapter_kind(adapter) == "run":
        from tensortrain_nn.finetune import load_run

        model, tokenizer, run_info = load_run(adapter, model=pretrained)
        return model, tokenizer, str(run_info["config"]["method"])
    if pretrained is None:
        raise ModelArgsError(
            f"adapter={str(adapter)!r} is an adapter folder without a run.json, so "
            "pretrained= must name its base model (a model folder, a .gguf file or a packaged name)"
        )
    import tensortrain_nn

    model, tokenizer = _load_base(pretrained)
    config = json.loads(_config_file(Path(adapter).expanduser()).read_text())
    tensortrain_nn.load_adapter(model, Path(adapter).expanduser())
    return model, tokenizer, str(config["mode"])


def load_adapted(
    adapter: str | Path, pretrained: str | None = None, *, merge: bool | None = None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Load a base causal LM with a LoRETTA adapter on top, ready for evaluation.

    Args:
        adapter: A run folder of ``tensortrain finetune --task lm`` (or its ``adapter/``), or an
            adapter folder written by :func:`tensortrain_nn.save_adapter`.
        pretrained: The base model: a transformers folder, a ``.gguf`` file or a packaged name
            such as ``smollm2``. Optional with a run folder (the run names its base), required
            with an adapter folder.
        merge: Fold the update into the weights (rep and LoRA runs: same outputs, no adapter
            overhead). None: merge when the method allows it. adp adapters never merge.

    Returns:
        ``(model, tokenizer, info)``: the model in eval mode, float32 on the CPU; ``info`` has
        ``adapter`` (the folder), ``method`` (``rep``, ``adp``, ...) and ``merged``.

    Raises:
        ModelArgsError: A missing or foreign folder, a base that does not load or does not fit
            the adapter, ``merge=True`` for an adapter that cannot merge. One line, naming the
            argument.

    Example::

        model, tokenizer, info = load_adapted("runs/rep")
        info["method"], info["merged"]       # ('rep', True)
    """
    try:
        model, tokenizer, method = _load(adapter, pretrained)
    except ModelArgsError:
        raise
    except (TTError, OSError) as exc:
        raise ModelArgsError(
            f"adapter={str(adapter)!r} with pretrained={pretrained!r}: {_one_line(exc)}"
        ) from exc
    mergeable = method in MERGEABLE
    if merge and not mergeable:
        raise ModelArgsError(
            f"merge=True: a {method} adapter cannot be folded into the weights; "
            "pass merge=False or leave merge out"
        )
    do_merge = mergeable if merge is None else bool(merge)
    if do_merge:
        model = merged_model(model, method)
    model.eval()
    info = {"adapter": str(adapter), "method": method, "merged": do_merge}
    return model, tokenizer, info


def _not_about_a_loaded_model(record: logging.LogRecord) -> bool:
    """Drop ``HFLM``'s warnings that a loaded model was passed: here that is the design (the
    device and dtype are applied before), so they would only alarm."""
    text = record.getMessage()
    return "already-initialized model" not in text and "kwarg is not of type `str`" not in text


def _device(device: str | None) -> torch.device:
    """The device to evaluate on: ``device``, or CUDA when there is one and else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise ModelArgsError(f"device={device!r} is not a torch device: {exc}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelArgsError(f"device={device!r} but CUDA is not available; pass --device cpu")
    return chosen


@register_model("tensortrain")
class TensorTrainLM(HFLM):
    """lm-eval's Hugging Face model type, on a base model with a LoRETTA adapter loaded.

    Registered with lm-eval as ``tensortrain`` when this module is imported. Every ``HFLM``
    option that applies to a loaded model (``batch_size``, ``max_length``, ``add_bos_token``,
    ``softmax_dtype``, ...) passes through.

    Args:
        pretrained: The base model (see :func:`load_adapted`); optional with a run folder.
        adapter: A run folder or an adapter folder (see :func:`load_adapted`).
        merge: Fold a rep (or LoRA) update into the weights; default: when the method allows.
        device: Where to evaluate (``cpu``, ``cuda``, ``cuda:1``); default CUDA when present.
        dtype: Cast the model after loading (``float32``, ``bfloat16``, ``float16``);
            ``auto`` or None keeps float32.
        **kwargs: Other ``HFLM`` options.

    Raises:
        ModelArgsError: A wrong argument (named in the message, one line).

    Example::

        import lm_eval
        from tensortrain_nn.harness import TensorTrainLM

        lm = TensorTrainLM(adapter="runs/rep", device="cpu", batch_size=8)
        results = lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])
        results["results"]["arc_easy"]["acc,none"]
    """

    def __init__(
        self,
        pretrained: str | None = None,
        adapter: str | None = None,
        merge: bool | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        if adapter is None:
            raise ModelArgsError(
                "adapter= is required: a run folder of tensortrain finetune or an adapter "
                "folder of save_adapter (for a base model alone use --model hf)"
            )
        if merge is not None and not isinstance(merge, bool):
            raise ModelArgsError(f"merge= takes True or False, got {merge!r}")
        refused = sorted(set(kwargs) & set(REFUSED))
        if refused:
            raise ModelArgsError(
                f"{refused[0]}= does not apply to the tensortrain model type (the model comes "
                "loaded from pretrained= and adapter=)"
            )
        adapter_kind(adapter)  # a missing or foreign folder is named before the device
        where = _device(device)
        model, tokenizer, info = load_adapted(str(adapter), pretrained, merge=merge)
        if dtype not in (None, "auto"):
            model = model.to(_dtype(dtype))
        model = model.to(where)
        hf_logger = logging.getLogger(HFLM.__module__)
        hf_logger.addFilter(_not_about_a_loaded_model)
        try:
            super().__init__(pretrained=model, tokenizer=tokenizer, **kwargs)
        finally:
            hf_logger.removeFilter(_not_about_a_loaded_model)
        self.adapter_info = {**info, "pretrained": pretrained}

    def get_model_info(self) -> dict[str, Any]:
        """What the results record about the model: size, dtype and the adapter (no network)."""
        model = self._model
        return {
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
            **{f"tensortrain_{k}": v for k, v in self.adapter_info.items()},
        }


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``dtype`` as a torch floating dtype (the name without ``torch.`` works too)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ModelArgsError(
            f"dtype={dtype!r} is not a floating torch dtype (float32, bfloat16, float16, auto)"
        )
    return found
