"""Which shape lm data comes in, for the shapes beyond text and prompt/completion.

:func:`read_chat_or_instruction` reads ``options.data`` once and decides:

- chat: ``--messages-column`` names a column, or (no text column in the data) a column holds
  role/content lists (``messages`` first): :class:`ChatData`, conversations to render;
- instruction: ``instruction`` / ``output`` (and ``input``) columns and no text column: prompt /
  completion examples through the Alpaca template (:func:`~tensortrain_nn.tasks.chat.
  alpaca_example`);
- anything else: None, and the data is read as text or prompt/completion as before.

Example:
    >>> rows = [{"messages": [{"role": "user", "content": "Hi"},
    ...                       {"role": "assistant", "content": "Hello"}]}] * 5
    >>> data = read_chat_or_instruction(TaskOptions(data=rows, test_size=1))
    >>> len(data.train), len(data.test)
    (4, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tensortrain_nn.tasks.base import TaskOptions
from tensortrain_nn.tasks.chat import (
    Messages,
    alpaca_example,
    check_messages,
    find_messages_column,
    is_instruction_data,
)
from tensortrain_nn.tasks.data import LMExample, held_out_part, split_items, take_parts
from tensortrain_nn.tasks.errors import FinetuneError
from tensortrain_nn.tasks.sources import describe_source, read_source


@dataclass(frozen=True)
class ChatData:
    """Train and held-out conversations (checked message lists)."""

    train: list[Messages]
    test: list[Messages]


def _read(source: Any, options: TaskOptions, split: str | None) -> tuple[str, list] | None:
    """``("chat", conversations)``, ``("instruction", examples)``, or None for other shapes."""
    rows, columns = read_source(source, split=split)
    where = describe_source(source)
    column = find_messages_column(
        rows, columns, given=options.messages_column, text_column=options.text_column
    )
    if column is not None:
        if options.prompt_column is not None:
            raise FinetuneError(
                f"--prompt-column and chat messages ({column!r}) are two data shapes; give one"
            )
        return "chat", [
            check_messages(row.get(column), where=where, number=n, column=column)
            for n, row in enumerate(rows, start=1)
        ]
    if options.prompt_column is None and is_instruction_data(columns, options.text_column):
        return "instruction", [alpaca_example(row, n, where) for n, row in enumerate(rows, start=1)]
    return None


def read_chat_or_instruction(
    options: TaskOptions, held_out: str | None = None
) -> ChatData | tuple[list[LMExample], list[LMExample]] | None:
    """Chat or instruction data of ``options``, split as the other lm data; None otherwise.

    ``held_out`` picks the test or the validation part (:func:`~tensortrain_nn.tasks.data.
    take_parts`).

    Raises:
        DataError: A bad conversation (one line naming the row and the message), a missing
            ``--messages-column``, or a test file of another shape.
        FinetuneError: ``--prompt-column`` with chat data.
    """
    if options.builtin:
        return None
    found = _read(options.data, options, options.split)
    if found is None:
        return None
    form, items = found
    part = held_out_part(options, held_out)
    separate, test = options.test_data is not None, None
    if separate and part == "test":
        held = _read(options.test_data, options, None)
        if held is None or held[0] != form:
            raise FinetuneError(f"--test-data {options.test_data} is not {form} data like --data")
        test = held[1]
    size = options.test_size if options.test_size is not None else 0.2
    hold_out = not separate or test is not None
    train, tested = split_items(
        items, test_size=size, seed=options.split_seed, test=test, hold_out=hold_out
    )
    train, tested = take_parts(train, tested, options, part)
    return ChatData(train, tested) if form == "chat" else (train, tested)
