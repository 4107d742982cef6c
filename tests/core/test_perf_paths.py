"""The fast paths: block-grouped tt_linear with its custom backward, Gram-side truncated SVD."""

import pytest
import torch

import tensortrain.contract as contract
from tensortrain import TTMatrix, plan, tt_linear, tt_svd
from tensortrain._svd import truncated_svd
from tensortrain.testing import assert_close


def _cores(rows, cols, rank, gen, dtype=torch.float64, grad=False):
    d = len(rows)
    ranks = [1] + [rank] * (d - 1) + [1]
    return [
        torch.randn(
            ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen, dtype=dtype, requires_grad=grad
        )
        for k in range(d)
    ]


@pytest.mark.parametrize("chunk_bytes", [1, contract.CHUNK_BYTES])
@pytest.mark.parametrize(("rows", "cols"), [((4, 4, 4), (4, 4, 4)), ((3, 3, 3, 3), (3, 3, 3, 3))])
def test_gradcheck_block_sweep(monkeypatch, chunk_bytes, rows, cols):
    monkeypatch.setattr(contract, "CHUNK_BYTES", chunk_bytes)  # 1: one row per chunk
    gen = torch.Generator().manual_seed(0)
    cores = _cores(rows, cols, 2, gen, grad=True)
    x = torch.randn(3, TTMatrix(cores).shape[1], generator=gen, dtype=torch.float64)
    x.requires_grad_()
    assert plan(2, rows, cols, TTMatrix(cores).ranks).kind == "tt"
    assert torch.autograd.gradcheck(lambda x, *c: tt_linear(x, list(c)), (x, *cores))


def test_square_ttm_plan_groups_in_two_blocks():
    p = plan(256, (8,) * 4, (8,) * 4, (1, 8, 8, 8, 1))
    assert p.kind == "tt" and p.groups == ((0, 2), (2, 4))


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 8 * 48, contract.CHUNK_BYTES])
def test_block_sweep_matches_dense_with_grads(monkeypatch, chunk_bytes):
    # one row per chunk; 3 rows per chunk (35 rows: a short last chunk); one chunk
    monkeypatch.setattr(contract, "CHUNK_BYTES", chunk_bytes)
    assert contract._chunk_rows(
        torch.zeros(35, 64, dtype=torch.float64), ((1, 16, 16, 3), (3, 4, 4, 1))
    ) in (1, 3, 35)
    gen = torch.Generator().manual_seed(1)
    cores = _cores((4, 4, 4), (4, 4, 4), 3, gen, grad=True)
    x = torch.randn(5, 7, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, 64, generator=gen, dtype=torch.float64)
    y = tt_linear(x, cores)
    grads = torch.autograd.grad(y, [x, *cores], g)
    y_ref = x @ TTMatrix(cores).full().T
    refs = torch.autograd.grad(y_ref, [x, *cores], g)
    assert_close(y, y_ref)
    for a, b in zip(grads, refs, strict=True):
        assert_close(a, b)


def test_backward_stores_only_input_and_blocks():
    """The sweep's intermediates (8x the input here) are recomputed in backward, not stored."""
    gen = torch.Generator().manual_seed(2)
    cores = _cores((8, 8, 8, 8), (8, 8, 8, 8), 8, gen, dtype=torch.float32, grad=True)
    x = torch.randn(32, 4096, generator=gen)
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = tt_linear(x, cores)
    blocks = sum(64 * 64 * 8 * 4 for _ in range(2))
    core_bytes = sum(c.numel() * 4 for c in cores)
    assert sum(saved.values()) <= x.numel() * 4 + blocks + core_bytes
    assert y.numel() * 8 > x.numel() * 4 + blocks + core_bytes  # an intermediate would not fit


def test_chunked_forward_matches_one_chunk(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    cores = _cores((8, 8, 8, 8), (8, 8, 8, 8), 8, gen, dtype=torch.float32)
    x = torch.randn(70, 4096, generator=gen)
    assert contract._chunk_rows(x, ((1, 64, 64, 8), (8, 64, 64, 1))) == 8
    chunked = tt_linear(x, cores)
    monkeypatch.setattr(contract, "CHUNK_BYTES", 1 << 40)
    assert_close(chunked, tt_linear(x, cores))


@pytest.mark.parametrize("cap", [None, 3])
@pytest.mark.parametrize("delta_rel", [0.0, 1e-3, 0.3])
def test_gram_side_matches_svd(cap, delta_rel):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(6, 4, generator=gen, dtype=torch.float64) @ torch.randn(
        4, 200, generator=gen, dtype=torch.float64
    )
    a = a + 1e-4 * torch.randn(6, 200, generator=gen, dtype=torch.float64)
    delta = delta_rel * float(torch.linalg.norm(a))
    u, s, vh = truncated_svd(a, delta, cap)
    s0 = torch.linalg.svdvals(a)
    r = s.shape[0]
    assert_close(u.mT @ u, torch.eye(r, dtype=a.dtype))
    err = torch.linalg.norm(a - u @ (s[:, None] * vh))
    torch.testing.assert_close(err, torch.linalg.norm(s0[r:]), rtol=1e-6, atol=1e-12)
    if cap is None:
        assert float(err) <= delta or r == 6


def test_tt_svd_eps_bound_with_gram_side():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 4, 4, 4, 4, 4, generator=gen, dtype=torch.float64)
    for eps in (0.05, 0.3, 0.7):
        tt = tt_svd(x, eps=eps)
        assert torch.linalg.norm(tt.full() - x) <= eps * torch.linalg.norm(x)


def test_compile_does_not_trace_planning():
    gen = torch.Generator().manual_seed(5)
    cores = _cores((4, 4, 4), (4, 4, 4), 3, gen, dtype=torch.float32)
    x = torch.randn(6, 64, generator=gen)
    compiled = torch.compile(lambda x: tt_linear(x, cores), backend="eager", fullgraph=True)
    assert_close(compiled(x), tt_linear(x, cores))
