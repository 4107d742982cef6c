"""Extreme magnitudes and bad values: the error bound over each dtype's whole range, complex
TT-SVD, exact power-of-two scaling, and a named error for NaN, inf and a bad bias.

Errors are measured against float64 (complex128) references rescaled exactly by powers of two
(``_extreme.rel_err``), so the check itself never over- or underflows.
"""

import math

import pytest
import torch
from _extreme import bound, power_range, rel_err, wide
from _round import sweeps_round
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import (
    TTMatrix,
    TTShapeError,
    TTTensor,
    TTTypeError,
    TTValueError,
    inner,
    norm,
    ops,
    orthogonalize,
    round_cores,
    tt_linear,
    tt_matrix_svd,
    tt_svd,
)
from tensortrain._scale import exponent, times_pow2
from tensortrain.testing import assert_close, tt_tensors

REAL = (torch.float32, torch.float64)
ALL = (*REAL, torch.complex64, torch.complex128)
seeds = st.integers(0, 2**31 - 1)
epses = st.one_of(st.none(), st.floats(0.0, 0.9))


def low_rank_plus_noise(shape, dtype, seed):
    """An order-1 tensor of TT rank 2 plus 1% noise: truncation really happens."""
    gen = torch.Generator().manual_seed(seed)
    wide_dtype = wide(torch.empty(0, dtype=dtype)).dtype
    ranks = [1] + [2] * (len(shape) - 1) + [1]
    cores = [
        torch.randn(ranks[k], n, ranks[k + 1], generator=gen, dtype=wide_dtype)
        for k, n in enumerate(shape)
    ]
    x = ops.full(cores)
    x = x + 0.01 * torch.randn(x.shape, generator=gen, dtype=wide_dtype) * x.abs().max()
    return (x / x.abs().max()).to(dtype)


@st.composite
def magnitudes(draw, dtypes=ALL):
    dtype = draw(st.sampled_from(dtypes))
    lo, hi = power_range(dtype)
    return dtype, draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0])))


# --- magnitudes near the ends of float32 and float64 keep the bound ------------------------


@pytest.mark.parametrize(
    ("dtype", "scale", "eps"),
    [
        (torch.float32, 1e20, 0.1),
        (torch.float32, 1e-24, None),
        (torch.float64, 1e-170, None),
        (torch.float64, 1e160, 0.1),
        (torch.float64, 1e300, 0.1),
        (torch.float32, 3e38, 0.1),  # the norm itself overflows float32
    ],
)
def test_magnitudes_near_the_dtype_limits_keep_the_bound(dtype, scale, eps):
    unit = low_rank_plus_noise((6, 7, 8), torch.float64, 0)
    x = (unit * scale).to(dtype)
    tt = tt_svd(x, eps=eps)
    power = round(math.log2(scale))
    ref = times_pow2(wide(x), -power)  # x exactly, as an order-1 float64 tensor
    assert rel_err(tt.cores, ref, power) <= bound(eps, dtype)
    assert all(bool(torch.isfinite(c).all()) for c in tt.cores)


# --- the bound over each dtype's whole range --------------------------------------------------


@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), magnitudes(), epses, seeds)
def test_tt_svd_bound_at_every_magnitude(shape, dtype_power, eps, seed):
    dtype, power = dtype_power
    x = times_pow2(low_rank_plus_noise(shape, dtype, seed), power)
    tt = tt_svd(x, eps=eps)
    assert tt.dtype == dtype
    assert rel_err(tt.cores, times_pow2(wide(x), -power), power) <= bound(eps, dtype)


@given(st.lists(st.integers(1, 3), min_size=1, max_size=3), magnitudes(), epses, seeds)
def test_tt_matrix_svd_bound_at_every_magnitude(modes, dtype_power, eps, seed):
    dtype, power = dtype_power
    rows, cols = modes, [m + 1 for m in modes]
    w = low_rank_plus_noise((math.prod(rows), math.prod(cols)), dtype, seed)
    w = times_pow2(w, power)
    tt = tt_matrix_svd(w, rows, cols, eps=eps)
    d = len(rows)
    ref = times_pow2(wide(w), -power).reshape(*rows, *cols)  # w exactly, of order 1
    ref = ref.permute([i for k in range(d) for i in (k, d + k)])  # the TT's (m_k n_k) layout
    assert rel_err(tt.to_tensor().cores, ref.reshape(tt.to_tensor().shape), power) <= bound(
        eps, dtype
    )


