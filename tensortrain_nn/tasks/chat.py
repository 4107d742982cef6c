"""Chat and instruction data: the shapes users bring, mapped to what the lm task trains on.

- Chat: a column of conversations, each a list of ``{"role", "content"}`` messages (roles
  ``system``, ``user``, ``assistant``; a system message only first). It is rendered with the
  tokenizer's chat template (or ``--template``, a Jinja chat template or a ``.jinja`` file), and
  the loss falls on the assistant turns (their content and the template's end-of-turn text), or on
  every token with ``chat_loss="all"``. Templates that mark assistant text with
  ``{% generation %}`` give the mask through ``apply_chat_template(...,
  return_assistant_tokens_mask=True)``; others are rendered prefix by prefix (the conversation
  before each assistant turn, with the generation prompt, and up to its end), the characters in
  between are the turn, and a token is the assistant's when its first character is.
- Instruction (Alpaca): ``instruction`` / ``input`` / ``output`` columns become prompt and
  completion through :data:`ALPACA_TEMPLATE` (:data:`ALPACA_TEMPLATE_NO_INPUT` when the input is
  empty): the completion is the output.

Example:
    >>> alpaca_example({"instruction": "Add 2 and 3.", "output": "5"}).reference
    '5'
    >>> check_messages([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
    ...                where="d.jsonl", number=1, column="messages")[1]
    {'role': 'assistant', 'content': 'Yo'}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tensortrain_nn.tasks.data import LMExample
from tensortrain_nn.tasks.errors import DataError
from tensortrain_nn.tasks.sources import as_text, is_messages

__all__ = [
    "ALPACA_TEMPLATE",
    "ALPACA_TEMPLATE_NO_INPUT",
    "ROLES",
    "alpaca_example",
    "chat_template",
    "check_messages",
    "encode_conversation",
    "find_messages_column",
    "is_instruction_data",
    "render",
]

#: Roles a message may have.
ROLES = ("system", "user", "assistant")
#: The Alpaca prompt of an example with an input; the completion is its ``output``.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
#: The Alpaca prompt of an example without an input.
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_GENERATION = re.compile(r"{%-?\s*generation\s*-?%}")
Messages = list[dict[str, str]]


def find_messages_column(
    rows: list[dict[str, Any]], columns: list[str], *, given: str | None, text_column: str
) -> str | None:
    """The conversation column: ``given`` (checked), else one holding role/content lists.

    A column is detected only when the text column is not in the data (a text column holding
    lists is refused where it is read as text, with a hint).

    Raises:
        DataError: ``given`` is not a column.
    """
    if given is not None:
        if given not in columns:
            raise DataError(
                f"--messages-column {given!r}: the data has no such column; "
                f"its columns are: {', '.join(columns)}"
            )
        return given
    if text_column in columns:
        return None
    found = [c for c in columns if _holds_messages(rows, c)]
    return "messages" if "messages" in found else (found[0] if found else None)


def _holds_messages(rows: list[dict[str, Any]], column: str) -> bool:
    """The column's first non-empty list is a conversation; or it is ``messages`` and holds
    lists (all empty: refused later, row by row)."""
    for row in rows:
        value = row.get(column)
        if isinstance(value, list) and value:
            return is_messages(value)
    return column == "messages" and any(isinstance(r.get(column), list) for r in rows)


def is_instruction_data(columns: list[str], text_column: str) -> bool:
    """Alpaca-style data: ``instruction`` and ``output`` columns and no text column."""
    return text_column not in columns and {"instruction", "output"} <= set(columns)


def check_messages(value: Any, *, where: str, number: int, column: str) -> Messages:
    """One conversation, checked: non-empty, known roles, string contents, an assistant turn.

    Returns:
        The messages as ``{"role", "content"}`` dicts (other keys dropped).

    Raises:
        DataError: Naming the row and the message: not a list, empty, a message that is not a
            dict or lacks ``role`` / ``content``, an unknown role, a system message after the
            first, or no assistant message.
    """
    at = f"--messages-column {column!r}: {where} row {number}"
    if not isinstance(value, list) or not value:
        got = "an empty conversation" if value in (None, []) else type(value).__name__
        raise DataError(f"{at} holds {got}; expected a list of role/content messages")
    messages: Messages = []
    for k, message in enumerate(value, start=1):
        missing = [
            key
            for key in ("role", "content")
            if not isinstance(message, dict) or message.get(key) is None
        ]
        if missing:
            raise DataError(f"{at}, message {k} has no {missing[0]!r} key")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataError(f"{at}, message {k} has role {role!r}; roles: {', '.join(ROLES)}")
        if role == "system" and k > 1:
            raise DataError(f"{at}, message {k} is a system message; only the first may be")
        if not isinstance(content, str):
            raise DataError(f"{at}, message {k} has content of type {type(content).__name__}")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{at} has no assistant message to train on")
    return messages


def alpaca_example(row: dict[str, Any], number: int = 1, where: str = "the data") -> LMExample:
    """An Alpaca row as a prompt (:data:`ALPACA_TEMPLATE`) and its ``output`` as completion."""

    def cell(column: str) -> str:
        return as_text(row.get(column), flag="--data", column=column, where=where, number=number)

    instruction, given, output = cell("instruction"), cell("input"), cell("output")
    if given.strip():
        prompt = ALPACA_TEMPLATE.format(instruction=instruction, input=given)
    else:
        prompt = ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction)
    return LMExample(prompt, output)


def chat_template(tokenizer: Any, template: str | None) -> str:
    """The chat template to render with: ``template`` (text or a ``.jinja`` file), else the
    tokenizer's own.

    Raises:
        DataError: Neither exists (the message names ``--template``), or the file is missing.
    """
    if template is not None and template.endswith(".jinja"):
        path = Path(template)
        if not path.is_file():
            raise DataError(f"--template {template}: chat template file not found")
        return path.read_text(encoding="utf-8")
    if template is not None:
        return template
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"chat data needs a chat template, and the tokenizer of {name} has none: "
            "give one with --template (Jinja text or a .jinja file)"
        )
    return str(own)


def render(tokenizer: Any, template: str, messages: Messages, *, prompt: bool = False) -> str:
    """``messages`` as text through ``template``; ``prompt`` adds the assistant's opening."""
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=prompt
    )
    return str(text)


