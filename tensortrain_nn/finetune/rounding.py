"""The job's one place for a parameter budget (``--opt budget=N``, ``--opt budget_at=F``).

The rules are :mod:`tensortrain_nn.budget`'s (:func:`~tensortrain_nn.budget.budget_options`,
:class:`~tensortrain_nn.budget.RankBudget`); here is only what is the job's: a budget cannot be
combined with checkpoints or several processes, and the loop rounds once, at a given step.

Example:
    >>> check_options("rep", {"budget": 5000}, checkpoint_every=0, resume=False)
    RankBudget(budget=5000, at=0.33)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tensortrain.errors import TTError
from tensortrain_nn.budget import RankBudget, budget_options
from tensortrain_nn.tasks import FinetuneError


def check_options(
    method: str, options: dict[str, Any], checkpoint_every: int, resume: bool
) -> RankBudget | None:
    """The budget in ``options`` (None without one), checked with the job's own rules.

    Raises:
        FinetuneError: A budget for another method, a bad ``budget`` / ``budget_at``, or a
            budget with checkpoints (a checkpoint after the rounding holds other shapes).
    """
    try:
        budget = budget_options(method, options)
    except TTError as exc:
        raise FinetuneError(str(exc)) from None
    if budget is not None and (checkpoint_every > 0 or resume):
        raise FinetuneError(
            "method option budget cannot be combined with checkpoint_every or resume: a "
            "checkpoint written after the rounding holds cores of other shapes"
        )
    return budget


def check_world(budget: RankBudget | None, world: int) -> None:
    """Refuse a budget under several processes (the DDP wrapper is not rebuilt for new shapes)."""
    if world > 1 and budget is not None:
        raise FinetuneError(
            "method option budget needs a single process: rounding gives the TT cores new "
            f"shapes, and the DDP wrapper of {world} processes is not rebuilt for them; "
            "train on one process (one GPU or the CPU)"
        )


class Rounding:
    """When a run rounds its adapter to the budget, and what the rounding did.

    Args:
        budget: The run's budget, or None (never rounds).
        total_steps: Optimizer steps of the run.

    Attributes:
        step: The global step after which to round (0: before the first), or None.
        record: What the rounding did (``budget``, ``step``, ``adapter_params_before`` /
            ``_after``, ``ranks``); empty until it ran.
    """

    def __init__(self, budget: RankBudget | None, total_steps: int) -> None:
        self.budget = budget
        self.step = None if budget is None else budget.step(total_steps)
        self.record: dict[str, Any] = {}

    def fit(self, model: nn.Module, global_step: int) -> bool:
        """Round ``model``'s adapter to the budget; whether any parameter was replaced."""
        assert self.budget is not None
        params = [id(p) for p in model.parameters()]
        done = self.budget.apply(model)
        self.record = {"budget": done.pop("budget"), "step": global_step, **done}
        return [id(p) for p in model.parameters()] != params
