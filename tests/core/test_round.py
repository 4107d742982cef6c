"""Rounding's Gram path in float32 and float64, against float64 dense references."""

import pytest
import torch
from _round import sweeps_round
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import ops, round_cores
from tensortrain.testing import tt_tensors

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # the result's round-off, relative to ||a||


@st.composite
def sums(draw):
    """A TT plus a smaller one (as rounding meets it after addition), 2-5 cores, either dtype."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    a = draw(tt_tensors(min_ndim=2, max_ndim=5, max_rank=4, dtypes=(dtype,)))
    b = draw(tt_tensors(shape=a.shape, max_rank=4, dtypes=(dtype,)))
    weight = draw(st.sampled_from([0.0, 1e-3, 1e-1, 1.0]))
    magnitude = draw(st.sampled_from([2.0**-40, 1.0, 2.0**40]))
    return ops.scale(ops.add(a.cores, ops.scale(b.cores, weight)), magnitude)


def _rel_err(cores, ref):
    dense = ops.full([c.double() for c in cores])
    return float(torch.linalg.vector_norm(dense - ref) / torch.linalg.vector_norm(ref))


@given(sums(), st.sampled_from([0.1, 0.3, 0.7]))
def test_eps_bound_holds_in_both_dtypes(cores, eps):
    ref = ops.full([c.double() for c in cores])
    if float(torch.linalg.vector_norm(ref)) == 0.0:
        return
    out = round_cores(cores, eps=eps)
    assert all(c.dtype == cores[0].dtype for c in out)
    assert _rel_err(out, ref) <= eps + TOL[cores[0].dtype]


@given(sums(), st.integers(1, 3))
def test_gram_path_keeps_the_error_of_the_sweeps(cores, cap):
    ref = ops.full([c.double() for c in cores])
    if float(torch.linalg.vector_norm(ref)) == 0.0:
        return
    got = ops._gram_round(cores, None, [cap] * (len(cores) - 1))
    if got is None:  # declined: round_cores takes the sweeps
        return
    exact = sweeps_round([c.double() for c in cores], max_rank=cap)
    assert max(c.shape[-1] for c in got[:-1]) <= cap
    tol = TOL[cores[0].dtype]
    assert _rel_err(got, ref) <= _rel_err(exact, ref) * (1 + 1e-2) + tol
    for core in got[:-1]:  # left-orthonormal: the result is a projection of the input
        mat = core.double().reshape(-1, core.shape[-1])
        eye = torch.eye(mat.shape[1], dtype=mat.dtype)
        assert float((mat.mT @ mat - eye).abs().max()) <= 100 * tol


def test_float32_takes_the_gram_path_on_a_sum_with_a_gap():
    gen = torch.Generator().manual_seed(2)
    main = [torch.randn(r0, 8, r1, generator=gen) for r0, r1 in [(1, 4), (4, 4), (4, 4), (4, 1)]]
    small = [torch.randn(r0, 8, r1, generator=gen) for r0, r1 in [(1, 8), (8, 8), (8, 8), (8, 1)]]
    a = ops.add(main, ops.scale(small, 1e-2))
    assert ops._gram_round_applies(a, None)
    got = ops._gram_round(a, None, [4] * 3)
    assert got is not None
    exact = sweeps_round([c.double() for c in a], max_rank=4)
    ref = ops.full([c.double() for c in a])
    assert _rel_err(got, ref) <= _rel_err(exact, ref) * (1 + 1e-3) + 1e-6


def test_float32_declines_a_tolerance_near_its_round_off():
    gen = torch.Generator().manual_seed(3)
    a = [torch.randn(r0, 6, r1, generator=gen) for r0, r1 in [(1, 5), (5, 5), (5, 1)]]
    assert not ops._gram_round_applies(a, 1e-3)  # eps^2 / (d - 1) below GRAM_ROUND_MIN
    assert ops._gram_round_applies(a, 0.1)
    assert not ops._gram_round_applies([c.half() for c in a], 0.1)


@pytest.mark.parametrize("power", [-100, 100])
def test_float32_gram_path_at_extreme_core_magnitudes(power):
    gen = torch.Generator().manual_seed(4)
    cores = [torch.randn(r0, 5, r1, generator=gen) for r0, r1 in [(1, 4), (4, 4), (4, 4), (4, 1)]]
    scaled = [cores[0] * 2.0**power, cores[1] * 2.0**-power, *cores[2:]]  # the same tensor
    got = ops._gram_round(scaled, None, [2] * 3)
    assert got is not None and all(bool(torch.isfinite(c).all()) for c in got)
    ref = ops.full([c.double() for c in cores])
    exact = sweeps_round([c.double() for c in cores], max_rank=2)
    assert _rel_err(got, ref) <= _rel_err(exact, ref) * (1 + 1e-2) + 1e-5


def test_finite_check_survives_sums_that_overflow_and_names_the_bad_core():
    from tensortrain._scale import check_finite_cores
    from tensortrain.errors import TTValueError

    big = torch.full((1, 4, 1), 3e38)  # finite entries whose sum is inf in float32
    check_finite_cores([big, big])
    with pytest.raises(TTValueError, match=r"cores\[1\] contains NaN or inf"):
        check_finite_cores([big, torch.tensor([[[1.0], [float("nan")]]])])
