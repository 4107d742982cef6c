"""The training loop, on accelerate: one loop for every task, method and launcher.

``Accelerator`` places the model, wraps it for data parallelism (``torchrun`` or ``accelerate
launch``: DDP over gloo on CPU, nccl on GPUs), runs bf16 autocast, scales the backward pass and
saves/loads the training state. What stays here is this project's: the parameter groups, the
schedule, the global batch and its split across processes, and the checkpoint guarantees
(:mod:`~tensortrain_nn.finetune.checkpoint`).

``config.batch_size`` is the *global* batch of one optimizer step: process ``r`` of ``N`` takes
examples ``r, r + N, ...`` of it and weights its mean loss by its share, so that the averaged
gradient is that of the mean loss over the whole batch; a run on N processes follows the
trajectory of a one-process run (to round-off). ``config.gradient_accumulation = k`` splits each
process's part into k micro-batches (gradients synchronised once per step): the same update with
less memory. Micro-batches and processes are weighted by their loss terms (``Task.weight``:
examples for classification, target tokens for the causal LM), so the update is the gradient of
the mean over the whole batch's terms also when completions differ in length. Only trainable
tensors are synchronised (DDP skips frozen parameters).

Example::

    stats = train(model, ClassifyTask(tokenizer, split, 64), config, evaluate=lambda m: {})
    stats.seconds_per_step, stats.history[-1]
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain_nn.finetune.checkpoint import Checkpoints, config_digest
from tensortrain_nn.finetune.config import FinetuneConfig, history_row
from tensortrain_nn.finetune.engine import forget_prepared, make_accelerator
from tensortrain_nn.finetune.rounding import Rounding, check_world
from tensortrain_nn.finetune.selection import EarlyStop
from tensortrain_nn.tasks import FinetuneError, Task

Evaluate = Callable[[nn.Module], dict[str, Any]]
OnStep = Callable[[int, nn.Module], None]


def is_tt_core(name: str) -> bool:
    """Whether a parameter name is a TT core (``...tt_cores...`` or ``....cores....``)."""
    return "tt_cores" in name or ".cores." in name


def parameter_groups(model: nn.Module, weight_decay: float, tt_weight_decay: float) -> list[dict]:
    """AdamW groups: TT cores at ``tt_weight_decay``, biases and norms at 0, others decayed."""
    groups: dict[str, list[nn.Parameter]] = {"tt": [], "none": [], "decay": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            flat = param.ndim < 2 or "norm" in name.lower()
            groups["tt" if is_tt_core(name) else "none" if flat else "decay"].append(param)
    decay = {"tt": tt_weight_decay, "none": 0.0, "decay": weight_decay}
    return [{"params": ps, "weight_decay": decay[key]} for key, ps in groups.items() if ps]


def linear_schedule(total: int, warmup_ratio: float, decay: bool = True) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``ceil(warmup_ratio * total)`` steps, then linear to 0
    (constant without ``decay``)."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not decay:
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def shard(global_idx: Sequence[int], rank: int, world: int) -> tuple[list[int], float]:
    """This process's part of one global batch, and its share of the batch's examples.

    Process ``rank`` takes ``global_idx[rank::world]``; the share is ``n_r * world / n`` of the
    ``n`` examples (the loop weights by ``Task.weight`` instead, which for example-mean losses
    is this share). A process left without examples reruns the first one at share 0 (every
    process must join every all-reduce).

    Example:
        >>> shard([5, 1, 7, 2, 0], rank=1, world=2)
        ([1, 2], 0.8)
    """
    mine = list(global_idx[rank::world])
    if not mine:
        return list(global_idx[:1]), 0.0
    return mine, len(mine) * world / len(global_idx)


@contextmanager
def frozen_inactive_adapters(model: nn.Module) -> Iterator[None]:
    """Freeze inactive adapters' trainable parameters (with a warning) for the duration.

    They take no part in the forward pass: under DDP they would make the second step fail.
    """
    from tensortrain_nn.surgery import inactive_adapter_parameters

    found = inactive_adapter_parameters(model)
    if found:
        names = [n for n, _ in found]
        warnings.warn(
            f"{len(names)} trainable parameters belong to inactive adapters and take no part in "
            f"the forward pass ({', '.join(names[:3])}); they are frozen while training",
            RuntimeWarning,
            stacklevel=3,
        )
    for _, param in found:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for _, param in found:
            param.requires_grad_(True)


def unused_parameters(model: nn.Module, task: Task, batch_size: int) -> list[str]:
    """Trainable parameters that get no gradient from one probe step (RNG states untouched)."""
    device = next(model.parameters()).device
    batch = task.train_batch(list(range(min(task.num_train, batch_size))))
    with torch.random.fork_rng(devices=[]):
        model.train()
        task.loss(model, {k: v.to(device) for k, v in batch.items()}).backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    model.zero_grad(set_to_none=True)
    return names


@dataclass
class TrainStats:
    """What training measured; :func:`~tensortrain_nn.finetune.job.run` turns it into a Result.

    Attributes:
        history: Per epoch: ``{"epoch", "train_loss", "eval_loss", ...}`` plus the evaluated
            metrics (:func:`~tensortrain_nn.finetune.config.history_row`).
        device: Where the model trained.
        steps: Optimizer steps of the run.
        train_seconds: Wall time of training (evaluation and checkpoints excluded).
        seconds_per_step: ``train_seconds / steps``.
        tokens_per_second: Training tokens (padding excluded) per second.
        allreduce_bytes: Gradient bytes all-reduced per step (0 on one process).
        resumed_from: The checkpoint step the run resumed from, or None.
        world_size: Processes that trained.
        budget: What the budget rounding did (empty without a budget).
        best_epoch: With early stopping: the epoch whose tensors were kept.
        stopped_epoch: With early stopping: the epoch after which it stopped (None: ran all).
    """

    history: list[dict[str, Any]]
    device: torch.device
    steps: int = 0
    train_seconds: float = 0.0
    seconds_per_step: float = 0.0
    tokens_per_second: float = 0.0
    allreduce_bytes: int = 0
    resumed_from: int | None = None
    world_size: int = 1
    budget: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    stopped_epoch: int | None = None


@dataclass
class Position:
    """Where training stands: what a checkpoint records beyond tensors and optimizer."""

    epoch: int = 1
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    seen: float = 0.0
    tokens: float = 0.0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def epoch_order(num_train: int, seed: int, epoch: int) -> list[int]:
    """The permutation of the training examples in ``epoch`` (the same on every process)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_train, generator=generator).tolist()


