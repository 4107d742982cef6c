"""TT arithmetic, rounding, orthogonalisation and norms against dense float64 references."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import TTMatrix, TTShapeError, TTTensor, TTTypeError, tt_svd
from tensortrain.testing import assert_close, tt_matrices, tt_tensors


@st.composite
def pairs(draw, dtypes=(torch.float64,)):
    a = draw(tt_tensors(dtypes=dtypes))
    b = draw(tt_tensors(shape=a.shape, dtypes=(a.dtype,)))
    return a, b


@given(pairs(dtypes=(torch.float32, torch.float64)), st.floats(-3, 3))
def test_linear_combinations(ab, alpha):
    a, b = ab
    fa, fb = a.full(), b.full()
    assert_close((a + b).full(), fa + fb)
    assert_close((a - b).full(), fa - fb)
    assert_close((-a).full(), -fa)
    assert_close((alpha * a).full(), alpha * fa)
    assert_close((a * alpha).full(), fa * alpha)
    assert (a + b).ranks[1:-1] == tuple(x + y for x, y in zip(a.ranks[1:-1], b.ranks[1:-1]))


@given(pairs())
def test_hadamard_and_inner(ab):
    a, b = ab
    h = a * b
    assert_close(h.full(), a.full() * b.full())
    assert h.ranks == tuple(x * y for x, y in zip(a.ranks, b.ranks))
    assert_close(a.inner(b), (a.full() * b.full()).sum())


@given(tt_tensors(dtypes=(torch.float32, torch.float64)))
def test_norm_matches_dense(a):
    assert_close(a.norm(), torch.linalg.vector_norm(a.full()))


@pytest.mark.parametrize("magnitude", [1e-150, 1e150])
def test_norm_and_inner_are_stable_for_extreme_values(magnitude):
    a = tt_svd(
        torch.randn(4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    ref = a.norm()
    scale = magnitude ** (1 / 3)
    big = TTTensor([c * scale for c in a.cores])
    uneven = TTTensor([a.cores[0] * magnitude**2, a.cores[1] / magnitude, a.cores[2]])
    for tt in (big, uneven):
        assert math.isclose(float(tt.norm()), float(ref) * magnitude, rel_tol=1e-12)
    got = uneven.inner(uneven)
    assert math.isclose(float(got), float(ref) ** 2 * magnitude**2, rel_tol=1e-12)


@given(tt_tensors(max_rank=5))
def test_orthogonalize_preserves_tensor_and_makes_cores_orthogonal(a):
    o = a.orthogonalize()
    assert_close(o.full(), a.full())
    for core in o.cores[1:]:
        mat = core.reshape(core.shape[0], -1)
        assert_close(mat @ mat.T, torch.eye(mat.shape[0], dtype=mat.dtype))
    assert_close(torch.linalg.vector_norm(o.cores[0]), a.norm())


@given(pairs(), st.floats(0.0, 0.7))
def test_round_of_sum_within_bound_of_dense_sum(ab, eps):
    a, b = ab
    s = a + b
    dense = s.full()
    r = s.round(eps=eps)
    err = torch.linalg.vector_norm(r.full() - dense)
    assert err <= eps * torch.linalg.vector_norm(dense) * (1 + 1e-8) + 1e-10
    assert all(x <= y for x, y in zip(r.ranks, s.ranks))


@given(tt_tensors(min_ndim=2, max_rank=5), st.integers(1, 3))
def test_round_max_rank_and_optimality(a, cap):
    r = a.round(max_rank=cap)
    assert max(r.ranks) <= cap
    # Rounding to the ranks that TT-SVD of the dense tensor would give is no worse than 2x its error
    # (both are quasi-optimal; rounding works from orthogonalised cores).
    ref = tt_svd(a.full(), max_rank=cap)
    err_r = torch.linalg.vector_norm(r.full() - a.full())
    err_s = torch.linalg.vector_norm(ref.full() - a.full())
    assert err_r <= math.sqrt(a.ndim - 1) * (err_s + 1e-10) * 1.01 + 1e-9


def test_round_recovers_true_ranks_of_redundant_sum():
    a = tt_svd(torch.randn(5, 6, 7, dtype=torch.float64), max_rank=2)
    r = (a + a + a).round(eps=1e-10)
    assert r.ranks == a.ranks
    assert_close(r.full(), 3 * a.full())


@given(st.data())
def test_matmul_and_matvec(data):
    a = data.draw(tt_matrices())
    b = data.draw(tt_matrices(row_modes=a.col_modes))
    v = data.draw(tt_tensors(shape=a.col_modes))
    assert_close((a @ b).full(), a.full() @ b.full())
    assert_close((a @ v).full().reshape(-1), a.full() @ v.full().reshape(-1))
    assert (a @ b).ranks == tuple(x * y for x, y in zip(a.ranks, b.ranks))
    x = torch.randn(a.shape[1], 3, dtype=torch.float64)
    assert_close(a @ x, a.full() @ x)
    assert_close(a @ x[:, 0], a.full() @ x[:, 0])


@given(st.data())
def test_matrix_arithmetic_and_rounding(data):
    a = data.draw(tt_matrices())
    b = data.draw(tt_matrices(row_modes=a.row_modes, col_modes=a.col_modes))
    assert_close((a + b).full(), a.full() + b.full())
    assert_close((a * b).full(), a.full() * b.full())
    assert_close(a.norm(), torch.linalg.matrix_norm(a.full()))
    r = (a + b).round(eps=1e-10)
    assert isinstance(r, TTMatrix) and r.row_modes == a.row_modes
    assert_close(r.full(), a.full() + b.full())


def test_gradcheck_of_operations():
    gen = torch.Generator().manual_seed(0)
    cores = [
        torch.randn(1, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 2, 1, generator=gen, dtype=torch.float64, requires_grad=True),
    ]
    other = tt_svd(torch.randn(3, 4, 2, generator=gen, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *c: TTTensor(c).norm(), cores)
    assert torch.autograd.gradcheck(lambda *c: TTTensor(c).inner(other), cores)
    assert torch.autograd.gradcheck(lambda *c: (TTTensor(c) * other + other).full(), cores)
    assert torch.autograd.gradcheck(lambda *c: TTTensor(c).orthogonalize().full(), cores)


def test_mismatched_operands_raise():
    a = TTTensor([torch.randn(1, 3, 1), torch.randn(1, 4, 1)])
    b = TTTensor([torch.randn(1, 3, 1), torch.randn(1, 5, 1)])
    with pytest.raises(TTShapeError, match=r"add: operands have modes \(3, 4\) and \(3, 5\)"):
        a + b
    with pytest.raises(TTTypeError, match=r"dtypes torch\.float32 and torch\.float64"):
        a + a.to(torch.float64)
    with pytest.raises(TTTypeError, match="expected a TTTensor, got TTMatrix"):
        a.inner(TTMatrix([torch.randn(1, 3, 4, 1)]))
    w = TTMatrix([torch.randn(1, 2, 3, 1)])
    with pytest.raises(TTShapeError, match=r"col_modes \(3,\) do not match right row_modes \(2,\)"):
        w @ w
    with pytest.raises(TTTypeError, match="scalar"):
        a * torch.ones(3)
