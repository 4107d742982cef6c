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
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from tensortrain.errors import TTError
from tensortrain_nn._files import atomic_write
from tensortrain_nn.bases.load import BaseForm
from tensortrain_nn.finetune.base_options import cast_adapters, check_base
from tensortrain_nn.finetune.checkpoint import data_fingerprints
from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.finetune.methods import Method, get_method
from tensortrain_nn.models import ModelSpec, check_fingerprint, load_model, resolve_model
from tensortrain_nn.tasks import (
    BUILTIN,
    AdapterError,
    FinetuneError,
    TaskKind,
    TaskOptions,
    decide_kind,
)
from tensortrain_nn.tasks.sources import describe_source

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"
LABELS_FILE = "labels.json"
CHECKPOINTS_DIR = "checkpoints"
#: Everything a run writes into its folder: what ``overwrite`` may delete, and nothing else.
RUN_FILES = (RUN_FILE, LABELS_FILE, ADAPTER_DIR, "report.json", "report.md", CHECKPOINTS_DIR)
#: Fields of ``run.json``: name -> (expected JSON type, its name in messages).
_FIELDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "format": (int, "an integer"),
    "config": (dict, "an object"),
    "model": (dict, "an object"),
    "base_fingerprint": (dict, "an object"),
    "labels": (list, "a list of strings"),
}


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
        config: The run's config (data paths are saved absolute, in-memory data described).
        **info: ``model`` (the spec as a dict), ``base_fingerprint``, ``labels`` and ``task``.
    """
    out.mkdir(parents=True, exist_ok=True)
    method.save(trained, out / ADAPTER_DIR)
    paths = {  # in-memory data (a Dataset, a list of dicts) is recorded by its description
        key: str(Path(value).resolve()) if isinstance(value, str) else describe_source(value)
        for key in ("data", "test_data")
        if (value := getattr(config, key)) is not None and value != BUILTIN
    }
    fingerprints = data_fingerprints({**config.to_dict(), **paths})
    saved = {"format": 1, "config": {**config.to_dict(), **paths}, **info}
    saved["data_fingerprint"] = fingerprints
    atomic_write(out / RUN_FILE, _json(saved))
    atomic_write(out / LABELS_FILE, _json({name: i for i, name in enumerate(info["labels"])}))
    return sum(p.stat().st_size for p in (out / ADAPTER_DIR).rglob("*") if p.is_file())


def read_run(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The run folder (``folder`` or its parent) and its ``run.json``; cheap, loads no model.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        AdapterError: Neither ``folder`` nor its parent holds a valid ``run.json`` (a damaged
            one is named with its missing or bad field).
    """
    if not folder.exists():
        raise FileNotFoundError(f"adapter folder not found: {folder}")
    for candidate in (folder, folder.parent):
        if (candidate / RUN_FILE).is_file():
            try:
                data = json.loads((candidate / RUN_FILE).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise AdapterError(f"{candidate / RUN_FILE} is not valid JSON") from exc
            check_run_info(data, candidate / RUN_FILE)
            return candidate, data
    raise AdapterError(f"{folder} is not a saved run: it has no {RUN_FILE}")


def _bad(path: Path, field: str, expected: str, value: Any) -> AdapterError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return AdapterError(f"{path}: field {field!r} must be {expected}, got {shown}")


def check_run_info(data: Any, path: Path) -> None:
    """Check a ``run.json``'s fields; the error names the file and the missing or bad field.

    Raises:
        AdapterError: Not an object, a missing field, a field of the wrong type or value.
    """
    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object, got {type(data).__name__}")
    for name, (kind, expected) in _FIELDS.items():
        if name not in data:
            raise AdapterError(f"{path}: field {name!r} is missing (a damaged run folder?)")
        if not isinstance(data[name], kind) or isinstance(data[name], bool):
            raise _bad(path, name, expected, data[name])
    if data["format"] != 1:
        raise _bad(path, "format", "1", data["format"])
    if not all(isinstance(x, str) for x in data["labels"]):
        raise _bad(path, "labels", "a list of strings", data["labels"])
    model = data["model"]
    for key in ("name", "folder"):
        if not isinstance(model.get(key), str):
            raise _bad(path, f"model.{key}", "a string", model.get(key))
    if set(model) - {"name", "folder", "gguf_file"} or not isinstance(
        model.get("gguf_file"), str | None
    ):
        raise _bad(path, "model", "{name, folder, gguf_file}", model)
    if not isinstance(data["config"].get("method"), str):
        raise _bad(path, "config.method", "a method name", data["config"].get("method"))
    if data.get("task", "classify") not in ("classify", "lm"):
        raise _bad(path, "task", "'classify' or 'lm'", data.get("task"))
    try:
        saved_config(data)
    except (TTError, TypeError, ValueError) as exc:
        raise AdapterError(f"{path}: field 'config' is not a valid run config: {exc}") from None


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


def _previous_run(out: Path) -> tuple[list[str], list[str]]:
    """``(run files, other files)`` in ``out``: what a run writes, and what it never writes."""
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    ours = [n for n in names if n in RUN_FILES or (n.startswith(".") and n.endswith(".tmp"))]
    return ours, [n for n in names if n not in ours]


def check_output_dir(config: FinetuneConfig) -> None:
    """Refuse an ``output_dir`` that holds a finished run, unless ``overwrite`` (not ``resume``).

    With ``overwrite`` the folder must hold nothing but the files a run writes
    (:data:`RUN_FILES`): files of the user's are never deleted. A folder holding only checkpoints
    is left to the checkpoint store (``resume`` continues it).

    Raises:
        FinetuneError: A finished run without ``overwrite``, or other files with ``overwrite``.
    """
    if config.resume or config.output_dir is None or not (config.save or config.checkpoint_every):
        return
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise FinetuneError(f"--output-dir {str(out)!r} is a file; give a folder")
    ours, other = _previous_run(out)
    if config.overwrite and other:
        raise FinetuneError(
            f"--overwrite: --output-dir {str(out)!r} holds files a run does not write "
            f"({', '.join(other[:4])}); they are never deleted: move them, or choose another "
            "--output-dir"
        )
    if not config.overwrite and set(ours) - {CHECKPOINTS_DIR}:
        raise FinetuneError(
            f"--output-dir {str(out)!r} already holds a run ({', '.join(ours[:4])}): pass "
            "--overwrite to replace it, --resume to continue it, or choose another --output-dir"
        )


def clear_previous_run(config: FinetuneConfig, out: Path) -> None:
    """With ``overwrite``, delete the files of the run in ``out`` (:data:`RUN_FILES` only).

    Call after :func:`check_output_dir` and the run's other checks, on every process: the main
    process deletes, the others wait for it.
    """
    if not config.overwrite or config.resume:
        return
    from accelerate import PartialState

    if PartialState().is_main_process:
        _delete_run_files(out)
    PartialState().wait_for_everyone()


def _delete_run_files(out: Path) -> None:
    ours, other = _previous_run(out)
    if other:  # the folder changed since the check: delete nothing
        raise FinetuneError(f"--overwrite: {out} now holds {other[0]}, which a run does not write")
    for name in ours:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


#: What each method's run is, for the commands that need one kind of run.
_WHAT = {
    "rep": "LoRETTA_rep, already in TT form: export-lora writes it as a LoRA",
    "adp": "LoRETTA_adp, a nonlinear bottleneck after the layer: not a weight update, not a LoRA",
    "lora": "peft LoRA: its adapter/ folder is already a peft LoRA folder",
    "head": "head only: it trained no adapter",
    "full": "full fine-tuning: it trained the whole model, no adapter",
    "none": "zero-shot: it trained nothing",
}


def check_method(root: Path, info: dict[str, Any], command: str, wanted: str) -> None:
    """Refuse a run of another method than ``wanted``, naming the run's method and what it is.

    Raises:
        AdapterError: The run's method is not ``wanted``.
    """
    method = info["config"]["method"]
    if method != wanted:
        what = _WHAT.get(method, "an unknown method")
        raise AdapterError(f"{command} needs a {wanted} run; {root} is a {method} run ({what})")
