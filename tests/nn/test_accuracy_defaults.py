"""The accuracy benchmark's default rows are the job's defaults (docs/accuracy.md says so)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tensortrain_nn.finetune import FinetuneConfig
from tensortrain_nn.finetune.methods import LORA_DEFAULTS, TT_DEFAULTS

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "accuracy.py"


@pytest.fixture(scope="module")
def accuracy():
    spec = importlib.util.spec_from_file_location("accuracy_bench", _PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["accuracy_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["rep", "adp", "lora", "head"])
def test_default_rows_are_the_job_defaults(accuracy, method):
    (row,) = [s for s in accuracy.bench_settings() if s.method == method]
    default = FinetuneConfig(method=method)
    assert (row.lr or default.learning_rate) == default.learning_rate
    expected = {"rep": TT_DEFAULTS["rep"], "adp": TT_DEFAULTS["adp"]}.get(method, {})
    if method == "lora":
        assert {**LORA_DEFAULTS, **row.options} == LORA_DEFAULTS
    else:
        assert row.options == expected
    assert row.epochs is None


def test_every_task_builds_a_config(accuracy):
    for task in accuracy.TASKS:
        config = accuracy.config_for(task, accuracy.SWEEP[0], 0)
        assert config.max_train == accuracy.PROTOCOL["max_train"]
        if task != "rt":
            assert Path(config.data).is_file()
