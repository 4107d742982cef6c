"""The one atomic writer: whole files only, readable as any file the user writes, no leftovers."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tensortrain.errors import TTValueError
from tensortrain_nn._files import atomic_write, read_json_object


def test_atomic_write_replaces_whole_and_keeps_the_umask_mode(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    target.write_text("old")
    old_mask = os.umask(0o022)
    try:
        atomic_write(target, b'{"a": 1}')
    finally:
        os.umask(old_mask)
    assert target.read_bytes() == b'{"a": 1}'
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]  # no temp file left


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"before")

    with pytest.raises(TypeError):  # the write itself fails (text into a binary file)
        atomic_write(target, "after")  # type: ignore[arg-type]
    assert target.read_bytes() == b"before"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_read_json_object_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    path.write_text("[1, 2]")
    with pytest.raises(TTValueError, match=r"adapter_config\.json must hold a JSON object"):
        read_json_object(path)
    path.write_text("{not json")
    with pytest.raises(TTValueError, match=r"adapter_config\.json is not valid JSON"):
        read_json_object(path)
    path.write_text('{"r": 8}')
    assert read_json_object(path) == {"r": 8}