def encode_conversation(
    tokenizer: Any, template: str, messages: Messages, *, assistant_only: bool = True
) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and which of them carry the loss.

    Returns:
        ``(ids, trained)``: equally long; ``trained[i]`` is whether token ``i`` is part of an
        assistant turn (every token but the first when not ``assistant_only``).

    Raises:
        DataError: The template renders a conversation differently from its prefixes, so the
            assistant turns cannot be found.
    """
    if _GENERATION.search(template):
        out = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, mask = list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
    else:
        text = render(tokenizer, template, messages)
        spans = _assistant_spans(tokenizer, template, messages, text)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        mask = [
            any(start <= first < end for start, end in spans) and last > first
            for first, last in encoded["offset_mapping"]
        ]
    if not assistant_only:
        mask = [True] * len(ids)
    return ids, [False, *mask[1:]] if ids else mask


def _assistant_spans(
    tokenizer: Any, template: str, messages: Messages, text: str
) -> list[tuple[int, int]]:
    """Character spans of the assistant turns of ``text`` (each turn's trailing space dropped)."""
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:k], prompt=True) if k else ""
        upto = render(tokenizer, template, messages[: k + 1])
        if not (upto.startswith(before) and text.startswith(upto)):
            raise DataError(
                "the chat template renders a conversation differently from its first turns, so "
                "its assistant turns cannot be found; give a template with {% generation %} marks "
                "through --template"
            )
        spans.append((len(before), len(upto.rstrip())))
    return spans
