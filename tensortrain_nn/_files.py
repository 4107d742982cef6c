"""Files that are whole or absent: the one atomic writer of the project.

A crash (even ``kill -9``) while writing never leaves a half file under its final name: data goes
to a temporary file in the same folder, is flushed and fsynced, and is then renamed over the final
name with ``os.replace``; the folder is fsynced so that the rename itself survives a power cut.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> atomic_write(folder / "a.json", b"{}")
    >>> (folder / "a.json").read_bytes()
    b'{}'
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tensortrain.errors import TTValueError


def fsync_dir(folder: Path) -> None:
    """fsync a folder (makes renames inside it durable); a no-op where the OS cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, ``os.replace``, fsync folder).

    Args:
        path: Final file name; its folder must exist.
        data: The whole content.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path`` (a config file); anything else is a named error.

    Raises:
        TTValueError: Not valid UTF-8 JSON, or JSON that is not an object.
    """
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TTValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TTValueError(f"{path} must hold a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file; a damaged file is a named error, never a raw one.

    Raises:
        TTValueError: The file is corrupted or truncated (safetensors' own error type is not
            exported stably, so any failure to parse counts).
    """
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except Exception as exc:
        raise TTValueError(f"{path} is corrupted or truncated and cannot be read: {exc}") from exc
