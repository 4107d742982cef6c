"""Open answers scored by generation: ``exact_match`` and ``contains``, and how answers compare.

``--metric`` picks how an lm task is scored: ``accuracy`` is option scoring (a verbalizer's
answers ranked by likelihood, :mod:`~tensortrain_nn.tasks.scoring`); ``exact_match`` and
``contains`` generate an answer greedily for every held-out prompt and compare it with the
reference after :func:`normalise_answer`:

1. Unicode NFKC, then ``casefold`` (``"Ünïcode"`` and ``"ünïcode"`` match);
2. surrounding whitespace stripped and every run of whitespace made one space;
3. trailing punctuation and quotes stripped (``.``, ``!``, ``?``, ``,``, ``;``, ``:``, quotes),
   and leading quotes.

``exact_match``: the normalised answer equals the normalised reference. ``contains``: the
normalised reference occurs in the normalised answer as whole words (``"democrat"`` is not in
``"democratic"``). The score is the share of held-out examples that match.

Example:
    >>> normalise_answer("  The  Democrat.\\n")
    'the democrat'
    >>> answer_matches("Democrat!", "democrat", "exact_match")
    True
    >>> answer_matches("I think a Democrat said it", "Democrat", "contains")
    True
    >>> answer_matches("Democratic", "Democrat", "contains")
    False
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from torch import nn

from tensortrain_nn.tasks.base import TaskOptions
from tensortrain_nn.tasks.errors import FinetuneError
from tensortrain_nn.tasks.generation import generate_ids

__all__ = ["GENERATED", "METRICS", "AnswerScored", "answer_matches", "normalise_answer"]

#: Every ``--metric``; the generated ones score greedy answers.
METRICS = ("accuracy", "exact_match", "contains")
GENERATED = ("exact_match", "contains")
_TRAILING = re.compile(r"[\s.!?,;:\"'`\u2019\u201d]+$")
_LEADING = re.compile(r"^[\"'`\u2018\u201c]+")


def normalise_answer(text: str) -> str:
    """``text`` as answers are compared: NFKC, casefolded, whitespace collapsed, trailing
    punctuation and surrounding quotes dropped."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return _LEADING.sub("", _TRAILING.sub("", text))


def answer_matches(generated: str, reference: str, metric: str) -> bool:
    """Whether a generated answer matches its reference under ``metric`` (see the module)."""
    answer, gold = normalise_answer(generated), normalise_answer(reference)
    if metric == "exact_match":
        return answer == gold
    if metric == "contains":
        return bool(gold) and re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", answer) is not None
    raise FinetuneError(f"--metric must be one of {', '.join(GENERATED)} here, got {metric!r}")


def check_metric(metric: str | None, *, labelled: bool) -> None:
    """A ``--metric`` the task can compute.

    Raises:
        FinetuneError: An unknown metric, or ``accuracy`` on data without answer options.
    """
    if metric is not None and metric not in METRICS:
        raise FinetuneError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "accuracy" and not labelled:
        raise FinetuneError(
            "--metric accuracy ranks answer options: it needs labelled data (--template and "
            "--verbalizer); for open answers give --metric exact_match or contains"
        )


def check_task_options(options: TaskOptions) -> None:
    """The chat and metric options of a job, checked before anything is read.

    Raises:
        FinetuneError: An unknown ``--metric`` or ``--chat-loss``.
    """
    if options.metric is not None and options.metric not in METRICS:
        raise FinetuneError(f"--metric must be one of {', '.join(METRICS)}, got {options.metric!r}")
    if options.chat_loss not in ("assistant", "all"):
        raise FinetuneError(f"--chat-loss must be assistant or all, got {options.chat_loss!r}")


class AnswerScored:
    """A task whose evaluation also generates every held-out answer and scores it.

    Everything but :meth:`evaluate` is the wrapped task's. The held-out prompts and references
    are the task's ``answer_contexts`` / ``answer_references`` when it has them (chat), else
    its encoded prompts and its examples' references (the lm task).

    Args:
        task: The task (lm or chat).
        metric: ``exact_match`` or ``contains``.
        num_samples: Generated answers the evaluation reports next to their references.
        max_new_tokens: Most tokens per answer (None: the longest reference's tokens + 8).
    """

    def __init__(
        self, task: Any, metric: str, *, num_samples: int = 5, max_new_tokens: int | None = None
    ) -> None:
        check_metric(metric, labelled=False)
        self.task, self.metric, self.num_samples = task, metric, num_samples
        task.num_samples = 0  # the answers below are the samples
        if hasattr(task, "answer_contexts"):
            self.contexts, self.references = task.answer_contexts, task.answer_references
        else:
            self.contexts = [item.context for item in task.test_encoded]
            self.references = [example.reference for example in task.test_examples]
        longest = max((len(task.tokenizer(r)["input_ids"]) for r in self.references), default=1)
        self.max_new_tokens = max_new_tokens or longest + 8

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """The task's metrics, the metric's share of matching answers, and ``samples``: the
        first ``num_samples`` answers with their references and whether each matched."""
        out = dict(self.task.evaluate(model, batch_size))
        answers = self.answers(model, batch_size)
        hits = [
            answer_matches(a, r, self.metric) for a, r in zip(answers, self.references, strict=True)
        ]
        out[self.metric] = sum(hits) / max(1, len(hits))
        decode = self.task.tokenizer.decode
        out["samples"] = [
            {
                "prompt": decode(c, skip_special_tokens=False),
                "reference": r,
                "generated": a,
                "match": "yes" if hit else "no",
            }
            for c, r, a, hit in zip(self.contexts, self.references, answers, hits, strict=True)
        ][: self.num_samples]
        return out

    def answers(self, model: nn.Module, batch_size: int) -> list[str]:
        """Greedy answers to every held-out prompt (special tokens dropped)."""
        task = self.task
        new = generate_ids(
            model,
            self.contexts,
            pad_id=task.pad_id,
            eos_id=task.eos_id,
            max_new_tokens=self.max_new_tokens,
            batch_size=batch_size,
        )
        return [task.tokenizer.decode(ids, skip_special_tokens=True) for ids in new]


def scored(task: Any, metric: str | None, *, labelled: bool) -> Any:
    """``task``, wrapped in :class:`AnswerScored` when ``metric`` is a generated one."""
    check_metric(metric, labelled=labelled)
    return AnswerScored(task, metric) if metric in GENERATED else task
