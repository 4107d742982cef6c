"""The fast paths: chunked block sweep of tt_linear, Gram-side truncated SVD and rounding."""

import math

import pytest
import torch
from _builders import scaled_cores
from _round import sweeps_round
from hypothesis import given
from hypothesis import strategies as st

import tensortrain._running as running
from tensortrain import TTMatrix, ops, plan, round_cores, tt_linear, tt_svd
from tensortrain._svd import truncated_svd
from tensortrain.testing import assert_close, tt_tensors


@pytest.mark.parametrize("chunk_bytes", [1, running.CHUNK_BYTES])
@pytest.mark.parametrize(("rows", "cols"), [((4, 4, 4), (4, 4, 4)), ((3, 3, 3, 3), (3, 3, 3, 3))])
def test_gradcheck_block_sweep(monkeypatch, chunk_bytes, rows, cols):
    monkeypatch.setattr(running, "CHUNK_BYTES", chunk_bytes)  # 1: one row per chunk
    gen = torch.Generator().manual_seed(0)
    cores = scaled_cores(rows, cols, 2, gen, grad=True)
    x = torch.randn(3, TTMatrix(cores).shape[1], generator=gen, dtype=torch.float64)
    x.requires_grad_()
    assert plan(2, rows, cols, TTMatrix(cores).ranks).kind == "tt"
    assert torch.autograd.gradcheck(lambda x, *c: tt_linear(x, list(c)), (x, *cores))


def test_square_ttm_plan_groups_in_two_blocks():
    p = plan(256, (8,) * 4, (8,) * 4, (1, 8, 8, 8, 1))
    assert p.kind == "tt" and p.groups == ((0, 2), (2, 4))


