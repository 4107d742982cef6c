"""Hot-path adapter factors: each a single autograd node that rebuilds its weight from the cores.

:func:`chain_product` / :func:`chain_grads` are the forward and backward of a chain of cores;
:func:`factor_linear` (one factor, used by LoRETTA_adp) and :class:`FactorUpdate` (``B A``,
used by LoRETTA_rep) run on them with no autograd node per small product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from tensortrain.errors import TTShapeError
from tensortrain_nn._paper import TTTensorLinear
from tensortrain_nn.linear import TTLinear


def chain_product(cores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Prefix products of a chain of cores ``(r_{k-1}, *q_k, r_k)`` with ``r_0 = r_d = 1``.

    The k-th prefix is ``(P_k, r_k)`` with ``P_k = prod(q_1..q_k)``, rows row-major over
    ``(q_1, ..., q_k)``; the last, ``(P_d, 1)``, is every entry of the TT tensor (or, for TT-matrix
    cores, ``q_k = (m_k, n_k)``, of the matrix in the interleaved order ``(m_1, n_1, ..., m_d,
    n_d)``). ``d - 1`` matmuls, ``O(P_d r)`` time; no autograd bookkeeping beyond the matmuls'.
    :func:`chain_grads` is its backward.

    Example:
        >>> cores = [torch.randn(1, 3, 2), torch.randn(2, 4, 1)]
        >>> [tuple(t.shape) for t in chain_product(cores)]
        [(3, 2), (12, 1)]
    """
    t = cores[0].reshape(-1, cores[0].shape[-1])
    prefixes = [t]
    for core in cores[1:]:
        t = (t @ core.reshape(core.shape[0], -1)).reshape(-1, core.shape[-1])
        prefixes.append(t)
    return prefixes


def chain_grads(
    cores: Sequence[torch.Tensor], prefixes: Sequence[torch.Tensor], grad: torch.Tensor
) -> list[torch.Tensor]:
    """Gradients of the cores given ``grad``, that of the last prefix of :func:`chain_product`
    (any shape with ``P_d`` entries); only ``prefixes[:-1]`` are read. ``2 (d - 1)`` matmuls,
    computed in the cores' dtype, each gradient in its core's shape."""
    dt = cores[0].dtype
    grads = []  # last core first
    g = grad.to(dt)
    for k in range(len(cores) - 1, 0, -1):
        core = cores[k].reshape(cores[k].shape[0], -1)  # (r_{k-1}, q_k r_k)
        g = g.reshape(-1, core.shape[1])  # (P_{k-1}, q_k r_k)
        grads.append((prefixes[k - 1].to(dt).mT @ g).reshape(cores[k].shape))
        g = g @ core.mT  # (P_{k-1}, r_{k-1})
    grads.append(g.reshape(cores[0].shape))
    return grads[::-1]


