"""What the loop trains on: a task batches examples, computes the loss and evaluates.

The loop (:mod:`~tensortrain_nn.finetune.train`) is the same for every task; a task is any object
with the :class:`Task` protocol. :class:`ClassifyTask` puts a head on the pooled output (encoder
models, or decoder LMs through their ``score`` head); the causal-LM task lives in
:mod:`~tensortrain_nn.finetune.lm`.

Example:
    >>> metrics([0, 1, 1], [0, 1, 0], num_labels=2)
    {'accuracy': 0.666..., 'macro_f1': 0.666...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from tensortrain_nn.finetune.data import Split
from tensortrain_nn.finetune.errors import FinetuneError


class Task(Protocol):
    """What the training loop needs from a task.

    Attributes:
        name: ``classify`` or ``lm``.
        num_train: Number of training examples (indices ``0 .. num_train - 1``).
    """

    name: str
    num_train: int

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training examples ``indices`` as model inputs (CPU tensors)."""
        ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of ``batch`` (on the model's device): a scalar with a graph."""
        ...

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Held-out metrics (called under ``no_grad`` on one process, model in eval mode)."""
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


class ClassifyTask:
    """Sequence classification: cross-entropy on the head's logits, accuracy and macro-F1.

    Args:
        tokenizer: The model's tokenizer.
        split: Texts and label ids.
        max_length: Tokens per text (longer texts are truncated).
    """

    name = "classify"

    def __init__(self, tokenizer: Any, split: Split, max_length: int) -> None:
        self.tokenizer, self.split, self.max_length = tokenizer, split, max_length
        self.num_train = len(split.train_texts)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize texts, padded to the longest and truncated to ``max_length``."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(batch)

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = self.encode([self.split.train_texts[i] for i in indices])
        batch["labels"] = torch.tensor([self.split.train_labels[i] for i in indices])
        return batch

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return nn.functional.cross_entropy(model(**inputs).logits.float(), batch["labels"])

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> list[int]:
        """Predicted label ids of ``texts`` (the model is put in eval mode)."""
        model.eval()
        device = next(model.parameters()).device
        out: list[int] = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode(texts[start : start + batch_size])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out.extend(logits.argmax(dim=-1).tolist())
        return out

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        ids = self.predict(model, self.split.test_texts, batch_size)
        return {
            **metrics(ids, self.split.test_labels, len(self.split.labels)),
            "examples": len(ids),
        }
