"""Every data source a task reads, through the ``datasets`` library: files, folders, objects.

A source is a CSV file (a header row; every cell read as text), a JSON-lines or JSON file (one
object a line, or one array of objects), a parquet file, any of these compressed (``.gz``,
``.bz2``), a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a
``DatasetDict`` with ``split`` naming the part to read), or, from Python, a ``datasets.Dataset``,
a ``DatasetDict`` or a list of dicts. :func:`read_source` turns any of them into rows (dicts) and
column names; the hub is never asked (``HF_DATASETS_OFFLINE=1``) and the ``datasets`` cache goes
into a temporary folder that is removed afterwards, so reading writes nothing.

Example:
    >>> rows, columns = read_source([{"text": "a gem", "label": "fresh"}])
    >>> rows, columns
    ([{'text': 'a gem', 'label': 'fresh'}], ['text', 'label'])
    >>> describe_source([{"text": "a gem"}])
    'a list of 1 dicts'
"""

from __future__ import annotations

import bz2
import csv
import gzip
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from tensortrain_nn.tasks.errors import DataError

__all__ = ["as_text", "describe_source", "read_source"]

#: Suffixes (after ``.gz`` / ``.bz2``) read as JSON; ``.parquet`` / ``.pq`` as parquet; else CSV.
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
Rows = tuple[list[dict[str, Any]], list[str]]


def _datasets() -> Any:
    """The ``datasets`` module, offline and quiet (its import reads the environment once)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "reading data needs the 'datasets' package (pip install 'tensortrain[hf]')"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(logging.CRITICAL)
    return datasets


def describe_source(source: Any) -> str:
    """A short name of ``source`` for messages and run records (a path stays a path)."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, list):
        return f"a list of {len(source)} dicts"
    return f"an in-memory {type(source).__name__}"


def read_source(source: Any, *, split: str | None = None, flag: str = "--data") -> Rows:
    """Every row of ``source`` as a dict, and the column names in order.

    Args:
        source: A file or ``save_to_disk`` folder (``str`` / ``Path``), a ``datasets.Dataset`` or
            ``DatasetDict``, or a list of dicts.
        split: The split of a ``DatasetDict`` (None: its only split, else an error).
        flag: The flag that named the source, for messages.

    Returns:
        ``(rows, columns)``. A missing or null value is left out of its row (``row.get`` gives
        None); CSV cells are strings ("" when empty), other sources keep their types.

    Raises:
        FileNotFoundError: No such file or folder.
        DataError: No rows, a damaged file, not UTF-8 text, a folder ``datasets`` did not write,
            an unknown split, or a list item that is not a dict (one line, naming the source).
    """
    if isinstance(source, list):
        return _from_list(source, flag)
    if not isinstance(source, (str, Path)):
        return _from_dataset(source, split, flag)
    path = Path(source)
    if path.is_dir():
        datasets = _datasets()
        try:
            loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
        except FileNotFoundError:
            raise DataError(
                f"{flag} {path} is a folder but not one written by datasets' save_to_disk"
            ) from None
        return _from_dataset(loaded, split, flag, name=str(path))
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if split is not None:
        raise DataError(
            f"--split {split!r} names a part of a DatasetDict folder; {flag} {path} is one table"
        )
    rows, columns = _read_file(path)
    if not rows:
        raise DataError(f"data file {path} has no rows")
    return rows, columns


def _from_list(items: list[Any], flag: str) -> Rows:
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            kind = type(item).__name__
            raise DataError(f"{flag}: item {number} of the list is a {kind}, not a dict")
    if not items:
        raise DataError(f"{flag}: the list of rows is empty")
    rows = [{k: v for k, v in item.items() if v is not None} for item in items]
    return rows, list(dict.fromkeys(key for item in items for key in item))


