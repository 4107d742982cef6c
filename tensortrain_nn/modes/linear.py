"""``mode="linear"``: replace each linear target by a TT-SVD compressed
:class:`~tensortrain_nn.TTLinear` (no adapter: the dense weight is gone)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tensortrain._checks import check_int, check_number
from tensortrain_nn._options import Options
from tensortrain_nn._wrapper import linear_features
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.modes.base import Mode, Target


@dataclass(frozen=True)
class LinearOptions(Options):
    """``mode="linear"``'s options: TT-SVD truncation (see ``TTLinear.from_linear``).

    Attributes:
        max_rank: the largest TT rank (None: no cap).
        eps: relative error bound ``||W - TT|| <= eps ||W||`` (None: exact up to ``max_rank``).

    Example:
        >>> LinearOptions(max_rank=4)
        LinearOptions(max_rank=4, eps=None)
    """

    max_rank: int | None = None
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.max_rank is not None:
            check_int("max_rank", self.max_rank)
        if self.eps is not None:
            check_number("eps", self.eps, minimum=0.0)


def as_linear(module: nn.Module) -> nn.Linear:
    """``module`` as an ``nn.Linear`` (a Conv1D is transposed into a new one; no mutation).

    Example:
        >>> as_linear(nn.Linear(3, 2)).out_features
        2
    """
    if isinstance(module, nn.Linear):
        return module
    in_f, out_f, _ = linear_features(module)
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    bias: torch.Tensor | None = getattr(module, "bias", None)
    linear = nn.Linear(in_f, out_f, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().T.contiguous())
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone())
    return linear


class LinearMode(Mode):
    """Compress each target by TT-SVD into a :class:`~tensortrain_nn.TTLinear` (options:
    :class:`LinearOptions`); the default :meth:`~Mode.plan` checks ``max_rank``."""

    name = "linear"
    options_class = LinearOptions
    rank_option = "max_rank"
    options: LinearOptions

    def build(self, target: Target, adapter_name: str, from_weight: bool = True) -> nn.Module:
        opts = self.options
        return TTLinear.from_linear(as_linear(target.module), max_rank=opts.max_rank, eps=opts.eps)
