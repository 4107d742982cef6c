"""The fine-tuning job: :func:`run` one method, :func:`compare` several, and use a saved run.

The job reads no data and knows no task: it asks :mod:`tensortrain_nn.tasks` for the task of a
config, trains it (:mod:`~tensortrain_nn.finetune.train`), saves the run folder
(:mod:`~tensortrain_nn.finetune.runs`) and reports. ``predict`` and ``evaluate`` go through the
saved run's task object.

Example::

    result = run(FinetuneConfig(method="lora", epochs=1, max_train=256, output_dir="runs/x"))
    predict("runs/x", ["a gorgeous, witty film"])      # ['fresh']
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import PartialState
from torch import nn

from tensortrain_nn.bases.load import base_memory_bytes, describe_base
from tensortrain_nn.finetune import runs
from tensortrain_nn.finetune.base_options import cast_adapters, setup_options
from tensortrain_nn.finetune.config import FinetuneConfig, Result, history_row
from tensortrain_nn.finetune.engine import check_device, on_cpu, peak_memory_mb, reset_accelerate
from tensortrain_nn.finetune.methods import get_method
from tensortrain_nn.finetune.report import write_comparison, write_report
from tensortrain_nn.finetune.train import TrainStats, train
from tensortrain_nn.models import ModelSpec, fingerprint, is_decoder_only, load_model, resolve_model
from tensortrain_nn.surgery.targets import is_head_parameter
from tensortrain_nn.tasks import (
    FinetuneError,
    Split,
    Task,
    TaskKind,
    check_max_length,
    decide_kind,
    make_task,
    read_data,
    read_split,
)
from tensortrain_nn.tasks.build import read_held_out

#: Metrics of the last evaluation that go to ``Result.metrics``.
_LM_METRICS = ("perplexity", "tokens", "truncated", "completions_cut", "exact_match", "contains")


def build_split(config: FinetuneConfig) -> Split:
    """The labelled train/test split of ``config`` (see :func:`tensortrain_nn.tasks.read_split`)."""
    return read_split(config.task_options())


class Built(NamedTuple):
    """What :func:`build_task` made: ``labels`` is empty for unlabelled lm data."""

    model: nn.Module
    tokenizer: Any
    task: Task
    labels: list[str]
    kind: TaskKind


def build_task(config: FinetuneConfig, spec: ModelSpec) -> Built:
    """Decide the task, read its data, load the model for it, and build the task.

    Returns:
        ``(model, tokenizer, task, labels, kind)`` (:class:`Built`).

    Raises:
        FinetuneError: ``--task lm`` on an encoder-only model, or options of the other task.
    """
    options = config.task_options()
    kind = decide_kind(options, decoder_only=is_decoder_only(spec), model=spec.name)
    main = PartialState().is_main_process
    if config.task == "auto" and kind.name == "lm" and config.progress and main:
        print(f"--task auto: {spec.name} is a decoder-only LM, so the task is lm", flush=True)
    data = read_data(options, kind)
    torch.manual_seed(config.seed)
    labels = data.labels if isinstance(data, Split) else []
    num_labels = len(labels) if kind.name == "classify" else None
    model, tokenizer = load_model(spec, num_labels, labels=labels, form=config.base_form())
    check_max_length(config.max_length, model, tokenizer)
    return Built(model, tokenizer, make_task(kind, tokenizer, data, options), labels, kind)


def _count(model: nn.Module) -> dict[str, int]:
    """Parameters: ``total``, and trainable ones by kind (``adapter``, ``head``, ``other``)."""
    seen: set[int] = set()
    counts = {"total": 0, "adapter": 0, "head": 0, "other": 0}
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        counts["total"] += param.numel()
        if param.requires_grad:
            adapter = ".adapters." in f".{name}" or "lora_" in name
            kind = "head" if is_head_parameter(name) else "adapter" if adapter else "other"
            counts[kind] += param.numel()
    return counts


def _broadcast(value: Any) -> Any:
    """The main process's ``value`` on every process (small objects: paths, metrics)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0] if PartialState().num_processes > 1 else value


def run(
    config: FinetuneConfig, *, on_step: Callable[[int, nn.Module], None] | None = None
) -> Result:
    """Fine-tune ``config.model`` on ``config.data`` with ``config.method``; report and save.

    Launched by ``torchrun`` or ``accelerate launch`` (or inside a process group the caller
    initialised) the run is data-parallel: every process trains on its part of each global
    batch, the main process alone evaluates, saves and writes checkpoints; every process returns
    the same metrics.

    Args:
        config: The job (see :class:`FinetuneConfig`).
        on_step: Called after every optimizer step with the global step and the model.

    Returns:
        The measured :class:`Result` (also written as ``report.json`` / ``report.md`` when saving).

    Raises:
        FileNotFoundError: A data or model path does not exist.
        FinetuneError: Bad data, model, method or options (a ``ValueError``).
    """
    import torch.distributed as dist

    owns_group = not (dist.is_available() and dist.is_initialized())
    PartialState(cpu=on_cpu(config.device))  # joins torchrun's / accelerate's process group
    clean = False
    try:
        result = _run(config, on_step)
        clean = True
        return result
    finally:
        if owns_group and dist.is_initialized():
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        if owns_group:
            reset_accelerate(partial=True)