@pytest.mark.parametrize("chunk_bytes", [1, 3 * 8 * 48, running.CHUNK_BYTES])
def test_block_sweep_matches_dense_with_grads(monkeypatch, chunk_bytes):
    # one row per chunk; 3 rows per chunk and thread (35 rows: a short last chunk); one chunk
    monkeypatch.setattr(running, "CHUNK_BYTES", chunk_bytes)
    parts = running.chunks(torch.zeros(35, 64, dtype=torch.float64), ((1, 16, 16, 3), (3, 4, 4, 1)))
    rows = min(parts[0].stop, 35)
    assert rows in (1, 3 * torch.get_num_threads(), 35)
    assert [p.start for p in parts] == list(range(0, 35, rows)) and parts[-1].stop >= 35
    gen = torch.Generator().manual_seed(1)
    cores = scaled_cores((4, 4, 4), (4, 4, 4), 3, gen, grad=True)
    x = torch.randn(5, 7, 64, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 7, 64, generator=gen, dtype=torch.float64)
    y = tt_linear(x, cores)
    grads = torch.autograd.grad(y, [x, *cores], g)
    y_ref = x @ TTMatrix(cores).full().T
    refs = torch.autograd.grad(y_ref, [x, *cores], g)
    assert_close(y, y_ref)
    for a, b in zip(grads, refs, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("needs", ["x", "cores", "first core", "all"])
def test_block_sweep_grads_of_any_subset(monkeypatch, needs):
    """Frozen cores skip the recomputed sweep; frozen x skips dx; each against float64 dense."""
    monkeypatch.setattr(running, "CHUNK_BYTES", 3 * 8 * 48)  # several chunks, a short last one
    gen = torch.Generator().manual_seed(10)
    cores = scaled_cores((4, 4, 4), (4, 4, 4), 3, gen)
    x = torch.randn(11, 64, generator=gen, dtype=torch.float64)
    leaves = {"x": [x], "cores": cores, "first core": cores[:1], "all": [x, *cores]}[needs]
    for t in leaves:
        t.requires_grad_()
    g = torch.randn(11, 64, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(tt_linear(x, cores), leaves, g)
    refs = torch.autograd.grad(x @ TTMatrix(cores).full().T, leaves, g)
    for a, b in zip(got, refs, strict=True):
        assert_close(a, b)


def test_backward_stores_only_input_and_blocks():
    """The sweep's intermediates (8x the input here) are recomputed in backward, not stored."""
    gen = torch.Generator().manual_seed(2)
    cores = scaled_cores((8, 8, 8, 8), (8, 8, 8, 8), 8, gen, dtype=torch.float32, grad=True)
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
    cores = scaled_cores((8, 8, 8, 8), (8, 8, 8, 8), 8, gen, dtype=torch.float32)
    x = torch.randn(70, 4096, generator=gen)
    parts = running.chunks(x, ((1, 64, 64, 8), (8, 64, 64, 1)))  # 1 MiB per thread
    rows = parts[0].stop
    assert rows == min(70, 8 * torch.get_num_threads()) and 70 % rows
    assert len(parts) == -(-70 // rows)
    chunked = tt_linear(x, cores)
    monkeypatch.setattr(running, "CHUNK_BYTES", 1 << 40)
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


@pytest.mark.parametrize(
    ("batch", "modes", "kind"),
    [
        (4096, (2, 2), "dense"),  # huge batch, tiny matrix
        (6, (4, 4, 4), "tt"),
    ],
)
def test_compile_does_not_trace_planning(batch, modes, kind):
    gen = torch.Generator().manual_seed(5)
    cores = scaled_cores(modes, modes, 3, gen, dtype=torch.float32)
    ranks = [1] + [3] * (len(modes) - 1) + [1]
    assert plan(batch, modes, modes, ranks).kind == kind
    x = torch.randn(batch, math.prod(modes), generator=gen)
    compiled = torch.compile(
        lambda x: tt_linear(x, cores), backend="eager", fullgraph=True, dynamic=False
    )
    assert_close(compiled(x), tt_linear(x, cores))


@pytest.mark.parametrize(("backend", "dynamic"), [("aot_eager", True), ("inductor", False)])
def test_compiled_tt_path_forward_backward(backend, dynamic):
    """The tt path compiles whole (fullgraph) with its backward, the batch static or symbolic
    (planned for its power-of-two bucket; the cores are parameters, whose shapes dynamo keeps
    static): values and gradients as in eager, for two batch sizes."""
    gen = torch.Generator().manual_seed(6)
    cores = [
        torch.nn.Parameter(c) for c in scaled_cores((4, 4, 4), (4, 4, 4), 3, gen, torch.float32)
    ]
    assert plan(6, (4, 4, 4), (4, 4, 4), (1, 3, 3, 1)).kind == "tt"
    compiled = torch.compile(
        lambda x: tt_linear(x, cores), backend=backend, fullgraph=True, dynamic=dynamic
    )
    for batch in (6, 11):
        got = []
        for fn in (compiled, lambda x: tt_linear(x, cores)):
            x = torch.randn(batch, 64, generator=torch.Generator().manual_seed(batch))
            x.requires_grad_()
            for c in cores:
                c.grad = None
            y = fn(x)
            y.square().sum().backward()
            got.append([y.detach(), x.grad, *(c.grad for c in cores)])
        for a, b in zip(*got, strict=True):
            assert_close(a, b)


# ------------------------------------------------------------------ Gram-path rounding


def _rel_err(cores, ref_dense):
    return float(
        torch.linalg.vector_norm(ops.full(cores) - ref_dense) / torch.linalg.vector_norm(ref_dense)
    )


@st.composite
def _sums(draw):
    """A TT plus a smaller one (as rounding meets it after addition), float64, 2-5 cores."""
    a = draw(tt_tensors(min_ndim=2, max_ndim=5, max_rank=4))
    b = draw(tt_tensors(shape=a.shape, max_rank=4))
    weight = draw(st.sampled_from([0.0, 1e-6, 1e-2, 1.0]))
    return ops.add(a.cores, ops.scale(b.cores, weight))


@given(_sums(), st.integers(1, 4), st.sampled_from([None, 1e-3, 0.1, 0.5]))
def test_gram_rounding_keeps_the_error_of_the_exact_sweeps(cores, cap, eps):
    dense = ops.full(cores)
    if float(torch.linalg.vector_norm(dense)) < 1e-12:
        return
    got = ops._gram_round(cores, eps, [cap] * (len(cores) - 1))
    exact = sweeps_round(cores, eps=eps, max_rank=cap)
    err_exact = _rel_err(exact, dense)
    if got is None:  # declined (a tiny discarded part at a tiny gap): the exact sweeps answer
        assert eps is None
        assert_close(ops.full(round_cores(cores, max_rank=cap)), ops.full(exact), rtol=0.0)
        return
    err = _rel_err(got, dense)
    assert max(c.shape[-1] for c in got[:-1]) <= cap
    assert err <= err_exact * (1 + 1e-4) + 1e-7
    if eps is not None and all(c.shape[-1] < cap for c in got[:-1]):  # the cap never bound
        assert err <= eps * (1 + 1e-9)
    for core in got[:-1]:  # left-orthonormal cores: the result is a projection of the input
        mat = core.reshape(-1, core.shape[-1])
        assert_close(mat.mT @ mat, torch.eye(mat.shape[1], dtype=mat.dtype), rtol=1e-12)


def test_gram_rounding_matches_exact_sweeps_on_the_benchmark_case():
    gen = torch.Generator().manual_seed(2)
    main, small = (scaled_cores([16] * 6, None, r, gen, tensor=True) for r in (8, 24))
    a = ops.add(main, ops.scale(small, 1e-2))
    got = ops._gram_round(a, None, [8] * 5)
    assert got is not None  # this case is taken by the Gram path
    exact = sweeps_round(a, max_rank=8)
    assert [c.shape for c in got] == [c.shape for c in exact]
    # the same truncation: equal up to float64 round-off (the Gram matrices square it)
    assert_close(ops.full(got), ops.full(exact), rtol=1e-10)


def test_gram_rounding_declines_a_tiny_tail_without_gap_and_falls_back():
    # bond 1 singular values (1, 1e-9, 1e-9): a cap of 2 drops 1e-9 right at a zero gap
    gen = torch.Generator().manual_seed(7)
    u = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(6, 3, generator=gen, dtype=torch.float64))[0]
    s = torch.tensor([1.0, 1e-9, 1e-9], dtype=torch.float64)
    cores = [u.reshape(1, 6, 3), (s[:, None] * v.mT).reshape(3, 6, 1)]
    assert ops._gram_round(cores, None, [2]) is None
    got = round_cores(cores, max_rank=2)  # the QR and SVD sweeps answer instead
    assert abs(_rel_err(got, ops.full(cores)) - 1e-9) < 1e-15


def test_gram_rounding_is_skipped_for_half_autograd_and_tiny_eps():
    gen = torch.Generator().manual_seed(8)
    cores = scaled_cores([4] * 4, None, 3, gen, tensor=True)
    assert ops._gram_round_applies(cores, 0.1)
    assert not ops._gram_round_applies(cores, 1e-6)  # eps^2 / (d - 1) below GRAM_MIN_DELTA2
    assert ops._gram_round_applies([c.float() for c in cores], 0.1)
    assert not ops._gram_round_applies([c.float() for c in cores], 1e-2)  # float32's floor
    assert not ops._gram_round_applies([c.half() for c in cores], 0.1)
    assert not ops._gram_round_applies([c.bfloat16() for c in cores], 0.1)
    assert not ops._gram_round_applies([c.requires_grad_() for c in cores], 0.1)
    with torch.no_grad():
        assert ops._gram_round_applies(cores, 0.1)


@pytest.mark.parametrize("magnitude", [1e-280, 1e250])
def test_gram_rounding_with_extreme_core_magnitudes(magnitude):
    gen = torch.Generator().manual_seed(9)
    cores = scaled_cores([5] * 4, None, 4, gen, tensor=True)
    ref = sweeps_round(cores, max_rank=2)
    scaled = [cores[0] * magnitude, cores[1] / magnitude, *cores[2:]]  # the same tensor
    got = ops._gram_round(scaled, None, [2] * 3)
    assert got is not None
    assert_close(ops.full(got), ops.full(ref), rtol=1e-10)
