"""Fine-tune a pretrained transformer: LoRETTA, LoRA, head-only, full; on any task of
:mod:`tensortrain_nn.tasks` (classification or causal LM).

The Python API under the ``tensortrain`` command line, and its public surface: the command line
uses only the names below. accelerate, transformers, peft, tqdm and matplotlib (the ``hf`` extra)
are imported where they are used.

Example (trains for a minute on the packaged MiniLM)::

    from tensortrain_nn.finetune import FinetuneConfig, run, predict
    result = run(FinetuneConfig(method="lora", epochs=1, output_dir="runs/lora"))
    result.accuracy, result.adapter_params
    predict("runs/lora", ["a triumph", "a mess"])         # ['fresh', 'rotten']
"""

import importlib
from typing import TYPE_CHECKING, Any

from tensortrain_nn.finetune.config import FinetuneConfig, Result
from tensortrain_nn.finetune.methods import DEFAULT_LR, METHODS, Method
from tensortrain_nn.finetune.report import format_report
from tensortrain_nn.finetune.runs import ADAPTER_DIR, load_base, load_run, read_run
from tensortrain_nn.tasks.errors import AdapterError, DataError, FinetuneError, ModelError

if TYPE_CHECKING:
    from tensortrain_nn.finetune.job import build_split, compare, run
    from tensortrain_nn.finetune.saved import evaluate, generate_text, predict

#: The job's names and their modules, imported on first use: the job needs accelerate (the
#: ``hf`` extra), and ``tensortrain --help`` reads only the config.
_JOB = {"build_split": "job", "compare": "job", "run": "job"}
_JOB.update(dict.fromkeys(("evaluate", "generate_text", "predict"), "saved"))


def __getattr__(name: str) -> Any:
    """The job's functions, imported when first asked for (a missing extra is named)."""
    if name not in _JOB:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tensortrain_nn._optional import missing

    try:
        module = importlib.import_module(f"tensortrain_nn.finetune.{_JOB[name]}")
    except ModuleNotFoundError as exc:
        raise missing(exc, "the fine-tuning job") from exc
    return getattr(module, name)


__all__ = [
    "ADAPTER_DIR",
    "DEFAULT_LR",
    "METHODS",
    "AdapterError",
    "DataError",
    "FinetuneConfig",
    "FinetuneError",
    "Method",
    "ModelError",
    "Result",
    "build_split",
    "compare",
    "evaluate",
    "format_report",
    "generate_text",
    "load_base",
    "load_run",
    "predict",
    "read_run",
    "run",
]
