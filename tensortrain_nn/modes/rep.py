"""``mode="rep"`` (LoRETTA_rep): a :class:`~tensortrain_nn.TTReparam` on each linear target."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from tensortrain.errors import TTShapeError, TTValueError
from tensortrain_nn._wrapper import AdapterWrapper, linear_features
from tensortrain_nn.bases.quantized import check_plain
from tensortrain_nn.modes.base import Mode, Target, check_bond_ranks
from tensortrain_nn.reparam import TTReparam
from tensortrain_nn.update import RepOptions, TTUpdate


class RepMode(Mode):
    """LoRETTA_rep: ``y = W0 x + (alpha / r) B A x`` with TT factors (options:
    :class:`~tensortrain_nn.update.RepOptions`)."""

    name = "rep"
    options_class = RepOptions
    wrapper = TTReparam
    options: RepOptions

    def plan(self, model: nn.Module, target: Target) -> None:
        """Factors ``A (in -> r)``, ``B (r -> out)`` (full form: one); ranks and weight checked."""
        opts = self.options
        in_f, out_f, _ = linear_features(target.base)
        if opts.form == "factors":
            if opts.r > min(in_f, out_f):
                raise TTShapeError(
                    f"r={opts.r} exceeds min(in, out)={min(in_f, out_f)} of {target.name!r} "
                    f"({out_f} x {in_f}): a rank-{opts.r} update does not fit"
                )
            target.factors = [("A", in_f, opts.r), ("B", opts.r, out_f)]
        else:
            target.factors = [("weight", in_f, out_f)]
        if opts.layout != "paper":  # the paper layout does not clip ranks: any rank builds
            check_bond_ranks(target, opts.tt_rank, "tt_rank")
        if opts.init == "svd":
            check_plain(
                target.base,
                target.name,
                "start init='svd' from the weight",
                "use init='zero' or 'paper' on a quantized base",
            )
        weight = cast(torch.Tensor, target.base.weight)
        if opts.init == "svd" and not weight.is_meta and not bool(torch.isfinite(weight).all()):
            raise TTValueError(
                f"init='svd' needs a finite weight, but {target.name!r} holds NaN or inf values"
            )

    def check_stack(self, target: Target, adapter_name: str) -> None:
        """At most one ``init="svd"`` update per layer."""
        if self.options.init == "svd":
            try:
                cast(TTReparam, target.module).check_svd_slot(adapter_name)
            except TTValueError as exc:
                raise TTValueError(f"{target.name!r}: {exc}") from None

    def dry_build(self, target: Target) -> None:
        in_f, out_f, _ = linear_features(target.base)
        TTUpdate(in_f, out_f, self.options, device="meta")

    def build(self, target: Target, adapter_name: str, from_weight: bool = True) -> nn.Module:
        return TTReparam(
            target.module, self.options, adapter_name=adapter_name, svd_from_weight=from_weight
        )

    def add_to(self, wrapper: AdapterWrapper, adapter_name: str, from_weight: bool = True) -> None:
        cast(TTReparam, wrapper).add_adapter(
            adapter_name, self.options, svd_from_weight=from_weight
        )
