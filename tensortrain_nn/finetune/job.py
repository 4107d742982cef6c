"""The fine-tuning job: :func:`run` one method, :func:`compare` several, and use a saved run.

A run folder holds ``run.json`` (config, base model and its fingerprint, label names),
``labels.json``, ``adapter/`` (what the method trained), ``report.json`` and ``report.md``.

Example::

    result = run(FinetuneConfig(method="lora", epochs=1, max_train=256, output_dir="runs/x"))
    predict("runs/x", ["a gorgeous, witty film"])      # ['fresh']
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch import nn

from tensortrain_nn._files import atomic_write
from tensortrain_nn.finetune import data as data_mod
from tensortrain_nn.finetune.config import FinetuneConfig, Result
from tensortrain_nn.finetune.errors import AdapterError, FinetuneError
from tensortrain_nn.finetune.methods import get_method
from tensortrain_nn.finetune.models import (
    ModelSpec,
    check_fingerprint,
    fingerprint,
    is_decoder_only,
    load_model,
    resolve_model,
)
from tensortrain_nn.finetune.report import write_comparison, write_report
from tensortrain_nn.finetune.tasks import ClassifyTask, check_max_length
from tensortrain_nn.finetune.train import check_device, on_cpu, peak_memory_mb, train
from tensortrain_nn.surgery.targets import is_head_parameter

RUN_FILE = "run.json"
ADAPTER_DIR = "adapter"


def build_split(config: FinetuneConfig) -> data_mod.Split:
    """The train/test split of ``config`` (file or built-in data, held-out part, subsets)."""
    cols = {"text_column": config.text_column, "label_column": config.label_column}
    if config.data is None or config.data == data_mod.BUILTIN:
        texts, labels = data_mod.load_builtin()
        size = config.test_size if config.test_size is not None else data_mod.BUILTIN_TEST_SIZE
    else:
        texts, labels = data_mod.load_table(config.data, **cols)
        size = config.test_size if config.test_size is not None else 0.2
    test = None if config.test_data is None else data_mod.load_table(config.test_data, **cols)
    split = data_mod.make_split(texts, labels, test_size=size, seed=config.split_seed, test=test)
    n_train, n_test = config.max_train, config.max_test
    return dataclasses.replace(
        split,
        train_texts=split.train_texts[:n_train],
        train_labels=split.train_labels[:n_train],
        test_texts=split.test_texts[:n_test],
        test_labels=split.test_labels[:n_test],
    )


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _count(model: nn.Module) -> dict[str, int]:
    seen: set[int] = set()
    counts = {"total": 0, "adapter": 0, "head": 0, "other": 0}
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        counts["total"] += param.numel()
        if param.requires_grad:
            counts[_kind(name)] += param.numel()
    return counts


def _kind(name: str) -> str:
    """``head``, ``adapter`` (TT adapters, LoRA) or ``other`` (norms, biases, base weights)."""
    if is_head_parameter(name):
        return "head"
    if ".adapters." in f".{name}" or "lora_" in name:
        return "adapter"
    return "other"


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
    from accelerate.state import AcceleratorState

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
            AcceleratorState._reset_state(reset_partial_state=True)


def _run(config: FinetuneConfig, on_step: Callable[[int, nn.Module], None] | None) -> Result:
    check_device(config.device)
    method = get_method(config.method)
    spec = resolve_model(config.model)
    model, _, task, labels = build_task(config, spec)
    base_fingerprint = fingerprint(model)
    model, description = method.setup(model, dict(config.method_options), task.name)
    if config.gradient_checkpointing:
        _checkpoint_activations(model)
    # One folder for all processes (a timestamped default could differ by a second between them).
    out = Path(_broadcast(str(config.resolved_output_dir())))
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
    main = PartialState().is_main_process
    adapter_bytes = 0
    if config.save and main:
        out.mkdir(parents=True, exist_ok=True)
        method.save(model, out / ADAPTER_DIR)
        adapter_bytes = _folder_bytes(out / ADAPTER_DIR)
        saved = {"format": 1, "config": {**config.to_dict(), **_absolute_paths(config)}}
        saved |= {"model": spec.to_dict(), "base_fingerprint": base_fingerprint}
        saved |= {"labels": labels, "task": task.name}
        atomic_write(out / RUN_FILE, (json.dumps(saved, indent=2) + "\n").encode())
        label2id = {name: i for i, name in enumerate(labels)}
        atomic_write(out / "labels.json", (json.dumps(label2id, indent=2) + "\n").encode())
    result = _result(config, description, stats, counts, task, labels)
    result.adapter_bytes = _broadcast(adapter_bytes)
    result.output_dir = str(out) if config.save else None
    if config.save and main:
        write_report(result, out)
    return result


def _result(
    config: FinetuneConfig,
    description: str,
    stats: dict[str, Any],
    counts: dict[str, int],
    task: Any,
    labels: list[str],
) -> Result:
    """The :class:`Result` of a run from its training stats and parameter counts."""
    final = stats["history"][-1]
    trainable = counts["adapter"] + counts["head"] + counts["other"]
    return Result(
        method=config.method,
        description=description,
        accuracy=final.get("accuracy", math.nan),
        macro_f1=final.get("macro_f1", math.nan),
        history=stats["history"],
        trainable_params=trainable,
        adapter_params=counts["adapter"],
        head_params=counts["head"],
        other_params=counts["other"],
        total_params=counts["total"],
        trainable_share=trainable / counts["total"],
        adapter_bytes=0,
        seconds_per_step=stats["seconds_per_step"],
        train_seconds=stats["train_seconds"],
        peak_memory_mb=peak_memory_mb(stats["device"]),
        num_train=task.num_train,
        num_test=int(final["examples"]),
        labels=labels,
        seed=config.seed,
        output_dir=None,
        world_size=stats["world_size"],
        allreduce_bytes_per_step=stats["allreduce_bytes"],
        resumed_from_step=stats["resumed_from"],
        task=task.name,
        tokens_per_second=stats["tokens_per_second"],
        metrics={k: v for k, v in final.items() if k in _LM_METRICS},
        samples=list(final.get("samples", [])),
        budget=dict(stats.get("budget") or {}),
    )


_LM_METRICS = ("loss", "perplexity", "tokens", "truncated")


def build_task(config: FinetuneConfig, spec: ModelSpec) -> tuple[nn.Module, Any, Any, list[str]]:
    """Read the data, load the model for ``config``'s task, and build the task.

    ``task="auto"`` is ``lm`` for decoder-only models (said in the log) and ``classify`` otherwise.
    The lm task takes its data form from the config: ``template`` and ``verbalizer``
    (classification as text; the built-in data has a default prompt), or ``prompt_column`` and
    ``completion_column``, or plain text from ``text_column``.

    Returns:
        ``(model, tokenizer, task, labels)``; ``labels`` is empty for unlabelled lm data.

    Raises:
        FinetuneError: ``--task lm`` on an encoder-only model, or options of the other task.
    """
    name = _task_name(config, spec)
    data = read_data(config, name)
    torch.manual_seed(config.seed)
    labels = data.labels if isinstance(data, data_mod.Split) else []
    model, tokenizer = load_model(spec, len(labels) if name == "classify" else None, labels=labels)
    check_max_length(config.max_length, model, tokenizer)
    return model, tokenizer, make_task(config, name, tokenizer, data), labels


def read_data(config: FinetuneConfig, task: str) -> Any:
    """A :class:`~tensortrain_nn.finetune.data.Split` of labelled texts, or ``(train, test)`` lm
    examples (prompt/completion or plain text)."""
    from tensortrain_nn.finetune import lm

    builtin = config.data in (None, data_mod.BUILTIN)
    if task == "classify" or builtin or config.template or config.verbalizer:
        if task == "lm" and not builtin and (config.template is None or config.verbalizer is None):
            raise FinetuneError("classification as text needs both --template and --verbalizer")
        return build_split(config)
    return lm.read_examples(config)


def make_task(config: FinetuneConfig, task: str, tokenizer: Any, data: Any) -> Any:
    """The task object over ``data`` (what :func:`read_data` returned)."""
    from tensortrain_nn.finetune import lm

    if not isinstance(data, data_mod.Split):
        return lm.LMTask(tokenizer, *data, max_length=config.max_length)
    if task == "classify":
        return ClassifyTask(tokenizer, data, config.max_length)
    return lm.classification_task(
        tokenizer,
        data,
        template=config.template or lm.BUILTIN_TEMPLATE,
        verbalizer=config.verbalizer or lm.BUILTIN_VERBALIZER,
        max_length=config.max_length,
        length_normalise=config.length_normalise,
    )


def _task_name(config: FinetuneConfig, spec: ModelSpec) -> str:
    """``config.task``, with ``auto`` resolved from the model's kind (and said in the log)."""
    decoder = is_decoder_only(spec)
    name = config.task
    if name == "auto":
        name = "lm" if decoder else "classify"
        if decoder and config.progress and PartialState().is_main_process:
            print(f"--task auto: {spec.name} is a decoder-only LM, so the task is lm", flush=True)
    if name == "lm" and not decoder:
        raise FinetuneError(f"--task lm needs a decoder-only LM; --model {spec.name} is not one")
    lm_only = ("template", "verbalizer", "prompt_column", "completion_column")
    given = [f"--{f.replace('_', '-')}" for f in lm_only if getattr(config, f) is not None]
    if name == "classify" and given:
        raise FinetuneError(f"{given[0]} needs --task lm (the model is trained as a classifier)")
    return name


