"""TTLinear: a drop-in ``nn.Linear`` whose weight is a TT-matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from tensortrain import TTMatrix, round_cores, tt_linear, tt_matrix_svd
from tensortrain._cores import check_cores
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.init import linear_init_std, random_cores
from tensortrain.matrix import dense
from tensortrain.shapes import choose_modes, resolve_ranks


def make_parameters(
    modes: Sequence[tuple[int, ...]],
    ranks: Sequence[int],
    std: float,
    zero_core: int | None,
    bias: bool,
    in_features: int,
    out_features: int,
    dtype: torch.dtype | None,
    device: torch.device | str | None,
) -> tuple[nn.ParameterList, nn.Parameter | None]:
    """Random TT cores (entry std ``std``, core ``zero_core`` zero) and ``nn.Linear``'s bias init.

    Shared by the TT layers: ``modes`` are per-core mode tuples (``(m, n)`` for a TT-matrix,
    ``(n,)`` for a TT tensor); the bias is ``U(-1/sqrt(in), 1/sqrt(in))`` as ``nn.Linear``'s.
    """
    cores = random_cores(modes, ranks, std=std, zero_core=zero_core, dtype=dtype, device=device)
    params = nn.ParameterList(nn.Parameter(c) for c in cores)
    if not bias:
        return params, None
    bound = 1 / math.sqrt(in_features)
    b = torch.empty(out_features, dtype=cores[0].dtype, device=cores[0].device)
    return params, nn.Parameter(b.uniform_(-bound, bound))


class TTLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` of shape ``(out_features, in_features)`` a TT-matrix.

    The forward pass contracts the input with the cores in the order planned by
    :func:`tensortrain.tt_linear` (cached per shape); the dense weight is formed only when the
    planner's cost model says it is cheaper.

    Args:
        in_features: ``N``, the size of each input sample.
        out_features: ``M``, the size of each output sample.
        rank: TT rank, an int for every bond or ``d - 1`` per-bond ranks; clipped to what the
            modes allow.
        in_modes: column modes ``(n_1..n_d)`` with product ``in_features``; chosen by
            :func:`tensortrain.shapes.choose_modes` when omitted.
        out_modes: row modes ``(m_1..m_d)`` with product ``out_features``.
        bias: add a learnable bias (initialised like ``nn.Linear``'s).
        init: entry std of the reconstructed weight, by scheme name (``"torch"``: that of
            ``nn.Linear``; ``"glorot"``, ``"kaiming"``, ``"lecun"``) or a float.
        zero_core: index of a core to initialise to zero (the weight is then exactly zero).
        dtype: dtype of the parameters. device: their device.

    Shape:
        ``x (..., in_features) -> y (..., out_features)``.

    Example:
        >>> layer = TTLinear(768, 3072, rank=8)
        >>> layer(torch.randn(2, 16, 768)).shape
        torch.Size([2, 16, 3072])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rank: int | Sequence[int] = 8,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
        bias: bool = True,
        init: str | float = "torch",
        zero_core: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = _check_features(in_features, out_features)
        self.in_modes, self.out_modes = _resolve_modes(
            in_features, out_features, in_modes, out_modes
        )
        sizes = [m * n for m, n in zip(self.out_modes, self.in_modes, strict=True)]
        self.ranks = resolve_ranks(rank, sizes)
        std = init if isinstance(init, float) else linear_init_std(in_features, out_features, init)
        modes = list(zip(self.out_modes, self.in_modes, strict=True))
        self.cores, self.bias = make_parameters(
            modes, self.ranks, std, zero_core, bias, in_features, out_features, dtype, device
        )

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        max_rank: int | Sequence[int] | None = None,
        eps: float | None = None,
        in_modes: Sequence[int] | None = None,
        out_modes: Sequence[int] | None = None,
    ) -> TTLinear:
        """Compress a trained ``nn.Linear`` by TT-SVD of its weight, keeping its bias.

        With ``eps`` the weight error satisfies ``||W - W_tt||_F <= eps ||W||_F``; ``max_rank``
        caps the ranks (and wins over ``eps``). With neither, the weight is reproduced exactly
        (to round-off). The original layer is not modified.

        Example:
            >>> dense = nn.Linear(64, 32)
            >>> tt = TTLinear.from_linear(dense, eps=0.5)
            >>> tt.in_features, tt.out_features
            (64, 32)
        """
        if not isinstance(linear, nn.Linear):
            raise TTTypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        out_f, in_f = linear.weight.shape
        in_m, out_m = _resolve_modes(in_f, out_f, in_modes, out_modes)
        with torch.no_grad():
            tt = tt_matrix_svd(linear.weight.detach(), out_m, in_m, max_rank=max_rank, eps=eps)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = in_f, out_f
        layer.in_modes, layer.out_modes = in_m, out_m
        layer.ranks = tt.ranks
        layer.cores = nn.ParameterList(nn.Parameter(c.contiguous()) for c in tt.cores)
        layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        return layer

    @property
    def tt(self) -> TTMatrix:
        """The weight as a :class:`TTMatrix` (sharing the parameters, differentiable)."""
        return TTMatrix(list(self.cores))

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out_features, in_features)`` weight. Materialises it: ``O(M N)`` memory."""
        return dense(list(self.cores))

    @property
    def num_parameters(self) -> int:
        """Parameters in the cores and bias."""
        return sum(p.numel() for p in self.parameters())

    def round_(
        self, max_rank: int | Sequence[int] | None = None, eps: float | None = None
    ) -> tuple[int, ...]:
        """Round the weight in place (TT rounding in float64); returns the new ranks.

        The cores are replaced by new Parameters of the rounded shapes (same dtype, device and
        ``requires_grad``); an optimizer built on the old ones must be rebuilt. ``max_rank``
        caps the ranks, ``eps`` bounds the relative error ``||W - W_new||_F <= eps ||W||_F``
        (see :func:`tensortrain.round_cores`); ranks never grow. Costs ``O(d (m n) r^3)``, no
        dense weight.

        Example:
            >>> layer = TTLinear(256, 256, rank=8, bias=False)
            >>> layer.round_(max_rank=3)
            (1, 3, 3, 1)
            >>> [tuple(c.shape) for c in layer.cores]
            [(1, 8, 8, 3), (3, 8, 8, 3), (3, 4, 4, 1)]
        """
        replace_cores(self, rounded_cores(list(self.cores), max_rank=max_rank, eps=eps))
        return self.ranks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tt_linear(x, list(self.cores), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
            f"bias={self.bias is not None}, params={self.num_parameters}"
        )


