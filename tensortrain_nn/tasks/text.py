r"""Text as the command line gives it: the one rule for escape sequences, and prompt files.

A shell passes ``"Review: {text}\nSentiment:"`` with a literal backslash and ``n``; what a user
means is a line break. :func:`unescape` is the one place that reads escape sequences, for
``--template``, ``--verbalizer`` answers and ``generate``'s prompts alike: ``\n`` is a line
break, ``\t`` a tab, ``\\`` a backslash and ``\"`` a double quote; any other backslash stays as
typed. Text that already holds real line breaks is left as it is.

Example:
    >>> unescape(r"Review: {text}\nSentiment:")
    'Review: {text}\nSentiment:'
    >>> unescape(r"C:\\temp \d")
    'C:\\temp \\d'
"""

from __future__ import annotations

import re

#: The escape sequences :func:`unescape` reads, and what each stands for.
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"'}
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def unescape(text: str) -> str:
    r"""``text`` with ``\n``, ``\t``, ``\\`` and ``\"`` replaced by what they stand for.

    Read left to right, so ``\\n`` is a backslash followed by ``n``. Other backslashes (``\d``,
    a trailing ``\``) are kept.
    """
    return _ESCAPE.sub(lambda m: ESCAPES.get(m.group(1), m.group(0)), text)


#: The line that separates prompts in a ``generate --prompt-file``.
PROMPT_SEPARATOR = "---"


def split_prompts(text: str) -> list[str]:
    r"""Prompts of a prompt file: the text between lines that hold only ``---``.

    Each prompt keeps its inner line breaks; the line breaks around it are dropped, and parts
    that are only whitespace are skipped.

    Example:
        >>> split_prompts("Review: a gem\nSentiment:\n---\nReview: dull\nSentiment:\n")
        ['Review: a gem\nSentiment:', 'Review: dull\nSentiment:']
    """
    parts: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.strip() == PROMPT_SEPARATOR:
            parts.append([])
        else:
            parts[-1].append(line)
    prompts = ["\n".join(lines).strip("\r\n") for lines in parts]
    return [p for p in prompts if p.strip()]