@dataclass(frozen=True)
class FactorLayout:
    """Where each entry of a factor's :func:`chain_product` goes in its dense ``(out, in)`` weight.

    Attributes:
        out_features, in_features: the weight's shape.
        num_cores: how many cores the factor has.
        modes: a TT-matrix's interleaved modes ``(m_1, n_1, ..., m_d, n_d)`` (the chain product's
            order); None for a :class:`TTTensorLinear`, whose chain product is the ``(in, out)``
            weight row-major.
    """

    out_features: int
    in_features: int
    num_cores: int
    modes: tuple[int, ...] | None

    def weight(self, flat: torch.Tensor) -> torch.Tensor:
        """The ``(out, in)`` weight from the last chain prefix (a small copy for a TT-matrix)."""
        if self.modes is None:
            return flat.reshape(self.in_features, self.out_features).mT
        d = self.num_cores
        perm = (*range(0, 2 * d, 2), *range(1, 2 * d, 2))
        return flat.reshape(self.modes).permute(perm).reshape(self.out_features, self.in_features)

    def flat_grad(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient of the last chain prefix from that of the weight (``weight``'s adjoint)."""
        if self.modes is None:
            return grad.mT.reshape(-1)
        d = self.num_cores
        perm = [i for k in range(d) for i in (k, d + k)]
        return grad.reshape(*self.modes[0::2], *self.modes[1::2]).permute(perm).reshape(-1)


def factor_layout(layer: TTLinear | TTTensorLinear) -> FactorLayout:
    """The :class:`FactorLayout` of a factor in either layout."""
    if isinstance(layer, TTTensorLinear):
        return FactorLayout(layer.out_features, layer.in_features, len(layer.shape), None)
    modes = tuple(x for mn in zip(layer.out_modes, layer.in_modes, strict=True) for x in mn)
    return FactorLayout(layer.out_features, layer.in_features, len(layer.in_modes), modes)


def factor_linear(
    x: torch.Tensor, layer: TTLinear | TTTensorLinear, scale: float = 1.0
) -> torch.Tensor:
    """``scale * layer(x)`` for a factor in either layout, as one autograd node.

    The weight is rebuilt from the cores (:func:`chain_product`) and applied with one ``addmm``;
    backward computes the weight's gradient and from it the cores' (:func:`chain_grads`), with no
    autograd node per small product. Always dense: an adapter factor is thin, so its weight is
    small, and one GEMM beat the TT sweep even where :func:`tensortrain.plan` picks the sweep
    (4096 -> 64 at 512 rows, CPU: 1.5x faster forward, 1.4x with backward). Same values as
    ``scale * layer(x)`` to round-off (``scale`` is applied to the weight and bias).

    Shape:
        ``x (..., in_features) -> (..., out_features)``.
    """
    layout = factor_layout(layer)
    out = _FactorLinear.apply(x, float(scale), layout, layer.bias, *layer.cores)
    return cast(torch.Tensor, out)


class _FactorLinear(torch.autograd.Function):
    """``y = x (s W)^T + s b``, ``W`` rebuilt from its cores inside (see :func:`factor_linear`)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        scale: float,
        layout: FactorLayout,
        bias: torch.Tensor | None,
        *cores: torch.Tensor,
    ) -> torch.Tensor:
        if x.shape[-1] != layout.in_features:
            raise TTShapeError(f"x must be (..., {layout.in_features}), got {tuple(x.shape)}")
        prefixes = chain_product(cores)
        w = layout.weight(prefixes[-1])
        w = w if scale == 1 else w * scale
        x2 = x.reshape(-1, x.shape[-1])
        if bias is None:
            y = x2 @ w.mT
        else:
            y = torch.addmm(bias if scale == 1 else bias * scale, x2, w.mT)
        ctx.save_for_backward(x, w, *cores, *prefixes[:-1])
        ctx.scale, ctx.layout = scale, layout
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, *rest = ctx.saved_tensors
        d = ctx.layout.num_cores
        cores, prefixes = rest[:d], rest[d:]
        # backward runs outside autocast: compute in the output's dtype (bfloat16 under a bfloat16
        # autocast), as autocast did in forward; autograd casts each gradient to its input's
        g = grad.reshape(-1, grad.shape[-1])
        dx = db = None
        core_grads: list[torch.Tensor | None] = [None] * d
        if ctx.needs_input_grad[0]:
            dx = (g @ w.to(g.dtype)).reshape(x.shape)
        if ctx.needs_input_grad[3]:
            db = g.sum(0) * ctx.scale
        if any(ctx.needs_input_grad[4:]):
            dw = (g.mT @ x.reshape(-1, x.shape[-1]).to(g.dtype)) * ctx.scale
            core_grads = list(chain_grads(cores, prefixes, ctx.layout.flat_grad(dw)))
        return dx, None, None, db, *core_grads


def keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """A boolean mask of ``x``'s shape, each entry True with probability ``1 - p`` (to ``2^-31``).

    One int32 draw (uniform on ``[0, 2^31)``) compared with ``round((1 - p) 2^31)``: on CPU about
    half the time of ``bernoulli_``, which ``nn.Dropout`` uses. ``randint`` (not ``random_``)
    so that ``torch.compile`` traces it without a graph break.
    """
    draw = torch.randint(0, 2**31, x.shape, dtype=torch.int32, device=x.device)
    return draw < round((1 - p) * 2**31)


class FactorUpdate(torch.autograd.Function):
    """``y = s (dropout(x) A^T) B^T`` with ``A``, ``B`` rebuilt from their cores: one graph node.


    :class:`FactorLayout` and then the cores of ``A`` and of ``B``.
    ``dropout(x) = where(mask, x, 0) / (1 - p)``, the ``1 / (1 - p)`` applied to the ``r``-wide
    product, so the output equals :class:`~tensortrain_nn.TTUpdate`'s plain path under the same
    mask to round-off.
    Saves ``x``, the mask, ``h = dropout(x) A^T``, the factors and the cores' chain prefixes
    (:func:`chain_product`; a factor's size or less), and computes the
    cores' gradients from those of ``A`` and ``B`` (:func:`chain_grads`):
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
