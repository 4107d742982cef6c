"""TTReparam (LoRETTA_rep): ``y = W0 x + b + (alpha / r) B(A(dropout(x)))`` with TT factors."""

from __future__ import annotations

from typing import Any, Literal, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTValueError
from tensortrain.init import linear_init_std
from tensortrain_nn._wrapper import (
    AdapterWrapper,
    FactorLayout,
    Layout,
    TTTensorLinear,
    cast_like,
    chain_grads,
    chain_product,
    check_layout,
    factor_layer,
    factor_layout,
    factor_weight,
    linear_features,
    svd_cores_of,
)
from tensortrain_nn.linear import TTLinear

Form = Literal["factors", "full"]
Init = Literal["zero", "paper", "svd"]
INITS: tuple[str, ...] = ("zero", "paper", "svd")
_HALF = (torch.float16, torch.bfloat16)


class TTUpdate(nn.Module):
    """A TT-parameterised update ``dW (out, in)``, scaled by ``alpha / r``.

    ``form="factors"`` (LoRETTA's own): ``dW = B @ A`` with ``A: in -> r`` and ``B: r -> out``
    each a TT-matrix of rank ``tt_rank``; ``form="full"``: ``dW`` is one TT-matrix of rank
    ``tt_rank`` (``r`` then only sets the scale).

    ``init="zero"``: the last core of ``B`` (or of ``dW``) is zero, so the update is exactly zero;
    the others are drawn so that ``A`` has ``nn.Linear``'s entry std. The first optimiser step
    moves the zero core only (as LoRA's first step moves only ``B``); from the second step every
    core moves. ``init="paper"``: every core random with entry std ``sqrt(1 / (in + out))`` as in
    the LoRETTA code, so the update starts small but nonzero. ``init="svd"``: the update starts
    from the frozen weight's principal part (:meth:`svd_init_`, PiSSA with TT factors), which
    :class:`TTReparam` takes out of the base weight so the output is unchanged at step 0; the
    initial cores are kept as buffers (``svd_init``, saved with the adapter).

    ``layout="matrix"`` (default): each factor a TT-matrix (:class:`~tensortrain_nn.TTLinear`,
    modes chosen for any size, ranks clipped). ``layout="paper"``: each factor one TT tensor of
    the official code's shape for its size, ranks not clipped
    (:class:`~tensortrain_nn._wrapper.TTTensorLinear`, shapes from
    :func:`~tensortrain_nn._wrapper.paper_shape`); it reproduces that code's parameter counts
    (``form="factors"`` only).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        r: int = 8,
        alpha: float = 16.0,
        tt_rank: int = 5,
        dropout: float = 0.05,
        form: Form = "factors",
        init: Init = "zero",
        layout: Layout = "matrix",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_int("r", r)
        alpha = check_number("alpha", alpha)
        dropout = check_number("dropout", dropout, minimum=0.0, maximum=1.0, open_max=True)
        if form not in ("factors", "full"):
            raise TTValueError(f"form must be 'factors' or 'full', got {form!r}")
        if init not in INITS:
            raise TTValueError(f"init must be one of {list(INITS)}, got {init!r}")
        self.layout = check_layout(layout)
        if layout == "paper" and form != "factors":
            raise TTValueError(
                f"layout='paper' needs form='factors' (the official code has no full form), "
                f"got form={form!r}"
            )
        self.r, self.alpha, self.form, self.init = r, float(alpha), form, init
        #: Store less for backward than plain autograd would (see forward).
        self.lean_backward = True
        self.scaling = self.alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        zero = None if init == "paper" else -1  # svd: a zero start until svd_init_ fills the cores
        kw: dict[str, Any] = {"rank": tt_rank, "bias": False, "dtype": dtype, "device": device}
        kw.update(layout=layout, role="rep")
        self.A: TTLinear | TTTensorLinear | None = None
        self.B: TTLinear | TTTensorLinear
        if form == "factors":
            std = (
                linear_init_std(in_features, r)
                if init != "paper"
                else (1 / (in_features + r)) ** 0.5
            )
            b_std = (
                linear_init_std(r, out_features)
                if init != "paper"
                else (1 / (r + out_features)) ** 0.5
            )
            self.A = factor_layer(in_features, r, std=std, zero_core=None, **kw)
            self.B = factor_layer(r, out_features, std=b_std, zero_core=zero, **kw)
        else:
            std = linear_init_std(in_features, out_features)
            if init == "paper":
                std = (1 / (in_features + out_features)) ** 0.5
            self.B = factor_layer(in_features, out_features, std=std, zero_core=zero, **kw)
        # The merge state lives in a buffer (so it survives state_dict round trips) and is mirrored
        # in a Python bool that forward reads (no device sync, no graph break under torch.compile).
        self.merged: torch.Tensor
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool))
        self.is_merged = False
        self.register_load_state_dict_post_hook(_sync_merged)
        #: init="svd": the initial cores (buffers, saved with the adapter), which define the
        #: correction ``(alpha / r) B0 A0`` taken out of the base weight; None otherwise.
        self.svd_init: _InitCores | None = None
        if init == "svd":
            self.svd_init = _InitCores(self.A, self.B)
        #: Whether the correction is now subtracted from the base weight (TTReparam sets it).
        self.corrected = False

    def svd_init_(self, weight: torch.Tensor) -> None:
        """Start from the principal part of ``weight (out, in)`` (``init="svd"``; PiSSA with TT
        factors). Materialises an SVD of ``weight`` in float64: ``O(out * in * min(out, in))``.

        Top-``r`` SVD ``W ~ U S V^T``; ``A0 = sqrt(S) V^T / sqrt(s)``, ``B0 = U sqrt(S) / sqrt(s)``
        (``s = alpha / r``), each TT-SVD-compressed to its factor's shape and ranks; the full form
        compresses ``U S V^T / s``. The cores and the ``svd_init`` buffers get the result (in the
        cores' dtype). The base weight is not touched here (TTReparam corrects it).
        """
        if self.svd_init is None:
            raise TTValueError(f"svd_init_ needs init='svd', this update has init={self.init!r}")
        with torch.no_grad():
            w = weight.detach().to(torch.float64)
            u, sv, vh = torch.linalg.svd(w, full_matrices=False)
            u, sv, vh = u[:, : self.r], sv[: self.r], vh[: self.r]
            root = (sv / self.scaling).sqrt()
            targets = (
                [(self.B, (u * root) @ (root[:, None] * vh))]
                if self.A is None
                else [(self.A, root[:, None] * vh), (self.B, u * root)]
            )
            for layer, target in targets:
                for core, new in zip(layer.cores, svd_cores_of(layer, target), strict=True):
                    core.copy_(new)
            self.svd_init.copy_from(self.A, self.B)

    def init_delta(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The correction ``(alpha / r) B0 A0`` (dense ``(out, in)``, from the saved initial cores,
        cast to ``dtype`` before the product): what ``delta_weight`` was at step 0."""
        assert self.svd_init is not None
        b = factor_weight(self.B, dtype, self.svd_init.cores("B"))
        if self.A is None:
            return b * self.scaling
        return (b * self.scaling) @ factor_weight(self.A, dtype, self.svd_init.cores("A"))

    def init_update(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) B0 A0 x`` for ``x (..., in)``, no dropout (adds a correction back)."""
        assert self.svd_init is not None
        x = cast_like(x, self.B.cores[0])
        b = factor_weight(self.B, None, self.svd_init.cores("B"))
        if self.A is None:
            return (x @ b.T) * self.scaling
        a = factor_weight(self.A, None, self.svd_init.cores("A"))
        return ((x @ a.T) * self.scaling) @ b.T

    def delta_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The scaled update ``(alpha / r) dW`` as a dense ``(out, in)`` matrix (materialised).

        With ``dtype``, the cores are cast first, so the product itself is computed in ``dtype``.
        """
        b = factor_weight(self.B, dtype)
        if self.A is None:
            return b * self.scaling
        return (b * self.scaling) @ factor_weight(self.A, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) dW dropout(x)`` for ``x (..., in)``.

        In the factor form the thin factors ``A (r, in)`` and ``B (out, r)`` are materialised once
        and applied as two thin matmuls. When training (``lean_backward``, the default), the factor
        form runs as one autograd node (:class:`_FactorUpdate`) that rebuilds ``A`` and ``B`` from
        the cores itself and keeps ``x`` (often held anyway: query and value share it), the
        dropout mask (1 byte an entry) and the ``r``-wide ``dropout(x) A^T``: less than LoRA
        stores (``dropout(x)`` in full precision), and no second draw of the mask. The full form
        recomputes the update in backward instead (activation checkpointing, dropout replayed).

        Dropout keeps each entry with probability ``1 - p`` (to ``2^-31``; :func:`_keep_mask`,
        about half the cost of ``nn.Dropout``'s draw on CPU) and scales by ``1 / (1 - p)``.
        """
        training = torch.is_grad_enabled() and self.B.cores[0].requires_grad
        if not (self.lean_backward and training):
            return self._update(x)
        if self.A is None:
            return cast(torch.Tensor, checkpoint(self._update, x, use_reentrant=False))
        x = cast_like(x, self.B.cores[0])
        p = self._p()
        mask = _keep_mask(x, p) if p > 0 else None
        layouts = (factor_layout(self.A), factor_layout(self.B))
        cores = (*self.A.cores, *self.B.cores)
        out = _FactorUpdate.apply(x, mask, p, self.scaling, layouts, *cores)
        return cast(torch.Tensor, out)

    def deterministic(self, x: torch.Tensor) -> torch.Tensor:
        """``(alpha / r) dW x``: the update without dropout, in train and eval mode alike.

        This is exactly what :meth:`TTReparam.merge` folds into the base weight, so subtracting
        it takes a merged update back out (to round-off) whatever the module's mode.
        """
        return self._update(x, dropout=False)

    def _p(self) -> float:
        """The dropout probability in effect now (0 in eval mode)."""
        return self.dropout.p if isinstance(self.dropout, nn.Dropout) and self.training else 0.0

    def _update(self, x: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        x = cast_like(x, self.B.cores[0])
        p = self._p() if dropout else 0.0
        if p > 0:
            x = torch.where(_keep_mask(x, p), x, 0.0) * (1 / (1 - p))
        if self.A is None:
            return self.B(x) * self.scaling
        return ((x @ self.A.weight.T) * self.scaling) @ self.B.weight.T


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A boolean mask of ``x``'s shape, each entry True with probability ``1 - p`` (to ``2^-31``).

    One int32 draw (uniform on ``[0, 2^31)``) compared with ``round((1 - p) 2^31)``: on CPU about
    half the time of ``bernoulli_``, which ``nn.Dropout`` uses. ``randint`` (not ``random_``)
    so that ``torch.compile`` traces it without a graph break.
    """
    draw = torch.randint(0, 2**31, x.shape, dtype=torch.int32, device=x.device)
    return draw < round((1 - p) * 2**31)


class _FactorUpdate(torch.autograd.Function):
    """``y = s (dropout(x) A^T) B^T`` with ``A``, ``B`` rebuilt from their cores: one graph node.

    Inputs: ``x``, the keep ``mask`` (None: no dropout), ``p``, ``s``, the two factors'
    :class:`~tensortrain_nn._wrapper.FactorLayout` and then the cores of ``A`` and of ``B``.
    ``dropout(x) = where(mask, x, 0) / (1 - p)``, the ``1 / (1 - p)`` applied to the ``r``-wide
    product, so the output equals :meth:`TTUpdate._update`'s under the same mask to round-off.
    Saves ``x``, the mask, ``h = dropout(x) A^T``, the factors and the cores' chain prefixes
    (:func:`~tensortrain_nn._wrapper.chain_product`; a factor's size or less), and computes the
    cores' gradients from those of ``A`` and ``B`` (:func:`~tensortrain_nn._wrapper.chain_grads`):
    the reconstruction costs ``3 (d - 1)`` small matmuls a factor and no autograd nodes. Each
    pass over an ``x``-sized tensor is a ``where`` on the boolean mask (one forward, one for the
    gradient of ``A``, one for that of ``x``), and none materialises the mask as floats.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        p: float,
        scaling: float,
        layouts: tuple[FactorLayout, FactorLayout],
        *cores: torch.Tensor,
    ) -> torch.Tensor:
        n_a = layouts[0].num_cores
        pa, pb = chain_product(cores[:n_a]), chain_product(cores[n_a:])
        a, b = layouts[0].weight(pa[-1]), layouts[1].weight(pb[-1])
        kept = x if mask is None else torch.where(mask, x, 0.0)
        h = kept @ (a * (1 / (1 - p))).mT
        ctx.save_for_backward(x, mask, h, a, b, *cores, *pa[:-1], *pb[:-1])
        ctx.p, ctx.scaling, ctx.layouts = p, scaling, layouts
        return h @ (b * scaling).mT

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mask, h, a, b, *rest = ctx.saved_tensors
        la, lb = ctx.layouts
        n_a, n = la.num_cores, la.num_cores + lb.num_cores
        cores, pa, pb = rest[:n], rest[n : n + n_a - 1], rest[n + n_a - 1 :]
        p, scaling = ctx.p, ctx.scaling
        # backward runs outside autocast: compute in the forward's dtype (h's: bfloat16 under a
        # bfloat16 autocast), as autocast did there; autograd casts each gradient to its input's
        a, b, dt = a.to(h.dtype), b.to(h.dtype), h.dtype
        g = grad.reshape(-1, grad.shape[-1]).to(dt)
        gh = g @ (b * (scaling / (1 - p)))  # (tokens, r): d/d(where(mask, x, 0))
        dx: torch.Tensor | None = None
        core_grads: list[torch.Tensor | None] = [None] * n
        if any(ctx.needs_input_grad[5:]):
            # (r, out) then transposed: the (out, r) product directly runs ~4x slower on CPU
            db = (h.reshape(-1, h.shape[-1]).mT @ g).mT * scaling
            kept = x if mask is None else torch.where(mask, x, 0.0)
            da = gh.mT @ kept.reshape(-1, x.shape[-1]).to(dt)
            core_grads = [
                *chain_grads(cores[:n_a], pa, la.flat_grad(da)),
                *chain_grads(cores[n_a:], pb, lb.flat_grad(db)),
            ]
        if ctx.needs_input_grad[0]:
            dx = (gh @ a).reshape(x.shape)
            if mask is not None:
                dx = torch.where(mask, dx, 0.0)
        return dx, None, None, None, None, *core_grads


class _InitCores(nn.Module):
    """The initial cores of an ``init="svd"`` update, as buffers ``A_0, A_1, ..., B_0, ...``."""

    def __init__(self, a: TTLinear | TTTensorLinear | None, b: TTLinear | TTTensorLinear) -> None:
        super().__init__()
        for label, layer in (("A", a), ("B", b)):
            if layer is not None:
                for k, core in enumerate(layer.cores):
                    self.register_buffer(f"{label}_{k}", torch.zeros_like(core.detach()))

    def cores(self, label: str) -> list[torch.Tensor]:
        """The buffers of factor ``label`` (``"A"`` or ``"B"``), in core order."""
        found = {n: b for n, b in self.named_buffers() if n.startswith(label + "_")}
        return [found[f"{label}_{k}"] for k in range(len(found))]

    def copy_from(self, a: TTLinear | TTTensorLinear | None, b: TTLinear | TTTensorLinear) -> None:
        for label, layer in (("A", a), ("B", b)):
            if layer is not None:
                for buf, core in zip(self.cores(label), layer.cores, strict=True):
                    buf.copy_(core.detach())


def _sync_merged(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, TTUpdate)
    module.is_merged = bool(module.merged)


class TTReparam(AdapterWrapper):
    """LoRETTA_rep: a frozen ``nn.Linear`` (or GPT-2 ``Conv1D``) plus a TT low-rank update.

    ``y = base_layer(x) + (alpha / r) dW dropout(x)`` with ``dW`` from :class:`TTUpdate`. The base
    layer's parameters are frozen; only the TT cores train. Several named updates may live on one
    layer (``add_adapter`` / ``set_adapter``); one is active at a time.

    Args:
        base_layer: the frozen layer.
        adapter_name: name of the first update.
        r, alpha, tt_rank, dropout, form, init, layout: see :class:`TTUpdate` (defaults follow
            the LoRETTA code: ``r=8, alpha=16, tt_rank=5, dropout=0.05``).
        dtype: dtype of the TT cores (default: the base weight's; the base is never cast).
        svd_from_weight: see :meth:`add_adapter` (``init="svd"`` only).

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
        *,
        adapter_name: str = "default",
        r: int = 8,
        alpha: float = 16.0,
        tt_rank: int = 5,
        dropout: float = 0.05,
        form: Form = "factors",
        init: Init = "zero",
        layout: Layout = "matrix",
        dtype: torch.dtype | None = None,
        svd_from_weight: bool = True,
    ) -> None:
        self.in_features, self.out_features, self.transposed = linear_features(base_layer)
        super().__init__(base_layer)
        self.add_adapter(
            adapter_name,
            svd_from_weight=svd_from_weight,
            r=r,
            alpha=alpha,
            tt_rank=tt_rank,
            dropout=dropout,
            form=form,
            init=init,
            layout=layout,
            dtype=dtype,
        )

    def add_adapter(
        self, adapter_name: str, *, svd_from_weight: bool = True, **kwargs: object
    ) -> None:
        """Add a named update with :class:`TTUpdate`'s keyword arguments.

        ``init="svd"``: the update starts from the base weight's principal part
        (:meth:`TTUpdate.svd_init_`) and that part, as the TT factors hold it, is taken out of the
        base weight (:meth:`correct`), so the layer's output is unchanged. At most one such
        update per layer. With ``svd_from_weight=False`` neither happens: the caller loads the
        saved cores and buffers, then calls :meth:`correct` (how a saved adapter is loaded).
        A base weight on the meta device is left alone (counting parameters needs no SVD).
        """
        weight = cast(torch.Tensor, self.base_layer.weight)
        kwargs.setdefault("dtype", None)
        if kwargs["dtype"] is None:
            kwargs["dtype"] = weight.dtype
        update = TTUpdate(self.in_features, self.out_features, device=weight.device, **kwargs)  # type: ignore[arg-type]
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

    def correct(self, name: str) -> None:
        """Take update ``name``'s initial part ``(alpha / r) B0 A0`` out of the base weight
        (``init="svd"``), computed in float64 and rounded once to the weight's dtype.

        Raises:
            TTValueError: Not an svd update, already corrected, or the result is not finite
                (the weight is then left unchanged).
        """
        update = self._svd_update(name)
        if update.corrected:
            raise TTValueError(f"adapter {name!r} is already taken out of the base weight")
        self._shift(update, -1)
        update.corrected = True

    def uncorrect(self, name: str) -> None:
        """Put update ``name``'s initial part back into the base weight (undoes :meth:`correct`
        to one rounding of the weight's dtype)."""
        update = self._svd_update(name)
        if update.corrected:
            self._shift(update, +1)
            update.corrected = False

    def holds_svd(self, name: str) -> bool:
        """Whether this layer holds update ``name`` and it has ``init="svd"``."""
        return name in self.adapters and self._update(name).svd_init is not None

    def _svd_update(self, name: str) -> TTUpdate:
        if name not in self.adapters:
            raise TTValueError(f"adapter_name must be one of {list(self.adapters)}, got {name!r}")
        update = self._update(name)
        if update.svd_init is None:
            raise TTValueError(f"adapter {name!r} has init={update.init!r}, not 'svd'")
        return update

    def _shift(self, update: TTUpdate, sign: int) -> None:
        weight = cast(torch.Tensor, self.base_layer.weight)
        with torch.no_grad():
            delta = update.init_delta(torch.float64)
            new = weight.to(torch.float64) + sign * (delta.T if self.transposed else delta)
            if not bool(torch.isfinite(new).all()):
                raise TTValueError(
                    "the init='svd' correction would write non-finite values into the base "
                    "weight; the weight was left unchanged"
                )
            weight.copy_(new.to(weight.dtype))

    def release_base(self) -> nn.Module:
        """Undo every change to the base layer (merged updates out, svd corrections back in) and
        return it: the original layer, to the weight dtype's rounding."""
        self.unmerge()
        for name in self.adapters:
            if self._update(name).corrected:
                self.uncorrect(name)
        return self.base_layer

    @property
    def merged_adapters(self) -> list[str]:
        """Names of the updates currently folded into the base weight."""
        return [n for n in self.adapters if self._update(n).is_merged]

    def _update(self, name: str) -> TTUpdate:
        return cast(TTUpdate, self.adapters[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name in self.adapters:
            if not self.adapters_disabled and name == self.active_adapter:
                continue
            other = self._update(name)
            if other.is_merged:  # merged but not to be applied: take it back out
                # the merged update has no dropout: subtract it without dropout (train mode too)
                y = y - cast_like(other.deterministic(x), y)
            if other.corrected:  # an svd init's part taken out of the base: put it back
                y = y + cast_like(other.init_update(x), y)
        update = cast("TTUpdate | None", self._active())
        if update is not None and not update.is_merged:
            y = y + cast_like(update(x), y)
        return y

    def _delta_applied(self, name: str, sign: int, safe: bool) -> torch.Tensor:
        """The base weight with ``sign`` times update ``name`` added, in the compute dtype
        (float32 for half weights); with ``safe`` an error if any value is not finite."""
        weight = cast(torch.Tensor, self.base_layer.weight)
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
        weight = cast(torch.Tensor, self.base_layer.weight)
        new = self._delta_applied(name, sign, safe)
        with torch.no_grad():
            weight.copy_(new.to(weight.dtype))
            update.merged = torch.tensor(sign > 0, device=update.merged.device)
            update.is_merged = sign > 0

    def check_merge(self, adapter_name: str | None = None) -> None:
        """Raise as :meth:`merge` with ``safe_merge`` would, changing nothing (for callers that
        merge several layers all or nothing)."""
        name = adapter_name or self.active_adapter
        if name is None or name not in self.adapters:
            raise TTValueError(f"adapter_name must be one of {list(self.adapters)}, got {name!r}")
        if not self._update(name).is_merged:
            self._delta_applied(name, +1, safe=True)

    def merge(self, adapter_name: str | None = None, safe_merge: bool = True) -> None:
        """Fold an update (default: the active one) into the base weight: no inference overhead.

        Half-precision weights are updated in float32 and cast back. With ``safe_merge`` a merge
        that would produce non-finite values raises and leaves the weight unchanged.
        """
        name = adapter_name or self.active_adapter
        if name is None or name not in self.adapters:
            raise TTValueError(f"adapter_name must be one of {list(self.adapters)}, got {name!r}")
        if not self._update(name).is_merged:
            self._apply_delta(name, +1, safe_merge)

    def unmerge(self, adapter_name: str | None = None) -> None:
        """Subtract merged updates from the base weight (exact up to round-off).

        Args:
            adapter_name: only this update (if merged); default: every merged update.
        """
        if adapter_name is not None and adapter_name not in self.adapters:
            raise TTValueError(
                f"adapter_name must be one of {list(self.adapters)}, got {adapter_name!r}"
            )
        for name in self.merged_adapters:
            if adapter_name is None or name == adapter_name:
                self._apply_delta(name, -1, safe=False)

    def _before_delete(self, name: str) -> None:
        if self._update(name).is_merged:
            raise TTValueError(f"adapter {name!r} is merged: unmerge() before deleting it")
        if self._update(name).corrected:  # the base weight gets its svd part back
            self.uncorrect(name)
