"""TT-SVD against dense references: exactness, the Oseledets bound, rank caps, edge cases."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import TTShapeError, TTTypeError, TTValueError, tt_matrix_svd, tt_svd
from tensortrain.testing import assert_close, tolerance, tt_tensors

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)
dtypes = st.sampled_from([torch.float32, torch.float64])
seeds = st.integers(0, 2**31 - 1)


def rand(shape, dtype, seed):
    return torch.randn(
        shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    ).to(dtype)


def rel_err(a, b):
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


@given(shapes, dtypes, seeds)
def test_full_rank_reconstructs_exactly(shape, dtype, seed):
    x = rand(shape, dtype, seed)
    tt = tt_svd(x)
    assert tt.shape == tuple(shape) and tt.dtype == dtype
    assert_close(tt.full(), x)


@given(tt_tensors(min_ndim=2, max_mode=6, max_rank=3), st.floats(0.0, 0.9))
def test_eps_bound_holds(tt_in, eps):
    noise = (
        rand(tt_in.shape, torch.float64, 7)
        * 0.01
        * float(tt_in.norm())
        / math.sqrt(math.prod(tt_in.shape))
    )
    x = tt_in.full() + noise  # low rank plus a little noise: truncation really happens
    tt = tt_svd(x, eps=eps)
    assert rel_err(tt.full(), x) <= eps * (1 + 1e-9) + 1e-12


@given(shapes, dtypes, seeds, st.integers(1, 4))
def test_max_rank_caps_every_bond(shape, dtype, seed, cap):
    tt = tt_svd(rand(shape, dtype, seed), max_rank=cap)
    assert max(tt.ranks) <= max(cap, 1)


@given(st.lists(st.integers(2, 5), min_size=3, max_size=4), seeds, st.data())
def test_per_bond_max_rank(shape, seed, data):
    caps = [data.draw(st.integers(1, 3)) for _ in range(len(shape) - 1)]
    tt = tt_svd(rand(shape, torch.float64, seed), max_rank=caps)
    assert all(r <= c for r, c in zip(tt.ranks[1:-1], caps))
    assert tt_svd(rand(shape, torch.float64, seed), max_rank=[1, *caps, 1]).ranks == tt.ranks


def test_max_rank_wins_over_eps():
    x = rand((6, 6, 6), torch.float64, 0)
    assert max(tt_svd(x, eps=1e-12, max_rank=2).ranks) == 2


def test_exact_low_rank_recovered_with_small_ranks():
    cores = [
        rand((1, 5, 2), torch.float64, 1),
        rand((2, 6, 3), torch.float64, 2),
        rand((3, 7, 1), torch.float64, 3),
    ]
    x = torch.einsum("anb,bmc,cpd->nmp", *cores)
    tt = tt_svd(x, eps=1e-10)
    assert tt.ranks == (1, 2, 3, 1)
    assert_close(tt.full(), x)


@pytest.mark.parametrize("shape", [(4,), (1, 1, 1), (3, 1, 4), (1, 5)])
def test_zero_and_degenerate_tensors(shape):
    x = torch.zeros(shape, dtype=torch.float64)
    tt = tt_svd(x, eps=0.1)
    assert all(r == 1 for r in tt.ranks)
    assert float(tt.full().abs().max()) == 0.0
    y = rand(shape, torch.float64, 5)
    assert_close(tt_svd(y, eps=0.0).full(), y)


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), seeds)
def test_matrix_svd_full_rank_exact(modes, seed):
    col = [m + 1 for m in modes]
    w = rand((math.prod(modes), math.prod(col)), torch.float64, seed)
    tt = tt_matrix_svd(w, modes, col)
    assert tt.row_modes == tuple(modes) and tt.col_modes == tuple(col)
    assert_close(tt.full(), w)


@given(seeds, st.floats(0.01, 0.8))
def test_matrix_svd_eps_bound(seed, eps):
    w = rand((64, 48), torch.float64, seed)
    tt = tt_matrix_svd(w, (4, 4, 4), (4, 4, 3), eps=eps)
    assert rel_err(tt.full(), w) <= eps * (1 + 1e-9)


def test_float32_reconstruction_tolerance():
    x = rand((8, 8, 8), torch.float32, 3)
    assert rel_err(tt_svd(x).full(), x) <= tolerance(torch.float32)


def test_half_precision_input_is_supported():
    x = rand((4, 4, 4), torch.float64, 3)
    tt = tt_svd(x.to(torch.bfloat16))
    assert tt.dtype == torch.bfloat16
    assert rel_err(tt.full().double(), x) <= 0.05


@given(st.lists(st.integers(2, 6), min_size=3, max_size=4), seeds, st.integers(1, 4))
def test_truncation_as_good_as_tensorly(shape, seed, rank):
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import tensor_train

    x = rand(shape, torch.float64, seed)
    ours = tt_svd(x, max_rank=rank)
    theirs = tensor_train(x.numpy(), rank=[1, *ours.ranks[1:-1], 1])
    theirs_err = np.linalg.norm(tl.tt_to_tensor(theirs) - x.numpy())
    assert float(torch.linalg.vector_norm(ours.full() - x)) <= theirs_err * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, TTValueError, r"eps must be in \[0, inf\], got -0.1"),
        ({"eps": float("nan")}, TTValueError, r"eps must be a finite number, got nan"),
        ({"max_rank": 0}, TTValueError, r"max_rank must be an int >= 1, got 0"),
        ({"max_rank": (2, 2, 2)}, TTShapeError, r"max_rank must hold d - 1 = 2 bond ranks"),
        ({"max_rank": 2.5}, TTTypeError, r"max_rank must be an int"),
        ({"max_rank": (2, 0)}, TTValueError, r"max_rank\[1\] must be an int >= 1, got 0"),
        ({"eps": "0.1"}, TTTypeError, r"eps must be a number, got str '0.1'"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tt_svd(torch.randn(3, 4, 5), **kwargs)


def test_bad_matrix_modes():
    with pytest.raises(
        TTShapeError,
        match=r"x must have shape \(prod\(row_modes\), prod\(col_modes\)\) = \(6, 8\), got \(6, 9\)",
    ):
        tt_matrix_svd(torch.randn(6, 9), (2, 3), (2, 4))
    with pytest.raises(TTShapeError, match="equal length"):
        tt_matrix_svd(torch.randn(6, 8), (2, 3), (8,))
    with pytest.raises(TTTypeError, match="floating"):
        tt_svd(torch.ones(3, 3, dtype=torch.int32))


def test_input_not_modified():
    x = rand((4, 5, 6), torch.float64, 9)
    before = x.clone()
    tt_svd(x, eps=0.2)
    assert torch.equal(x, before)


def test_gradient_through_tt_svd():
    x = rand((3, 4, 5), torch.float64, 4).requires_grad_()
    tt_svd(x).full().sum().backward()  # exact reconstruction: d(sum)/dx = 1
    assert_close(x.grad, torch.ones_like(x), rtol=1e-6)
