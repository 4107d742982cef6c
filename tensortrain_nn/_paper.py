"""``layout="paper"``: the official LoRETTA code's adapter factors, each one TT tensor.

:func:`factor_layer` builds one adapter factor in either layout (a TT-matrix
:class:`~tensortrain_nn.TTLinear` or a :class:`TTTensorLinear` of :func:`paper_shape`);
:func:`factor_weight` and :func:`svd_cores_of` read and fill a factor in either layout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from tensortrain import TTTensor, tt_matrix_svd, tt_svd
from tensortrain._checks import check_int
from tensortrain.errors import TTShapeError
from tensortrain.init import linear_init_std
from tensortrain.matrix import dense
from tensortrain.shapes import factorize
from tensortrain_nn.linear import TTLinear, make_parameters

#: How an adapter factor is stored: ``"matrix"`` (a TT-matrix, :class:`~tensortrain_nn.TTLinear`,
#: modes chosen by :func:`tensortrain.shapes.choose_modes`, ranks clipped) or ``"paper"`` (one TT
#: tensor of the official LoRETTA code's hand-written shape, ranks not clipped:
#: :class:`TTTensorLinear`).
Layout = Literal["matrix", "paper"]
LAYOUTS: tuple[str, ...] = ("matrix", "paper")

#: The official code's shape table (``loretta/utils/tensor_util.py``,
#: ``TRANSFORMERS_HIDDEN_SIZE_TO_TENSOR_SHAPE``): ``r -> features -> shape`` with
#: ``prod(shape) == r * features``. rep's A (in x r) and B (r x out) both use
#: ``PAPER_SHAPES[r][features]`` as written. Eight entries of that table do not hold
#: ``r * features`` (the r=32 row for 1024..8192, copied from r=16, and r=64 at 2304) and would
#: fail there; they are left out here, so those sizes take :func:`paper_shape`'s fallback.
PAPER_SHAPES: dict[int, dict[int, tuple[int, ...]]] = {
    5: {
        768: (5, 8, 12, 8),
        1024: (4, 8, 5, 8, 4),
        1280: (4, 8, 5, 8, 5),
        1536: (4, 8, 5, 8, 6),
        1600: (5, 8, 5, 8, 5),
        2304: (5, 8, 8, 4, 9),
        4096: (16, 16, 5, 4, 4),
        5120: (5, 8, 10, 8, 8),
        8192: (4, 16, 16, 10, 4),
    },
    8: {
        768: (8, 8, 12, 8),
        1024: (4, 8, 8, 8, 4),
        1280: (4, 8, 8, 8, 5),
        1536: (4, 8, 8, 8, 6),
        1600: (5, 8, 8, 8, 5),
        2304: (8, 8, 8, 4, 9),
        4096: (16, 16, 8, 4, 4),
        5120: (8, 8, 10, 8, 8),
        8192: (4, 16, 16, 16, 4),
    },
    16: {
        768: (8, 16, 12, 8),
        1024: (4, 8, 16, 8, 4),
        1280: (4, 8, 16, 8, 5),
        1536: (4, 8, 16, 8, 6),
        1600: (5, 8, 16, 8, 5),
        2304: (8, 8, 8, 8, 9),
        4096: (16, 16, 16, 4, 4),
        5120: (8, 16, 10, 8, 8),
        8192: (4, 16, 16, 16, 8),
    },
    32: {768: (4, 8, 12, 8, 8), 2304: (8, 8, 16, 8, 9)},
    64: {
        768: (8, 8, 12, 8, 8),
        1024: (4, 8, 8, 8, 8, 4),
        1280: (4, 8, 8, 8, 8, 5),
        1536: (4, 8, 8, 8, 8, 6),
        1600: (5, 8, 8, 8, 8, 5),
        4096: (16, 16, 16, 4, 4, 4),
        5120: (5, 8, 8, 16, 8, 8),
        8192: (4, 16, 16, 16, 8, 4),
    },
    128: {
        768: (8, 16, 12, 8, 8),
        1024: (4, 8, 16, 8, 8, 4),
        1280: (4, 8, 16, 8, 8, 5),
        1536: (4, 8, 16, 8, 8, 6),
        1600: (5, 8, 16, 8, 8, 5),
        4096: (16, 16, 16, 8, 4, 4),
        5120: (5, 8, 16, 16, 8, 8),
        8192: (4, 16, 16, 16, 16, 4),
    },
}
#: The LLM adapter's own shapes (``large_models/loretta/tuners/loretta_adp.py``): the down
#: projection ``(features, bottleneck) -> shape``; the up projection is the reversed shape.
PAPER_ADP_SHAPES: dict[tuple[int, int], tuple[int, ...]] = {
    (1024, 64): (4, 8, 8, 8, 8, 4),
    (4096, 64): (16, 16, 16, 4, 4, 4),
    (5120, 64): (5, 8, 8, 16, 8, 8),
    (8192, 64): (16, 16, 16, 8, 4, 4),
}


def paper_shape(
    in_features: int, out_features: int, role: Literal["rep", "adp"]
) -> tuple[int, ...]:
    """The TT tensor shape that holds an ``in x out`` projection in ``layout="paper"``.

    Looked up as the official code does: ``"rep"`` (A: ``in x r``, B: ``r x out``) in
    :data:`PAPER_SHAPES` by ``(r, features)`` with ``r = min(in, out)``; ``"adp"`` in
    :data:`PAPER_ADP_SHAPES` (the down projection; up reversed), then in :data:`PAPER_SHAPES` by
    ``(bottleneck, features)``. A size the tables do not hold gets the documented fallback:
    ``factorize(in * out, d)`` (balanced, non-increasing; reversed for a widening projection) with
    ``d = max(2, round(log8(in * out)))``, modes of about 8 as the tables mostly have.

    Example:
        >>> paper_shape(4096, 64, "adp"), paper_shape(64, 4096, "adp")
        ((16, 16, 16, 4, 4, 4), (4, 4, 4, 16, 16, 16))
        >>> paper_shape(4096, 8, "rep"), paper_shape(8, 4096, "rep")
        ((16, 16, 8, 4, 4), (16, 16, 8, 4, 4))
        >>> paper_shape(384, 8, "rep")  # not in the table: the fallback
        (8, 8, 8, 6)
    """
    narrow, wide = min(in_features, out_features), max(in_features, out_features)
    widening = in_features < out_features
    if role == "adp" and (wide, narrow) in PAPER_ADP_SHAPES:
        shape = PAPER_ADP_SHAPES[(wide, narrow)]
        return shape[::-1] if widening else shape
    found = PAPER_SHAPES.get(narrow, {}).get(wide)
    if found is not None:
        return found[::-1] if role == "adp" and widening else found
    size = in_features * out_features
    d = max(2, round(math.log(size, 8)))
    shape = factorize(size, d)
    return shape[::-1] if widening else shape


class TTTensorLinear(nn.Module):
    """``y = x @ T.reshape(in, out) + b``: a linear map whose ``(in, out)`` weight is one TT tensor.

    The official LoRETTA code's layer (``layout="paper"``): the whole ``in * out`` weight,
    row-major as ``(in, out)``, is a TT tensor of ``shape`` (``prod(shape) == in * out``; the
    in/out split need not fall between modes) with every internal bond ``rank`` (not clipped:
    a bond may exceed what the modes allow, as in that code, so the parameter counts match it).
    The forward pass materialises the ``in x out`` weight (cheap for adapter factors, which are
    thin) and applies one matmul.

    Args:
        in_features, out_features: the map's sizes.
        shape: the TT tensor's modes, product ``in_features * out_features``.
        rank: every internal bond rank.
        bias: a bias of ``out_features`` (uniform like ``nn.Linear``'s).
        std: entry std of the reconstructed weight. zero_core: a core set to zero (output zero).
        dtype, device: of the parameters.

    Shape:
        ``x (..., in_features) -> y (..., out_features)``.

    Example:
        >>> layer = TTTensorLinear(4096, 8, shape=(16, 16, 8, 4, 4), rank=8, bias=False)
        >>> layer.num_parameters, layer(torch.randn(2, 4096)).shape
        (1952, torch.Size([2, 8]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        shape: Sequence[int],
        rank: int,
        bias: bool = True,
        std: float = 1.0,
        zero_core: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(check_int(f"shape[{k}]", n) for k, n in enumerate(shape))
        if math.prod(shape) != in_features * out_features:
            raise TTShapeError(
                f"shape must have product in_features * out_features = "
                f"{in_features} * {out_features} = {in_features * out_features}, got {shape} "
                f"(product {math.prod(shape)})"
            )
        check_int("rank", rank)
        self.in_features, self.out_features, self.shape = in_features, out_features, shape
        self.ranks = (1, *[rank] * (len(shape) - 1), 1)
        self.cores, self.bias = make_parameters(
            [(n,) for n in shape],
            self.ranks,
            std,
            zero_core,
            bias,
            in_features,
            out_features,
            dtype,
            device,
        )

    @property
    def tt(self) -> TTTensor:
        """The weight as a :class:`~tensortrain.TTTensor` of ``shape`` (sharing the cores)."""
        return TTTensor(list(self.cores))

    def dense_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``(out, in)`` weight, the cores cast to ``dtype`` first (materialised)."""
        return factor_weight(self, dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out_features, in_features)`` weight (materialised: ``O(in * out)``)."""
        return self.dense_weight()

    @property
    def num_parameters(self) -> int:
        """Parameters in the cores and bias."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"shape={self.shape}, ranks={self.ranks}, bias={self.bias is not None}, "
            f"params={self.num_parameters}"
        )


def factor_layer(
    in_features: int,
    out_features: int,
    *,
    layout: str,
    role: Literal["rep", "adp"],
    rank: int,
    bias: bool,
    std: float | str,
    zero_core: int | None,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> TTLinear | TTTensorLinear:
    """One adapter factor in ``layout``: a :class:`~tensortrain_nn.TTLinear` (``"matrix"``) or a
    :class:`TTTensorLinear` of :func:`paper_shape` (``"paper"``)."""
    if layout == "paper":
        if isinstance(std, str):
            std = linear_init_std(in_features, out_features, std)
        shape = paper_shape(in_features, out_features, role)
        return TTTensorLinear(
            in_features,
            out_features,
            shape=shape,
            rank=rank,
            bias=bias,
            std=std,
            zero_core=zero_core,
            dtype=dtype,
            device=device,
        )
    return TTLinear(
        in_features,
        out_features,
        rank=rank,
        bias=bias,
        init=std,
        zero_core=zero_core,
        dtype=dtype,
        device=device,
    )


def factor_weight(
    layer: TTLinear | TTTensorLinear,
    dtype: torch.dtype | None = None,
    cores: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The dense ``(out, in)`` weight of a factor (either layout), the cores cast to ``dtype``
    before the product (materialised). With ``cores``: of those cores (same shapes as the
    layer's) in the layer's layout."""
    cores = list(layer.cores if cores is None else cores)
    if dtype is not None:
        cores = [c.to(dtype) for c in cores]
    if isinstance(layer, TTTensorLinear):
        return TTTensor(cores).full().reshape(layer.in_features, layer.out_features).T
    return dense(cores)


def svd_cores_of(layer: TTLinear | TTTensorLinear, target: torch.Tensor) -> list[torch.Tensor]:
    """TT-SVD of a dense ``(out, in)`` ``target`` into cores of ``layer``'s exact shapes.

    The TT-matrix layout uses :func:`tensortrain.tt_matrix_svd` with the layer's modes, the paper
    layout :func:`tensortrain.tt_svd` of ``target.T`` reshaped to the layer's shape; either is
    capped at the layer's bond ranks, and bonds the decomposition left smaller (an exactly
    low-rank target) are padded with zeros, which changes no entry of the product. Computed in
    ``target``'s dtype; the cores come back in it.
    """
    caps = layer.ranks[1:-1]
    if isinstance(layer, TTTensorLinear):
        cores = tt_svd(target.T.reshape(layer.shape), max_rank=caps).cores
    else:
        cores = tt_matrix_svd(target, layer.out_modes, layer.in_modes, max_rank=caps).cores
    out = []
    for core, want in zip(cores, layer.cores, strict=True):
        padded = torch.zeros(want.shape, dtype=core.dtype, device=core.device)
        padded[: core.shape[0], ..., : core.shape[-1]] = core
        out.append(padded)
    return out