@st.composite
def scaled_sums(draw, dtypes):
    """``(cores, ref, power)``: ``a + b`` with ``2^power`` on one core; ``ref`` its dense unit."""
    dtype = draw(st.sampled_from(dtypes))
    real = torch.empty((), dtype=dtype).real.dtype
    a = draw(tt_tensors(max_ndim=4, dtypes=(real,)))
    b = draw(tt_tensors(shape=a.shape, dtypes=(real,)))
    cores = ops.add(a.cores, ops.scale(b.cores, 0.01))  # redundant ranks, a small tail
    if dtype.is_complex:
        cores = [c.to(dtype) * (1 + 0.5j) for c in cores]
    cores = [c / c.abs().max() for c in cores]
    lo, hi = power_range(dtype)
    power = draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi])))
    k = draw(st.integers(0, len(cores) - 1))
    ref = ops.full([wide(c) for c in cores])
    cores[k] = times_pow2(cores[k], power)
    return cores, ref, power


@pytest.mark.parametrize("path", ["sweep", "gram"])
@given(data=st.data(), eps=epses)
def test_round_bound_at_every_magnitude(path, data, eps):
    dtypes = ALL if path == "sweep" else (torch.float64,)
    cores, ref, power = data.draw(scaled_sums(dtypes))
    before = [c.clone() for c in cores]
    out = sweeps_round(cores, eps=eps) if path == "sweep" else round_cores(cores, eps=eps)
    assert rel_err(out, ref, power) <= bound(eps, cores[0].dtype)
    assert all(torch.equal(a, b) for a, b in zip(cores, before, strict=True))


def test_gram_round_runs_at_extreme_magnitudes():
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(1, 6, 4, generator=gen, dtype=torch.float64)]
    base += [torch.randn(4, 6, 4, generator=gen, dtype=torch.float64) for _ in range(2)]
    base += [torch.randn(4, 6, 1, generator=gen, dtype=torch.float64)]
    ref = ops.full(base)
    for power in (-1000, -600, 600, 1000):
        cores = [times_pow2(c, power // 4) for c in base]
        out = ops._gram_round(cores, 0.3, [None] * 3)
        assert out is not None
        assert rel_err(out, ref, power) <= bound(0.3, torch.float64)


def test_gradcheck_through_the_scaling():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    cores = [
        torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 4, 1, generator=gen, dtype=torch.float64, requires_grad=True),
    ]

    def svd(x):
        return times_pow2(tt_svd(times_pow2(x, -700)).full(), 700)

    def rounded(a, b):
        out = round_cores([times_pow2(a, 900), b], max_rank=2)
        return times_pow2(ops.full(out), -900)

    assert torch.autograd.gradcheck(svd, (x,))
    assert torch.autograd.gradcheck(rounded, tuple(cores))


# --- complex TT-SVD against a dense complex128 reference ---------------------------------------


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=4),
    st.sampled_from([torch.complex64, torch.complex128]),
    epses,
    seeds,
)
def test_complex_tt_svd_against_dense_reference(shape, dtype, eps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.complex128).to(dtype)
    tt = tt_svd(x, eps=eps)
    assert tt.dtype == dtype and tt.shape == tuple(shape)
    assert rel_err(tt.cores, wide(x), 0) <= bound(eps, dtype)
    for core in tt.cores[:-1]:  # left-orthogonal under the conjugate transpose
        q = wide(core.reshape(-1, core.shape[-1]))
        assert_close(q.mH @ q, torch.eye(q.shape[1], dtype=q.dtype), rtol=bound(None, dtype))


def test_complex_tt_matrix_svd_and_norm():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(12, 20, generator=gen, dtype=torch.complex128)
    tt = tt_matrix_svd(w, (3, 4), (4, 5))
    assert_close(tt.full(), w)
    assert math.isclose(float(tt.norm()), float(torch.linalg.vector_norm(w)), rel_tol=1e-12)
    assert_close(tt.inner(tt), torch.vdot(w.flatten(), w.flatten()))


