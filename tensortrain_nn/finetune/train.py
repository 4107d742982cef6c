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
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tensortrain_nn.finetune.checkpoint import Position, resume, write_checkpoint
from tensortrain_nn.finetune.config import FinetuneConfig
from tensortrain_nn.finetune.distributed import (
    SINGLE,
    DistInfo,
    all_sum,
    barrier,
    broadcast,
    frozen_inactive_adapters,
    shard,
    trainable_bytes,
    unused_parameters,
    wrap,
)
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
    info: DistInfo = SINGLE,
    checkpoints: Path | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``(texts, labels)``, data-parallel when ``info`` says so.

    Each step takes ``config.batch_size`` examples (the global batch) from the epoch's
    permutation; with several processes each rank trains on its shard of them (see
    :func:`~tensortrain_nn.finetune.distributed.shard`) under DDP. Trainable parameters of
    inactive tensortrain adapters are frozen for the duration (they take no part in forward).

    Args:
        model: A model whose trainable parameters have ``requires_grad``; on its device already.
        tokenizer: Its tokenizer.
        texts: Training texts.
        labels: Their label ids.
        config: Epochs, batch size, learning rate, schedule, clipping, seed, progress bar,
            ``checkpoint_every`` and ``resume``.
        evaluate: Called after each epoch (after the last only, unless ``eval_every_epoch``) on
            rank 0 only; returns metrics such as accuracy (broadcast to the other ranks).
        info: This process's place in a distributed job (default: alone).
        checkpoints: Folder of the run's checkpoints; needed for ``checkpoint_every`` / ``resume``.
        on_step: Called after every optimizer step with the global step and the (unwrapped) model.

    Returns:
        ``{"history": [...], "steps": n, "train_seconds": s, "seconds_per_step": s,
        "allreduce_bytes": b, "resumed_from": step or None}``.
    """
    with frozen_inactive_adapters(model):
        return _train(model, tokenizer, texts, labels, config, evaluate, info, checkpoints, on_step)


def _train(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    labels: Sequence[int],
    config: FinetuneConfig,
    evaluate: Callable[[], dict[str, float]],
    info: DistInfo,
    folder: Path | None,
    on_step: Callable[[int, nn.Module], None] | None,
) -> dict[str, Any]:
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
    pos = Position()
    if config.resume and folder is not None:
        pos = resume(folder, config, model, optimizer, scheduler, generator, info)
    elif info.rank > 0:
        torch.manual_seed(config.seed + info.rank)  # own dropout masks per rank
    resumed_from = pos.global_step if pos.global_step else None

    def batch_of(global_idx: Sequence[int]) -> tuple[Any, torch.Tensor, list[int], float]:
        idx, weight = shard(global_idx, info)
        batch = encode(tokenizer, [texts[i] for i in idx], config.max_length, device)
        return batch, torch.tensor([labels[i] for i in idx], device=device), idx, weight

    find_unused = False
    if info.enabled and pos.global_step < total:
        probe, target, _, _ = batch_of(list(range(min(len(texts), config.batch_size))))
        model.train()
        unused = unused_parameters(
            model, lambda m: nn.functional.cross_entropy(m(**probe).logits.float(), target)
        )
        if unused:
            warnings.warn(
                f"{len(unused)} trainable parameters get no gradient ({', '.join(unused[:3])}); "
                "DDP runs with find_unused_parameters=True",
                RuntimeWarning,
                stacklevel=3,
            )
            find_unused = True
    runner = wrap(model, info, find_unused=find_unused)
    sync_bytes = trainable_bytes(model) if info.enabled else 0
    every = config.checkpoint_every
    for epoch in range(pos.epoch, config.epochs + 1):
        model.train()
        if pos.order is None:
            pos.order = torch.randperm(len(texts), generator=generator).tolist()
        bar = tqdm(
            total=steps_per_epoch,
            initial=pos.step,
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not (config.progress and info.is_main),
            dynamic_ncols=True,
        )
        start = epoch_start = time.perf_counter()
        for step in range(pos.step, steps_per_epoch):
            global_idx = pos.order[step * config.batch_size : (step + 1) * config.batch_size]
            batch, target, idx, weight = batch_of(global_idx)
            loss = nn.functional.cross_entropy(runner(**batch).logits.float(), target)
            (loss * weight if info.enabled else loss).backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if weight > 0:
                pos.loss_sum += loss.item() * len(idx)
                pos.seen += len(idx)
            pos.step, pos.global_step = step + 1, pos.global_step + 1
            if (
                folder is not None
                and every
                and (pos.global_step % every == 0 or pos.global_step == total)
            ):
                tick = time.perf_counter()
                pos.train_seconds += tick - start
                write_checkpoint(folder, config, model, optimizer, scheduler, generator, pos, info)
                start = time.perf_counter()
            if on_step is not None:
                on_step(pos.global_step, model)
            rate = pos.seen / max(1e-9, time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{pos.loss_sum / max(1, pos.seen):.4f}", ex_s=f"{rate:.1f}")
            bar.update()
        bar.close()
        pos.train_seconds += time.perf_counter() - start
        seen = all_sum(float(pos.seen), info)
        mean_loss = all_sum(pos.loss_sum, info) / max(1.0, seen)
        record: dict[str, Any] = {"epoch": epoch, "loss": mean_loss}
        if config.eval_every_epoch or epoch == config.epochs:
            scores = evaluate() if info.is_main else None
            record.update(broadcast(scores, info))
            if config.progress and info.is_main:
                shown = ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch")
                tqdm.write(f"epoch {epoch}: {shown}")
        pos.history.append(record)
        pos.next_epoch()
    barrier(info)
    return {
        "history": pos.history,
        "steps": total,
        "train_seconds": pos.train_seconds,
        "seconds_per_step": pos.train_seconds / max(1, total),
        "allreduce_bytes": sync_bytes,
        "resumed_from": resumed_from,
    }
