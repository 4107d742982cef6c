"""tt_linear: every planned path equals x @ W.T, gradients, the cache, bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain._plan_constants as plan_constants
from tensortrain import (
    TTMatrix,
    TTShapeError,
    TTTypeError,
    TTValueError,
    contract,
    plan,
    set_plan_mode,
    tt_linear,
)
from tensortrain._measuring import MEASURE_PATHS, MEASURE_ROUNDS, Planner
from tensortrain._planning import (
    DENSE,
    ENUMERATE_MAX_CORES,
    FITTED,
    Path,
    Signature,
    groupings,
    path_terms,
    product_terms,
)
from tensortrain.testing import assert_close, tt_matrices

lead_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3)
#: (batch, row modes, column modes, inner ranks) of 1-5 cores
plan_shapes = st.integers(1, 5).flatmap(
    lambda d: st.tuples(
        st.integers(1, 4096),
        st.lists(st.integers(1, 16), min_size=d, max_size=d),
        st.lists(st.integers(1, 16), min_size=d, max_size=d),
        st.lists(st.integers(1, 32), min_size=d - 1, max_size=d - 1),
    )
)


@given(tt_matrices(dtypes=(torch.float32, torch.float64)), lead_shapes, st.booleans())
def test_matches_dense_matmul(w, lead, with_bias):
    x = torch.randn(*lead, w.shape[1], dtype=w.dtype)
    bias = torch.randn(w.shape[0], dtype=w.dtype) if with_bias else None
    ref = x @ w.full().T + (0 if bias is None else bias)
    assert_close(tt_linear(x, w, bias), ref)
    assert_close(tt_linear(x, w.cores, bias), ref)


@pytest.mark.parametrize(
    ("batch", "rows", "cols", "rank", "kind"),
    [
        (4, (8, 8, 8), (8, 8, 8), 4, "tt"),  # small batch, big matrix: never densify
        (4096, (2, 2), (2, 2), 4, "dense"),  # huge batch, tiny matrix: reconstruct once
    ],
)
def test_both_paths_are_planned_and_correct(batch, rows, cols, rank, kind):
    gen = torch.Generator().manual_seed(0)
    d = len(rows)
    ranks = [1] + [rank] * (d - 1) + [1]
    w = TTMatrix(
        [
            torch.randn(
                ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen, dtype=torch.float64
            )
            for k in range(d)
        ]
    )
    p = plan(batch, w.row_modes, w.col_modes, w.ranks)
    assert p.kind == kind
    assert (p.dense_cost <= p.tt_cost) == (kind == "dense")
    x = torch.randn(batch, w.shape[1], generator=gen, dtype=torch.float64)
    assert_close(tt_linear(x, w), x @ w.full().T)


def test_cost_model_prefers_wide_products_to_fewer_flops():
    """(8,6,8) at rank 2: three single-core blocks take the fewest FLOPs, but their narrow products
    (inner dimensions of 8 to 16) run several times slower than the two-block grouping; the plan
    takes the two blocks (measured: benchmarks/README.md)."""
    p = plan(1024, (8, 6, 8), (8, 6, 8), (1, 2, 2, 1))
    assert p.kind == "tt" and p.groups == ((0, 1), (1, 3))

    # a narrow product costs more per FLOP than a wide one; a batch of matrices pays per matrix
    def cost(count: int, a: int, k: int, q: int) -> float:
        return FITTED.cost(product_terms(count, a, k, q))

    assert cost(1, 4096, 8, 8) / (2 * 4096 * 8 * 8) > 2 * cost(1, 4096, 256, 256) / (
        2 * 4096 * 256 * 256
    )
    assert cost(100, 8, 8, 8) > 100 * 2 * 8 * 8 * 8


@given(plan_shapes)
def test_plan_takes_the_cheapest_modelled_path(args):
    """The dynamic programme finds the grouping of least modelled cost (checked by brute force),
    and the plan's costs are the cost model's terms of its paths."""
    batch, rows, cols, inner = args
    ranks = (1, *inner, 1)
    p = plan(batch, rows, cols, ranks)
    sig = Signature(batch, tuple(rows), tuple(cols), ranks)
    costs = {g: FITTED.cost(path_terms(sig, Path("tt", g))) for g in groupings(len(rows))}
    assert p.tt_cost == pytest.approx(costs[p.groups], rel=1e-9)
    assert p.tt_cost <= min(costs.values()) * (1 + 1e-9)
    assert p.dense_cost == pytest.approx(FITTED.cost(path_terms(sig, DENSE)))
    assert p.kind == ("dense" if p.dense_cost <= p.tt_cost else "tt")
    flops = path_terms(sig, Path("tt", p.groups))[0]
    assert p.tt_flops == pytest.approx(flops, rel=1e-9)


def test_generated_constants_are_non_negative_numbers():
    values = [plan_constants.SMALL_K, plan_constants.SMALL_A, plan_constants.SMALL_Q]
    values.append(plan_constants.CALL)
    assert all(isinstance(v, float) and v >= 0 for v in values)


def test_plan_is_cached():
    w = TTMatrix([torch.randn(1, 3, 5, 2), torch.randn(2, 7, 2, 1)])
    x = torch.randn(11, 10)
    tt_linear(x, w)
    before = plan.cache_info()
    tt_linear(x, w)
    after = plan.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses


@pytest.mark.parametrize("batch", [3, 5000])
def test_gradcheck_both_paths(batch):
    gen = torch.Generator().manual_seed(1)
    cores = [
        torch.randn(1, 2, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 2, 2, 1, generator=gen, dtype=torch.float64, requires_grad=True),
    ]
    x = torch.randn(batch, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    if batch > 100:  # a random projection of the output keeps gradcheck's Jacobian small
        x.requires_grad_(False)
        proj = torch.randn(batch, 4, generator=gen, dtype=torch.float64)
        assert plan(batch, (2, 2), (3, 2), (1, 2, 1)).kind == "dense"
        assert torch.autograd.gradcheck(lambda a, b: (tt_linear(x, [a, b]) * proj).sum(0), cores)
    else:
        assert torch.autograd.gradcheck(lambda x, a, b: tt_linear(x, [a, b]), (x, *cores))


def test_empty_batch():
    w = TTMatrix([torch.randn(1, 3, 5, 1)])
    assert tt_linear(torch.randn(0, 4, 5), w).shape == (0, 4, 3)


def test_bad_inputs():
    w = TTMatrix([torch.randn(1, 3, 5, 1)])
    with pytest.raises(
        TTShapeError,
        match=r"x must have shape \(\.\.\., 5\) to match weight of shape \(3, 5\), got \(2, 4\)",
    ):
        tt_linear(torch.randn(2, 4), w)
    with pytest.raises(TTTypeError, match=r"dtype torch\.float64"):
        tt_linear(torch.randn(2, 5, dtype=torch.float64), w)
    with pytest.raises(TTShapeError, match=r"weight\[0\] must have 4 dimensions"):
        tt_linear(torch.randn(2, 5), [torch.randn(1, 5, 1)])


def test_set_plan_mode_refuses_other_modes():
    with pytest.raises(TTValueError, match=r"mode must be 'model' or 'measure', got 'fast'"):
        set_plan_mode("fast")  # type: ignore[arg-type]
    assert set_plan_mode("model") == "model"  # unchanged by the refusal


@given(plan_shapes)
def test_plan_alternatives_are_the_cheapest_modelled_paths(args):
    """The measure mode times these: the MEASURE_PATHS paths of least modelled cost."""
    batch, rows, cols, inner = args
    rows, cols, ranks = tuple(rows), tuple(cols), (1, *inner, 1)
    p = plan(batch, rows, cols, ranks)
    paths = [alt.path for alt in p.alternatives]
    sig = Signature(batch, rows, cols, ranks)
    costs = {
        Path("tt", g): FITTED.cost(path_terms(sig, Path("tt", g))) for g in groupings(len(rows))
    }
    costs[DENSE] = FITTED.cost(path_terms(sig, DENSE))
    assert len(paths) == min(MEASURE_PATHS, len(costs))
    assert [costs[g] for g in paths] == sorted(costs[g] for g in paths)
    assert [alt.cost for alt in p.alternatives] == pytest.approx([costs[g] for g in paths])
    rest = [c for g, c in costs.items() if g not in paths]
    assert max(costs[g] for g in paths) <= min(rest, default=math.inf)
    assert costs[paths[0]] == pytest.approx(min(p.tt_cost, p.dense_cost), rel=1e-9)


def test_plan_alternatives_past_the_enumeration_limit():
    """Past ENUMERATE_MAX_CORES only the cost model's grouping and the dense path are listed."""
    d = ENUMERATE_MAX_CORES + 1
    modes, ranks = (2,) * d, (1, *[2] * (d - 1), 1)
    p = plan(3, modes, modes, ranks)
    assert {alt.path for alt in p.alternatives} == {Path("tt", p.groups), DENSE}


