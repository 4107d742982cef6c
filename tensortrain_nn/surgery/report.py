"""trainable_report(): peft's one-line parameter count plus a per-module table."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from tensortrain_nn.surgery.targets import is_head_parameter, is_norm, tt_modules

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
    if is_head_parameter(owner):
        return "head"
    return "norm" if is_norm(module) else type(module).__name__


def trainable_report(model: nn.Module) -> TrainableReport:
    """Count trainable parameters, peft-style, with a table grouped by module.

    TT layers (TTReparam, TTAdapter, TTLinear) are one row per group; other trainable
    parameters (head, norms, biases) are grouped by the module that holds them.

    Args:
        model: any module (patched or not).

    Returns:
        A :class:`TrainableReport`; ``str()`` of it is peft's line plus the table.

    Example:
        >>> from torch import nn
        >>> from tensortrain_nn import patch
        >>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> model = patch(model, target_modules=["0"], r=2, tt_rank=2, trainable_head=False)
        >>> print(trainable_report(model))
        trainable params: 48 || all params: 388 || trainable%: 12.3711
        module  kind       count  trainable
        ------  ---------  -----  ---------
        0       TTReparam  1             48
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


def print_trainable_parameters(model: nn.Module) -> None:
    """Print peft's line (``trainable params: ... || all params: ... || trainable%: ...``).

    peft's ``model.print_trainable_parameters()`` as a function; :func:`trainable_report`
    gives the numbers and a per-module table.

    Example:
        >>> from torch import nn
        >>> print_trainable_parameters(nn.Linear(4, 2))
        trainable params: 10 || all params: 10 || trainable%: 100.0000
    """
    print(trainable_report(model).line)