def _step(
    acc: Any, model: nn.Module, task: Task, idx: Sequence[int], config: FinetuneConfig
) -> Any:
    """Forward and backward of this process's part of one global batch; returns its stats.

    Each micro-batch's mean loss is scaled by its share of the global batch's loss terms
    (``task.weight``: examples, or target tokens), times the process count that DDP's gradient
    average divides by: the summed gradients are those of the mean over every term of the
    global batch, whatever the accumulation and the number of processes.
    """
    mine, share = shard(idx, acc.process_index, acc.num_processes)
    k = config.gradient_accumulation
    parts = [p for p in (mine[j::k] for j in range(k)) if p]
    total = task.weight(idx)
    stats = torch.zeros(3, dtype=torch.float64)
    for j, part in enumerate(parts):
        batch = {key: value.to(acc.device) for key, value in task.train_batch(part).items()}
        terms = task.weight(part) if share > 0 else 0
        with acc.no_sync(model) if j < len(parts) - 1 else nullcontext():
            loss = task.loss(model, batch)
            acc.backward(loss * (terms * acc.num_processes / max(1, total)))
        if terms:
            tokens = batch["attention_mask"].sum().item() if "attention_mask" in batch else 0
            stats += torch.tensor([loss.item() * terms, terms, tokens], dtype=torch.float64)
    return stats