def _check_features(in_features: int, out_features: int) -> tuple[int, int]:
    for name, value in (("in_features", in_features), ("out_features", out_features)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TTValueError(f"{name} must be a positive int, got {value!r}")
    return in_features, out_features


def _resolve_modes(
    in_features: int,
    out_features: int,
    in_modes: Sequence[int] | None,
    out_modes: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Check given modes (products and lengths) or choose them: ``(in_modes, out_modes)``."""
    if in_modes is None and out_modes is None:
        rows, cols = choose_modes(out_features, in_features)
        return cols, rows
    if in_modes is None or out_modes is None:
        raise TTShapeError("in_modes and out_modes must be given together (or both left out)")
    in_modes, out_modes = tuple(in_modes), tuple(out_modes)
    for name, modes, features in (
        ("in_modes", in_modes, in_features),
        ("out_modes", out_modes, out_features),
    ):
        if math.prod(modes) != features or min(modes, default=0) < 1:
            raise TTShapeError(f"{name} must be positive with product {features}, got {modes}")
    if len(in_modes) != len(out_modes):
        raise TTShapeError(
            f"in_modes and out_modes must have the same length, got {in_modes} and {out_modes}"
        )
    return in_modes, out_modes


def rounded_cores(
    cores: Sequence[torch.Tensor],
    max_rank: int | Sequence[int] | None = None,
    eps: float | None = None,
) -> list[torch.Tensor]:
    """TT rounding of TT-tensor or TT-matrix cores, computed in float64, in their own dtype.

    Cores ``(r, *modes, r')`` (3-D or 4-D) are merged to ``(r, prod(modes), r')``, rounded with
    :func:`tensortrain.round_cores` and split back. Detached: the result carries no graph.

    Example:
        >>> cores = [torch.randn(1, 2, 3, 4), torch.randn(4, 2, 3, 1)]
        >>> [tuple(c.shape) for c in rounded_cores(cores, max_rank=2)]
        [(1, 2, 3, 2), (2, 2, 3, 1)]
    """
    cores = check_cores([c.detach() for c in cores], cores[0].ndim if cores else 3)
    modes = [tuple(c.shape[1:-1]) for c in cores]
    wide = torch.complex128 if cores[0].is_complex() else torch.float64
    merged = [c.to(wide).reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    with torch.no_grad():
        out = round_cores(merged, eps=eps, max_rank=max_rank)
    return [
        c.reshape(c.shape[0], *m, c.shape[-1]).to(cores[0].dtype)
        for c, m in zip(out, modes, strict=True)
    ]


def replace_cores(layer: nn.Module, cores: Sequence[torch.Tensor]) -> None:
    """Put ``cores`` into a TT layer's ``cores`` ParameterList as new Parameters.

    Only the ranks may change: each new core must have the mode sizes of the one it replaces.
    Each new Parameter gets the old one's dtype, device and ``requires_grad``; ``layer.ranks``
    is updated. Everything is checked before the first core is replaced.

    Raises:
        TTTypeError: ``layer`` has no ``cores`` ParameterList.
        TTShapeError: another number of cores, other mode sizes, or ranks that do not chain.

    Example:
        >>> layer = TTLinear(16, 16, rank=4, bias=False)
        >>> replace_cores(layer, [c[..., :2] if k == 0 else c[:2] for k, c in
        ...                       enumerate(layer.cores)])
        >>> layer.ranks
        (1, 2, 1)
    """
    old = getattr(layer, "cores", None)
    if not isinstance(old, nn.ParameterList):
        raise TTTypeError(f"layer must hold its cores in an nn.ParameterList, got {type(old)}")
    new = check_cores(list(cores), old[0].ndim, name="cores")
    if len(new) != len(old):
        raise TTShapeError(f"cores must hold {len(old)} cores, got {len(new)}")
    for k, (a, b) in enumerate(zip(old, new, strict=True)):
        if a.shape[1:-1] != b.shape[1:-1]:
            raise TTShapeError(
                f"cores[{k}] must have mode sizes {tuple(a.shape[1:-1])}, "
                f"got shape {tuple(b.shape)}"
            )
    params = [
        nn.Parameter(
            b.detach().to(dtype=a.dtype, device=a.device).contiguous(),
            requires_grad=a.requires_grad,
        )
        for a, b in zip(old, new, strict=True)
    ]
    for k, p in enumerate(params):
        old[k] = p
    layer.ranks = (1, *(int(p.shape[-1]) for p in params))  # type: ignore[assignment]
