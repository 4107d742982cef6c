"""Checkpoints: atomic checksummed files, bad files skipped, SIGKILL mid-run then ``--resume``."""

from __future__ import annotations

import json
import os
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

from tensortrain_nn.finetune import FinetuneConfig, FinetuneError, run
from tensortrain_nn.finetune.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
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
    path, payload = latest_checkpoint(out / "checkpoints") or (None, {})
    assert path is not None and payload["step"] == 8
    return payload


def _assert_same_run(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    assert resumed["model"].keys() == reference["model"].keys()
    for name, tensor in reference["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name  # bit for bit
    assert resumed["history"] == reference["history"]


# --- the file format -------------------------------------------------------------------------


def _payload(step: int) -> dict[str, Any]:
    return {"step": step, "w": torch.arange(6.0).reshape(2, 3), "meta": {"a": [1, 2.5, "x"]}}


def test_roundtrip_keeps_newest_two_and_leaves_no_temp(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _payload(step))
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "step-00000002.ckpt",
        "step-00000003.ckpt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        p.name for p in list_checkpoints(tmp_path)
    ]
    loaded = read_checkpoint(tmp_path / "step-00000003.ckpt")
    assert torch.equal(loaded["w"], _payload(3)["w"]) and loaded["meta"] == {"a": [1, 2.5, "x"]}


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "header", "garbage"])
def test_bad_newest_file_is_skipped_with_a_warning(tmp_path: Path, damage: str) -> None:
    save_checkpoint(tmp_path, 1, _payload(1))
    newest = save_checkpoint(tmp_path, 2, _payload(2))
    data = newest.read_bytes()
    broken = {
        "truncate": data[: len(data) // 2],
        "flip": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
        "empty": b"",
        "header": b"TTCKPT1 abc\n" + data,
        "garbage": os.urandom(len(data)),
    }[damage]
    newest.write_bytes(broken)
    with pytest.raises(CheckpointError):
        read_checkpoint(newest)
    with pytest.warns(RuntimeWarning, match="skipping checkpoint"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found[1]["step"] == 1


def test_only_bad_files_mean_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "step-00000004.ckpt").write_bytes(b"TTCKPT1 ")
    (tmp_path / ".step-00000005.ckpt.123.tmp").write_bytes(b"half a write")
    with pytest.warns(RuntimeWarning):
        assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_rng_state_roundtrip() -> None:
    import random

    import numpy as np

    state = rng_state()
    first = (torch.rand(3), random.random(), np.random.rand())
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]


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


def test_resume_refuses_another_config(assets: dict[str, str], tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "checkpoints", 1, {"step": 1, "config": {"seed": 7}})
    with pytest.raises(FinetuneError, match="another config"):
        run(FinetuneConfig(**_values(assets, tmp_path, resume=True)))


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
    assert [p.name for p in list_checkpoints(killed / "checkpoints")][-1] == "step-00000006.ckpt"
    # A torn newest file: resume warns, falls back to step 5 and still ends bit for bit equal.
    newest = killed / "checkpoints" / "step-00000006.ckpt"
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.warns(RuntimeWarning, match="truncated"):
        result = run(FinetuneConfig(**_values(assets, killed, resume=True)))
    assert result.resumed_from_step == 5
    _assert_same_run(_final(killed), reference)
