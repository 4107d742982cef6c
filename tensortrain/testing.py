"""Test helpers: hypothesis strategies for random TT tensors and TT-matrices, and tolerances.

Requires ``hypothesis`` (a development dependency). Use them in your own test suites::

    from hypothesis import given
    from tensortrain.testing import tt_tensors, assert_close

    @given(tt_tensors(max_ndim=3))
    def test_norm(tt):
        assert_close(tt.norm(), torch.linalg.vector_norm(tt.full()))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from hypothesis import strategies as st

from tensortrain.matrix import TTMatrix
from tensortrain.tensor import TTTensor

#: Relative (norm-wise) tolerance per dtype, for results that went through O(d) products and SVDs.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-9,
    torch.float32: 1e-4,
    torch.bfloat16: 3e-2,
    torch.float16: 5e-3,
    torch.complex128: 1e-9,
    torch.complex64: 1e-4,
}


def tolerance(dtype: torch.dtype) -> float:
    """The relative tolerance for ``dtype`` from :data:`TOLERANCES`."""
    return TOLERANCES[dtype]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float | None = None, msg: str = ""
) -> None:
    """Assert ``||actual - expected|| <= rtol * max(||expected||, 1)`` (norm-wise, in float64).

    Norm-wise rather than elementwise, so cancellation in one entry does not fail a correct result.
    ``rtol`` defaults to :func:`tolerance` of the less precise of the two dtypes.
    """
    if rtol is None:
        rtol = max(tolerance(actual.dtype), tolerance(expected.dtype))
    if actual.shape != expected.shape:
        raise AssertionError(
            f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)} {msg}"
        )
    a, e = _wide(actual), _wide(expected)
    err = float(torch.linalg.vector_norm(a - e))
    ref = max(float(torch.linalg.vector_norm(e)), 1.0)
    if not err <= rtol * ref:
        raise AssertionError(f"error {err:.3e} > {rtol:.1e} * {ref:.3e} {msg}")


def _wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU in float64, or complex128 when complex (keeping the imaginary part)."""
    return t.detach().cpu().to(torch.complex128 if t.is_complex() else torch.float64)


def _cores(
    draw: st.DrawFn, modes: Sequence[tuple[int, ...]], max_rank: int, dtype: torch.dtype
) -> list[torch.Tensor]:
    d = len(modes)
    bonds = [draw(st.integers(1, max_rank)) for _ in range(d - 1)]
    ranks = [1, *bonds, 1]
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return [
        torch.randn(ranks[k], *modes[k], ranks[k + 1], generator=gen, dtype=torch.float64).to(dtype)
        for k in range(d)
    ]


@st.composite
def tt_tensors(
    draw: st.DrawFn,
    min_ndim: int = 1,
    max_ndim: int = 4,
    max_mode: int = 5,
    max_rank: int = 4,
    dtypes: Sequence[torch.dtype] = (torch.float64,),
    shape: Sequence[int] | None = None,
) -> TTTensor:
    """Random TT tensors with ``min_ndim..max_ndim`` modes of size ``1..max_mode`` and bond ranks
    ``1..max_rank`` (not clipped, so redundant ranks occur too), cores iid standard normal.

    Pass ``shape`` to fix the mode sizes (for pairs of operands).
    """
    if shape is None:
        d = draw(st.integers(min_ndim, max_ndim))
        shape = [draw(st.integers(1, max_mode)) for _ in range(d)]
    dtype = draw(st.sampled_from(list(dtypes)))
    return TTTensor(_cores(draw, [(n,) for n in shape], max_rank, dtype))


@st.composite
def tt_matrices(
    draw: st.DrawFn,
    min_ndim: int = 1,
    max_ndim: int = 3,
    max_mode: int = 4,
    max_rank: int = 4,
    dtypes: Sequence[torch.dtype] = (torch.float64,),
    row_modes: Sequence[int] | None = None,
    col_modes: Sequence[int] | None = None,
) -> TTMatrix:
    """Random TT-matrices with ``min_ndim..max_ndim`` cores, modes ``1..max_mode``, bond ranks
    ``1..max_rank``. Pass ``row_modes`` and/or ``col_modes`` to fix them."""
    d = len(row_modes or col_modes or []) or draw(st.integers(min_ndim, max_ndim))
    rows = list(row_modes) if row_modes else [draw(st.integers(1, max_mode)) for _ in range(d)]
    cols = list(col_modes) if col_modes else [draw(st.integers(1, max_mode)) for _ in range(d)]
    dtype = draw(st.sampled_from(list(dtypes)))
    return TTMatrix(_cores(draw, list(zip(rows, cols, strict=True)), max_rank, dtype))
