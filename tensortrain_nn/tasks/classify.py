"""Sequence classification: a head on the pooled output (encoders, or decoder LMs' ``score``).

Example (a real model, not run here)::

    task = ClassifyTask(tokenizer, split, max_length=64)
    loss = task.loss(model, task.train_batch([0, 1, 2, 3]))
    task.evaluate(model.eval(), batch_size=64)["accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tensortrain_nn.tasks.base import metrics
from tensortrain_nn.tasks.data import Split


class ClassifyTask:
    """Cross-entropy on the head's logits; accuracy and macro-F1 of the argmax.

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
        """Tokenized texts, ``(B, T)`` each, padded to the longest, ``T <= max_length``."""
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return dict(batch)

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training examples ``indices``: encoded texts and ``labels`` ``(B,)``."""
        batch = self.encode([self.split.train_texts[i] for i in indices])
        batch["labels"] = torch.tensor([self.split.train_labels[i] for i in indices])
        return batch

    def weight(self, indices: Sequence[int]) -> int:
        """Examples ``indices`` count one each: :meth:`loss` is a mean over examples."""
        return len(indices)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of the batch's logits ``(B, num_labels)``: a scalar with a graph."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return nn.functional.cross_entropy(model(**inputs).logits.float(), batch["labels"])

    @torch.no_grad()
    def logits(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> torch.Tensor:
        """The head's float32 logits of ``texts``: ``(N, num_labels)`` on the CPU (eval mode)."""
        model.eval()
        device = next(model.parameters()).device
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode(texts[start : start + batch_size])
            out.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.split.labels))

    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> list[int]:
        """Predicted label ids of ``texts`` (the model is put in eval mode)."""
        return self.logits(model, texts, batch_size).argmax(dim=-1).tolist()

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Accuracy and macro-F1 on the held-out texts, their mean cross-entropy ``loss``, and
        ``examples``."""
        logits = self.logits(model, self.split.test_texts, batch_size)
        gold = torch.tensor(self.split.test_labels, dtype=torch.long)
        ids = logits.argmax(dim=-1).tolist()
        loss = nn.functional.cross_entropy(logits, gold).item() if len(ids) else float("nan")
        return {
            **metrics(ids, self.split.test_labels, len(self.split.labels)),
            "loss": loss,
            "examples": len(ids),
        }
