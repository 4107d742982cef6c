"""TTAdapter (LoRETTA_adp): a bottleneck adapter with TT projections after a frozen sublayer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from tensortrain._checks import check_number
from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import (
    AdapterWrapper,
    Layout,
    cast_like,
    check_layout,
    factor_layer,
    factor_linear,
    is_linear_like,
    linear_features,
)

#: Activations by name (a registry: errors list the valid names).
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
Init = Literal["zero", "paper"]
#: Where the adapter sits: ``"after"`` the sublayer (on its output) or ``"before"`` it (on its
#: input, as the official code's ``mh_adapter`` on LLaMA's gate and up projections).
Placement = Literal["after", "before"]
PLACEMENTS: tuple[str, ...] = ("after", "before")


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
        *,
        bottleneck: int = 64,
        tt_rank: int = 5,
        activation: str = "relu",
        scale: float = 1.0,
        dropout: float = 0.0,
        init: Init = "zero",
        layout: Layout = "matrix",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.layout = check_layout(layout)
        if activation not in ACTIVATIONS:
            raise TTValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        if init not in ("zero", "paper"):
            raise TTValueError(f"init must be 'zero' or 'paper', got {init!r}")
        dropout = check_number("dropout", dropout, minimum=0.0, maximum=1.0, open_max=True)
        self.scale, self.init = check_number("scale", scale), init
        paper = init == "paper"
        std: str | float = (1 / (features + bottleneck)) ** 0.5 if paper else "torch"
        kw: dict[str, Any] = {"layout": layout, "role": "adp", "rank": tt_rank, "bias": True}
        kw.update(std=std, dtype=dtype, device=device)
        self.down = factor_layer(features, bottleneck, zero_core=None, **kw)
        self.up = factor_layer(bottleneck, features, zero_core=None if paper else -1, **kw)
        if not paper:
            assert self.up.bias is not None
            nn.init.zeros_(self.up.bias)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``s * up(act(down(dropout(h))))`` for ``h (..., features)``.

        Each projection runs as one autograd node, densely by choice
        (:func:`~tensortrain_nn._wrapper.factor_linear`: weight rebuilt from the cores, bias added
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
        bottleneck, tt_rank, activation, scale, dropout, init, layout: see :class:`TTBottleneck`
            (defaults follow the LoRETTA code: bottleneck 64, TT rank 5, ReLU, scale 1).
        dtype: dtype of the adapter's parameters (default: that of the base layer's first).

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
        *,
        features: int | None = None,
        placement: Placement = "after",
        adapter_name: str = "default",
        bottleneck: int = 64,
        tt_rank: int = 5,
        activation: str = "relu",
        scale: float = 1.0,
        dropout: float = 0.0,
        init: Init = "zero",
        layout: Layout = "matrix",
        dtype: torch.dtype | None = None,
    ) -> None:
        if placement not in PLACEMENTS:
            raise TTValueError(f"placement must be one of {list(PLACEMENTS)}, got {placement!r}")
        if features is None:
            if placement == "before" and not is_linear_like(base_layer):
                raise TTValueError(
                    f"placement='before' on a {type(base_layer).__name__} needs features= "
                    "(the size of its input)"
                )
            features = linear_features(base_layer)[0 if placement == "before" else 1]
        super().__init__(base_layer)
        self.features, self.placement = features, placement
        self.add_adapter(
            adapter_name,
            bottleneck=bottleneck,
            tt_rank=tt_rank,
            activation=activation,
            scale=scale,
            dropout=dropout,
            init=init,
            layout=layout,
            dtype=dtype,
        )

    def add_adapter(self, adapter_name: str, **kwargs: object) -> None:
        """Add a named adapter with :class:`TTBottleneck`'s keyword arguments."""
        ref = next(self.base_layer.parameters(), None)
        if kwargs.get("dtype") is None:
            kwargs["dtype"] = None if ref is None else ref.dtype
        device = None if ref is None else ref.device
        self._add(adapter_name, TTBottleneck(self.features, device=device, **kwargs))  # type: ignore[arg-type]

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
