"""trainable_report(): peft's one-line parameter count plus a per-module table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from tensortrain_nn.surgery.state import tt_modules
from tensortrain_nn.surgery.targets import HEAD_NAMES, is_norm

_INDEX = re.compile(r"\.\d+(?=\.|$)")


@dataclass(frozen=True)
class ReportRow:
    """Trainable parameters of a group of modules with the same name up to layer indices."""

    name: str
    kind: str
    count: int
    trainable: int


@dataclass(frozen=True)
class TrainableReport:
    """Trainable vs all parameters; ``str()`` gives peft's line and a per-module table.

    Attributes:
        trainable: parameters with ``requires_grad``. total: all parameters (adapters included,
            as peft counts them). rows: one per module group that has trainable parameters.
    """

    trainable: int
    total: int
    rows: list[ReportRow] = field(default_factory=list)

    @property
    def percent(self) -> float:
        """``100 * trainable / total``."""
        return 100.0 * self.trainable / self.total if self.total else 0.0

    @property
    def line(self) -> str:
        """peft's ``print_trainable_parameters`` line."""
        return (
            f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || "
            f"trainable%: {self.percent:.4f}"
        )

    def table(self) -> str:
        """A plain-text table: module (layer indices as ``*``), kind, modules, trainable."""
        head = ("module", "kind", "count", "trainable")
        body = [(r.name, r.kind, str(r.count), f"{r.trainable:,d}") for r in self.rows]
        widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + f"  {{:>{widths[-1]}}}"
        lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.line + "\n" + self.table()


def _kind(model: nn.Module, owner: str) -> str:
    module = model.get_submodule(owner) if owner else model
    if owner.rsplit(".", 1)[-1] in HEAD_NAMES or any(f".{h}." in f".{owner}." for h in HEAD_NAMES):
        return "head"
    return "norm" if is_norm(module) else type(module).__name__


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable parameters, peft-style, with a table grouped by module.

    TT layers (TTReparam, TTAdapter, TTLinear) are one row per group; other trainable
    parameters (head, norms, biases) are grouped by the module that holds them.

    Example:
        >>> print(trainable_report(patch(model, mode="rep")))
        trainable params: 14,640 || all params: 22,727,856 || trainable%: 0.0644
        module                              kind       count  trainable
        ...
    """
    tt = dict(tt_modules(model))
    groups: dict[tuple[str, str], tuple[set[str], list[int]]] = {}
    total = trainable = 0
    for name, param in model.named_parameters():
        total += param.numel()
        if not param.requires_grad:
            continue
        trainable += param.numel()
        owner = next((t for t in tt if name.startswith(t + ".")), None)
        if owner is not None:
            key = (_INDEX.sub(".*", owner), type(tt[owner]).__name__)
        else:
            mod = name.rpartition(".")[0]
            key = (_INDEX.sub(".*", mod), _kind(model, mod))
        members, count = groups.setdefault(key, (set(), [0]))
        members.add(owner or name.rpartition(".")[0])
        count[0] += param.numel()
    rows = [ReportRow(n, k, len(m), c[0]) for (n, k), (m, c) in groups.items()]
    return TrainableReport(trainable, total, rows)
