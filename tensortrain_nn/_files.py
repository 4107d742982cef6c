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

import hashlib
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
        MissingDependencyError: safetensors is not installed (the ``hf`` extra).
    """
    from tensortrain_nn._optional import require

    load = require("safetensors.torch", f"reading {path.name}").load
    try:
        return load(path.read_bytes())
    except Exception as exc:
        raise TTValueError(f"{path} is corrupted or truncated and cannot be read: {exc}") from exc


def check_output_folder(path: Path, *, overwrite: bool, name: str = "out_dir") -> None:
    """Refuse to write into ``path`` when it is a file, or a non-empty folder without ``overwrite``.

    Args:
        path: The output folder (need not exist).
        overwrite: Allow a non-empty folder (files of the same names are replaced).
        name: How the caller names the argument (``out_dir``, ``OUT``) and, in the hint, the flag.

    Raises:
        TTValueError: ``path`` is a file, or a non-empty folder and ``overwrite`` is False.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> check_output_folder(folder, overwrite=False)          # empty: fine
        >>> (folder / "notes.txt").write_text("mine")
        4
        >>> check_output_folder(folder, overwrite=False)
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: out_dir ... is not empty (it holds notes.txt): ...
    """
    if path.exists() and not path.is_dir():
        raise TTValueError(f"{name} {str(path)!r} is a file; give a folder")
    held = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    if held and not overwrite:
        flag = "--overwrite" if name.isupper() else "overwrite=True"
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise TTValueError(
            f"{name} {str(path)!r} is not empty (it holds {shown}): choose a new or empty "
            f"folder, or pass {flag} to replace files of the same names"
        )


#: Bytes hashed from each end of a large file by :func:`file_fingerprint`.
_EDGE = 1 << 20


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and sha256 of a data file (a large one: its first and last MiB), or of a folder's files.

    Cheap enough for every resume, and it sees any append, truncation or edit of a small file;
    an edit inside a large file that keeps its size and both ends is not seen.

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "d.csv"
        >>> _ = path.write_text("text,label\\n")
        >>> file_fingerprint(path)["size"]
        11
    """
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    size = 0
    for file in files:
        n = file.stat().st_size
        size += n
        digest.update(f"{file.relative_to(path) if path.is_dir() else ''}:{n}\n".encode())
        with file.open("rb") as handle:
            digest.update(handle.read(_EDGE))
            if n > 2 * _EDGE:
                handle.seek(n - _EDGE)
            digest.update(handle.read())
    return {"size": size, "sha256": digest.hexdigest()}