def _zero_shot(
    model: nn.Module,
    task: Any,
    config: FinetuneConfig,
    *,
    evaluate: Any,
    checkpoints: Path | None,
    on_step: Any,
) -> dict[str, Any]:
    """``--method none``: no training, one evaluation (the baseline an LLM table needs)."""
    model.eval()
    with torch.no_grad():
        scores = evaluate(model) if PartialState().is_main_process else {}
    return {
        "history": [{"epoch": 0, "loss": math.nan, **_broadcast(scores)}],
        "train_seconds": 0.0,
        "seconds_per_step": 0.0,
        "tokens_per_second": 0.0,
        "allreduce_bytes": 0,
        "resumed_from": None,
        "world_size": PartialState().num_processes,
        "device": next(model.parameters()).device,
    }


def _checkpoint_activations(model: nn.Module) -> None:
    """Turn on transformers' gradient checkpointing (non-reentrant: frozen inputs are fine)."""
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        raise FinetuneError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _absolute_paths(config: FinetuneConfig) -> dict[str, str]:
    """Data paths made absolute, so that a saved run works from any folder."""
    return {
        key: str(Path(value).resolve())
        for key in ("data", "test_data")
        if (value := getattr(config, key)) is not None and value != data_mod.BUILTIN
    }


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
    return _run_all(configs, jobs, Path(base), command, config.progress)