def _run(config: FinetuneConfig, on_step: Callable[[int, nn.Module], None] | None) -> Result:
    check_device(config.device)
    runs.check_output_dir(config)
    method = get_method(config.method)
    spec = resolve_model(config.model)
    model, tokenizer, task, labels, kind = build_task(config, spec)
    base_fingerprint = fingerprint(model)
    base: dict[str, Any] = {"base": describe_base(model)}
    base["base_memory_bytes"] = base_memory_bytes(model)
    options = setup_options(config.method, config.method_options, config.adapter_dtype)
    model, description = method.setup(model, options, task.name)
    cast_adapters(model, config.adapter_dtype)
    if config.gradient_checkpointing:
        _checkpoint_activations(model)
    # One folder for all processes (a timestamped default could differ by a second between them).
    out = Path(_broadcast(str(config.resolved_output_dir())))
    runs.clear_previous_run(config, out)
    use_checkpoints = config.checkpoint_every > 0 or config.resume
    stats = (_zero_shot if config.method == "none" else train)(
        model,
        task,
        config,
        evaluate=lambda m: task.evaluate(m, 4 * config.batch_size),
        checkpoints=out / "checkpoints" if use_checkpoints else None,
        on_step=on_step,
    )
    counts = _count(model)  # after training: a rank budget changes the adapter's size
    final, validation = _held_out_scores(config, stats, model, tokenizer, task, labels, kind)
    main = PartialState().is_main_process
    adapter_bytes = 0
    if config.save and main:
        adapter_bytes = runs.write_run(
            out,
            method,
            model,
            config,
            model=spec.to_dict(),
            base_fingerprint=base_fingerprint,
            labels=labels,
            task=task.name,
        )
    result = _result(config, description, stats, counts, task, labels, final)
    result = dataclasses.replace(
        result, validation=validation, stopped_epoch=stats.stopped_epoch, **base
    )
    result.adapter_bytes = _broadcast(adapter_bytes)
    result.output_dir = str(out) if config.save else None
    if config.save and main:
        write_report(result, out)
    return result


def _result(
    config: FinetuneConfig,
    description: str,
    stats: TrainStats,
    counts: dict[str, int],
    task: Task,
    labels: list[str],
    final: dict[str, Any],
) -> Result:
    """The :class:`Result` of a run: its stats, parameter counts and reported scores ``final``."""
    trainable = counts["adapter"] + counts["head"] + counts["other"]
    return Result(
        method=config.method,
        description=description,
        accuracy=final.get("accuracy", math.nan),
        macro_f1=final.get("macro_f1", math.nan),
        history=stats.history,
        trainable_params=trainable,
        adapter_params=counts["adapter"],
        head_params=counts["head"],
        other_params=counts["other"],
        total_params=counts["total"],
        trainable_share=trainable / counts["total"],
        adapter_bytes=0,
        seconds_per_step=stats.seconds_per_step,
        train_seconds=stats.train_seconds,
        peak_memory_mb=peak_memory_mb(stats.device),
        num_train=task.num_train,
        num_test=int(final["examples"]),
        labels=labels,
        seed=config.seed,
        output_dir=None,
        world_size=stats.world_size,
        allreduce_bytes_per_step=stats.allreduce_bytes,
        resumed_from_step=stats.resumed_from,
        task=task.name,
        tokens_per_second=stats.tokens_per_second,
        metrics=_metrics(final),
        samples=list(final.get("samples", [])),
        budget=dict(stats.budget),
    )


