"""Run folders: the one module that writes and reads them.

A run folder holds ``run.json`` (format, config, base model and its fingerprint, label names, task),
``labels.json`` (label -> id), ``adapter/`` (what the method trained), ``report.json`` and
``report.md`` (:mod:`~tensortrain_nn.finetune.report`), and ``checkpoints/`` when asked for.

Example::

    root, info = read_run(Path("runs/x"))           # cheap: no model is loaded
    model, tokenizer, info = load_run("runs/x")      # base model with the adapter on top
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from tensortrain_nn._files import atomic_write
from tensortrain_nn.bases.load import BaseForm
from tensortrain_nn.finetune.base_options import cast_adapters, check_base
from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.finetune.methods import Method, get_method
from tensortrain_nn.models import ModelSpec, check_fingerprint, load_model, resolve_model
from tensortrain_nn.tasks import BUILTIN, AdapterError, TaskKind, TaskOptions, decide_kind

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
LABELS_FILE = "labels.json"


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def write_run(
    out: Path, method: Method, trained: nn.Module, config: FinetuneConfig, **info: Any
) -> int:
    """Save the adapter, ``run.json`` and ``labels.json`` into ``out``; returns the adapter's bytes.

    Args:
        out: The run folder (created).
        method: The run's method (it saves the adapter).
        trained: The trained model.
        config: The run's config (data paths are saved absolute).
        **info: ``model`` (the spec as a dict), ``base_fingerprint``, ``labels`` and ``task``.
    """
    out.mkdir(parents=True, exist_ok=True)
    method.save(trained, out / ADAPTER_DIR)
    paths = {
        key: str(Path(value).resolve())
        for key in ("data", "test_data")
        if (value := getattr(config, key)) is not None and value != BUILTIN
    }
    saved = {"format": 1, "config": {**config.to_dict(), **paths}, **info}
    atomic_write(out / RUN_FILE, _json(saved))
    atomic_write(out / LABELS_FILE, _json({name: i for i, name in enumerate(info["labels"])}))
    return sum(p.stat().st_size for p in (out / ADAPTER_DIR).rglob("*") if p.is_file())


def read_run(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The run folder (``folder`` or its parent) and its ``run.json``; cheap, loads no model.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        AdapterError: Neither ``folder`` nor its parent holds a valid ``run.json``.
    """
    if not folder.exists():
        raise FileNotFoundError(f"adapter folder not found: {folder}")
    for candidate in (folder, folder.parent):
        if (candidate / RUN_FILE).is_file():
            try:
                return candidate, json.loads((candidate / RUN_FILE).read_text())
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{candidate / RUN_FILE} is not valid JSON") from exc
    raise AdapterError(f"{folder} is not a saved run: it has no {RUN_FILE}")


def saved_config(info: dict[str, Any]) -> FinetuneConfig:
    """The config a saved run was trained with (progress bars off)."""
    return FinetuneConfig.from_dict({**info["config"], "progress": False})


def saved_task(info: dict[str, Any]) -> tuple[TaskKind, TaskOptions]:
    """The task kind and options of a saved run (its ``task`` as recorded, ``classify`` if none)."""
    name = info.get("task", "classify")
    options = dataclasses.replace(saved_config(info).task_options(), task=name)
    return decide_kind(options, decoder_only=name == "lm", model=info["model"]["name"]), options


def load_base(
    folder: str | Path, *, model: str | None = None, base: dict[str, str | None] | None = None
) -> tuple[Path, nn.Module, Any, dict]:
    """A saved run's base model without its adapter: ``(run folder, model, tokenizer, run_info)``,
    in the run's dtype and quantization (a run without them: float32) unless ``base`` overrides.

    Raises:
        FileNotFoundError: The folder or the base model does not exist.
        AdapterError: Not a run folder, or ``model`` is not the run's architecture.
    """
    root, info = read_run(Path(folder))
    saved = info["model"]
    form = BaseForm.from_values(info["config"], **(base or {}))
    given = (base or {}).get("adapter_dtype") or "auto"
    check_base(info["config"]["method"], form, given, {})
    if model is not None:
        spec = resolve_model(model)
    elif saved["name"] in ("minilm", "smollm2"):
        spec = resolve_model(saved["name"])
    else:
        spec = ModelSpec(**saved)
        if not Path(spec.folder).exists():
            raise FileNotFoundError(f"the run's base model folder no longer exists: {spec.folder}")
    lm_run = info.get("task") == "lm"
    frozen, tokenizer = load_model(
        spec, None if lm_run else len(info["labels"]), labels=info["labels"], form=form
    )
    check_fingerprint(info["base_fingerprint"], frozen, saved_name=saved["name"], name=spec.name)
    return root, frozen, tokenizer, info


def load_run(
    folder: str | Path, *, model: str | None = None, base: dict[str, str | None] | None = None
) -> tuple[nn.Module, Any, dict]:
    """Load a saved run: the base model it names (or ``model``) with its adapter on top.

    Args:
        folder: The run folder (or its ``adapter/`` sub-folder).
        model: Another base model to put the adapter on; it must have the same architecture.
        base: ``dtype``, ``quantize``, ``quant_type`` and ``adapter_dtype`` to use instead of
            the run's (None values keep the run's).

    Returns:
        ``(model, tokenizer, run_info)`` with the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: The folder or the base model does not exist.
        AdapterError: Not a run folder, or the adapter was saved for another base model.
    """
    root, frozen, tokenizer, info = load_base(folder, model=model, base=base)
    # A rank-budget run's TT ranks come from the file.
    loaded = get_method(info["config"]["method"]).load(frozen, root / ADAPTER_DIR)
    cast_adapters(
        loaded, (base or {}).get("adapter_dtype") or info["config"].get("adapter_dtype", "auto")
    )
    loaded.eval()
    return loaded, tokenizer, info
