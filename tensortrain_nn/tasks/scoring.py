"""Classification as text: the verbalizer (an answer text per label) and option scoring.

Each label has an answer (``fresh=" good",rotten=" bad"``); a prompt is labelled with the answer
the model finds most likely after it. :func:`score_options` is the one scorer: ``evaluate`` and
``predict`` of the lm task both go through it.

Example:
    >>> parse_verbalizer('fresh=" good",rotten=" bad"')
    {'fresh': ' good', 'rotten': ' bad'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tensortrain_nn.tasks.batching import collate, model_device, sequence_logprobs
from tensortrain_nn.tasks.errors import DataError, FinetuneError
from tensortrain_nn.tasks.text import unescape

#: Template and verbalizer of the built-in Rotten Tomatoes task (labels ``fresh`` / ``rotten``).
BUILTIN_TEMPLATE = "Review: {text}\nSentiment:"
BUILTIN_VERBALIZER = 'fresh=" good",rotten=" bad"'

_PAIR = re.compile(r'\s*([^=,"\s][^=,"]*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,"]*?))\s*(?:,|$)')


def parse_verbalizer(text: str) -> dict[str, str]:
    """Parse ``label=answer`` pairs separated by commas into ``{label: answer}``.

    Quote an answer to keep its spaces or commas; an unquoted one is stripped. Escape sequences
    in answers follow the one rule of :func:`~tensortrain_nn.tasks.text.unescape` (``\\n``,
    ``\\t``, ``\\\\``, and ``\\"`` inside quotes). Answers usually start with a space
    (``" good"``), as they follow the prompt.

    Raises:
        DataError: An empty string, a malformed pair, or a label given twice.

    Example:
        >>> parse_verbalizer('1=" yes", 0=" no"')
        {'1': ' yes', '0': ' no'}
        >>> parse_verbalizer("pos=great,neg=awful")
        {'pos': 'great', 'neg': 'awful'}
    """
    if not text.strip():
        raise DataError(f"--verbalizer {text!r} is empty: give a label=answer pair per label")
    answers: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None or match.end() == pos:
            break
        label, quoted, bare = match.groups()
        if label in answers:
            raise DataError(f"--verbalizer {text!r} gives label {label!r} twice")
        answers[label] = unescape(quoted if quoted is not None else bare)
        pos = match.end()
    if pos < len(text) or not answers:
        raise DataError(
            f"--verbalizer {text!r} is malformed at character {pos}: expected "
            'label=answer pairs separated by commas, e.g. fresh=" good",rotten=" bad"'
        )
    return answers


def verbalizer_answers(
    verbalizer: str | Mapping[str, str], labels: Sequence[str]
) -> dict[str, str]:
    """The verbalizer as ``{label: answer}``, naming exactly ``labels``.

    Raises:
        DataError: A malformed verbalizer, a label of the data without an answer, or an answer
            for a label that is not in the data.
    """
    answers = parse_verbalizer(verbalizer) if isinstance(verbalizer, str) else dict(verbalizer)
    shown = verbalizer if isinstance(verbalizer, str) else answers
    missing = [name for name in labels if name not in answers]
    extra = [name for name in answers if name not in labels]
    if missing or extra:
        problem = (
            f"has no answer for label {missing[0]!r} of the data"
            if missing
            else f"names label {extra[0]!r}, which is not in the data"
        )
        raise DataError(f"--verbalizer {shown!r} {problem} (its labels: {', '.join(labels)})")
    return answers


def answer_ids(
    tokenizer: Any,
    answers: Sequence[str],
    names: Sequence[str],
    max_length: int,
    *,
    length_normalise: bool = False,
) -> list[list[int]]:
    """Token ids of each answer (no special tokens), checked to be distinct and to fit.

    With summed log-likelihoods, an answer whose tokens extend another's can never score higher
    than it (each extra token adds a negative term); such answers are refused unless
    ``length_normalise``.

    Raises:
        DataError: An answer that tokenizes to nothing, two with the same tokens, or (summed
            scores) one whose tokens are a prefix of another's.
        FinetuneError: The longest answer leaves no room for a prompt in ``max_length``.
    """
    ids = [list(i) for i in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]
    seen: dict[tuple[int, ...], int] = {}
    for k, tokens in enumerate(ids):
        if not tokens:
            raise DataError(
                f"--verbalizer answer {answers[k]!r} of label {names[k]!r} tokenizes to nothing"
            )
        if tuple(tokens) in seen:
            j = seen[tuple(tokens)]
            raise DataError(
                f"--verbalizer answers {answers[j]!r} ({names[j]!r}) and {answers[k]!r} "
                f"({names[k]!r}) tokenize to the same tokens {tokens}"
            )
        seen[tuple(tokens)] = k
    if not length_normalise:
        _refuse_prefixes(ids, answers, names)
    longest = max(len(t) for t in ids)
    if longest >= max_length:
        raise FinetuneError(
            f"--max-length {max_length} leaves no room for the prompt: the longest "
            f"--verbalizer answer takes {longest} tokens"
        )
    return ids


def _refuse_prefixes(
    ids: Sequence[Sequence[int]], answers: Sequence[str], names: Sequence[str]
) -> None:
    """Refuse an answer whose tokens are a proper prefix of another's (summed scores)."""
    for j, short in enumerate(ids):
        for k, long in enumerate(ids):
            if len(short) < len(long) and list(long[: len(short)]) == list(short):
                raise DataError(
                    f"--verbalizer answer {answers[j]!r} ({names[j]!r}) is a token prefix of "
                    f"{answers[k]!r} ({names[k]!r}): by summed log-likelihood {names[k]!r} "
                    "could never be predicted; change an answer or give --length-normalise"
                )


def length_chunks(contexts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``contexts`` in chunks of ``batch_size``, sorted by length (less padding)."""
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


@torch.no_grad()
def score_options(
    model: nn.Module,
    contexts: Sequence[Sequence[int]],
    options: Sequence[Sequence[int]],
    *,
    pad_id: int,
    batch_size: int,
) -> torch.Tensor:
    """Summed log-likelihood of every option after every context.

    One forward per chunk of ``batch_size`` contexts, all ``K`` options of a context in the same
    left-padded batch (``batch_size * K`` sequences).

    Returns:
        ``(N, K)`` float32 on the CPU: entry ``[i, k]`` is ``log p(option k | context i)``.

    Example (a real model)::

        raw = score_options(model, [[1, 5, 9]], [[7], [8, 3]], pad_id=0, batch_size=8)
        raw.argmax(dim=1)      # the most likely option of each context
    """
    device, k = model_device(model), len(options)
    scores = torch.zeros(len(contexts), k)
    for chunk in length_chunks(contexts, batch_size):
        pairs = [(contexts[i], o) for i in chunk for o in options]
        batch = {key: v.to(device) for key, v in collate(pairs, pad_id).items()}
        scores[chunk] = sequence_logprobs(model, batch).view(len(chunk), k).cpu()
    return scores


def normalise(raw: torch.Tensor, options: Sequence[Sequence[int]], by_length: bool) -> torch.Tensor:
    """``raw`` ``(N, K)`` scores divided by each option's token count when ``by_length``."""
    if not by_length:
        return raw
    return raw / torch.tensor([float(len(o)) for o in options])
