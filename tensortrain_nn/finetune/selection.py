"""Choosing on the validation split: which metric, which epoch (early stopping), which run.

A run with ``val_size`` evaluates on its validation part after every epoch; ``val_metric``
names the number that decides (:func:`metric_key`), :class:`EarlyStop` keeps the best epoch's
trainable tensors and stops after ``patience`` evaluations without a better one, and
:func:`best` picks among grid points (:mod:`~tensortrain_nn.finetune.tune`). Nothing here reads
the test split.

Example:
    >>> metric_key("auto", {"accuracy": 0.8, "eval_loss": 0.4})
    'accuracy'
    >>> metric_key("loss", {"accuracy": 0.8, "eval_loss": 0.4})
    'eval_loss'
    >>> best([{"eval_loss": 0.5}, {"eval_loss": 0.3}, {"eval_loss": 0.3}], "eval_loss")
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tensortrain_nn.tasks import FinetuneError

#: What ``val_metric`` may name; ``auto`` is the first of accuracy, exact match, contains and
#: loss that the evaluation reports.
VAL_METRICS = ("auto", "accuracy", "macro_f1", "loss", "exact_match", "contains")
_AUTO_ORDER = ("accuracy", "exact_match", "contains", "eval_loss")


def metric_key(name: str, row: dict[str, Any]) -> str:
    """The key of ``row`` (a history row or evaluation) that ``val_metric=name`` reads.

    Raises:
        FinetuneError: ``name`` is not in :data:`VAL_METRICS`, or the evaluation has no such
            number (macro-F1 of a run without labels, say).
    """
    if name not in VAL_METRICS:
        raise FinetuneError(f"val_metric must be one of {', '.join(VAL_METRICS)}, got {name!r}")
    if name == "auto":
        for key in _AUTO_ORDER:
            if _finite(row.get(key)):
                return key
        raise FinetuneError(f"val_metric auto: the evaluation has none of {', '.join(_AUTO_ORDER)}")
    key = "eval_loss" if name == "loss" else name
    if not _finite(row.get(key)):
        have = ", ".join(k for k in (*_AUTO_ORDER, "macro_f1") if _finite(row.get(k)))
        raise FinetuneError(
            f"val_metric {name}: the validation evaluation has no {key} (it has: {have or 'none'})"
        )
    return key


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def is_better(new: float, old: float, key: str) -> bool:
    """Whether ``new`` beats ``old`` (lower loss, higher anything else; ties do not)."""
    return new < old if key == "eval_loss" else new > old


def best(rows: Sequence[dict[str, Any]], key: str) -> int:
    """Index of the best row by ``key`` (the first of equals: grid order breaks ties)."""
    if not rows:
        raise FinetuneError("nothing to pick from: no validation results")
    chosen = 0
    for i, row in enumerate(rows[1:], start=1):
        if is_better(row[key], rows[chosen][key], key):
            chosen = i
    return chosen


class EarlyStop:
    """Stop after ``patience`` evaluations without a better validation metric; keep the best.

    With ``patience == 0`` it only follows the best epoch and never stops or restores.

    Args:
        patience: Evaluations (epochs) without improvement before stopping; 0: off.
        metric: ``val_metric`` (see :func:`metric_key`).
    """

    def __init__(self, patience: int, metric: str) -> None:
        self.patience, self.metric = patience, metric
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self._best: float | None = None
        self._since = 0
        self._state: dict[str, torch.Tensor] = {}

    def update(self, record: dict[str, Any], model: nn.Module) -> bool:
        """Take one epoch's history row; True when training should stop now."""
        if self.patience == 0:
            return False
        key = metric_key(self.metric, record)
        value = float(record[key])
        if self._best is None or is_better(value, self._best, key):
            self._best, self.best_epoch, self._since = value, int(record["epoch"]), 0
            self._state = {
                n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
            }
            return False
        self._since += 1
        if self._since >= self.patience:
            self.stopped_epoch = int(record["epoch"])
            return True
        return False

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Put the best epoch's trainable tensors back (no-op when off or never evaluated)."""
        params = dict(model.named_parameters())
        for name, value in self._state.items():
            params[name].copy_(value)
