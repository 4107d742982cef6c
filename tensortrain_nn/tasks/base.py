"""What every task shares: the :class:`Task` protocol, its options, and the choice of task kind.

A task is what an example is, how it is batched, scored and generated; the job's loop trains any
object with the :class:`Task` protocol. :func:`decide_kind` is the one place that decides which
task a job runs, from the options and the model's kind.

Example:
    >>> decide_kind(TaskOptions(), decoder_only=True, model="smollm2")
    TaskKind(name='lm', labelled=True)
    >>> metrics([0, 1, 1], [0, 1, 0], num_labels=2)
    {'accuracy': 0.666..., 'macro_f1': 0.666...}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from tensortrain_nn.tasks.errors import FinetuneError

#: Name of the built-in data set (``data=None`` or ``data="rotten_tomatoes"``).
BUILTIN = "rotten_tomatoes"
#: Options that only the lm task reads (given with ``classify`` they are refused).
LM_ONLY = (
    "template",
    "verbalizer",
    "prompt_column",
    "completion_column",
    "messages_column",
    "metric",
)


@dataclass(frozen=True)
class TaskOptions:
    """What a task reads from the job: data, columns, split, lengths, the lm prompt form.

    Attributes:
        task: ``classify``, ``lm`` or ``auto`` (lm for decoder-only models).
        data: CSV / JSONL file, or None (or :data:`BUILTIN`) for the built-in data set.
        test_data: An explicit held-out file, else ``test_size`` of ``data`` is held out.
        text_column: Text column (lm without prompts: the text trained on).
        label_column: Label column.
        test_size: Held-out count (int) or fraction (float); None: 800 built-in, else 0.2.
        val_size: Validation examples carved from the training part (count or fraction), or
            None for no validation split; a task built with one evaluates on it.
        split_seed: Seed of the shuffle before the split.
        max_train: Keep the first N training examples (after the shuffle).
        max_test: Keep the first N held-out examples.
        max_length: Tokens per example.
        template: lm: prompt around each text, with ``{text}``.
        verbalizer: lm: ``label=answer`` pairs.
        prompt_column: lm: prompt column (with ``completion_column``).
        completion_column: lm: completion column.
        length_normalise: lm: score answers by mean token log-likelihood.
        split: The split of a ``DatasetDict`` given as ``data``.
        messages_column: lm: the chat column (None: detected when the text column is absent).
        chat_loss: lm chat data: ``assistant`` (loss on assistant turns) or ``all``.
        metric: lm: ``accuracy`` (option scoring), ``exact_match`` or ``contains`` (generated
            answers); None: accuracy for labelled data, loss and perplexity otherwise.
    """

    task: str = "auto"
    data: str | None = None
    test_data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_size: int | float | None = None
    val_size: int | float | None = None
    split_seed: int = 0
    max_train: int | None = None
    max_test: int | None = None
    max_length: int = 64
    template: str | None = None
    verbalizer: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    length_normalise: bool = False
    split: str | None = None
    messages_column: str | None = None
    chat_loss: str = "assistant"
    metric: str | None = None

    @property
    def builtin(self) -> bool:
        """Whether the data is the built-in set."""
        return self.data in (None, BUILTIN)


@dataclass(frozen=True)
class TaskKind:
    """Which task a job runs.

    Attributes:
        name: ``classify`` (a head on the pooled output) or ``lm`` (causal-LM loss); what a run
            folder records and what the model is loaded as.
        labelled: Examples carry labels (always for classify; for lm, classification as text
            through a verbalizer) rather than completions or plain text.
    """

    name: str
    labelled: bool


def decide_kind(options: TaskOptions, *, decoder_only: bool, model: str) -> TaskKind:
    """The task of a job: ``options.task`` with ``auto`` resolved, and its data form.

    Args:
        options: The job's task options.
        decoder_only: Whether the model is a decoder-only LM.
        model: The model's name, for messages.

    Returns:
        ``classify`` (labelled), ``lm`` labelled (built-in data, or ``template`` and
        ``verbalizer``), or ``lm`` on completions or plain text.

    Raises:
        FinetuneError: ``lm`` on an encoder, an lm option (``--length-normalise`` included)
            with ``classify``, or an lm option that would have no effect (see
            :func:`_lm_labelled`).

    Example:
        >>> decide_kind(TaskOptions(data="a.csv"), decoder_only=False, model="minilm")
        TaskKind(name='classify', labelled=True)
    """
    name = options.task
    if name not in ("auto", "classify", "lm"):
        raise FinetuneError(f"task must be auto, classify or lm, got {name!r}")
    if name == "auto":
        name = "lm" if decoder_only else "classify"
    if name == "lm" and not decoder_only:
        raise FinetuneError(f"--task lm needs a decoder-only LM; --model {model} is not one")
    given = [_flag(f) for f in LM_ONLY if getattr(options, f) is not None]
    if options.length_normalise:
        given.append("--length-normalise")
    if options.chat_loss != "assistant":
        given.append("--chat-loss")
    if name == "classify":
        if given:
            raise FinetuneError(
                f"{given[0]} needs --task lm (the model is trained as a classifier)"
            )
        return TaskKind("classify", labelled=True)
    return TaskKind("lm", labelled=_lm_labelled(options))


def _flag(field: str) -> str:
    """The command-line flag of a task option (``prompt_column`` -> ``--prompt-column``)."""
    return "--" + field.replace("_", "-")


def _lm_labelled(options: TaskOptions) -> bool:
    """Whether an lm job classifies as text; refuses lm options that would have no effect.

    Raises:
        FinetuneError: An empty ``--template`` / ``--verbalizer``; one without the other on a
            data file; prompt/completion columns with labelled data; ``--length-normalise``
            without verbalizer answers to score.
    """
    wanted = {"template": "a prompt with {text}", "verbalizer": "label=answer pairs"}
    for field, what in wanted.items():
        if getattr(options, field) == "":
            raise FinetuneError(f"{_flag(field)} is empty (''): give {what}")
    prompt = None if is_chat_template(options.template) else options.template
    as_text = prompt is not None or options.verbalizer is not None
    if as_text and not options.builtin and (prompt is None or options.verbalizer is None):
        raise FinetuneError("classification as text needs both --template and --verbalizer")
    labelled = options.builtin or as_text
    columns = [c for c in ("prompt_column", "completion_column") if getattr(options, c)]
    if labelled and columns:
        reason = "--template and --verbalizer" if as_text else "the built-in data"
        raise FinetuneError(
            f"{_flag(columns[0])} {getattr(options, columns[0])!r} has no effect with {reason} "
            "(classification as text); give either the columns or the template and verbalizer"
        )
    if options.length_normalise and not labelled:
        form = "prompt/completion" if columns else "plain-text"
        raise FinetuneError(
            f"--length-normalise has no effect on {form} data: it scores --verbalizer answers"
        )
    return labelled


def is_chat_template(template: str | None) -> bool:
    """Whether a ``--template`` is a chat template (Jinja syntax, or a ``.jinja`` file) rather
    than a prompt with ``{text}``.

    Example:
        >>> is_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
        True
    """
    return template is not None and (
        "{%" in template or "{{" in template or template.endswith(".jinja")
    )


class Task(Protocol):
    """What the training loop, ``predict`` and ``evaluate`` need from a task.

    Attributes:
        name: ``classify`` or ``lm``.
        num_train: Number of training examples (indices ``0 .. num_train - 1``).
    """

    name: str
    num_train: int

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training examples ``indices`` as model inputs (CPU tensors)."""
        ...

    def weight(self, indices: Sequence[int]) -> int:
        """How many terms :meth:`loss` averages over for the training examples ``indices``
        (examples, or target tokens): the loop weights micro-batches and processes by it."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of ``batch`` (on the model's device): a scalar with a graph."""
        ...

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Held-out metrics (called under ``no_grad`` on one process, model in eval mode)."""
        ...

    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> list[int]:
        """Label ids of ``texts`` (a labelled task; the model is put in eval mode)."""
        ...


def metrics(predicted: Sequence[int], expected: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (classes absent from both lists are left out of the mean)."""
    pairs = list(zip(predicted, expected, strict=True))
    accuracy = sum(p == e for p, e in pairs) / max(1, len(pairs))
    scores = []
    for label in range(num_labels):
        tp = sum(p == label and e == label for p, e in pairs)
        fp = sum(p == label and e != label for p, e in pairs)
        fn = sum(p != label and e == label for p, e in pairs)
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(scores) / max(1, len(scores))}


def check_max_length(max_length: int, model: nn.Module, tokenizer: Any) -> None:
    """``max_length`` must leave room for text after the special tokens and fit the positions.

    Raises:
        FinetuneError: Too small (the tokenizer would not cut at all) or above the model's
            position limit.
    """
    special = tokenizer.num_special_tokens_to_add(pair=False)
    if max_length <= special:
        raise FinetuneError(
            f"--max-length {max_length} leaves no room for text: the tokenizer adds {special} "
            f"special tokens (give at least {special + 1})"
        )
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise FinetuneError(f"--max-length {max_length} exceeds the model's {limit} positions")