# --- NaN, inf, a norm beyond the dtype and a bad bias get a named error ------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", ALL)
def test_non_finite_input_gets_a_named_error(bad, dtype):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).to(dtype)
    x[1, 2, 3] = bad
    for eps in (None, 0.1):
        with pytest.raises(TTValueError, match=r"^x contains NaN or inf$"):
            tt_svd(x, eps=eps)
    with pytest.raises(TTValueError, match=r"^x contains NaN or inf$"):
        tt_matrix_svd(x.reshape(12, 5), (3, 4), (5, 1))
    good = tt_svd(torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).to(dtype)).cores
    cores = [good[0], good[1], good[2].clone()]
    cores[2][0, 1, 0] = bad
    before = [c.clone() for c in cores]
    for call in (
        lambda: round_cores(cores, eps=0.1),
        lambda: TTTensor(cores).round(eps=0.1),
        lambda: TTTensor(cores).round(max_rank=1),
        lambda: norm(cores),
        lambda: orthogonalize(cores),
    ):
        with pytest.raises(TTValueError, match=r"^cores\[2\] contains NaN or inf$"):
            call()
    with pytest.raises(TTValueError, match=r"^b\[2\] contains NaN or inf$"):
        inner(good, cores)
    assert all(torch.equal(a, b) for a, b in zip(cores, before, strict=True) if a.isfinite().all())


def test_orthogonalize_refuses_a_norm_beyond_the_dtype():
    big = [torch.full((1, 4, 1), 2.0**100), torch.full((1, 4, 1), 2.0**100)]
    assert math.isinf(float(norm(big)))  # the norm really is beyond float32
    with pytest.raises(TTValueError, match=r"beyond the range of torch.float32"):
        orthogonalize(big)
    out = round_cores(big, eps=0.1)  # rounding spreads the scale over the cores instead
    assert rel_err(out, ops.full([c.double() for c in big]) * 2.0**-200, 200) <= 1e-6


def test_tt_linear_checks_bias():
    w = TTMatrix([torch.randn(1, 2, 3, 2), torch.randn(2, 2, 3, 1)])
    x = torch.randn(4, 9)
    with pytest.raises(TTShapeError, match=r"bias must have shape \(M,\) = \(4,\) .* got \(5,\)"):
        tt_linear(x, w, torch.randn(5))
    with pytest.raises(TTShapeError, match=r"got \(1, 4\)"):
        tt_linear(x, w, torch.randn(1, 4))
    with pytest.raises(TTTypeError, match=r"bias has dtype torch.float64 on cpu but x has"):
        tt_linear(x, w, torch.randn(4, dtype=torch.float64))
    with pytest.raises(TTTypeError, match=r"bias must be a torch.Tensor or None, got list"):
        tt_linear(x, w, [0.0] * 4)
    with pytest.raises(
        TTTypeError, match=r"weight must be a TTMatrix or its cores, got a TTTensor"
    ):
        tt_linear(x, TTTensor([torch.randn(1, 9, 1)]))
    b = torch.randn(4)
    assert_close(tt_linear(x, w, b), x @ w.full().T + b)


# --- scaling by powers of two at the ends of the exponent range ---------------------------------


@pytest.mark.parametrize(
    ("dtype", "power"),
    [
        (torch.float32, -140),
        (torch.float32, 120),
        (torch.float32, 3),
        (torch.float64, -1060),
        (torch.float64, 1000),
        (torch.float64, -30),
    ],
)
def test_scaling_to_a_unit_peak_is_exact_at_any_exponent(dtype, power):
    """``times_pow2(t, -exponent(t))`` (rounding's Gram path scales by it at every bond) puts the
    largest entry in [0.5, 1) exactly, even where 2^-e is no float of the dtype (subnormal t)."""
    t = torch.tensor([[0.75, -0.5], [0.25, 0.0]], dtype=torch.float64) * 2.0**power
    t = t.to(dtype)
    e = exponent(t)
    scaled = times_pow2(t, -e)
    assert 0.5 <= float(scaled.abs().max()) < 1.0
    assert torch.equal(torch.ldexp(scaled.double(), torch.tensor(float(e))), t.double())
    assert exponent(torch.zeros(2, 2, dtype=dtype)) == 0


def test_tt_svd_of_a_subnormal_float64_tensor():
    """A float64 input whose largest entry is subnormal: scaling it to a unit peak takes 2^1030,
    which is no float64 (2^1024 overflows); the TT-SVD meets the bound like any other."""
    x = times_pow2(
        torch.randn(4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9)), -1030
    )
    assert 0 < float(x.abs().max()) < torch.finfo(torch.float64).tiny
    tt = tt_svd(x, eps=0.1)
    got, ref = times_pow2(tt.full(), 1030), times_pow2(x, 1030)
    assert float((got - ref).norm() / ref.norm()) <= 0.1 * (1 + 1e-6)
