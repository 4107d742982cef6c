"""The fine-tuning job's configuration and result; the command line's flags are generated from it.

Every field carries its help text (``metadata["help"]``), so :class:`FinetuneConfig` is the one
source of defaults and descriptions for the Python API and the ``tensortrain finetune`` flags.

Example:
    >>> config = FinetuneConfig(method="lora", epochs=1, max_train=256)
    >>> config.learning_rate
    0.001
    >>> FinetuneConfig(lr=float("inf"))
    Traceback (most recent call last):
    ...
    tensortrain_nn.tasks.errors.FinetuneError: lr must be a finite number, got inf
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTError
from tensortrain_nn.bases.load import BaseForm
from tensortrain_nn.budget import RankBudget
from tensortrain_nn.finetune import rounding
from tensortrain_nn.finetune.base_options import check_base
from tensortrain_nn.finetune.methods import DEFAULT_LR, get_method
from tensortrain_nn.finetune.selection import VAL_METRICS
from tensortrain_nn.tasks import FinetuneError, TaskOptions
from tensortrain_nn.tasks.answers import check_task_options

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _f(default: Any, text: str, **extra: Any) -> Any:
    """A dataclass field with its command-line help."""
    return field(default=default, metadata={"help": text, **extra})


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; checked in ``__post_init__``.

    Each field's help text is in its ``metadata["help"]``: what ``tensortrain finetune --help``
    prints for its flag (field ``max_length`` is flag ``--max-length``).
    """

    method: str = _f("rep", "rep, adp, lora, head, full, or none (lm: zero-shot)")
    task: str = _f("auto", "classify, lm, or auto (lm for decoder-only models)")
    model: str = _f("minilm", "minilm, smollm2, a model folder or a .gguf file")
    data: str | None = _f(None, "CSV, JSON(L), parquet or datasets folder (default: built-in)")
    text_column: str = _f("text", "text column of --data")
    label_column: str = _f("label", "label column of --data")
    test_data: str | None = _f(None, "held-out file (default: hold out part of --data)")
    test_size: int | float | None = _f(None, "held-out count (int) or fraction (0.2)")
    val_size: int | float | None = _f(
        None,
        "validation count or fraction carved from the training data: scored each epoch (for "
        "--early-stop, --tune); the test split is scored once, at the end",
    )
    val_metric: str = _f(
        "auto", "what decides on validation: auto, accuracy, macro_f1, loss, exact_match, contains"
    )
    early_stop: int = _f(
        0, "stop after N epochs without a better validation score, keep the best (0: off)"
    )
    test_at_end: bool = _f(True, "with --val-size: score the test split after training")
    split_seed: int = _f(0, "seed of the shuffle before the split")
    seed: int = _f(0, "training seed (head init, batch order, dropout)")
    epochs: int = _f(3, "passes over the training data")
    batch_size: int = _f(16, "examples per optimizer step, over all processes")
    gradient_accumulation: int = _f(1, "split each step's batch into N micro-batches")
    max_length: int = _f(64, "tokens per example (longer texts are cut)")
    lr: float | None = _f(None, "learning rate (default: per method)")
    weight_decay: float = _f(0.01, "AdamW weight decay of weight matrices")
    tt_weight_decay: float = _f(0.0, "weight decay of TT cores")
    warmup_ratio: float = _f(0.06, "share of steps with linear warm-up (then --schedule)")
    schedule: str = _f("linear", "after warm-up: linear (decay to 0 at the end) or constant")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    max_train: int | None = _f(None, "train on the first N shuffled examples")
    max_test: int | None = _f(None, "evaluate on the first N held-out examples")
    method_options: dict[str, Any] = field(  # on the command line: --opt KEY=VALUE
        default_factory=dict, metadata={"help": "method options (patch / LoraConfig fields)"}
    )
    template: str | None = _f(
        None,
        'lm: prompt template with {text}, e.g. "Review: {text}\\nSentiment:" (\\n, \\t, '
        "\\\\ read as line break, tab, backslash; also in --verbalizer answers)",
    )
    verbalizer: str | None = _f(
        None,
        'lm: label=answer pairs, e.g. pos=" good",neg=" bad" (answers may not be token '
        "prefixes of each other unless --length-normalise)",
    )
    prompt_column: str | None = _f(None, "lm: prompt column (with --completion-column)")
    completion_column: str | None = _f(None, "lm: completion column (loss on it only)")
    length_normalise: bool = _f(
        False, "lm with --verbalizer answers: score them by mean token log-likelihood"
    )
    split: str | None = _f(None, "split of a datasets folder (DatasetDict) given as --data")
    messages_column: str | None = _f(None, "lm: chat column (default: found by its messages)")
    chat_loss: str = _f("assistant", "lm chat data: loss on assistant turns, or all")
    metric: str | None = _f(None, "lm: accuracy (answer options), exact_match or contains")
    bf16: bool = _f(False, "bfloat16 autocast (CPU or CUDA)")
    dtype: str = _f("float32", "the base's dtype: float32, bfloat16 or float16")
    quantize: str = _f("none", "load the base in bitsandbytes 4bit or 8bit (QLoRA-style), or none")
    quant_type: str = _f("nf4", "4bit data type: nf4 or fp4 (double quant)")
    adapter_dtype: str = _f("auto", "adapter tensors: auto (float32 on half/quantized), base, ...")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward (less memory)")
    output_dir: str | None = _f(None, "default runs/<method>-<timestamp>")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    eval_every_epoch: bool = _f(True, "evaluate after every epoch (else after the last)")
    progress: bool = _f(True, "show a progress bar")
    save: bool = _f(True, "save the adapter and report into output_dir")
    checkpoint_every: int = _f(0, "write a resumable checkpoint every K steps (0: none)")
    resume: bool = _f(False, "continue from the newest valid checkpoint in output_dir")
    overwrite: bool = _f(False, "replace the run in output_dir (deletes only what a run writes)")

    def __post_init__(self) -> None:
        try:
            self._check()
        except FinetuneError:
            raise
        except TTError as exc:  # the shared validators' errors, as the job's own type
            raise FinetuneError(str(exc)) from None

    def _check(self) -> None:
        get_method(self.method)
        if self.schedule not in ("linear", "constant"):
            raise FinetuneError(f"schedule must be linear or constant, got {self.schedule!r}")
        if self.task not in ("auto", "classify", "lm"):
            raise FinetuneError(f"task must be auto, classify or lm, got {self.task!r}")
        for name in ("epochs", "batch_size", "max_length", "gradient_accumulation"):
            check_int(name, getattr(self, name))
        for name in ("seed", "split_seed", "checkpoint_every", "early_stop"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("max_train", "max_test"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        if self.gradient_accumulation > self.batch_size:
            raise FinetuneError(
                f"gradient_accumulation ({self.gradient_accumulation}) must be <= batch_size "
                f"({self.batch_size}): each micro-batch needs at least one example"
            )
        if self.lr is not None:
            check_number("lr", self.lr, minimum=0.0, open_min=True)
        check_number("warmup_ratio", self.warmup_ratio, minimum=0.0, maximum=1.0, open_max=True)
        for name in ("weight_decay", "tt_weight_decay", "max_grad_norm"):
            check_number(name, getattr(self, name), minimum=0.0)
        for name in ("test_size", "val_size"):
            size = getattr(self, name)
            if isinstance(size, float):
                check_number(name, size, minimum=0.0, maximum=1.0, open_min=True, open_max=True)
            elif size is not None:
                check_int(name, size)
        self._check_validation()
        if not _DEVICE.fullmatch(self.device):
            raise FinetuneError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.resume and self.overwrite:
            raise FinetuneError("resume and overwrite contradict: continue the run, or replace it")
        if self.resume and self.output_dir is None:
            raise FinetuneError("resume needs output_dir: the run folder whose checkpoints to use")
        if not isinstance(self.method_options, dict):
            raise FinetuneError(f"method_options must be a dict, got {self.method_options!r}")
        _check_finite_options(self.method_options)
        rounding.check_options(self.method, self.method_options, self.checkpoint_every, self.resume)
        check_task_options(self.task_options())
        check_base(self.method, self.base_form(), self.adapter_dtype, self.method_options)

    def _check_validation(self) -> None:
        """The validation options need a validation split, and early stopping what it keeps."""
        if self.val_metric not in VAL_METRICS:
            raise FinetuneError(
                f"val_metric must be one of {', '.join(VAL_METRICS)}, got {self.val_metric!r}"
            )
        if self.val_size is None:
            for flag, on in (
                ("early_stop", self.early_stop > 0),
                ("val_metric", self.val_metric != "auto"),
                ("test_at_end=False", not self.test_at_end),
            ):
                if on:
                    raise FinetuneError(
                        f"{flag} needs val_size: without a validation split it would decide "
                        "on the test split"
                    )
        if self.early_stop > 0:
            if not self.eval_every_epoch:
                raise FinetuneError("early_stop needs eval_every_epoch: it watches every epoch")
            if self.checkpoint_every or self.resume:
                raise FinetuneError(
                    "early_stop with checkpoint_every/resume: checkpoints do not keep the best "
                    "epoch's tensors; use one or the other"
                )
            if self.rank_budget is not None:
                raise FinetuneError(
                    "early_stop with a rank budget: the rounded adapter cannot take back an "
                    "earlier epoch's cores"
                )

    def base_form(self) -> BaseForm:
        """The base model's dtype and quantization."""
        return BaseForm(self.dtype, self.quantize, self.quant_type)

    @property
    def rank_budget(self) -> RankBudget | None:
        """The rank budget in the method options, or None without a budget."""
        return rounding.check_options(self.method, self.method_options, 0, False)

    def task_options(self) -> TaskOptions:
        """What the task reads from this config (data, columns, split, lengths, lm prompts)."""
        return TaskOptions(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(TaskOptions)}
        )

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's default when ``lr`` is None."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def resolved_output_dir(self) -> Path:
        """``output_dir``, or ``runs/<method>-<timestamp>``."""
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path("runs") / f"{self.method}-{time.strftime('%Y%m%d-%H%M%S')}"

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Build a config from :meth:`to_dict`'s output, ignoring unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _check_finite_options(options: dict[str, Any]) -> None:
    """Method options that are numbers must be finite (``--opt alpha=NaN`` is refused here)."""
    for key, value in options.items():
        if isinstance(value, float):
            check_number(f"method option {key}", value)


def history_row(row: dict[str, Any], *, evaluated: bool = False) -> dict[str, Any]:
    """One epoch of a run's history with the training and held-out losses apart.

    ``train_loss`` is the mean training loss of the epoch, ``eval_loss`` the held-out loss of
    its evaluation (when the task reports one). Rows of older runs, which had one ``loss``
    (the held-out loss when the epoch was evaluated by an lm task, whose metrics include
    ``perplexity``; else the training loss), are read into the same keys.

    Args:
        row: A history row, or (``evaluated``) the metrics of an evaluation, whose ``loss``
            is the held-out loss.
        evaluated: ``row`` is an evaluation's metrics.

    Example:
        >>> history_row({"epoch": 1, "loss": 0.5, "accuracy": 0.9})
        {'epoch': 1, 'accuracy': 0.9, 'train_loss': 0.5}
        >>> history_row({"loss": 2.0, "perplexity": 7.4}, evaluated=True)
        {'perplexity': 7.4, 'eval_loss': 2.0}
    """
    out = {k: v for k, v in row.items() if k != "loss"}
    if "loss" in row:
        held_out = evaluated or "perplexity" in row
        out.setdefault("eval_loss" if held_out else "train_loss", row["loss"])
    return out


@dataclass
class Result:
    """What a run measured.

    Attributes:
        method: The method's name.
        description: The method's one-line description.
        accuracy: Held-out accuracy after the last epoch (0..1; NaN for lm tasks without labels).
        macro_f1: Held-out macro-F1 after the last epoch (0..1; NaN without labels).
        history: Per epoch: ``{"epoch", "train_loss", "eval_loss", ...}`` plus the evaluated
            metrics (see :func:`history_row`).
        trainable_params: Every trainable parameter (adapter, head and other).
        adapter_params: Trainable parameters of the adapter (TT cores, LoRA factors).
        head_params: Trainable parameters of the task head.
        other_params: Other trainable parameters: norms, biases, or the base model's weights
            when it trains in full.
        total_params: All parameters of the model being trained (base plus adapter).
        trainable_share: ``trainable_params / total_params``.
        adapter_bytes: Size on disk of the saved adapter folder (0 when not saved).
        seconds_per_step: Mean wall time of one optimizer step (forward, backward, update).
        train_seconds: Wall time of training, evaluation and checkpoints excluded.
        peak_memory_mb: Peak RSS of the process (CPU) or peak CUDA memory allocated (GPU), MiB.
        num_train: Training examples used.
        num_test: Held-out examples used.
        labels: Label names, index = id (empty for lm tasks without labels).
        seed: Training seed.
        output_dir: The run's folder, or None when not saved.
        world_size: Processes that trained (data-parallel; 1: not distributed).
        allreduce_bytes_per_step: Gradient bytes all-reduced per step (the trainable tensors'
            bytes; 0 when not distributed).
        resumed_from_step: The checkpoint step the run resumed from, or None.
        task: ``classify`` or ``lm``.
        tokens_per_second: Training tokens (padding excluded) per second of training.
        metrics: The last evaluation's other numbers (lm: loss, perplexity, truncated prompts).
        samples: Generated samples of the last evaluation (lm).
        budget: With ``--opt budget=N``: ``budget``, ``step`` (the optimizer step after which
            the TT ranks were rounded), ``adapter_params_before`` and ``adapter_params_after``
            the rounding, and ``ranks`` (per TT layer); empty otherwise. ``adapter_params``
            counts the final adapter.
        base: The base model as loaded: dtype, quantized layers
            (:func:`~tensortrain_nn.bases.describe_base`).
        base_memory_bytes: Bytes of the loaded base's parameters and buffers.
        validation: With ``val_size``: the validation scores of the kept epoch (the best with
            early stopping, else the last) and its ``epoch``; then ``accuracy``, ``macro_f1``,
            ``metrics`` and ``num_test`` are the test split's (NaN without ``test_at_end``)
            and ``history`` holds the validation scores.
        stopped_epoch: With early stopping: the epoch after which training stopped, or None.
    """

    method: str
    description: str
    accuracy: float
    macro_f1: float
    history: list[dict[str, Any]]
    trainable_params: int
    adapter_params: int
    head_params: int
    other_params: int
    total_params: int
    trainable_share: float
    adapter_bytes: int
    seconds_per_step: float
    train_seconds: float
    peak_memory_mb: float
    num_train: int
    num_test: int
    labels: list[str]
    seed: int
    output_dir: str | None
    world_size: int = 1
    allreduce_bytes_per_step: int = 0
    resumed_from_step: int | None = None
    task: str = "classify"
    tokens_per_second: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    base: str = ""
    base_memory_bytes: int = 0
    validation: dict[str, Any] = field(default_factory=dict)
    stopped_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return dataclasses.asdict(self)