def _run_all(
    configs: list[FinetuneConfig], jobs: int, base: Path, command: str | None, progress: bool
) -> tuple[list[Result], list[dict[str, Any]]]:
    """Run ``configs`` (``jobs`` at a time) and write the comparison into ``base``."""
    results: list[Result] = []
    if jobs == 1:
        for one in configs:
            if progress:
                print(f"== {one.method}, seed {one.seed} ==", flush=True)
            results.append(run(one))
            gc.collect()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            results = list(pool.map(_run_with_threads, configs, [threads] * len(configs)))
    rows = write_comparison(results, base, command=command)
    return results, rows


def _run_with_threads(config: FinetuneConfig, threads: int) -> Result:
    """One run in a worker process of :func:`compare`, with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return run(config)


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S")


def read_run(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The run folder (``folder`` or its parent) and its ``run.json``; cheap, loads no model.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        AdapterError: Neither ``folder`` nor its parent holds a valid ``run.json``.
    """
    if not folder.exists():
        raise FileNotFoundError(f"adapter folder not found: {folder}")
    for candidate in (folder, folder.parent):
        if (candidate / RUN_FILE).is_file():
            try:
                return candidate, json.loads((candidate / RUN_FILE).read_text())
            except json.JSONDecodeError as exc:
                raise AdapterError(f"{candidate / RUN_FILE} is not valid JSON") from exc
    raise AdapterError(f"{folder} is not a saved run: it has no {RUN_FILE}")


def load_run(folder: str | Path, *, model: str | None = None) -> tuple[nn.Module, Any, dict]:
    """Load a saved run: the base model it names (or ``model``) with its adapter on top.

    Args:
        folder: The run folder (or its ``adapter/`` sub-folder).
        model: Another base model to put the adapter on; it must have the same architecture.

    Returns:
        ``(model, tokenizer, run_info)`` with the model in eval mode on the CPU.

    Raises:
        FileNotFoundError: The folder or the base model does not exist.
        AdapterError: Not a run folder, or the adapter was saved for another base model.
    """
    root, base, tokenizer, info = load_base(folder, model=model)
    loaded = _load_adapter(info, base, root / ADAPTER_DIR)
    loaded.eval()
    return loaded, tokenizer, info


def _load_adapter(info: dict[str, Any], base: nn.Module, folder: Path) -> nn.Module:
    """Put a run's saved adapter on ``base`` (a rank-budget run's TT ranks come from the file)."""
    return get_method(info["config"]["method"]).load(base, folder)