def _held_out_scores(
    config: FinetuneConfig,
    stats: TrainStats,
    model: nn.Module,
    tokenizer: Any,
    task: Task,
    labels: list[str],
    kind: TaskKind,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(reported, validation)``: the scores the result reports, and the validation scores.

    Without a validation split the reported scores are the last epoch's (on the test split)
    and there are no validation scores. With one, the history holds validation scores: the
    kept epoch's (the best under early stopping, else the last) are ``validation``, and the
    test split is scored once now, unless ``config.test_at_end`` is off.
    """
    last = stats.history[-1]
    if config.val_size is None:
        return last, {}
    kept = next((r for r in stats.history if r["epoch"] == stats.best_epoch), last)
    validation = {k: v for k, v in kept.items() if k not in ("train_loss", "samples")}
    if not config.test_at_end:
        return {"examples": 0}, validation
    scores: dict[str, Any] = {}
    if PartialState().is_main_process:
        options = config.task_options()
        held = read_held_out(options, kind, labels, held_out="test")
        test = make_task(kind, tokenizer, held, options)
        model.eval()
        with torch.no_grad():
            scores = test.evaluate(model, 4 * config.batch_size)
    return history_row(_broadcast(scores), evaluated=True), validation


def _metrics(final: dict[str, Any]) -> dict[str, float]:
    """``Result.metrics`` from the last history row: lm numbers, the held-out loss as ``loss``."""
    out = {k: v for k, v in final.items() if k in _LM_METRICS}
    if "perplexity" in out and "eval_loss" in final:
        out["loss"] = final["eval_loss"]
    return out


def _zero_shot(model: nn.Module, task: Task, config: FinetuneConfig, **loop: Any) -> TrainStats:
    """``--method none``: no training, one evaluation (the baseline an LLM table needs)."""
    model.eval()
    with torch.no_grad():
        scores = loop["evaluate"](model) if PartialState().is_main_process else {}
    return TrainStats(
        history=[
            {"epoch": 0, "train_loss": math.nan, **history_row(_broadcast(scores), evaluated=True)}
        ],
        device=next(model.parameters()).device,
        world_size=PartialState().num_processes,
    )


def _checkpoint_activations(model: nn.Module) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant: frozen inputs are fine)."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        raise FinetuneError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compare(
    config: FinetuneConfig,
    methods: Sequence[str],
    *,
    seeds: Sequence[int] = (0,),
    method_options: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
    jobs: int = 1,
) -> tuple[list[Result], list[dict[str, Any]]]:
    """Run several methods (and seeds) on the same split and budget; write the comparison.

    Args:
        config: The shared job; ``method`` and ``seed`` are replaced per run, ``lr`` applies to
            every method when set (else each method's default), runs go to
            ``<output_dir>/<method>-seed<seed>``.
        methods: Method names, run in this order.
        seeds: Training seeds; each method runs once per seed (``none``, which trains
            nothing, once).
        method_options: Per-method options, e.g. ``{"rep": {"rank": 5}}`` (replace
            ``config.method_options`` for that method).
        command: The command line, recorded in ``compare.md``.
        jobs: Runs at a time, each in its own process with ``cpu_count // jobs`` torch threads
            (results are the same as one at a time: every run is seeded on its own).

    Returns:
        ``(results, summary_rows)``; ``compare.md``, ``compare.json`` and ``compare.png`` are
        written into the output folder.
    """
    for name in methods:
        get_method(name)
    if jobs < 1:
        raise FinetuneError(f"jobs must be >= 1, got {jobs}")
    base = config.output_dir or str(Path("runs") / f"compare-{_stamp()}")
    configs = [
        dataclasses.replace(
            config,
            method=name,
            seed=seed,
            method_options=(method_options or {}).get(name, {}),
            output_dir=str(Path(base) / f"{name}-seed{seed}"),
            save=True,
            progress=config.progress and jobs == 1,
        )
        for name in methods
        for seed in (seeds[:1] if name == "none" else seeds)  # zero-shot: no seed to vary
    ]
    for one in configs:  # every run's folder is checked before the first run starts
        runs.check_output_dir(one)
    return _run_all(configs, jobs, Path(base), command, config.progress)


def _run_all(
    configs: list[FinetuneConfig], jobs: int, base: Path, command: str | None, progress: bool
) -> tuple[list[Result], list[dict[str, Any]]]:
    """Run ``configs`` (``jobs`` at a time) and write the comparison into ``base``."""
    results = run_configs(configs, jobs, progress)
    rows = write_comparison(results, base, command=command)
    return results, rows


def run_configs(configs: Sequence[FinetuneConfig], jobs: int, progress: bool) -> list[Result]:
    """Run ``configs`` in order, or ``jobs`` at a time in processes with a share of the threads.

    Results are the same as one at a time: every run is seeded on its own.
    """
    if jobs < 1:
        raise FinetuneError(f"jobs must be >= 1, got {jobs}")
    if jobs == 1:
        results: list[Result] = []
        for one in configs:
            if progress:
                print(f"== {one.method}, seed {one.seed} ==", flush=True)
            results.append(run(one))
            gc.collect()
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        return list(pool.map(_run_with_threads, configs, [threads] * len(configs)))


def _run_with_threads(config: FinetuneConfig, threads: int) -> Result:
    """One run in a worker process of :func:`compare`, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return run(config)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