def test_measure_mode_keeps_the_fastest_path_once_per_signature(monkeypatch):
    """A fake clock makes the modelled-dearest candidate the fastest: it is picked, timed once
    per signature (a warm-up call, then the timed rounds), and tt_linear's values and gradients
    are those of ``x @ W.T``."""
    shapes = [(1, 4, 4, 3), (3, 4, 4, 3), (3, 4, 4, 1)]
    w = TTMatrix([torch.randn(*shape, dtype=torch.float64) for shape in shapes])
    x = torch.randn(6, 64, dtype=torch.float64, requires_grad=True)
    paths = [alt.path for alt in plan(6, w.row_modes, w.col_modes, w.ranks).alternatives]
    fastest, now, calls = paths[-1], [0.0], []
    run = contract.run_path

    def timed_run(x, cores, path):
        calls.append(path)
        now[0] += 1.0 if path == fastest else 2.0
        return run(x, cores, path)

    planner = Planner(timed_run, clock=lambda: now[0])
    planner.set_mode("measure")
    monkeypatch.setattr(contract, "plan", planner)  # tt_linear's planner
    monkeypatch.setattr(contract, "run_path", timed_run)  # and its runner: the call itself
    y = tt_linear(x, w)
    timing = len(paths) * (1 + MEASURE_ROUNDS)  # a call per timing: 1 s each > 1 ms
    assert calls == [*paths * (1 + MEASURE_ROUNDS), fastest]  # then the call itself
    assert list(planner.measured.values()) == [fastest]
    assert_close(y, x @ w.full().T)
    y.backward(torch.ones_like(y))
    assert_close(x.grad, torch.ones_like(y) @ w.full())
    tt_linear(x.detach(), w)  # same signature: no new timing
    assert len(calls) == timing + 2 and calls[-1] == fastest
    tt_linear(x.detach()[:5], w)  # another batch: timed again
    assert len(calls) == 2 * timing + 3 and len(planner.measured) == 2
    set_plan_mode("measure")  # through the public setter, on tt_linear's planner
    assert not planner.measured  # every call clears the picks
    set_plan_mode("model")
