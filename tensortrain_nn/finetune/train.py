"""The training loop: AdamW, linear warm-up and decay, clipping, seeding, evaluation, metrics.

Example:
    >>> seed_everything(0)
    >>> stats = train(model, tokenizer, texts, labels, config, evaluate_fn=None)
"""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.finetune.models import is_tt_core


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; any other name as ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def encode(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> Any:
    """Tokenize a batch of texts, padded to its longest text and truncated to ``max_length``."""
    batch = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {key: value.to(device) for key, value in batch.items()}


def parameter_groups(model: nn.Module, weight_decay: float, tt_weight_decay: float) -> list[dict]:
    """AdamW groups: TT cores at ``tt_weight_decay``, biases and norms at 0, other weights decayed.

    A TT core is any parameter whose name contains ``tt_cores`` or ``.cores.``.
    """
    groups: dict[str, list[nn.Parameter]] = {"tt": [], "none": [], "decay": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if is_tt_core(name):
            groups["tt"].append(param)
        elif param.ndim < 2 or "norm" in name.lower():
            groups["none"].append(param)
        else:
            groups["decay"].append(param)
    decay = {"tt": tt_weight_decay, "none": 0.0, "decay": weight_decay}
    return [{"params": ps, "weight_decay": decay[key]} for key, ps in groups.items() if ps]


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``ceil(warmup_ratio * total)`` steps, then linear to 0."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


@torch.no_grad()
def predict_ids(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], *, max_length: int, batch_size: int
) -> list[int]:
    """Predicted label ids of ``texts`` (the model is put in eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[start : start + batch_size], max_length, device)
        out.extend(model(**batch).logits.argmax(dim=-1).tolist())
    return out


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


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated on ``device``, or the process's peak RSS on CPU, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def train(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    config: FinetuneConfig,
    *,
    evaluate: Callable[[], dict[str, float]],
) -> dict[str, Any]:
    """Train ``model`` in place on ``(texts, labels)``.

    Args:
        model: A model whose trainable parameters have ``requires_grad``; on its device already.
        tokenizer: Its tokenizer.
        texts: Training texts.
        labels: Their label ids.
        config: Epochs, batch size, learning rate, schedule, clipping, seed, progress bar.
        evaluate: Called after each epoch (after the last only, unless ``eval_every_epoch``);
            returns metrics such as accuracy.

    Returns:
        ``{"history": [...], "steps": n, "train_seconds": s, "seconds_per_step": s}``.
    """
    from tqdm.auto import tqdm

    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config.weight_decay, config.tt_weight_decay),
        lr=config.learning_rate,
    )
    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(total, config.warmup_ratio)
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(texts), generator=generator).tolist()
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not config.progress,
            dynamic_ncols=True,
        )
        loss_sum, seen, start = 0.0, 0, time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = encode(tokenizer, [texts[i] for i in idx], config.max_length, device)
            target = torch.tensor([labels[i] for i in idx], device=device)
            loss = nn.functional.cross_entropy(model(**batch).logits.float(), target)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", ex_s=f"{seen / elapsed:.1f}")
            bar.update()
        bar.close()
        train_seconds += time.perf_counter() - start
        record: dict[str, Any] = {"epoch": epoch, "loss": loss_sum / max(1, seen)}
        if config.eval_every_epoch or epoch == config.epochs:
            record.update(evaluate())
            if config.progress:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
                tqdm.write(f"epoch {epoch}: {shown}")
        history.append(record)
    return {
        "history": history,
        "steps": total,
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, total),
    }
