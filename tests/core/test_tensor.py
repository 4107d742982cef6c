"""TTTensor and TTMatrix: validation, properties, element access, moves, transpose."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tensortrain import TTMatrix, TTShapeError, TTTensor, TTTypeError
from tensortrain.testing import assert_close, tt_matrices, tt_tensors


def dense_tt(cores):
    """Reference reconstruction by one einsum per core (independent of ops.full)."""
    out = torch.ones(1, dtype=cores[0].dtype)
    for core in cores:
        out = torch.tensordot(out, core, dims=([out.ndim - 1], [0]))
    return out.reshape(out.shape[:-1])


@given(tt_tensors(dtypes=(torch.float32, torch.float64)))
def test_full_matches_reference(tt):
    assert_close(tt.full(), dense_tt(tt.cores))
    assert tt.shape == tuple(tt.full().shape)
    assert tt.num_parameters == sum(c.numel() for c in tt.cores)
    assert tt.ranks[0] == tt.ranks[-1] == 1 and len(tt.ranks) == tt.ndim + 1


@given(tt_matrices(dtypes=(torch.float32, torch.float64)))
def test_matrix_full_matches_reference(w):
    ref = dense_tt(w.cores)  # (m1, n1, ..., md, nd)
    d = w.d
    ref = ref.permute([2 * k for k in range(d)] + [2 * k + 1 for k in range(d)]).reshape(w.shape)
    assert_close(w.full(), ref)
    assert_close(w.T.full(), ref.T)
    assert w.T.row_modes == w.col_modes


@given(tt_tensors(), st.data())
def test_element_and_slice_access(tt, data):
    dense = tt.full()
    idx = tuple(data.draw(st.integers(-n, n - 1)) for n in tt.shape)
    assert_close(tt[idx], dense[idx])
    mixed = tuple(
        data.draw(st.one_of(st.integers(0, n - 1), st.just(slice(None)), st.just(slice(0, 1))))
        for n in tt.shape
    )
    got = tt[mixed]
    want = dense[mixed]
    assert_close(got.full() if isinstance(got, TTTensor) else got, want)


@given(tt_matrices(), st.data())
def test_matrix_element_access(w, data):
    i = data.draw(st.integers(0, w.shape[0] - 1))
    j = data.draw(st.integers(-w.shape[1], w.shape[1] - 1))
    assert_close(w[i, j], w.full()[i, j])


def test_to_and_dtype_moves():
    tt = TTTensor([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
    t64 = tt.to(torch.float64)
    assert t64.dtype == torch.float64 and t64.device == torch.device("cpu")
    assert_close(t64.full(), tt.full().double(), rtol=1e-6)
    assert tt.dtype == torch.float32  # unchanged


def test_cores_property_returns_new_list():
    tt = TTTensor([torch.randn(1, 3, 1)])
    tt.cores.append(torch.randn(1, 2, 1))
    assert tt.ndim == 1


def test_autograd_flows_through_full():
    cores = [
        torch.randn(1, 3, 2, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 4, 1, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(lambda a, b: TTTensor([a, b]).full(), cores)


@pytest.mark.parametrize(
    ("cores", "match"),
    [
        (
            [torch.randn(1, 3, 2), torch.randn(3, 4, 1)],
            r"cores\[1\] has left rank 3 but cores\[0\] has right rank 2",
        ),
        ([torch.randn(2, 3, 1)], r"cores\[0\] must have left rank 1, got 2"),
        ([torch.randn(1, 3, 2)], r"cores\[0\] must have right rank 1, got 2"),
        ([torch.randn(1, 3)], r"cores\[0\] must have 3 dimensions"),
        ([torch.randn(1, 0, 1)], r"non-positive size"),
        ([], r"at least one core"),
    ],
)
def test_bad_cores_raise_shape_error(cores, match):
    with pytest.raises(TTShapeError, match=match):
        TTTensor(cores)
    with pytest.raises(ValueError):
        TTTensor(cores)


def test_mixed_dtypes_and_types_raise_type_error():
    with pytest.raises(
        TTTypeError, match=r"cores\[1\] has dtype torch.float64 but cores\[0\] has torch.float32"
    ):
        TTTensor([torch.randn(1, 3, 2), torch.randn(2, 3, 1, dtype=torch.float64)])
    with pytest.raises(TypeError, match="floating"):
        TTTensor([torch.ones(1, 3, 1, dtype=torch.int64)])
    with pytest.raises(TypeError, match="sequence of tensors"):
        TTTensor(torch.randn(1, 3, 1))


def test_matrix_needs_4d_cores():
    with pytest.raises(TTShapeError, match=r"\(r_prev, m, n, r_next\)"):
        TTMatrix([torch.randn(1, 3, 1)])


def test_index_errors():
    tt = TTTensor([torch.randn(1, 3, 2), torch.randn(2, 4, 1)])
    with pytest.raises(IndexError, match="out of range"):
        tt[3, 0]
    with pytest.raises(TTShapeError, match="2 modes"):
        tt[0, 0, 0]
    w = TTMatrix([torch.randn(1, 2, 3, 1)])
    with pytest.raises(IndexError, match="row index 2"):
        w[2, 0]
    assert math.prod(w.shape) == 6