def train(
    model: nn.Module,
    task: Task,
    config: FinetuneConfig,
    *,
    evaluate: Evaluate,
    checkpoints: Path | None = None,
    on_step: OnStep | None = None,
) -> TrainStats:
    """Train ``model`` in place on ``task``, data-parallel when launched so.

    Args:
        model: A model whose trainable parameters have ``requires_grad`` (on the CPU or its
            device; the accelerator places it).
        task: What to train on (:class:`~tensortrain_nn.tasks.Task`).
        config: Epochs, batch size, learning rate, schedule, clipping, seed, bf16, accumulation,
            progress bar, ``checkpoint_every`` and ``resume``.
        evaluate: ``evaluate(model)`` after each epoch (after the last only, unless
            ``eval_every_epoch``), on the main process only; its metrics go to every process.
        checkpoints: Folder of the run's checkpoints; needed for ``checkpoint_every`` / ``resume``.
        on_step: Called after every optimizer step with the global step and the model.

    Returns:
        The run's :class:`TrainStats`.

    With ``config.rank_budget`` (method options ``budget`` and ``budget_at``), the adapter's TT
    layers are rounded to the budget (:func:`tensortrain_nn.budget.fit_budget`) after
    ``floor(budget_at * total_steps)`` optimizer steps (0: before the first), and the optimizer
    and schedule are rebuilt for the new cores at the same point of the schedule; ``budget``
    reports the rounding (empty without a budget).

    Raises:
        FinetuneError: The loss became NaN or infinite, a checkpoint cannot be resumed, or a
            budget under more than one process.
    """
    with frozen_inactive_adapters(model):
        world = int(os.environ.get("WORLD_SIZE", "1"))
        check_world(config.rank_budget, world)
        find_unused = world > 1 and bool(unused_parameters(model, task, config.batch_size))
        if find_unused:
            warnings.warn(
                "some trainable parameters get no gradient; DDP looks for them each step",
                RuntimeWarning,
                stacklevel=2,
            )
        acc = make_accelerator(config, find_unused)
        return _Loop(acc, model, task, config, checkpoints).run(evaluate, on_step)


