"""Fuzzing every public core function over magnitudes, dtypes, NaN/inf and
degenerate shapes. Each call is correct within its bound against a dense float64 (complex128)
reference, or raises a named ``TTError``; never a raw torch error, never a silently wrong result.

Sized by ``TT_MAX_EXAMPLES`` (tests/conftest.py); ``make fuzz`` runs them longer.
"""

import math

import pytest
import torch
from _extreme import bound, power_range, rel_err, wide
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import (
    Plan,
    TTError,
    TTMatrix,
    TTTensor,
    TTValueError,
    inner,
    norm,
    orthogonalize,
    plan,
    round_cores,
    tt_linear,
    tt_matrix_svd,
    tt_svd,
)
from tensortrain._scale import times_pow2
from tensortrain.ops import full
from tensortrain.testing import assert_close, tolerance

pytestmark = pytest.mark.fuzz

DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)
POISON = (math.nan, math.inf, -math.inf)
seeds = st.integers(0, 2**31 - 1)
modes = st.lists(st.integers(1, 4), min_size=1, max_size=4)  # size-1 modes, a single core


def randn(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=wide(torch.empty(0, dtype=dtype)).dtype).to(
        dtype
    )


@st.composite
def power_of(draw, dtype):
    lo, hi = power_range(dtype)
    return draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, 0, hi])))


@st.composite
def poison_at(draw, numel):
    """None (a clean input) or ``(flat index, NaN / inf / -inf)``."""
    if not draw(st.booleans()):
        return None
    return draw(st.integers(0, numel - 1)), draw(st.sampled_from(POISON))


def poisoned(t, where):
    if where is None:
        return t
    out = t.clone()
    out.view(-1)[where[0]] = where[1]
    return out


@st.composite
def tt_cores(draw, shape=None, dtype=None, max_rank=3):
    """Random TT cores of order 1 (no scaling yet), ranks ``1..max_rank`` (rank 1 included)."""
    shape = draw(modes) if shape is None else shape
    dtype = draw(st.sampled_from(DTYPES)) if dtype is None else dtype
    ranks = [1, *(draw(st.integers(1, max_rank)) for _ in shape[1:]), 1]
    seed = draw(seeds)
    return [
        randn((ranks[k], n, ranks[k + 1]), dtype, seed + k) / math.sqrt(ranks[k] * n)
        for k, n in enumerate(shape)
    ]


@given(modes, st.sampled_from(DTYPES), st.data(), st.one_of(st.none(), st.floats(0, 0.9)))
def test_fuzz_tt_svd(shape, dtype, data, eps):
    power = data.draw(power_of(dtype))
    unit = randn(shape, dtype, data.draw(seeds))
    where = data.draw(poison_at(unit.numel()))
    x = poisoned(times_pow2(unit, power), where)
    cap = data.draw(st.one_of(st.none(), st.integers(1, 3)))
    if where is not None:
        with pytest.raises(TTValueError, match=r"^x contains NaN or inf$"):
            tt_svd(x, eps=eps, max_rank=cap)
        return
    before = x.clone()
    tt = tt_svd(x, eps=eps, max_rank=cap)
    assert torch.equal(x, before) and tt.dtype == dtype and tt.shape == tuple(shape)
    if cap is None:
        assert rel_err(tt.cores, times_pow2(wide(x), -power), power) <= bound(eps, dtype)
    else:
        assert max(tt.ranks) <= cap
        assert all(bool(torch.isfinite(c).all()) for c in tt.cores)


@given(modes, st.sampled_from(DTYPES), st.data())
def test_fuzz_tt_matrix_svd(rows, dtype, data):
    cols = [data.draw(st.integers(1, 3)) for _ in rows]
    power = data.draw(power_of(dtype))
    unit = randn((math.prod(rows), math.prod(cols)), dtype, data.draw(seeds))
    where = data.draw(poison_at(unit.numel()))
    w = poisoned(times_pow2(unit, power), where)
    if where is not None:
        with pytest.raises(TTValueError, match=r"^x contains NaN or inf$"):
            tt_matrix_svd(w, rows, cols, eps=0.1)
        return
    tt = tt_matrix_svd(w, rows, cols, eps=0.1)
    assert tt.row_modes == tuple(rows) and tt.col_modes == tuple(cols)
    back = TTMatrix([times_pow2(c, -power if k == 0 else 0) for k, c in enumerate(tt.cores)])
    # scaled back by 2^-power on core 0 when that core can hold it; else compare merged tensors
    if all(bool(torch.isfinite(c).all()) for c in back.cores) and back.cores[0].abs().max() > 0:
        assert_close(wide(back.full()), times_pow2(wide(w), -power), rtol=bound(0.1, dtype))


