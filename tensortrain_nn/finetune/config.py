"""The fine-tuning job's configuration and result.

Example:
    >>> config = FinetuneConfig(method="lora", epochs=1, max_train=256)
    >>> config.learning_rate
    0.001
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensortrain_nn.finetune.errors import FinetuneError
from tensortrain_nn.finetune.methods import DEFAULT_LR, get_method


@dataclass
class FinetuneConfig:
    """Everything one fine-tuning run needs; checked in ``__post_init__``.

    Attributes:
        method: A name in :data:`~tensortrain_nn.finetune.methods.METHODS`.
        model: A packaged name (``minilm``, ``smollm2``), a model folder or a ``.gguf`` file.
        data: A CSV / JSONL file, or None for the built-in Rotten Tomatoes snippets.
        text_column: Text column of ``data`` (and ``test_data``).
        label_column: Label column of ``data`` (and ``test_data``).
        test_data: Optional held-out file; without it, ``test_size`` examples of ``data`` are
            held out.
        test_size: Held-out count (int) or fraction (float); None: 800 for the built-in set,
            0.2 for a file.
        split_seed: Seed of the shuffle before the split (the split stays put across ``seed``).
        seed: Seed of training (head init, batch order, dropout).
        epochs: Passes over the training data.
        batch_size: Training batch size (evaluation uses ``4 * batch_size``).
        max_length: Tokens per text (longer texts are truncated).
        lr: Learning rate; None takes the method's default from :data:`DEFAULT_LR`.
        weight_decay: AdamW weight decay of weight matrices (never of biases and norms).
        tt_weight_decay: Weight decay of TT cores (parameters named ``tt_cores`` or ``.cores.``).
        warmup_ratio: Share of the steps with linear warm-up; linear decay to 0 after it.
        max_grad_norm: Gradient clipping norm (0 turns clipping off).
        max_train: Train on only the first N shuffled training examples.
        max_test: Evaluate on only the first N held-out examples.
        method_options: Keyword options of the method (``patch`` options, peft ``LoraConfig``
            fields).
        output_dir: Where the run is written; None: ``runs/<method>-<timestamp>``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1``...
        eval_every_epoch: Evaluate after each epoch (else only after the last).
        progress: Show a tqdm progress bar.
        save: Save the adapter and label mapping into ``output_dir``.
        checkpoint_every: Write a resumable checkpoint into ``output_dir/checkpoints`` every this
            many optimizer steps and after the last (0: none).
        resume: Continue from the newest valid checkpoint in ``output_dir/checkpoints`` (needs
            ``output_dir``); without one, start from step 0.
    """

    method: str = "rep"
    model: str = "minilm"
    data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    test_data: str | None = None
    test_size: int | float | None = None
    split_seed: int = 0
    seed: int = 0
    epochs: int = 3
    batch_size: int = 16
    max_length: int = 64
    lr: float | None = None
    weight_decay: float = 0.01
    tt_weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    max_train: int | None = None
    max_test: int | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    device: str = "auto"
    eval_every_epoch: bool = True
    progress: bool = True
    save: bool = True
    checkpoint_every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        get_method(self.method)
        for name in ("epochs", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_train", "max_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise FinetuneError(f"{name} must be >= 1 or None, got {value}")
        if self.lr is not None and self.lr <= 0:
            raise FinetuneError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise FinetuneError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        for name in ("weight_decay", "tt_weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise FinetuneError(f"{name} must be >= 0, got {getattr(self, name)}")
        size = self.test_size
        if size is not None and (
            (isinstance(size, float) and not 0 < size < 1) or (isinstance(size, int) and size < 1)
        ):
            raise FinetuneError(f"test_size must be an int >= 1 or a float in (0, 1), got {size}")
        if self.checkpoint_every < 0:
            raise FinetuneError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.resume and self.output_dir is None:
            raise FinetuneError("resume needs output_dir: the run folder whose checkpoints to use")
        if not isinstance(self.method_options, dict):
            raise FinetuneError(f"method_options must be a dict, got {self.method_options!r}")

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


@dataclass
class Result:
    """What a run measured.

    Attributes:
        method: The method's name.
        description: The method's one-line description.
        accuracy: Accuracy on the held-out set after the last epoch (0..1).
        macro_f1: Macro-averaged F1 on the held-out set after the last epoch (0..1).
        history: Per evaluated epoch: ``{"epoch", "accuracy", "macro_f1", "loss"}``.
        trainable_params: Every trainable parameter (adapter, head and other).
        adapter_params: Trainable parameters of the adapter (TT cores, LoRA factors).
        head_params: Trainable parameters of the task head.
        other_params: Other trainable parameters: norms, biases, or the base model's weights
            when it trains in full.
        total_params: All parameters of the model being trained (base plus adapter).
        trainable_share: ``trainable_params / total_params``.
        adapter_bytes: Size on disk of the saved adapter folder (0 when not saved).
        seconds_per_step: Mean wall time of one training step (forward, backward, update).
        train_seconds: Wall time of training, evaluation excluded.
        peak_memory_mb: Peak RSS of the process (CPU) or peak CUDA memory allocated (GPU), MiB.
        num_train: Training examples used.
        num_test: Held-out examples used.
        labels: Label names, index = id.
        seed: Training seed.
        output_dir: The run's folder, or None when not saved.
        world_size: Processes that trained (data-parallel; 1: not distributed).
        allreduce_bytes_per_step: Gradient bytes DDP all-reduces per step (the trainable
            tensors' bytes; 0 when not distributed).
        resumed_from_step: The checkpoint step the run resumed from, or None.
    """

    method: str
    description: str
    accuracy: float
    macro_f1: float
    history: list[dict[str, float]]
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

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return dataclasses.asdict(self)
