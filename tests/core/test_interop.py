"""NumPy and tensorly round trips, and the public hypothesis strategies."""

import numpy as np
import pytest
import torch
from hypothesis import given

from tensortrain import TTMatrix, TTTensor
from tensortrain.interop import from_numpy, from_tensorly, to_numpy, to_tensorly
from tensortrain.testing import assert_close, tolerance, tt_matrices, tt_tensors


@given(tt_tensors())
def test_numpy_round_trip(tt):
    back = from_numpy(to_numpy(tt))
    assert isinstance(back, TTTensor)
    assert_close(back.full(), tt.full(), rtol=0)


@given(tt_matrices())
def test_numpy_round_trip_matrix(w):
    back = from_numpy(to_numpy(w), dtype=torch.float64)
    assert isinstance(back, TTMatrix) and back.row_modes == w.row_modes
    assert_close(back.full(), w.full(), rtol=0)


@given(tt_tensors(min_ndim=2))
def test_tensorly_round_trip_and_same_dense(tt):
    tl = pytest.importorskip("tensorly")
    theirs = to_tensorly(tt)
    np.testing.assert_allclose(tl.tt_to_tensor(theirs), tt.full().numpy(), rtol=1e-10, atol=1e-10)
    assert_close(from_tensorly(theirs).full(), tt.full(), rtol=0)


@given(tt_matrices())
def test_tensorly_matrix_same_dense(w):
    tl = pytest.importorskip("tensorly")
    theirs = to_tensorly(w)
    np.testing.assert_allclose(
        tl.tt_matrix_to_tensor(theirs).reshape(w.shape), w.full().numpy(), atol=1e-10
    )


def test_assert_close_fails_on_wrong_result():
    a = torch.ones(10, dtype=torch.float64)
    with pytest.raises(AssertionError, match="error"):
        assert_close(a * (1 + 10 * tolerance(torch.float64)), a)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_close(a, a[:5])