def _from_dataset(data: Any, split: str | None, flag: str, *, name: str | None = None) -> Rows:
    datasets = _datasets()
    shown = name or describe_source(data)
    if isinstance(data, datasets.DatasetDict):
        parts = list(data)
        if split is None and len(parts) == 1:
            split = parts[0]
        if split not in data:
            wanted = "give --split" if split is None else f"has no split {split!r}"
            raise DataError(
                f"{flag} {shown} is a DatasetDict: {wanted}; its splits: {', '.join(parts)}"
            )
        data = data[split]
    elif split is not None:
        raise DataError(
            f"--split {split!r} names a part of a DatasetDict; {flag} {shown} is one table"
        )
    if not isinstance(data, datasets.Dataset):
        raise DataError(
            f"{flag} must be a file, a folder, a Dataset or a list of dicts, got {shown}"
        )
    if len(data) == 0:
        raise DataError(f"{flag} {shown} has no rows")
    rows = [{k: v for k, v in row.items() if v is not None} for row in data.to_list()]
    return rows, list(data.column_names)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8-sig")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig", newline="")


def _builder(path: Path) -> str:
    """``csv``, ``json`` or ``parquet``: by suffix, or by parquet's magic bytes."""
    stem = path.name.removesuffix(".bz2").removesuffix(".gz")
    if stem.endswith(JSON_SUFFIXES):
        return "json"
    with path.open("rb") as handle:
        magic = handle.read(4)
    return "parquet" if stem.endswith(PARQUET_SUFFIXES) or magic == b"PAR1" else "csv"


def _read_file(path: Path) -> Rows:
    """The rows of one file, every failure of the reader turned into one line naming the file."""
    builder = _builder(path)
    try:
        options: dict[str, Any] = {}
        if builder == "csv":
            options = _csv_options(path)
            if not options["features"]:
                return [], []
        rows, columns = _load(builder, path, options)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from None
    except DataError:
        raise
    except Exception as exc:  # the reader's many types: pandas, pyarrow, gzip, datasets
        cause = _root(exc)
        if isinstance(cause, UnicodeDecodeError):
            raise DataError(
                f"data file {path} is not UTF-8 text (byte {cause.start}: {cause.reason}); "
                "save it as UTF-8"
            ) from None
        what = "valid JSON" if builder == "json" else f"a valid {builder} file"
        detail = " ".join(str(cause).split()) or type(cause).__name__
        raise DataError(f"data file {path} cannot be read: not {what} ({detail[:160]})") from None
    return rows, columns


def _root(exc: BaseException) -> BaseException:
    """The first error of a chain (``datasets`` wraps the reader's own)."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return exc


def _csv_options(path: Path) -> dict[str, Any]:
    """Reader options that keep every CSV cell a string, as written (columns from the header)."""
    datasets = _datasets()
    with _open_text(path) as handle:
        header = next(csv.reader(handle), [])
    names = list(dict.fromkeys(header))
    return {
        "features": datasets.Features({name: datasets.Value("string") for name in names}),
        "na_filter": False,
        "encoding": "utf-8-sig",
    }


def _load(builder: str, path: Path, options: dict[str, Any]) -> Rows:
    datasets = _datasets()
    with tempfile.TemporaryDirectory(prefix="tensortrain-data-") as cache:
        try:
            data = datasets.load_dataset(
                builder,
                data_files=str(path.resolve()),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
                **options,
            )
        except ValueError as exc:
            if "corresponds to no data" in str(exc):  # a header and no rows
                return [], list(options.get("features") or [])
            raise
        except StopIteration:  # an empty JSON file
            return [], []
    rows = [{k: v for k, v in row.items() if v is not None} for row in data.to_list()]
    return rows, list(data.column_names)


def as_text(value: Any, *, flag: str, column: str, where: str, number: int) -> str:
    """A cell used as text: ``""`` for none, ``str`` of a scalar; a list or dict is refused.

    Raises:
        DataError: ``value`` is a list or a dict (chat messages, nested data): training on its
            Python text would be a silently wrong run.

    Example:
        >>> as_text(3, flag="--text-column", column="n", where="d.csv", number=1)
        '3'
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        kind = "a list" if isinstance(value, (list, tuple)) else "a dict"
        hint = (
            f"; it holds chat messages: give --messages-column {column}"
            if is_messages(value)
            else ""
        )
        raise DataError(f"{flag} {column!r}: {where} row {number} holds {kind}, not text{hint}")
    return str(value)


def is_messages(value: Any) -> bool:
    """Whether ``value`` looks like a conversation: a non-empty list of dicts, one with a role
    (a malformed conversation is still one, to be refused with its own message)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) for m in value)
        and any("role" in m for m in value)
    )
