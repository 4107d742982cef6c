"""From task options to a task: read the data once, in the form the task kind needs, and build it.

Example (a real tokenizer, not run here)::

    options = TaskOptions(data="reviews.csv", label_column="sentiment")
    kind = decide_kind(options, decoder_only=False, model="minilm")
    data = read_data(options, kind)                 # a Split: labelled texts
    task = make_task(kind, tokenizer, data, options)
"""

from __future__ import annotations

import dataclasses
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
    load_builtin,
    load_lm_examples,
    load_table,
    make_split,
    split_items,
)
from tensortrain_nn.tasks.errors import DataError, FinetuneError
from tensortrain_nn.tasks.forms import ChatData, read_chat_or_instruction
from tensortrain_nn.tasks.lm import LMTask, classification_task
from tensortrain_nn.tasks.scoring import BUILTIN_TEMPLATE, BUILTIN_VERBALIZER

#: What :func:`read_data` returns: labelled texts, or ``(train, test)`` lm examples.
TaskData = Split | tuple[list[LMExample], list[LMExample]] | ChatData


def read_split(options: TaskOptions) -> Split:
    """The labelled train/test split (file or built-in data, held-out part, subsets).

    Raises:
        FileNotFoundError: A data file does not exist.
        DataError: Missing columns, a single class, an unusable split or an unseen test label.
    """
    cols = {"text_column": options.text_column, "label_column": options.label_column}
    if options.builtin:
        texts, labels = load_builtin()
        default: int | float = BUILTIN_TEST_SIZE
    else:
        texts, labels = load_table(options.data, **cols, split=options.split)
        default = 0.2
    size = options.test_size if options.test_size is not None else default
    test = None if options.test_data is None else load_table(options.test_data, **cols)
    split = make_split(texts, labels, test_size=size, seed=options.split_seed, test=test)
    n_train, n_test = options.max_train, options.max_test
    return dataclasses.replace(
        split,
        train_texts=split.train_texts[:n_train],
        train_labels=split.train_labels[:n_train],
        test_texts=split.test_texts[:n_test],
        test_labels=split.test_labels[:n_test],
    )


def read_examples(options: TaskOptions) -> tuple[list[LMExample], list[LMExample]] | ChatData:
    """``(train, test)`` prompt/completion or plain-text examples, split as :func:`read_split`;
    chat or instruction data when the data has that shape (:mod:`~tensortrain_nn.tasks.forms`)."""
    shaped = read_chat_or_instruction(options)
    if shaped is not None:
        return shaped
    columns = {
        "prompt_column": options.prompt_column,
        "completion_column": options.completion_column,
        "text_column": options.text_column,
    }
    examples = load_lm_examples(options.data, **columns, split=options.split)
    test = None if options.test_data is None else load_lm_examples(options.test_data, **columns)
    size = options.test_size if options.test_size is not None else 0.2
    train, held = split_items(examples, test_size=size, seed=options.split_seed, test=test)
    return train[: options.max_train], held[: options.max_test]


def read_data(options: TaskOptions, kind: TaskKind) -> TaskData:
    """The data of a task of ``kind``: a :class:`Split` when labelled, else lm examples."""
    return read_split(options) if kind.labelled else read_examples(options)


def read_held_out(
    options: TaskOptions,
    kind: TaskKind,
    labels: list[str],
    data: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
) -> TaskData:
    """What a saved run evaluates on: its own held-out part, or all of ``data``.

    Labelled runs read ``data``'s texts and labels (ids from ``labels``, the training labels);
    prompt/completion and plain-text runs read ``data``'s examples with the run's columns
    (``text_column`` overrides a plain-text run's).

    Raises:
        DataError: A label unseen in training, a missing column, or ``label_column`` for a run
            without labels.
    """
    if data is None:
        if not kind.labelled:
            held = read_examples(options)
            return ChatData([], held.test) if isinstance(held, ChatData) else ([], held[1])
        split = read_split(options)
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