def load_base(folder: str | Path, *, model: str | None = None) -> tuple[Path, nn.Module, Any, dict]:
    """A saved run's base model without its adapter: ``(run folder, model, tokenizer, run_info)``.

    Raises:
        FileNotFoundError: The folder or the base model does not exist.
        AdapterError: Not a run folder, or ``model`` is not the run's architecture.
    """
    root, info = read_run(Path(folder))
    saved = info["model"]
    if model is not None:
        spec = resolve_model(model)
    elif saved["name"] in ("minilm", "smollm2"):
        spec = resolve_model(saved["name"])
    else:
        spec = ModelSpec(**saved)
        if not Path(spec.folder).exists():
            raise FileNotFoundError(f"the run's base model folder no longer exists: {spec.folder}")
    lm_run = info.get("task") == "lm"
    base, tokenizer = load_model(
        spec, None if lm_run else len(info["labels"]), labels=info["labels"]
    )
    check_fingerprint(info["base_fingerprint"], base, saved_name=saved["name"], name=spec.name)
    return root, base, tokenizer, info


def _saved_task(info: dict[str, Any], tokenizer: Any, texts: list[str], ids: list[int]) -> Any:
    """The task of a saved run over labelled ``texts`` (classification, or as text for lm)."""
    config = FinetuneConfig.from_dict({**info["config"], "progress": False})
    split = data_mod.Split([], [], texts, ids, info["labels"])
    return make_task(config, info.get("task", "classify"), tokenizer, split)


def predict(
    folder: str | Path, texts: Sequence[str], *, model: str | None = None, batch_size: int = 64
) -> list[str]:
    """Label ``texts`` with a saved run; returns label names.

    Raises:
        AdapterError: The run has no labels (an lm run on prompts or text: use :func:`generate`).
    """
    loaded, tokenizer, info = load_run(folder, model=model)
    if not info["labels"]:
        raise AdapterError(f"{folder} is an lm run without labels: use tensortrain generate")
    task = _saved_task(info, tokenizer, list(texts), [0] * len(texts))
    if isinstance(task, ClassifyTask):
        ids = task.predict(loaded, list(texts), batch_size)
    else:
        with torch.no_grad():
            ids = task.option_scores(loaded, batch_size).argmax(dim=-1).tolist()
    return [info["labels"][i] for i in ids]


def evaluate(
    folder: str | Path,
    data: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """Held-out metrics of a saved run on ``data`` (default: the run's own held-out split).

    Returns:
        Accuracy and macro-F1 (and, for lm runs, loss and perplexity), with ``examples``.

    Raises:
        DataError: A label in ``data`` was not seen in training (the message names it).
    """
    loaded, tokenizer, info = load_run(folder, model=model)
    cfg = FinetuneConfig.from_dict({**info["config"], "progress": False})
    if data is None and not info["labels"]:
        task = make_task(cfg, "lm", tokenizer, read_data(cfg, "lm"))
    elif data is None:
        split = build_split(cfg)
        task = _saved_task(info, tokenizer, split.test_texts, split.test_labels)
    else:
        texts, names = data_mod.load_table(
            data,
            text_column=text_column or cfg.text_column,
            label_column=label_column or cfg.label_column,
        )
        ids = data_mod.encode_labels(names, info["labels"], where=str(data))
        task = _saved_task(info, tokenizer, texts, ids)
    with torch.no_grad():
        scores = task.evaluate(loaded.eval(), 64)
    return {k: v for k, v in scores.items() if k != "samples"}


def generate_text(
    folder: str | Path,
    prompts: Sequence[str],
    *,
    model: str | None = None,
    merge: bool = True,
    **options: Any,
) -> list[str]:
    """Continue ``prompts`` with a saved lm run's model and adapter (greedy by default).

    The adapter is merged into the base weights first when it can be (rep, LoRA): generation then
    costs what the base model costs, with the same greedy output as the unmerged model.

    Args:
        folder: A run written by ``finetune --task lm``.
        prompts: Texts to continue.
        model: Another base model of the same architecture.
        merge: Fold the adapter into the weights (rep and LoRA; adp runs unmerged).
        **options: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``batch_size`` of
            :func:`tensortrain_nn.finetune.generate.generate`.

    Returns:
        The new text of each prompt.

    Raises:
        AdapterError: Not an lm run, or an adapter made for another base model.
    """
    from tensortrain_nn.finetune import generate as gen

    loaded, tokenizer, info = load_run(folder, model=model)
    if info.get("task") != "lm":
        raise AdapterError(
            f"{folder} is a {info.get('task', 'classify')} run; generate needs an lm run"
        )
    if merge:
        loaded = _merged(loaded, info["config"]["method"])
    return gen.generate(loaded, tokenizer, list(prompts), **options)


def _merged(model: nn.Module, method: str) -> nn.Module:
    """The model with its adapter folded into the weights, where the method allows it."""
    if method == "lora":
        return model.merge_and_unload()  # type: ignore[operator]
    if method == "rep":
        import tensortrain_nn

        return tensortrain_nn.merge_and_unload(model)
    return model
