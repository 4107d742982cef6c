r"""TTReparam (LoRETTA_rep): ``y = W0 x + b + (alpha / r) B(A(dropout(x)))`` with TT factors.

:class:`TTReparam` wraps a frozen linear layer with named :class:`~tensortrain_nn.TTUpdate`\ s and
owns the one state machine of what each update has put into the base weight
(:data:`~tensortrain_nn.update.BaseState`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import AdapterWrapper, cast_like, check_adapter_name, linear_features
from tensortrain_nn.bases.dtype import adapter_dtype
from tensortrain_nn.bases.quantized import check_plain
from tensortrain_nn.update import RepOptions, TTUpdate

__all__ = ["RepOptions", "TTReparam", "TTUpdate"]

_HALF = (torch.float16, torch.bfloat16)


class TTReparam(AdapterWrapper):
    """LoRETTA_rep: a frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) plus a TT low-rank update.

    ``y = base_layer(x) + (alpha / r) dW dropout(x)`` with ``dW`` from :class:`TTUpdate`. The base
    layer's parameters are frozen; only the TT cores train. Several named updates may live on one
    layer (``add_adapter`` / ``set_adapter``); one is active at a time. What each update has put
    into the base weight is one state per update (:data:`BaseState`), changed only by
    :meth:`correct`, :meth:`merge`, :meth:`unmerge`, :meth:`uncorrect` and :meth:`restore_base`.

    Args:
        base_layer: the frozen layer.
        adapter_name: name of the first update.
        dtype: dtype of the TT cores (default: from the options' ``adapter_dtype``: float32 on a
            half-precision or quantized base, else the base weight's; the base is never cast).
        svd_from_weight: see :meth:`add_adapter` (``init="svd"`` only).
        options: a :class:`RepOptions`; or its fields as keywords (``r, alpha, tt_rank, dropout,
            form, init, layout``; defaults follow the LoRETTA code: ``r=8, alpha=16, tt_rank=5,
            dropout=0.05``).

    Shape:
        ``x (..., in) -> y (..., out)``.

    Example:
        >>> layer = TTReparam(nn.Linear(384, 384))
        >>> x = torch.randn(2, 7, 384)
        >>> torch.equal(layer(x), layer.base_layer(x))  # zero update at init
        True
        >>> layer.merge(); layer.unmerge()
    """

    def __init__(
        self,
        base_layer: nn.Module,
        options: RepOptions | None = None,
        *,
        adapter_name: str = "default",
        dtype: torch.dtype | None = None,
        svd_from_weight: bool = True,
        **fields: Any,
    ) -> None:
        self.in_features, self.out_features, self.transposed = linear_features(base_layer)
        super().__init__(base_layer)
        opts = options if options is not None else RepOptions.build(fields)
        self.add_adapter(adapter_name, opts, dtype=dtype, svd_from_weight=svd_from_weight)

    def add_adapter(
        self,
        adapter_name: str,
        options: RepOptions | None = None,
        *,
        dtype: torch.dtype | None = None,
        svd_from_weight: bool = True,
        **fields: Any,
    ) -> None:
        """Add a named update (a :class:`RepOptions`, or its fields as keywords).

        ``init="svd"``: the update starts from the base weight's principal part
        (:meth:`TTUpdate.svd_init_`) and that part, as the TT factors hold it, is taken out of the
        base weight (:meth:`correct`), so the layer's output is unchanged. At most one such
        update per layer. With ``svd_from_weight=False`` neither happens: the caller loads the
        saved cores and buffers, then calls :meth:`correct` (how a saved adapter is loaded).
        A base weight on the meta device is left alone (counting parameters needs no SVD).
        """
        opts = options if options is not None else RepOptions.build(fields)
        weight = self._weight()
        if opts.init == "svd":
            self._check_plain(f"start init='svd' adapter {adapter_name!r} from the weight")
        dtype = adapter_dtype(opts.adapter_dtype, self.base_layer) if dtype is None else dtype
        update = TTUpdate(
            self.in_features, self.out_features, opts, dtype=dtype, device=weight.device
        )
        if update.svd_init is not None:
            self.check_svd_slot(adapter_name)
        from_weight = update.svd_init is not None and svd_from_weight and not weight.is_meta
        if from_weight:
            update.svd_init_(weight.T if self.transposed else weight)
        previous = self.active_adapter
        self._add(adapter_name, update)
        if from_weight:
            try:
                self.correct(adapter_name)
            except BaseException:
                del self.adapters[adapter_name]
                self.active_adapter = previous
                raise

    def check_svd_slot(self, adapter_name: str) -> None:
        """Raise if this layer cannot take an ``init="svd"`` update (it already holds one)."""
        held = [n for n in self.adapters if self._update(n).svd_init is not None]
        if held:
            raise TTValueError(
                f"cannot add init='svd' adapter {adapter_name!r}: this layer already holds "
                f"init='svd' adapter {held[0]!r} (its correction is in the base weight; one "
                "per layer)"
            )

    def after_load(self, name: str) -> list[Callable[[], object]]:
        """Once update ``name``'s saved tensors are in: an ``init="svd"`` update's initial part
        comes out of the base weight. Returns the steps that undo it."""
        if name not in self.adapters or self._update(name).svd_init is None:
            return []
        self.correct(name)
        return [lambda: self.uncorrect(name)]

    # ------------------------------------------------------------- the state machine

    def correct(self, name: str) -> None:
        """``clean -> corrected``: take update ``name``'s initial part ``(alpha / r) B0 A0`` out
        of the base weight (``init="svd"``), computed in float64, rounded once to its dtype.

        Raises:
            TTValueError: Not an svd update, not clean, or the result is not finite (the weight
                is then left unchanged).
        """
        update = self._svd_update(name)
        if update.state != "clean":
            raise TTValueError(f"adapter {name!r} is already taken out of the base weight")
        self._write(self._init_shifted(update, -1))
        update.state = "corrected"

    def uncorrect(self, name: str) -> None:
        """``corrected -> clean``: put update ``name``'s initial part back into the base weight
        (undoes :meth:`correct` to one rounding of the weight's dtype); no-op when clean."""
        update = self._svd_update(name)
        if update.state == "corrected":
            self._write(self._init_shifted(update, +1))
            update.state = "clean"

    def check_merge(self, adapter_name: str | None = None, safe: bool = True) -> None:
        """Raise as :meth:`merge` would (with ``safe``: a non-finite result), changing nothing."""
        name = self._name_or_active(adapter_name)
        self._check_plain(f"merge adapter {name!r} into the weight")
        if safe and not self._update(name).is_merged:
            self._delta_applied(name, +1, safe=True)

    def merge(self, adapter_name: str | None = None, safe_merge: bool = True) -> None:
        """``clean | corrected -> merged``: fold an update (default: the active one) into the base
        weight: no inference overhead.

        Half-precision weights are updated in float32 and cast back. With ``safe_merge`` a merge
        that would produce non-finite values raises and leaves the weight unchanged.
        """
        name = self._name_or_active(adapter_name)
        if not self._update(name).is_merged:
            self._apply_delta(name, +1, safe_merge)

    def unmerge(self, adapter_name: str | None = None) -> None:
        """``merged -> corrected | clean``: subtract merged updates from the base weight (exact
        up to round-off).

        Args:
            adapter_name: only this update (if merged); default: every merged update.
        """
        if adapter_name is not None:
            check_adapter_name(adapter_name, self.adapters)
        for name in self.merged_adapters:
            if adapter_name is None or name == adapter_name:
                self._apply_delta(name, -1, safe=False)

    def restore_base(self, keep: str | None = None) -> nn.Module:
        """Every update back to ``clean`` (merged ones out, svd corrections back in) except
        ``keep``, which stays as it is; returns the base layer (with ``keep=None``: the original
        layer, to the weight dtype's rounding)."""
        for name in self.adapters:
            if name == keep:
                continue
            if self._update(name).is_merged:
                self.unmerge(name)
            if self._update(name).state == "corrected":
                self.uncorrect(name)
        return self.base_layer

    @property
    def merged_adapters(self) -> list[str]:
        """Names of the updates currently folded into the base weight."""
        return [n for n in self.adapters if self._update(n).is_merged]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        running = None if self.adapters_disabled else self.active_adapter
        for name in self.adapters:
            if name != running:  # what an update not running put into the base comes back out
                part = self._update(name).in_base(x)
                if part is not None:
                    y = y - cast_like(part, y)
        update = cast("TTUpdate | None", self._active())
        if update is not None and not update.is_merged:
            y = y + cast_like(update(x), y)
        return y

    # ------------------------------------------------------------- helpers

    def _weight(self) -> torch.Tensor:
        return cast(torch.Tensor, self.base_layer.weight)

    def _check_plain(self, what: str) -> None:
        """Refuse ``what`` (a write into the base weight) on a quantized base, in one line."""
        check_plain(
            self.base_layer,
            "base_layer",
            what,
            "keep the adapter unmerged (it runs on the quantized base), or load the base in "
            "float32/bfloat16/float16, load_adapter onto it and merge there (or export_lora)",
        )

    def _update(self, name: str) -> TTUpdate:
        return cast(TTUpdate, self.adapters[name])

    def _name_or_active(self, adapter_name: str | None) -> str:
        name = adapter_name or self.active_adapter
        return check_adapter_name(name, self.adapters)

    def _svd_update(self, name: str) -> TTUpdate:
        update = self._update(check_adapter_name(name, self.adapters))
        if update.svd_init is None:
            raise TTValueError(f"adapter {name!r} has init={update.init!r}, not 'svd'")
        return update

    def _init_shifted(self, update: TTUpdate, sign: int) -> torch.Tensor:
        """The base weight plus ``sign`` times the svd initial part, in float64, checked."""
        with torch.no_grad():
            delta = update.init_delta(torch.float64)
            new = self._weight().to(torch.float64) + sign * (delta.T if self.transposed else delta)
        if not bool(torch.isfinite(new).all()):
            raise TTValueError(
                "the init='svd' correction would write non-finite values into the base "
                "weight; the weight was left unchanged"
            )
        return new

    def _write(self, new: torch.Tensor) -> None:
        weight = self._weight()
        with torch.no_grad():
            weight.copy_(new.to(weight.dtype))

    def _delta_applied(self, name: str, sign: int, safe: bool) -> torch.Tensor:
        """The base weight with ``sign`` times update ``name`` added, in the compute dtype
        (float32 for half weights); with ``safe`` an error if any value is not finite."""
        self._check_plain(f"merge adapter {name!r} into the weight")
        weight = self._weight()
        with torch.no_grad():
            compute = torch.float32 if weight.dtype in _HALF else weight.dtype
            delta = self._update(name).delta_weight(compute)
            new = weight.to(compute) + sign * (delta.T if self.transposed else delta)
        if safe and not bool(torch.isfinite(new).all()):
            raise TTValueError(
                f"merging adapter {name!r} would write non-finite values into the base weight; "
                "the weight was left unchanged"
            )
        return new

    def _apply_delta(self, name: str, sign: int, safe: bool) -> None:
        update = self._update(name)
        self._write(self._delta_applied(name, sign, safe))
        with torch.no_grad():
            update.merged.fill_(sign > 0)
        if sign > 0:
            update.state = "merged"
        else:
            update.state = "clean" if update.svd_init is None else "corrected"

    def _before_delete(self, name: str) -> None:
        if self._update(name).is_merged:
            raise TTValueError(f"adapter {name!r} is merged: unmerge() before deleting it")
        if self._update(name).state == "corrected":  # the base weight gets its svd part back
            self.uncorrect(name)
