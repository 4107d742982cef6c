"""The causal-LM task: completions, plain text, and classification as text through a verbalizer.

Three data forms, one task class (:class:`LMTask`) implementing the loop's ``Task`` protocol:

- prompt / completion: loss on the completion tokens and a closing EOS; the prompt carries none.
- plain text (no prompt): next-token loss over the whole text and a closing EOS, conditioned on
  the tokenizer's BOS (or EOS when it has none).
- classification as text (the LoRETTA paper's protocol with LLaMA-2): each text goes through a
  ``template`` (``"Review: {text}\\nSentiment:"``), each label has an answer text
  (:func:`parse_verbalizer`); training puts the loss on the gold answer's tokens, evaluation
  scores every answer by its log-likelihood and predicts the most likely one.

A sequence longer than ``max_length`` loses prompt tokens from the left (the BOS is kept), never
answer tokens; the task counts the examples cut.

Example:
    >>> parse_verbalizer('fresh=" good",rotten=" bad"')
    {'fresh': ' good', 'rotten': ' bad'}

With a model (not run here)::

    model, tokenizer = load_model(resolve_model("smollm2"))
    task = classification_task(tokenizer, split, template="Review: {text}\\nSentiment:",
                               verbalizer='fresh=" good",rotten=" bad"', max_length=64)
    loss = task.loss(model, task.train_batch([0, 1, 2, 3]))
    task.evaluate(model.eval(), batch_size=16)["accuracy"]
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain._checks import check_int
from tensortrain_nn.finetune.data import Split, read_rows
from tensortrain_nn.finetune.errors import DataError, FinetuneError
from tensortrain_nn.finetune.generate import (
    collate,
    generate_ids,
    model_device,
    pad_id,
    prompt_ids,
    sequence_logprobs,
    target_logprobs,
)
from tensortrain_nn.finetune.tasks import metrics

#: Template and verbalizer of the built-in Rotten Tomatoes task (labels ``fresh`` / ``rotten``).
BUILTIN_TEMPLATE = "Review: {text}\nSentiment:"
BUILTIN_VERBALIZER = 'fresh=" good",rotten=" bad"'

_PAIR = re.compile(r'\s*([^=,"\s][^=,"]*?)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,"]*?))\s*(?:,|$)')


def parse_verbalizer(text: str) -> dict[str, str]:
    """Parse ``label=answer`` pairs separated by commas into ``{label: answer}``.

    Quote an answer (JSON string escapes) to keep its spaces or commas; an unquoted one is
    stripped. Answers usually start with a space (``" good"``), as they follow the prompt.

    Raises:
        DataError: An empty string, a malformed pair, or a label given twice.

    Example:
        >>> parse_verbalizer('1=" yes", 0=" no"')
        {'1': ' yes', '0': ' no'}
        >>> parse_verbalizer("pos=great,neg=awful")
        {'pos': 'great', 'neg': 'awful'}
    """
    answers: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None or match.end() == pos:
            break
        label, quoted, bare = match.groups()
        if label in answers:
            raise DataError(f"--verbalizer {text!r} gives label {label!r} twice")
        try:
            answers[label] = json.loads(f'"{quoted}"') if quoted is not None else bare
        except json.JSONDecodeError:
            break
        pos = match.end()
    if pos < len(text) or not answers:
        raise DataError(
            f"--verbalizer {text!r} is malformed at character {pos}: expected "
            'label=answer pairs separated by commas, e.g. fresh=" good",rotten=" bad"'
        )
    return answers


@dataclass(frozen=True)
class LMExample:
    """One example as text.

    Attributes:
        prompt: What the model reads ("" for plain text).
        reference: What it should write: the completion, the text, or the gold answer.
        label: Label id (an index into the task's answers) for classification, else None.
    """

    prompt: str
    reference: str
    label: int | None = None


def load_lm_examples(
    path: str | Path,
    *,
    prompt_column: str | None = None,
    completion_column: str | None = None,
    text_column: str | None = "text",
) -> list[LMExample]:
    """Read prompt/completion pairs (both columns given) or plain texts from a CSV / JSONL file.

    Raises:
        FileNotFoundError: No such file.
        DataError: No rows, or a named column is missing (the message names the flag, the
            column and the columns that exist).
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
    path = Path(path)
    rows, columns = read_rows(path)
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

    def cell(row: dict[str, object], column: str | None) -> str:
        value = row.get(column or "")
        return "" if value is None else str(value)

    if prompt_column is not None:
        return [LMExample(cell(r, prompt_column), cell(r, completion_column)) for r in rows]
    return [LMExample("", cell(r, text_column)) for r in rows]


def split_examples(
    examples: Sequence[LMExample],
    *,
    test_size: int | float,
    seed: int = 0,
    test: Sequence[LMExample] | None = None,
) -> tuple[list[LMExample], list[LMExample]]:
    """``(train, test)``: shuffle with ``seed`` and hold out the first ``test_size``, as
    :func:`~tensortrain_nn.finetune.data.make_split` does (or use ``test`` and train on all).

    Raises:
        DataError: No examples, or a split that leaves nothing to train or test on.
    """
    if not examples:
        raise DataError("the data set is empty")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if test is not None:
        if not test:
            raise DataError("the test data set is empty")
        return [examples[i] for i in order], list(test)
    n_test = round(test_size * len(examples)) if isinstance(test_size, float) else test_size
    n_test = max(1, n_test)
    if n_test >= len(examples):
        raise DataError(
            f"test_size {test_size} leaves no training data ({len(examples)} examples in all)"
        )
    return [examples[i] for i in order[n_test:]], [examples[i] for i in order[:n_test]]


def read_examples(config: Any) -> tuple[list[LMExample], list[LMExample]]:
    """``(train, test)`` examples of a prompt/completion or plain-text job (a ``FinetuneConfig``).

    The held-out part is ``config.test_data``, or ``config.test_size`` of ``config.data`` (0.2
    by default); ``max_train`` / ``max_test`` cut each part.
    """
    columns = {
        "prompt_column": config.prompt_column,
        "completion_column": config.completion_column,
        "text_column": config.text_column,
    }
    examples = load_lm_examples(config.data, **columns)
    test = None if config.test_data is None else load_lm_examples(config.test_data, **columns)
    size = config.test_size if config.test_size is not None else 0.2
    train, held = split_examples(examples, test_size=size, seed=config.split_seed, test=test)
    return train[: config.max_train], held[: config.max_test]


@dataclass(frozen=True)
class Encoded:
    """One example as token ids, after truncation.

    Attributes:
        context: Ids the model reads (never empty).
        target: Ids it is trained and scored on (for classification, the gold answer's).
        label: Label id for classification, else None.
    """

    context: list[int]
    target: list[int]
    label: int | None = None


def _fit(context: list[int], budget: int, bos: int | None) -> list[int]:
    """The last ``budget`` ids of ``context``, keeping a leading BOS."""
    if len(context) <= budget:
        return context
    if bos is not None and context[0] == bos and budget >= 2:
        return [bos, *context[len(context) - budget + 1 :]]
    return context[len(context) - budget :]


class LMTask:
    """Causal-LM fine-tuning on completions, plain texts or verbalized labels.

    Every example is tokenized once here. Batches are left-padded (see
    :func:`~tensortrain_nn.finetune.generate.collate`), so one layout serves training, scoring
    and generation.

    Args:
        tokenizer: The model's tokenizer (a pad token is not needed; EOS pads).
        train: Training examples.
        test: Held-out examples.
        max_length: Most tokens per sequence (context + target). Longer prompts lose tokens from
            the left; a completion or text longer than ``max_length - 1`` loses its end.
        answers: For classification: the answer text of each label id (``answers[label]``);
            every example then needs a ``label``. None for completions and plain text.
        label_names: Label names, for messages (default: the label ids).
        length_normalise: Score an answer by its mean token log-likelihood instead of the sum.
        num_samples: Held-out examples whose generation ``evaluate`` reports.
        sample_tokens: Most tokens generated for each sample.

    Attributes:
        name: ``"lm"``.
        num_train: Number of training examples.
        options: Token ids of each answer (classification), else None.
        train_encoded: The training examples as :class:`Encoded`; ``test_encoded`` likewise.
        truncated: Examples whose prompt was cut, ``{"train": n, "test": m}``.
        targets_cut: Completions / texts cut at the end, ``{"train": n, "test": m}``.

    Raises:
        FinetuneError: ``max_length`` too small for the longest answer.
        DataError: An answer that tokenizes to nothing, two answers with the same tokens, or an
            example without a valid label.
    """

    name = "lm"

    def __init__(
        self,
        tokenizer: Any,
        train: Sequence[LMExample],
        test: Sequence[LMExample],
        *,
        max_length: int = 64,
        answers: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        length_normalise: bool = False,
        num_samples: int = 3,
        sample_tokens: int = 16,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise FinetuneError(f"--max-length must be an int >= 2, got {max_length!r}")
        self.num_samples = check_int("num_samples", num_samples, minimum=0)
        self.sample_tokens = check_int("sample_tokens", sample_tokens)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.length_normalise = bool(length_normalise)
        self.pad_id, self.eos_id = pad_id(tokenizer), tokenizer.eos_token_id
        self.train_examples, self.test_examples = list(train), list(test)
        self.num_train = len(self.train_examples)
        self.options: list[list[int]] | None = None
        if answers is not None:
            names = [str(i) for i in range(len(answers))] if label_names is None else label_names
            self.options = self._answer_ids(answers, names)
        self.truncated: dict[str, int] = {}
        self.targets_cut: dict[str, int] = {}
        self.train_encoded = self._encode(self.train_examples, "train")
        self.test_encoded = self._encode(self.test_examples, "test")

    def _answer_ids(self, answers: Sequence[str], names: Sequence[str]) -> list[list[int]]:
        ids = [
            list(i) for i in self.tokenizer(list(answers), add_special_tokens=False)["input_ids"]
        ]
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
        longest = max(len(t) for t in ids)
        if longest >= self.max_length:
            raise FinetuneError(
                f"--max-length {self.max_length} leaves no room for the prompt: the longest "
                f"--verbalizer answer takes {longest} tokens"
            )
        return ids

    def _encode(self, examples: list[LMExample], part: str) -> list[Encoded]:
        contexts = prompt_ids(self.tokenizer, [e.prompt for e in examples])
        bos = self.tokenizer.bos_token_id
        out: list[Encoded] = []
        cut = ends = 0
        if self.options is not None:
            budget = self.max_length - max(len(o) for o in self.options)
            for number, (example, context) in enumerate(zip(examples, contexts, strict=True)):
                if example.label is None or not 0 <= example.label < len(self.options):
                    raise DataError(f"{part} example {number} has no valid label: {example.label}")
                kept = _fit(context, budget, bos)
                cut += len(kept) < len(context)
                out.append(Encoded(kept, self.options[example.label], example.label))
        else:
            eos = [] if self.eos_id is None else [int(self.eos_id)]
            texts = [e.reference for e in examples]
            bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
            for body, context in zip(bodies, contexts, strict=True):
                target = [*body, *eos]
                if len(target) > self.max_length - 1:
                    target, ends = target[: self.max_length - 1], ends + 1
                kept = _fit(context, self.max_length - len(target), bos)
                cut += len(kept) < len(context)
                out.append(Encoded(kept, target))
        self.truncated[part], self.targets_cut[part] = cut, ends
        return out

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training examples ``indices``, left-padded: ``input_ids``, ``attention_mask``,
        ``position_ids`` and ``labels`` (target ids, -100 on prompt and padding), each
        ``(B, T)`` int64 CPU tensors with ``T <= max_length``."""
        return collate([self._pair(self.train_encoded[i]) for i in indices], self.pad_id)

    @staticmethod
    def _pair(item: Encoded) -> tuple[list[int], list[int]]:
        return item.context, item.target

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood over the batch's target tokens: a scalar with a graph."""
        return -target_logprobs(model, batch).mean()

    def _chunks(self, items: list[Encoded], batch_size: int) -> list[list[int]]:
        """Indices of ``items`` in chunks of ``batch_size``, sorted by length (less padding)."""
        order = sorted(range(len(items)), key=lambda i: len(items[i].context))
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    @torch.no_grad()
    def answer_logprobs(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """Summed log-likelihood of every answer after every held-out prompt.

        One forward per chunk of ``batch_size`` examples, all ``K`` answers of an example in
        the same left-padded batch (``batch_size * K`` sequences).

        Returns:
            ``(N, K)`` float32 on the CPU: entry ``[i, k]`` is ``log p(answer k | prompt i)``.
        """
        if self.options is None:
            raise FinetuneError("answer scores need a classification task (a --verbalizer)")
        device, k = model_device(model), len(self.options)
        scores = torch.zeros(len(self.test_encoded), k)
        for chunk in self._chunks(self.test_encoded, batch_size):
            pairs = [(self.test_encoded[i].context, o) for i in chunk for o in self.options]
            batch = {key: v.to(device) for key, v in collate(pairs, self.pad_id).items()}
            scores[chunk] = sequence_logprobs(model, batch).view(len(chunk), k).cpu()
        return scores

    def option_scores(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """:meth:`answer_logprobs`, divided by each answer's token count when
        ``length_normalise``: ``(N, K)``; the prediction is the row's argmax."""
        scores = self.answer_logprobs(model, batch_size)
        if self.length_normalise and self.options is not None:
            scores = scores / torch.tensor([float(len(o)) for o in self.options])
        return scores

    @torch.no_grad()
    def _target_loss(self, model: nn.Module, batch_size: int) -> tuple[float, int]:
        """Summed NLL and token count of the held-out targets."""
        device, total, tokens = model_device(model), 0.0, 0
        for chunk in self._chunks(self.test_encoded, batch_size):
            pairs = [self._pair(self.test_encoded[i]) for i in chunk]
            batch = {key: v.to(device) for key, v in collate(pairs, self.pad_id).items()}
            total -= float(target_logprobs(model, batch).sum())
            tokens += sum(len(t) for _, t in pairs)
        return total, tokens

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Held-out metrics (the loop calls it under ``no_grad`` with the model in eval mode).

        Returns:
            ``loss`` (mean NLL per target token) and ``perplexity`` (its exp), ``tokens`` and
            ``examples`` scored, ``truncated`` (held-out prompts cut), ``samples`` (a list of
            ``{"prompt", "reference", "generated"}`` dicts, greedy), and for classification
            ``accuracy`` and ``macro_f1`` of the most likely answer; the loss is then the gold
            answer's.
        """
        check_int("batch_size", batch_size)
        out: dict[str, Any] = {}
        if self.options is not None:
            raw = self.answer_logprobs(model, batch_size)
            gold = [item.label for item in self.test_encoded if item.label is not None]
            lengths = torch.tensor([float(len(o)) for o in self.options])
            scores = raw / lengths if self.length_normalise else raw
            predicted = scores.argmax(dim=1).tolist()
            out.update(metrics(predicted, gold, len(self.options)))
            total = -float(sum(raw[i, y] for i, y in enumerate(gold)))
            tokens = sum(len(self.options[y]) for y in gold)
        else:
            total, tokens = self._target_loss(model, batch_size)
        loss = total / max(1, tokens)
        out.update(
            loss=loss,
            perplexity=math.exp(loss) if loss < 700 else math.inf,
            tokens=tokens,
            examples=len(self.test_encoded),
            truncated=self.truncated["test"],
            samples=self.samples(model),
        )
        return out

    def samples(self, model: nn.Module) -> list[dict[str, str]]:
        """Greedy generations for the first ``num_samples`` held-out examples.

        A plain text is cut in two: its first half is the prompt, the rest the reference.
        """
        decode = self.tokenizer.decode
        contexts, references = [], []
        n = min(self.num_samples, len(self.test_encoded))
        for example, item in zip(self.test_examples[:n], self.test_encoded[:n], strict=True):
            if self.options is None and not example.prompt:
                body = [t for t in item.target if t != self.eos_id]
                half = len(body) // 2
                contexts.append(item.context + body[:half])
                references.append(decode(body[half:], skip_special_tokens=True))
            else:
                contexts.append(item.context)
                references.append(example.reference)
        if not contexts:
            return []
        new = generate_ids(
            model,
            contexts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=self.sample_tokens,
            batch_size=len(contexts),
        )
        return [
            {
                "prompt": decode(c, skip_special_tokens=True),
                "reference": r,
                "generated": decode(g, skip_special_tokens=True),
            }
            for c, r, g in zip(contexts, references, new, strict=True)
        ]


def _answers(verbalizer: str | Mapping[str, str], labels: Sequence[str]) -> dict[str, str]:
    """The verbalizer as ``{label: answer}``, naming exactly the labels of the data."""
    answers = parse_verbalizer(verbalizer) if isinstance(verbalizer, str) else dict(verbalizer)
    shown = verbalizer if isinstance(verbalizer, str) else answers
    missing = [name for name in labels if name not in answers]
    if missing:
        raise DataError(
            f"--verbalizer {shown!r} has no answer for label {missing[0]!r} of the data "
            f"(its labels: {', '.join(labels)})"
        )
    extra = [name for name in answers if name not in labels]
    if extra:
        raise DataError(
            f"--verbalizer {shown!r} names label {extra[0]!r}, which is not in the data "
            f"(its labels: {', '.join(labels)})"
        )
    return answers


def classification_task(
    tokenizer: Any,
    split: Split,
    *,
    template: str,
    verbalizer: str | Mapping[str, str],
    max_length: int = 64,
    length_normalise: bool = False,
    num_samples: int = 3,
    sample_tokens: int = 4,
) -> LMTask:
    """Classification as text: ``template`` around each text, a verbalizer answer per label.

    Args:
        tokenizer: The model's tokenizer.
        split: Texts and label ids (:func:`~tensortrain_nn.finetune.data.make_split`).
        template: Prompt text with a ``{text}`` placeholder (replaced literally; other braces
            stay), e.g. :data:`BUILTIN_TEMPLATE`.
        verbalizer: ``label=answer`` pairs (:func:`parse_verbalizer`) or a ``{label: answer}``
            mapping naming every label of ``split`` and no other.
        max_length: Most tokens per prompt + answer.
        length_normalise: Predict by mean instead of summed answer log-likelihood.
        num_samples: Generated samples in the evaluation.
        sample_tokens: Tokens generated per sample.

    Raises:
        DataError: A template without ``{text}``; a malformed verbalizer, or one that misses a
            label of the data or names one that is not there; answers that tokenize to nothing
            or to the same tokens.
    """
    if "{text}" not in template:
        raise DataError(f"--template {template!r} has no {{text}} placeholder for the text")
    answers = _answers(verbalizer, split.labels)

    def examples(texts: list[str], labels: list[int]) -> list[LMExample]:
        return [
            LMExample(template.replace("{text}", text), answers[split.labels[y]], y)
            for text, y in zip(texts, labels, strict=True)
        ]

    return LMTask(
        tokenizer,
        examples(split.train_texts, split.train_labels),
        examples(split.test_texts, split.test_labels),
        max_length=max_length,
        answers=[answers[name] for name in split.labels],
        label_names=split.labels,
        length_normalise=length_normalise,
        num_samples=num_samples,
        sample_tokens=sample_tokens,
    )
