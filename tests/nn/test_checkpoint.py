"""Checkpoints: atomic checksummed files, bad files skipped, SIGKILL mid-run then ``--resume``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from _helpers import tiny_assets, tiny_values
from safetensors.torch import load_file

from tensortrain_nn.finetune import FinetuneConfig, FinetuneError, run
from tensortrain_nn.finetune.checkpoint import (
    MANIFEST,
    POSITION,
    CheckpointError,
    latest,
    list_checkpoints,
    verify,
)

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny BERT *with* dropout (so resuming must restore the RNG) and a 48-row CSV."""
    return tiny_assets(tmp_path_factory, "ckpt", dropout=0.1)


def _values(assets: dict[str, str], out: Path, **extra: Any) -> dict[str, Any]:
    return tiny_values(assets["model"], assets["data"], out, **{"checkpoint_every": 1, **extra})


@pytest.fixture(scope="module")
def reference(assets: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The final checkpoint of an uninterrupted run (one thread, like the others)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    try:
        run(FinetuneConfig(**_values(assets, out)))
    finally:
        torch.set_num_threads(threads)
    return _final(out)


def _final(out: Path) -> dict[str, Any]:
    found = latest(out / "checkpoints")
    assert found is not None and found[1]["global_step"] == 8
    return {"model": load_file(str(found[0] / "model.safetensors")), **found[1]}


def _assert_same_run(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    assert resumed["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name  # bit for bit
    assert resumed["history"] == reference["history"]


# --- the folder format -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(assets: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run's checkpoint folder (8 steps, a checkpoint after each)."""
    out = tmp_path_factory.mktemp("finished")
    run(FinetuneConfig(**_values(assets, out)))
    return out / "checkpoints"


def test_keeps_the_newest_two_whole_and_only_trainable_tensors(finished: Path) -> None:
    assert sorted(p.name for p in finished.iterdir()) == ["step-00000007", "step-00000008"]
    newest = finished / "step-00000008"
    position = verify(newest)
    assert position["global_step"] == 8 and position["world_size"] == 1
    names = set(json.loads((newest / MANIFEST).read_text()))
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", POSITION} <= names
    assert any(n.startswith("random_states_") for n in names)
    saved = load_file(str(newest / "model.safetensors"))
    assert saved and all(".adapters." in n or "LayerNorm" in n or "classifier" in n for n in saved)


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing", "manifest", "extra-bytes"])
def test_bad_newest_checkpoint_is_skipped_with_a_warning(
    finished: Path, tmp_path: Path, damage: str
) -> None:
    folder = tmp_path / "checkpoints"
    shutil.copytree(finished, folder)
    newest = folder / "step-00000008"
    target = newest / "optimizer.bin"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    elif damage == "missing":
        target.unlink()
    elif damage == "manifest":
        (newest / MANIFEST).unlink()
    else:
        target.write_bytes(data + b"x")
    with pytest.raises(CheckpointError):
        verify(newest)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        found = latest(folder)
    assert found is not None and found[1]["global_step"] == 7


def test_only_bad_folders_mean_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "step-00000004").mkdir()
    (tmp_path / ".step-00000005.tmp").mkdir()  # a write that never finished
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000004"]
    with pytest.warns(RuntimeWarning):
        assert latest(tmp_path) is None
    assert latest(tmp_path / "missing") is None


def test_a_fresh_run_refuses_another_runs_checkpoints(
    assets: dict[str, str], finished: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old"
    shutil.copytree(finished, out / "checkpoints")
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    with pytest.raises(FinetuneError, match="already holds checkpoints of another run"):
        run(FinetuneConfig(**_values(assets, out)))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert not (out / "report.json").exists()


# --- resuming the job --------------------------------------------------------------------------


def test_resume_after_an_exception_is_bit_exact(
    assets: dict[str, str], reference: dict[str, Any], tmp_path: Path, one_thread: None
) -> None:
    def crash(step: int, model: torch.nn.Module) -> None:
        if step == 4:  # the end of epoch 1, before its evaluation
            raise KeyboardInterrupt

    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(FinetuneConfig(**_values(assets, crashed)), on_step=crash)
    result = run(FinetuneConfig(**_values(assets, crashed, resume=True)))
    assert result.resumed_from_step == 4
    _assert_same_run(_final(crashed), reference)
    assert json.loads((crashed / "report.json").read_text())["history"] == result.history


def test_resume_refuses_another_config(
    assets: dict[str, str], finished: Path, tmp_path: Path
) -> None:
    shutil.copytree(finished, tmp_path / "checkpoints")
    with pytest.raises(FinetuneError, match=r"another config.*seed: 0 -> 7"):
        run(FinetuneConfig(**_values(assets, tmp_path, resume=True, seed=7)))


def test_resume_needs_output_dir() -> None:
    with pytest.raises(FinetuneError, match="output_dir"):
        FinetuneConfig(resume=True)


def test_sigkill_then_resume_is_bit_exact(
    assets: dict[str, str], reference: dict[str, Any], tmp_path: Path, one_thread: None
) -> None:
    killed = tmp_path / "killed"
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_values(assets, killed)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    script = [sys.executable, str(HERE / "_helpers.py"), "pause", str(config_file), "6"]
    proc = subprocess.Popen(script, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marker = killed / "checkpoints" / "PAUSED"
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate(timeout=30)[0].decode()
    assert marker.exists(), output[-3000:]
    assert proc.returncode == -signal.SIGKILL
    # Mid-epoch 2 (6 of 8 steps), nothing saved but checkpoints 5 and 6.
    assert not (killed / "report.json").exists()
    assert [p.name for p in list_checkpoints(killed / "checkpoints")][-1] == "step-00000006"
    # A torn newest file: resume warns, falls back to step 5 and still ends bit for bit equal.
    torn = killed / "checkpoints" / "step-00000006" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="truncated"):
        result = run(FinetuneConfig(**_values(assets, killed, resume=True)))
    assert result.resumed_from_step == 5
    _assert_same_run(_final(killed), reference)
