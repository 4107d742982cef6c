"""From task options to a task: read the data once, in the form the task kind needs, and build it.

Example (a real tokenizer, not run here)::

    options = TaskOptions(data="reviews.csv", label_column="sentiment")
    kind = decide_kind(options, decoder_only=False, model="minilm")
    data = read_data(options, kind)                 # a Split: labelled texts
    task = make_task(kind, tokenizer, data, options)
"""

from __future__ import annotations

from typing import Any

from tensortrain_nn.tasks.answers import scored
from tensortrain_nn.tasks.base import Task, TaskKind, TaskOptions, is_chat_template
from tensortrain_nn.tasks.chat_task import ChatTask
from tensortrain_nn.tasks.classify import ClassifyTask
from tensortrain_nn.tasks.data import (
    BUILTIN_TEST_SIZE,
    LMExample,
    Split,
    encode_labels,
    held_out_part,
    load_builtin,
    load_lm_examples,
    load_table,
    make_split,
    split_items,
    take_parts,
)
from tensortrain_nn.tasks.errors import DataError, FinetuneError
from tensortrain_nn.tasks.forms import ChatData, read_chat_or_instruction
from tensortrain_nn.tasks.lm import LMTask, classification_task
from tensortrain_nn.tasks.scoring import BUILTIN_TEMPLATE, BUILTIN_VERBALIZER

#: What :func:`read_data` returns: labelled texts, or ``(train, test)`` lm examples.
TaskData = Split | tuple[list[LMExample], list[LMExample]] | ChatData


def read_split(options: TaskOptions, held_out: str | None = None) -> Split:
    """The labelled train/held-out split (file or built-in data, held-out part, subsets).

    Args:
        options: What to read and how to split it.
        held_out: The held-out part to return: ``"test"``, ``"validation"`` (carved from the
            training part, ``options.val_size``), or None for the validation part when there
            is one (:func:`~tensortrain_nn.tasks.data.take_parts`). With ``"validation"`` a
            ``test_data`` file is not opened.

    Raises:
        FileNotFoundError: A data file does not exist.
        DataError: Missing columns, a single class, an unusable split or an unseen test label.
    """
    part = held_out_part(options, held_out)
    cols = {"text_column": options.text_column, "label_column": options.label_column}
    if options.builtin:
        texts, labels = load_builtin()
        default: int | float = BUILTIN_TEST_SIZE
    else:
        texts, labels = load_table(options.data, **cols, split=options.split)
        default = 0.2
    size = options.test_size if options.test_size is not None else default
    separate = options.test_data is not None
    test = load_table(options.test_data, **cols) if separate and part == "test" else None
    # A separate test file that is not read: nothing is held out of ``data``.
    hold_out = not separate or test is not None
    split = make_split(
        texts, labels, test_size=size, seed=options.split_seed, test=test, hold_out=hold_out
    )
    train, held = take_parts(
        list(zip(split.train_texts, split.train_labels, strict=True)),
        list(zip(split.test_texts, split.test_labels, strict=True)),
        options,
        part,
    )
    return Split(
        [t for t, _ in train],
        [y for _, y in train],
        [t for t, _ in held],
        [y for _, y in held],
        split.labels,
    )


def read_examples(
    options: TaskOptions, held_out: str | None = None
) -> tuple[list[LMExample], list[LMExample]] | ChatData:
    """``(train, held-out)`` prompt/completion or plain-text examples, split as
    :func:`read_split`; chat or instruction data when the data has that shape
    (:mod:`~tensortrain_nn.tasks.forms`)."""
    shaped = read_chat_or_instruction(options, held_out)
    if shaped is not None:
        return shaped
    part = held_out_part(options, held_out)
    columns = {
        "prompt_column": options.prompt_column,
        "completion_column": options.completion_column,
        "text_column": options.text_column,
    }
    examples = load_lm_examples(options.data, **columns, split=options.split)
    separate = options.test_data is not None
    test = load_lm_examples(options.test_data, **columns) if separate and part == "test" else None
    size = options.test_size if options.test_size is not None else 0.2
    hold_out = not separate or test is not None
    train, tested = split_items(
        examples, test_size=size, seed=options.split_seed, test=test, hold_out=hold_out
    )
    return take_parts(train, tested, options, part)


def read_data(options: TaskOptions, kind: TaskKind, held_out: str | None = None) -> TaskData:
    """The data of a task of ``kind``: a :class:`Split` when labelled, else lm examples.

    ``held_out`` as in :func:`read_split` (None: the validation part when there is one).
    """
    if kind.labelled:
        return read_split(options, held_out)
    return read_examples(options, held_out)


def read_held_out(
    options: TaskOptions,
    kind: TaskKind,
    labels: list[str],
    data: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    held_out: str = "test",
) -> TaskData:
    """What a saved run evaluates on: its own held-out part, or all of ``data``.

    The run's own held-out part is its test part unless ``held_out="validation"`` (a run with
    a validation split trains on the same examples either way).

    Labelled runs read ``data``'s texts and labels (ids from ``labels``, the training labels);
    prompt/completion and plain-text runs read ``data``'s examples with the run's columns
    (``text_column`` overrides a plain-text run's).

    Raises:
        DataError: A label unseen in training, a missing column, or ``label_column`` for a run
            without labels.
    """
    if data is None:
        if not kind.labelled:
            held = read_examples(options, held_out)
            return ChatData([], held.test) if isinstance(held, ChatData) else ([], held[1])
        split = read_split(options, held_out)
        return Split([], [], split.test_texts, split.test_labels, labels)
    if not kind.labelled:
        if label_column is not None:
            raise DataError(
                f"--label-column {label_column!r}: the run has no labels (it was trained on "
                "prompt/completion or plain-text data)"
            )
        columns = {
            "prompt_column": options.prompt_column,
            "completion_column": options.completion_column,
            "text_column": text_column or options.text_column,
        }
        return ([], load_lm_examples(data, **columns))
    texts, names = load_table(
        data,
        text_column=text_column or options.text_column,
        label_column=label_column or options.label_column,
    )
    ids = encode_labels(names, labels, where=str(data))
    return Split([], [], texts, ids, labels)


def make_task(kind: TaskKind, tokenizer: Any, data: TaskData, options: TaskOptions) -> Task:
    """The task of ``kind`` over ``data`` (what :func:`read_data` returned).

    Raises:
        DataError: A bad template or verbalizer (lm classification as text).
    """
    if isinstance(data, ChatData):
        chat = options.template if is_chat_template(options.template) else None
        task: Any = ChatTask(
            tokenizer,
            data.train,
            data.test,
            max_length=options.max_length,
            template=chat,
            chat_loss=options.chat_loss,
        )
        return scored(task, options.metric, labelled=False)
    if options.chat_loss != "assistant":
        raise FinetuneError(
            f"--chat-loss {options.chat_loss} has no effect: the data is not chat messages"
        )
    if not isinstance(data, Split):
        # Prompt/completion data is scored by exact match unless another metric is asked for.
        default = "exact_match" if options.prompt_column is not None else None
        task = LMTask(tokenizer, *data, max_length=options.max_length)
        return scored(task, options.metric or default, labelled=False)
    if kind.name == "classify":
        return ClassifyTask(tokenizer, data, options.max_length)
    task = classification_task(
        tokenizer,
        data,
        template=BUILTIN_TEMPLATE if options.template is None else options.template,
        verbalizer=BUILTIN_VERBALIZER if options.verbalizer is None else options.verbalizer,
        max_length=options.max_length,
        length_normalise=options.length_normalise,
    )
    return scored(task, options.metric, labelled=True)