@st.composite
def scaled_tt(draw, shape=None, dtype=None):
    """``(cores, unit_dense, power)``: order-1 cores with ``2^power`` on one of them, maybe
    poisoned (then ``power`` is None)."""
    cores = draw(tt_cores(shape=shape, dtype=dtype))
    power = draw(power_of(cores[0].dtype))
    k = draw(st.integers(0, len(cores) - 1))
    unit = full([wide(c) for c in cores])
    cores[k] = times_pow2(cores[k], power)
    where = draw(poison_at(cores[k].numel()))
    if where is not None:
        cores[k] = poisoned(cores[k], where)
        return cores, unit, None, k
    return cores, unit, power, k


@given(scaled_tt(), st.one_of(st.none(), st.floats(0, 0.9)), st.booleans())
def test_fuzz_round_cores_and_tt_round(sample, eps, as_method):
    cores, unit, power, k = sample
    before = [c.clone() for c in cores]
    call = (lambda: TTTensor(cores).round(eps=eps).cores) if as_method else None
    call = call or (lambda: round_cores(cores, eps=eps))
    if power is None:
        with pytest.raises(TTValueError, match=rf"^cores\[{k}\] contains NaN or inf$"):
            call()
        return
    out = call()
    assert rel_err(out, unit, power) <= bound(eps, cores[0].dtype)
    assert all(torch.equal(a, b) for a, b in zip(cores, before, strict=True))


@given(scaled_tt())
def test_fuzz_norm_and_orthogonalize(sample):
    cores, unit, power, k = sample
    if power is None:
        for call in (norm, orthogonalize):
            with pytest.raises(TTValueError, match=rf"^cores\[{k}\] contains NaN or inf$"):
                call(cores)
        return
    dtype = cores[0].dtype
    ref_unit = float(torch.linalg.vector_norm(unit))
    log2_ref = math.log2(ref_unit) + power if ref_unit > 0 else -math.inf
    got = norm(cores)
    lo, hi = power_range(dtype, margin=0)
    if log2_ref >= hi + 1:
        assert math.isinf(float(got))  # beyond the dtype: inf, the rounded value
    elif log2_ref > lo + 24:
        rel = float(times_pow2(got.double(), -power)) / ref_unit - 1
        assert abs(rel) <= tolerance(got.dtype)
    try:
        ortho = orthogonalize(cores)
    except TTValueError as e:
        assert "beyond the range" in str(e)  # a norm core 0 cannot hold: named
        return
    assert rel_err(ortho, unit, power) <= bound(None, dtype)


@given(st.data())
def test_fuzz_inner(data):
    a_cores, a_unit, a_power, _ = data.draw(scaled_tt())
    shape = [c.shape[1] for c in a_cores]
    b_cores, b_unit, b_power, _ = data.draw(scaled_tt(shape=shape, dtype=a_cores[0].dtype))
    if a_power is None or b_power is None:
        with pytest.raises(TTValueError, match=r"^[ab]\[\d\] contains NaN or inf$"):
            inner(a_cores, b_cores)
        return
    got = inner(a_cores, b_cores)
    ref = torch.vdot(a_unit.flatten(), b_unit.flatten())
    scale = a_power + b_power
    lo, hi = power_range(a_cores[0].dtype, margin=0)
    size = float(ref.abs())
    if size == 0 or not lo + 24 < math.log2(size) + scale < hi:
        return  # the exact result under- or overflows the dtype: nothing to compare
    got_unit = times_pow2(wide(got), -scale)
    norms = float(torch.linalg.vector_norm(a_unit) * torch.linalg.vector_norm(b_unit))
    assert float((got_unit - ref).abs()) <= 10 * tolerance(got.dtype) * norms


@st.composite
def matrices(draw, dtypes=DTYPES):
    rows = draw(modes)
    cols = [draw(st.integers(1, 4)) for _ in rows]
    dtype = draw(st.sampled_from(dtypes))
    ranks = [1, *(draw(st.integers(1, 3)) for _ in rows[1:]), 1]
    seed = draw(seeds)
    return TTMatrix(
        [
            randn((ranks[k], m, n, ranks[k + 1]), dtype, seed + k)
            for k, (m, n) in enumerate(zip(rows, cols, strict=True))
        ]
    )