class _Loop:
    """One training run's state: accelerator, optimizer, schedule, position, checkpoints."""

    def __init__(
        self, acc: Any, model: nn.Module, task: Task, config: FinetuneConfig, folder: Path | None
    ) -> None:
        self.steps_per_epoch = math.ceil(task.num_train / config.batch_size)
        self.total = self.steps_per_epoch * config.epochs
        decay = config.schedule == "linear"
        self.schedule = linear_schedule(self.total, config.warmup_ratio, decay)
        self.acc, self.task, self.config, self.pos = acc, task, config, Position()
        self.rounding = Rounding(config.rank_budget, self.total)
        self.stopper = EarlyStop(config.early_stop, config.val_metric)
        if self.rounding.step == 0:  # before the first step: nothing to rebuild
            self.rounding.fit(model, 0)
        optimizer, scheduler = self._optimizer(model)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.store = (
            None if folder is None else Checkpoints(folder, acc, config_digest(config.to_dict()))
        )
        self.resumed_from: int | None = None
        if self.store is not None and config.resume:
            found = self.store.resume()
            if found is not None:
                names = {f for f in Position.__dataclass_fields__}
                self.pos = Position(**{k: v for k, v in found.items() if k in names})
                self.pos.history = [history_row(row) for row in self.pos.history]
                self.resumed_from = self.pos.global_step
        elif self.store is not None:
            self.store.refuse_stale()
        if self.resumed_from is None and acc.process_index > 0:
            torch.manual_seed(config.seed + acc.process_index)  # own dropout masks per process

    def _optimizer(self, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
        """AdamW over ``model``'s parameter groups and the schedule, at ``pos.global_step``.

        Past step 0 (a rebuild after rounding) the schedule resumes where it was: the new
        scheduler's ``last_epoch`` is the step count, so the next step's learning rate is the
        one the old scheduler would have given.
        """
        config, step = self.config, self.pos.global_step
        groups = parameter_groups(model, config.weight_decay, config.tt_weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
        if step > 0:
            for group in optimizer.param_groups:
                group["initial_lr"] = config.learning_rate
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.schedule, last_epoch=step - 1)
        return optimizer, scheduler

    def _round_and_rebuild(self) -> None:
        """Round to the budget mid-run, then rebuild optimizer and scheduler for the new cores.

        Adam's moments carry over for the parameters that stayed (head, norms...); the rounded
        cores start with fresh moments. The old optimizer and scheduler leave the accelerator
        (:func:`forget_prepared`), so that only the new ones are stepped, clipped and saved.
        """
        acc = self.acc
        model = acc.unwrap_model(self.model)
        if not self.rounding.fit(model, self.pos.global_step):
            return
        old = self.optimizer.optimizer
        optimizer, scheduler = self._optimizer(model)
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param in old.state:
                    optimizer.state[param] = old.state[param]
        forget_prepared(acc, self.optimizer, self.scheduler)
        self.optimizer, self.scheduler = acc.prepare(optimizer, scheduler)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def run(self, evaluate: Evaluate, on_step: OnStep | None) -> TrainStats:
        from tqdm.auto import tqdm

        acc, config, pos = self.acc, self.config, self.pos
        show = config.progress and acc.is_main_process
        for epoch in range(pos.epoch, config.epochs + 1):
            order = epoch_order(self.task.num_train, config.seed, epoch)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=pos.step,
                desc=f"epoch {epoch}/{config.epochs}",
                disable=not show,
                dynamic_ncols=True,
            )
            start = time.perf_counter()
            for step in range(pos.step, self.steps_per_epoch):
                self._optimizer_step(
                    order[step * config.batch_size : (step + 1) * config.batch_size]
                )
                pos.step, pos.global_step = step + 1, pos.global_step + 1
                if pos.global_step == self.rounding.step:
                    self._round_and_rebuild()
                every = config.checkpoint_every
                if (
                    self.store is not None
                    and every
                    and (pos.global_step % every == 0 or pos.global_step == self.total)
                ):
                    pos.train_seconds += time.perf_counter() - start
                    self.store.save(pos.global_step, asdict(pos))
                    start = time.perf_counter()
                if on_step is not None:
                    on_step(pos.global_step, acc.unwrap_model(self.model))
                bar.set_postfix(loss=f"{pos.loss_sum / max(1.0, pos.seen):.4f}")
                bar.update()
            bar.close()
            pos.train_seconds += time.perf_counter() - start
            self._end_epoch(epoch, evaluate, show)
            if self.stopper.update(pos.history[-1], acc.unwrap_model(self.model)):
                break
        self.stopper.restore(acc.unwrap_model(self.model))
        acc.wait_for_everyone()
        return self._stats()

    def _stats(self) -> TrainStats:
        acc, pos = self.acc, self.pos
        size = sum(p.numel() * p.element_size() for p in self.trainable)
        return TrainStats(
            history=pos.history,
            device=acc.device,
            steps=pos.global_step,
            train_seconds=pos.train_seconds,
            seconds_per_step=pos.train_seconds / max(1, pos.global_step),
            tokens_per_second=pos.tokens / max(1e-9, pos.train_seconds),
            allreduce_bytes=size if acc.num_processes > 1 else 0,
            resumed_from=self.resumed_from,
            world_size=acc.num_processes,
            budget=self.rounding.record,
            best_epoch=self.stopper.best_epoch,
            stopped_epoch=self.stopper.stopped_epoch,
        )

    def _optimizer_step(self, idx: Sequence[int]) -> None:
        acc, pos = self.acc, self.pos
        self.model.train()
        stats = _step(acc, self.model, self.task, idx, self.config)
        if self.config.max_grad_norm > 0:
            acc.clip_grad_norm_(self.trainable, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if acc.num_processes > 1:
            stats = acc.reduce(stats.to(acc.device), reduction="sum").cpu()
        loss_sum, seen, tokens = stats.tolist()
        if not math.isfinite(loss_sum):
            raise FinetuneError(
                f"the training loss became {loss_sum / max(1.0, seen)} at step "
                f"{pos.global_step + 1} "
                f"(epoch {pos.epoch}); try a smaller --lr. Nothing was saved"
            )
        pos.loss_sum, pos.seen, pos.tokens = (
            pos.loss_sum + loss_sum,
            pos.seen + seen,
            pos.tokens + tokens,
        )

    @torch.no_grad()
    def _evaluate(self, evaluate: Evaluate) -> dict[str, Any]:
        model = self.acc.unwrap_model(self.model)
        model.eval()
        return evaluate(model)

    def _end_epoch(self, epoch: int, evaluate: Evaluate, show: bool) -> None:
        from accelerate.utils import broadcast_object_list
        from tqdm.auto import tqdm

        acc, pos = self.acc, self.pos
        record: dict[str, Any] = {"epoch": epoch, "train_loss": pos.loss_sum / max(1.0, pos.seen)}
        if self.config.eval_every_epoch or epoch == self.config.epochs:
            box = [self._evaluate(evaluate) if acc.is_main_process else None]
            if acc.num_processes > 1:
                broadcast_object_list(box)
            record.update(history_row(box[0] or {}, evaluated=True))
            if show:
                tqdm.write(
                    f"epoch {epoch}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float))
                )
        pos.history.append(record)
        pos.epoch, pos.step, pos.loss_sum, pos.seen = epoch + 1, 0, 0.0, 0.0
