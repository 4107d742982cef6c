"""TTUpdate: LoRETTA_rep's update ``(alpha / r) B A`` with TT factors, and its options.

:class:`RepOptions` is the mode's option list (written once, checked once); :class:`TTUpdate`
builds the factors from it. The layer that wraps a frozen weight with updates is
:class:`~tensortrain_nn.TTReparam` (:mod:`tensortrain_nn.reparam`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTValueError
from tensortrain.init import linear_init_std
from tensortrain_nn._autograd import FactorUpdate, factor_layout, keep_mask
from tensortrain_nn._options import Options, check_choice
from tensortrain_nn._paper import LAYOUTS, TTTensorLinear, factor_layer, factor_weight, svd_cores_of
from tensortrain_nn._wrapper import cast_like
from tensortrain_nn.bases.dtype import check_adapter_dtype
from tensortrain_nn.linear import TTLinear

Form = Literal["factors", "full"]
Init = Literal["zero", "paper", "svd"]
FORMS: tuple[str, ...] = ("factors", "full")
INITS: tuple[str, ...] = ("zero", "paper", "svd")
#: What an update has put into its layer's base weight: ``"clean"`` nothing, ``"corrected"``
#: its ``init="svd"`` initial part taken out (``-(alpha / r) B0 A0``), ``"merged"`` folded in
#: (``+(alpha / r) B A``, minus the initial part for an svd update). Transitions (all on
#: :class:`~tensortrain_nn.TTReparam`): ``clean -> corrected`` (``correct``, svd only),
#: ``clean | corrected -> merged`` (``merge``), ``merged -> corrected | clean`` (``unmerge``),
#: ``corrected -> clean`` (``uncorrect``); ``restore_base`` takes every update back to ``clean``.
BaseState = Literal["clean", "corrected", "merged"]


@dataclass(frozen=True)
class RepOptions(Options):
    """LoRETTA_rep's options, checked once when built.

    Attributes:
        r: the LoRA bottleneck (``A: in -> r``, ``B: r -> out``); the scale is ``alpha / r``.
        alpha: the scale's numerator (finite, any sign).
        tt_rank: TT rank of every factor (bonds the mode sizes cannot hold are clipped).
        dropout: on the update's input, in ``[0, 1)``.
        form: ``"factors"`` (LoRETTA's ``B @ A``) or ``"full"`` (``dW`` one TT-matrix).
        init: ``"zero"``, ``"paper"`` or ``"svd"`` (see :class:`TTUpdate`).
        layout: ``"matrix"`` or ``"paper"`` (needs ``form="factors"``).
        adapter_dtype: the cores' dtype, one of
            :data:`~tensortrain_nn.bases.dtype.ADAPTER_DTYPES` (``"auto"``: float32 on a
            half-precision or quantized base, the base's dtype otherwise; ``"base"``: the base's).

    Raises:
        TTValueError: A value out of range, not finite, or not one of its choices (named).
        TTTypeError: A value of the wrong type (``r=2.5``).

    Example:
        >>> RepOptions(r=4, tt_rank=2).scaling
        4.0
        >>> RepOptions(form="dense")
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: form must be one of ['factors', 'full'], got 'dense'
    """

    r: int = 8
    alpha: float = 16.0
    tt_rank: int = 5
    dropout: float = 0.05
    form: str = "factors"
    init: str = "zero"
    layout: str = "matrix"
    adapter_dtype: str = "auto"

    def __post_init__(self) -> None:
        check_int("r", self.r)
        check_adapter_dtype(self.adapter_dtype)
        check_int("tt_rank", self.tt_rank)
        object.__setattr__(self, "alpha", float(check_number("alpha", self.alpha)))
        drop = check_number("dropout", self.dropout, minimum=0.0, maximum=1.0, open_max=True)
        object.__setattr__(self, "dropout", float(drop))
        check_choice("form", self.form, FORMS)
        check_choice("init", self.init, INITS)
        check_choice("layout", self.layout, LAYOUTS)
        if self.layout == "paper" and self.form != "factors":
            raise TTValueError(
                f"layout='paper' needs form='factors' (the official code has no full form), "
                f"got form={self.form!r}"
            )

    @property
    def scaling(self) -> float:
        """``alpha / r``."""
        return self.alpha / self.r


def _std(fan_in: int, fan_out: int, init: str) -> float:
    """Entry std of a factor: ``nn.Linear``'s, or the LoRETTA code's ``sqrt(1 / (in + out))``."""
    if init == "paper":
        return float((1 / (fan_in + fan_out)) ** 0.5)
    return float(linear_init_std(fan_in, fan_out))


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
    (:class:`~tensortrain_nn._paper.TTTensorLinear`, shapes from
    :func:`~tensortrain_nn._paper.paper_shape`); it reproduces that code's parameter counts
    (``form="factors"`` only).

    Args:
        in_features, out_features: the update's sizes.
        options: a :class:`RepOptions`; or its fields as keywords (``r=4, tt_rank=2``).
        dtype, device: of the cores.

    Shape:
        ``x (..., in) -> (..., out)``.

    Example:
        >>> update = TTUpdate(64, 32, r=4, tt_rank=2)
        >>> update(torch.randn(3, 64)).abs().max().item()  # zero at init
        0.0
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        options: RepOptions | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        opts = options if options is not None else RepOptions.build(fields)
        self.options = opts
        self.layout = opts.layout
        self.r, self.alpha, self.form, self.init = opts.r, opts.alpha, opts.form, opts.init
        #: Store less for backward than plain autograd would (see forward).
        self.lean_backward = True
        self.scaling = opts.scaling
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()
        zero = None if opts.init == "paper" else -1  # svd: zero until svd_init_ fills the cores
        kw: dict[str, Any] = {"rank": opts.tt_rank, "bias": False, "dtype": dtype}
        kw.update(device=device, layout=opts.layout, role="rep")
        self.A: TTLinear | TTTensorLinear | None = None
        self.B: TTLinear | TTTensorLinear
        if opts.form == "factors":
            a_std = _std(in_features, opts.r, opts.init)
            b_std = _std(opts.r, out_features, opts.init)
            self.A = factor_layer(in_features, opts.r, std=a_std, zero_core=None, **kw)
            self.B = factor_layer(opts.r, out_features, std=b_std, zero_core=zero, **kw)
        else:
            std = _std(in_features, out_features, opts.init)
            self.B = factor_layer(in_features, out_features, std=std, zero_core=zero, **kw)
        # The merge flag lives in a buffer (so it survives state_dict round trips); ``state`` is
        # the Python value forward reads (no device sync, no graph break under torch.compile).
        self.merged: torch.Tensor
        self.register_buffer("merged", torch.zeros((), dtype=torch.bool))
        #: What this update has put into its layer's base weight (see :data:`BaseState`).
        self.state: BaseState = "clean"
        self.register_load_state_dict_post_hook(_sync_merged)
        #: init="svd": the initial cores (buffers, saved with the adapter), which define the
        #: correction ``(alpha / r) B0 A0`` taken out of the base weight; None otherwise.
        self.svd_init: _InitCores | None = None
        if opts.init == "svd":
            self.svd_init = _InitCores(self.A, self.B)

    @property
    def is_merged(self) -> bool:
        """Whether the update is folded into its layer's base weight."""
        return self.state == "merged"

    def in_base(self, x: torch.Tensor) -> torch.Tensor | None:
        """What this update's :attr:`state` adds to the base layer's output for ``x (..., in)``
        (no dropout; None: nothing): a layer not running this update subtracts it."""
        if self.state == "clean":
            return None
        part = None if self.svd_init is None else -self.init_update(x)
        if self.state == "corrected":
            return part
        return self.deterministic(x) if part is None else self.deterministic(x) + part

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
        form runs as one autograd node (:class:`FactorUpdate`) that rebuilds ``A`` and ``B`` from
        the cores itself and keeps ``x`` (often held anyway: query and value share it), the
        dropout mask (1 byte an entry) and the ``r``-wide ``dropout(x) A^T``: less than LoRA
        stores (``dropout(x)`` in full precision), and no second draw of the mask. The full form
        recomputes the update in backward instead (activation checkpointing, dropout replayed).

        Dropout keeps each entry with probability ``1 - p`` (to ``2^-31``; :func:`keep_mask`,
        about half the cost of ``nn.Dropout``'s draw on CPU) and scales by ``1 / (1 - p)``.
        """
        training = torch.is_grad_enabled() and self.B.cores[0].requires_grad
        if not (self.lean_backward and training):
            return self._update(x)
        if self.A is None:
            return cast(torch.Tensor, checkpoint(self._update, x, use_reentrant=False))
        x = cast_like(x, self.B.cores[0])
        p = self._p()
        mask = keep_mask(x, p) if p > 0 else None
        layouts = (factor_layout(self.A), factor_layout(self.B))
        cores = (*self.A.cores, *self.B.cores)
        out = FactorUpdate.apply(x, mask, p, self.scaling, layouts, *cores)
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
            x = torch.where(keep_mask(x, p), x, 0.0) * (1 / (1 - p))
        if self.A is None:
            return self.B(x) * self.scaling
        return ((x @ self.A.weight.T) * self.scaling) @ self.B.weight.T


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
    """After ``load_state_dict``: the state follows the loaded ``merged`` buffer."""
    assert isinstance(module, TTUpdate)
    if bool(module.merged):
        module.state = "merged"
    elif module.state == "merged":
        module.state = "clean" if module.svd_init is None else "corrected"