@given(matrices(), st.integers(0, 5), st.booleans(), st.data())
def test_fuzz_tt_linear_and_apply(w, batch, with_bias, data):
    M, N = w.shape
    power = data.draw(st.integers(-40, 40))  # linear: magnitudes only move the result
    x = times_pow2(randn((batch, N), w.dtype, data.draw(seeds)), power)
    where = data.draw(poison_at(x.numel())) if batch else None
    x = poisoned(x, where)
    bias = randn((M,), w.dtype, 1) if with_bias else None
    y = tt_linear(x, w, bias)
    ref = wide(x) @ wide(w.full()).T + (0 if bias is None else wide(bias))
    assert y.shape == (batch, M) and y.dtype == w.dtype
    bad = torch.zeros(batch, dtype=torch.bool)
    if where is not None:
        bad[where[0] // N] = True
        assert not bool(torch.isfinite(y[bad]).all())  # non-finite input shows in its row
    tol = 10 * tolerance(w.dtype)
    assert_close(y[~bad], ref[~bad], rtol=tol)
    plain = wide(x[~bad]) @ wide(w.full()).T
    assert_close(w.apply(x[~bad]), plain, rtol=tol)


@given(st.data())
def test_fuzz_tensor_and_matrix_methods(data):
    dtype = data.draw(st.sampled_from(DTYPES))
    a = TTTensor(data.draw(tt_cores(dtype=dtype)))
    b = TTTensor(data.draw(tt_cores(shape=list(a.shape), dtype=dtype)))
    fa, fb = wide(a.full()), wide(b.full())
    tol = 10 * tolerance(dtype)
    assert_close(wide((a + b).full()), fa + fb, rtol=tol)
    assert_close(wide((a - b).full()), fa - fb, rtol=tol)
    assert_close(wide((a * b).full()), fa * fb, rtol=tol)
    assert_close(wide((2.5 * a).full()), 2.5 * fa, rtol=tol)
    index = tuple(data.draw(st.integers(0, n - 1)) for n in a.shape)
    assert_close(wide(a[index]), fa[index], rtol=tol)
    w = data.draw(matrices(dtypes=(dtype,)))
    fw = wide(w.full())
    assert_close(wide(w.T.full()), fw.T, rtol=tol)
    assert_close(wide((w @ w.T).full()), fw @ fw.T, rtol=tol)
    v = TTTensor(data.draw(tt_cores(shape=list(w.col_modes), dtype=dtype)))
    assert_close(wide((w @ v).full()).flatten(), fw @ wide(v.full()).flatten(), rtol=tol)


# --- malformed input: a named TTError from every entry point, never a raw torch error ---------

junk = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.text(max_size=2),
    st.lists(st.integers(-2, 4), max_size=4),
    st.builds(lambda s: torch.zeros(s, dtype=torch.int64), st.lists(st.integers(0, 2), max_size=3)),
)


@st.composite
def core_lists(draw, ndim):
    """Lists of tensors whose shapes, ranks and dtypes are often wrong (sometimes right)."""
    count = draw(st.integers(0, 3))
    dtype = draw(st.sampled_from((*DTYPES, torch.int32)))
    out = []
    for _ in range(count):
        nd = draw(st.sampled_from([ndim, ndim, ndim, 2, 5]))
        shape = [draw(st.integers(0, 3)) for _ in range(nd)]
        out.append(torch.ones(shape, dtype=draw(st.sampled_from([dtype, dtype, torch.float64]))))
    return draw(st.one_of(st.just(out), junk))


def outcome(call):
    """None if ``call`` returns; its ``TTError`` if it refuses; any other exception escapes."""
    try:
        call()
    except TTError as e:
        return e
    return None


@given(core_lists(3), core_lists(3), core_lists(4), junk, junk)
def test_fuzz_malformed_arguments(cores3, other3, cores4, eps, rank):
    calls = (
        lambda: TTTensor(cores3),
        lambda: TTMatrix(cores4),
        lambda: norm(cores3),
        lambda: orthogonalize(cores3),
        lambda: inner(cores3, other3),
        lambda: round_cores(cores3, eps=eps),
        lambda: round_cores(cores3, max_rank=rank),
        lambda: tt_linear(torch.ones(2, 4), cores4),
        lambda: tt_linear(torch.ones(2, 4), cores4, bias=eps),
        lambda: tt_svd(torch.ones(2, 3), eps=eps, max_rank=rank),
        lambda: tt_svd(cores3),
        lambda: tt_matrix_svd(torch.ones(2, 3), rank, eps),
        lambda: plan(rank, eps, (2,), (1, 1)),
    )
    results = [outcome(call) for call in calls]
    assert all(r is None or isinstance(r, ValueError | TypeError) for r in results)


@given(st.integers(1, 300), st.lists(st.integers(1, 6), min_size=1, max_size=5), st.data())
def test_fuzz_plan(batch, rows, data):
    cols = [data.draw(st.integers(1, 6)) for _ in rows]
    ranks = (1, *(data.draw(st.integers(1, 6)) for _ in rows[1:]), 1)
    p = plan(batch, rows, cols, ranks)
    assert isinstance(p, Plan) and p.kind in ("tt", "dense")
    if len(rows) > 1:
        assert p.groups[0][0] == 0 and p.groups[-1][1] == len(rows)
        assert all(a[1] == b[0] for a, b in zip(p.groups, p.groups[1:]))
