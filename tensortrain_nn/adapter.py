"""TTAdapter (LoRETTA_adp): a bottleneck adapter with TT projections after a frozen sublayer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTValueError
from tensortrain_nn._autograd import factor_linear
from tensortrain_nn._options import Options, check_choice
from tensortrain_nn._paper import LAYOUTS, factor_layer
from tensortrain_nn._wrapper import AdapterWrapper, cast_like, is_linear_like, linear_features
from tensortrain_nn.bases.dtype import adapter_dtype, check_adapter_dtype

#: Activations by name (a registry: errors list the valid names).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
Init = Literal["zero", "paper"]
INITS: tuple[str, ...] = ("zero", "paper")
#: Where the adapter sits: ``"after"`` the sublayer (on its output) or ``"before"`` it (on its
#: input, as the official code's ``mh_adapter`` on LLaMA's gate and up projections).
Placement = Literal["after", "before"]
PLACEMENTS: tuple[str, ...] = ("after", "before")
#: What a patch may ask for: a placement, or ``"paper"`` (before the targets named in
#: :data:`~tensortrain_nn.modes.adp.BEFORE_NAMES`, after the others).
PATCH_PLACEMENTS: tuple[str, ...] = (*PLACEMENTS, "paper")


@dataclass(frozen=True)
class AdpOptions(Options):
    """LoRETTA_adp's options, checked once when built (defaults: the LoRETTA code's).

    Attributes:
        bottleneck: the adapter's inner width ``b``.
        tt_rank: TT rank of both projections (bonds the modes cannot hold are clipped).
        activation: a name in :data:`ACTIVATIONS`.
        scale: ``s`` in ``s * up(act(down(h)))`` (finite, any sign).
        dropout: on the adapter's input, in ``[0, 1)``.
        init: ``"zero"`` (output exactly zero at step 0) or ``"paper"`` (all cores random).
        layout: ``"matrix"`` or ``"paper"`` (see :class:`TTBottleneck`).
        placement: where surgery puts it: ``"after"``, ``"before"`` or ``"paper"`` (per target);
            a :class:`TTAdapter` takes its own resolved ``placement`` argument.
        adapter_dtype: the dtype of the cores and biases (see
            :data:`~tensortrain_nn.bases.dtype.ADAPTER_DTYPES`; ``"auto"``: float32 on a
            half-precision or quantized sublayer).

    Example:
        >>> AdpOptions(bottleneck=8).tt_rank
        5
        >>> AdpOptions(init="svd")
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: init='svd' is for mode='rep' (it starts an update ...
    """

    bottleneck: int = 64
    tt_rank: int = 5
    activation: str = "relu"
    scale: float = 1.0
    dropout: float = 0.0
    init: str = "zero"
    layout: str = "matrix"
    placement: str = "after"
    adapter_dtype: str = "auto"

    def __post_init__(self) -> None:
        check_int("bottleneck", self.bottleneck)
        check_adapter_dtype(self.adapter_dtype)
        check_int("tt_rank", self.tt_rank)
        object.__setattr__(self, "scale", float(check_number("scale", self.scale)))
        drop = check_number("dropout", self.dropout, minimum=0.0, maximum=1.0, open_max=True)
        object.__setattr__(self, "dropout", float(drop))
        if self.init == "svd":
            raise TTValueError(
                "init='svd' is for mode='rep' (it starts an update from the frozen weight's "
                "principal part); mode='adp' takes init 'zero' or 'paper'"
            )
        check_choice("init", self.init, INITS)
        check_choice("layout", self.layout, LAYOUTS)
        check_choice("activation", self.activation, tuple(sorted(ACTIVATIONS)))
        check_choice("placement", self.placement, PATCH_PLACEMENTS)


class TTBottleneck(nn.Module):
    """``s * up(act(down(dropout(h))))`` with ``down: h -> b`` and ``up: b -> h`` TT layers.

    ``init="zero"`` (default): ``up``'s last core and bias are zero, so the adapter's output is
    exactly zero and the wrapped module is unchanged at step 0: patching cannot change a model's
    predictions before training, and results do not depend on a random initial perturbation.
    ``init="paper"``: as in the LoRETTA code, every core random with entry std
    ``sqrt(1 / (in + out))`` and biases uniform, so training starts from a small random output.

    ``layout``: ``"matrix"`` (TT-matrix projections) or ``"paper"`` (each projection one TT tensor
    of the official code's shape, ranks not clipped; see :class:`TTUpdate`'s note).
    """

    def __init__(
        self,
        features: int,
        options: AdpOptions | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        opts = options if options is not None else AdpOptions.build(fields)
        self.options, self.layout = opts, opts.layout
        self.scale, self.init = opts.scale, opts.init
        paper = opts.init == "paper"
        std: str | float = (1 / (features + opts.bottleneck)) ** 0.5 if paper else "torch"
        kw: dict[str, Any] = {"layout": opts.layout, "role": "adp", "rank": opts.tt_rank}
        kw.update(bias=True, std=std, dtype=dtype, device=device)
        self.down = factor_layer(features, opts.bottleneck, zero_core=None, **kw)
        self.up = factor_layer(opts.bottleneck, features, zero_core=None if paper else -1, **kw)
        if not paper:
            assert self.up.bias is not None
            nn.init.zeros_(self.up.bias)
        self.act = ACTIVATIONS[opts.activation]()
        self.dropout = nn.Dropout(opts.dropout) if opts.dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``s * up(act(down(dropout(h))))`` for ``h (..., features)``.

        Each projection runs as one autograd node, densely by choice
        (:func:`~tensortrain_nn._autograd.factor_linear`: weight rebuilt from the cores, bias added
        in the matmul, ``s`` folded into ``up``'s weight and bias).
        """
        z = self.act(factor_linear(self.dropout(h), self.down))
        return factor_linear(z, self.up, self.scale)


class TTAdapter(AdapterWrapper):
    """LoRETTA_adp: ``h = sublayer(x); return h + s * up(act(down(h)))``, sublayer frozen.

    With ``placement="before"`` the adapter runs on the sublayer's input instead:
    ``return sublayer(x + s * up(act(down(x))))`` (the official code's ``mh_adapter``, which it
    puts before LLaMA's gate and up projections).

    Args:
        base_layer: the frozen sublayer (for BERT-style blocks the attention-output and FFN-output
            dense layers; for LLaMA-style blocks the MLP).
        features: the size of the sublayer's output (``"before"``: of its input); inferred for
            ``nn.Linear`` / ``Conv1D``.
        placement: ``"after"`` (default) or ``"before"`` the sublayer.
        adapter_name: name of the first adapter.
        dtype: dtype of the adapter's parameters (default: from the options'
            ``adapter_dtype``: float32 on a half-precision or quantized sublayer, else its own).
        options: an :class:`AdpOptions`; or its fields as keywords (``bottleneck, tt_rank,
            activation, scale, dropout, init, layout``; defaults follow the LoRETTA code:
            bottleneck 64, TT rank 5, ReLU, scale 1). Its ``placement`` is not read here.

    Shape:
        ``x (..., *) -> (..., features)``: whatever the sublayer takes, its output shape.

    Example:
        >>> layer = TTAdapter(nn.Linear(768, 768))
        >>> x = torch.randn(2, 5, 768)
        >>> torch.equal(layer(x), layer.base_layer(x))  # zero output at init
        True
    """

    def __init__(
        self,
        base_layer: nn.Module,
        options: AdpOptions | None = None,
        *,
        features: int | None = None,
        placement: Placement = "after",
        adapter_name: str = "default",
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        check_choice("placement", placement, PLACEMENTS)
        if features is None:
            if placement == "before" and not is_linear_like(base_layer):
                raise TTValueError(
                    f"placement='before' on a {type(base_layer).__name__} needs features= "
                    "(the size of its input)"
                )
            features = linear_features(base_layer)[0 if placement == "before" else 1]
        super().__init__(base_layer)
        self.features, self.placement = features, placement
        opts = options if options is not None else AdpOptions.build(fields)
        self.add_adapter(adapter_name, opts, dtype=dtype)

    def add_adapter(
        self,
        adapter_name: str,
        options: AdpOptions | None = None,
        *,
        dtype: torch.dtype | None = None,
        **fields: Any,
    ) -> None:
        """Add a named adapter (an :class:`AdpOptions`, or its fields as keywords)."""
        opts = options if options is not None else AdpOptions.build(fields)
        ref = next(self.base_layer.parameters(), None)
        if dtype is None:
            dtype = adapter_dtype(opts.adapter_dtype, self.base_layer)
        device = None if ref is None else ref.device
        self._add(adapter_name, TTBottleneck(self.features, opts, dtype=dtype, device=device))

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        adapter = cast("TTBottleneck | None", self._active())
        if adapter is None:
            return cast(torch.Tensor, self.base_layer(*args, **kwargs))
        core = adapter.down.cores[0]
        if self.placement == "before":
            if not args or not isinstance(args[0], torch.Tensor):
                raise TTValueError(
                    "placement='before' needs the sublayer's input as the first positional "
                    f"argument, got args of types {[type(a).__name__ for a in args]}"
                )
            x = args[0]
            x = x + cast_like(adapter(cast_like(x, core)), x)
            return cast(torch.Tensor, self.base_layer(x, *args[1:], **kwargs))
        h = self.base_layer(*args, **kwargs)
        return h + cast_like(adapter(cast_like(h, core)), h)
