"""The job's one place for a parameter budget (``--opt budget=N``, ``--opt budget_at=F``).

The rules are :mod:`tensortrain_nn.budget`'s (``check_budget``, ``fit_budget``); here is what
the job does with them: which configs may carry a budget, refusing one out of reach before
training, and rounding the adapter's TT ranks at step ``floor(budget_at * total_steps)``.

Example:
    >>> rank_budget({"budget": 5000})
    (5000, 0.33)
    >>> patch_options({"rank": 5, "budget": 5000})
    {'rank': 5}
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from tensortrain._checks import check_int, check_number
from tensortrain_nn.budget import (
    BUDGET_OPTIONS,
    DEFAULT_BUDGET_AT,
    adapter_parameters,
    check_budget,
    fit_budget,
)
from tensortrain_nn.tasks import FinetuneError


def check_options(
    method: str, options: dict[str, Any], checkpoint_every: int, resume: bool
) -> None:
    """``budget`` / ``budget_at`` options: rep and adp only, in range, no checkpoints.

    Raises:
        FinetuneError: A budget for another method, ``budget_at`` alone, or with checkpoints.
        TTValueError / TTTypeError: ``budget`` not a positive int, ``budget_at`` not in [0, 1].
    """
    given = [k for k in BUDGET_OPTIONS if k in options]
    if not given:
        return
    if method not in ("rep", "adp"):
        raise FinetuneError(
            f"method option {given[0]} needs method rep or adp (TT ranks to round), "
            f"got method {method!r}"
        )
    if "budget" not in options:
        raise FinetuneError("method option budget_at needs budget (the parameter budget)")
    check_int("method option budget", options["budget"])
    if "budget_at" in options:
        check_number("method option budget_at", options["budget_at"], minimum=0.0, maximum=1.0)
    if checkpoint_every > 0 or resume:
        raise FinetuneError(
            "method option budget cannot be combined with checkpoint_every or resume: a "
            "checkpoint written after the rounding holds cores of other shapes"
        )


def rank_budget(options: dict[str, Any]) -> tuple[int, float] | None:
    """``(budget, budget_at)`` of the method options, or None without a budget."""
    if "budget" not in options:
        return None
    return int(options["budget"]), float(options.get("budget_at", DEFAULT_BUDGET_AT))


def patch_options(options: dict[str, Any]) -> dict[str, Any]:
    """The method options without the budget's (what ``patch`` takes)."""
    return {k: v for k, v in options.items() if k not in BUDGET_OPTIONS}


def check_reachable(model: nn.Module, options: dict[str, Any]) -> None:
    """Refuse, before training, a budget below the patched model's smallest adapter."""
    if "budget" in options:
        check_budget(model, options["budget"])


def check_world(budget: tuple[int, float] | None, world: int) -> None:
    """Refuse a budget under several processes (the DDP wrapper is not rebuilt for new shapes)."""
    if world > 1 and budget is not None:
        raise FinetuneError(
            "method option budget needs a single process: rounding gives the TT cores new "
            f"shapes, and the DDP wrapper of {world} processes is not rebuilt for them; "
            "train on one process (one GPU or the CPU)"
        )


class Rounding:
    """When and how a run rounds its adapter to the budget.

    Args:
        budget: ``(budget, budget_at)``, or None (never rounds).
        total_steps: Optimizer steps of the run.

    Attributes:
        step: The global step after which to round (0: before the first), or None.
        record: What the rounding did (``budget``, ``step``, ``adapter_params_before`` /
            ``_after``, ``ranks``); empty until it ran.
    """

    def __init__(self, budget: tuple[int, float] | None, total_steps: int) -> None:
        self.budget = budget
        self.step = None if budget is None else math.floor(budget[1] * total_steps)
        self.record: dict[str, Any] = {}

    def fit(self, model: nn.Module, global_step: int) -> bool:
        """Round ``model``'s adapter to the budget; whether any parameter was replaced."""
        assert self.budget is not None
        params = [id(p) for p in model.parameters()]
        before = adapter_parameters(model)
        ranks = fit_budget(model, self.budget[0])
        self.record = {
            "budget": self.budget[0],
            "step": global_step,
            "adapter_params_before": before,
            "adapter_params_after": adapter_parameters(model),
            "ranks": {name: list(r) for name, r in ranks.items()},
        }
        return [id(p) for p in model.parameters()] != params
