"""The planning surface: a Plan's kind and path, its printed table, the planner's mode
(setter and context manager), its cache, and compiled code under the measure mode."""

import re

import pytest
import torch
from _builders import scaled_cores

from tensortrain import TTMatrix, TTValueError, plan, plan_mode, set_plan_mode, tt_linear
from tensortrain._measuring import Planner
from tensortrain._planning import DENSE, Path
from tensortrain.contract import run_path
from tensortrain.testing import assert_close

SQUARE = (256, (8, 8, 8, 8), (8, 8, 8, 8), (1, 8, 8, 8, 1))  # planned tt [0:2] [2:4]
TINY = (4096, (2, 2), (2, 2), (1, 4, 1))  # planned dense


def test_plan_kind_and_path_agree():
    tt, dense = plan(*SQUARE), plan(*TINY)
    assert (tt.kind, dense.kind) == ("tt", "dense")
    assert tt.path == Path("tt", ((0, 2), (2, 4))) and tt.path.groups == tt.groups
    assert dense.path == DENSE and dense.path.groups == ()
    assert dense.groups == ((0, 1), (1, 2))  # the cheapest grouping, kept for comparison
    assert tt.cost == tt.tt_cost < tt.dense_cost
    assert dense.cost == dense.dense_cost < dense.tt_cost
    assert (str(tt.path), str(dense.path)) == ("tt [0:2] [2:4]", "dense")


def test_plan_lists_the_chosen_path_first_among_its_alternatives():
    for p in (plan(*SQUARE), plan(*TINY)):
        assert p.alternatives[0].path == p.path
        assert p.alternatives[0].cost == pytest.approx(p.cost, rel=1e-12)
        costs = [alt.cost for alt in p.alternatives]
        assert costs == sorted(costs)


def test_printed_plan_names_the_signature_the_chosen_path_and_its_cost():
    p = plan(*SQUARE)
    lines = str(p).splitlines()
    assert lines[0] == (
        "tt_linear plan: batch 256, modes (8, 8, 8, 8) x (8, 8, 8, 8), ranks (1, 8, 8, 8, 1)"
    )
    assert lines[1] == "  chosen path:    tt [0:2] [2:4]"
    assert (
        lines[2] == f"  modelled cost:  {p.tt_cost:.4g} FLOP-equivalents ({p.tt_flops:.4g} FLOPs)"
    )
    assert f"{p.tt_cost:.4g} / {p.dense_cost:.4g}" in lines[3]
    assert set(lines[4].strip()) == {"-"}
    assert lines[5].split() == ["path", "modelled", "cost", "FLOPs", "vs", "chosen"]
    rows = lines[6:]
    assert len(rows) == len(p.alternatives) == 4
    assert rows[0].startswith("* tt [0:2] [2:4]") and rows[0].endswith("1.00x")
    assert all(row.startswith("  ") for row in rows[1:])  # one chosen path
    for row, alt in zip(rows, p.alternatives, strict=True):
        ratio = float(row.split()[-1].rstrip("x"))
        assert ratio == pytest.approx(alt.cost / p.cost, abs=0.006)


def test_printed_dense_plan_marks_the_dense_row():
    p = plan(*TINY)
    text = str(p)
    assert "  chosen path:    dense\n" in text
    assert re.search(r"^\* dense +\S+ +\S+ +1\.00x$", text, re.MULTILINE)
    assert re.search(r"^  tt \[0:1\] \[1:2\] ", text, re.MULTILINE)
    assert "alternatives" not in repr(p) and repr(p).startswith("Plan(kind='dense'")


def _weight_and_input():
    cores = scaled_cores((8, 8), (8, 8), 4, torch.Generator().manual_seed(0), torch.float32)
    return TTMatrix(cores), torch.randn(32, 64, generator=torch.Generator().manual_seed(1))


def test_set_plan_mode_returns_the_previous_mode():
    assert set_plan_mode("measure") == "model"
    assert set_plan_mode("model") == "measure"


def test_plan_mode_restores_the_mode_and_clears_the_picks():
    w, x = _weight_and_input()
    assert plan.mode == "model"
    with plan_mode("measure") as before:
        assert (before, plan.mode) == ("model", "measure")
        assert_close(tt_linear(x, w), x @ w.full().T)
        assert len(plan.measured) == 1  # this signature, timed once
    assert plan.mode == "model" and not plan.measured  # restored, picks cleared


def test_plan_mode_restores_the_mode_when_the_block_raises():
    w, x = _weight_and_input()
    with pytest.raises(RuntimeError, match="inside the block"), plan_mode("measure"):
        tt_linear(x, w)
        assert plan.measured
        raise RuntimeError("inside the block")
    assert plan.mode == "model" and not plan.measured


def test_plan_mode_clears_the_picks_on_entry_as_set_plan_mode_does():
    w, x = _weight_and_input()
    set_plan_mode("measure")
    try:
        tt_linear(x, w)
        assert len(plan.measured) == 1
        with plan_mode("measure") as before:
            assert before == "measure" and not plan.measured
            tt_linear(x, w)
            assert len(plan.measured) == 1
        assert plan.mode == "measure" and not plan.measured  # the mode before, picks cleared
    finally:
        set_plan_mode("model")


def test_nested_plan_modes_unwind_in_order():
    with plan_mode("measure"):
        with plan_mode("model") as inner:
            assert inner == "measure" and plan.mode == "model"
        assert plan.mode == "measure"
    assert plan.mode == "model"


def test_plan_mode_refuses_other_modes_and_changes_nothing():
    with (
        pytest.raises(TTValueError, match=r"mode must be 'model' or 'measure', got 'fast'"),
        plan_mode("fast"),  # type: ignore[arg-type]
    ):
        pass
    assert plan.mode == "model"


def test_a_planner_owns_its_cache_and_mode():
    own = Planner(run_path)
    assert own.mode == "model" and own.cache_info().currsize == 0
    first = own(*SQUARE)
    assert own(*SQUARE) is first
    assert own.cache_info()[:2] == (1, 1)  # hits, misses
    assert own.set_mode("measure") == "model" and plan.mode == "model"  # the shared one unchanged
    own.cache_clear()
    assert own.cache_info().currsize == 0
    with pytest.raises(TypeError):
        own.measured[SQUARE] = DENSE  # type: ignore[index]  # read-only: only measure() writes


def test_compiled_tt_linear_plans_by_the_model_in_measure_mode():
    w, x = _weight_and_input()
    cores = list(w.cores)
    compiled = torch.compile(lambda x: tt_linear(x, cores), backend="eager", fullgraph=True)
    with plan_mode("measure"):
        y = compiled(x)
        assert not plan.measured  # compiled code never times paths
    assert_close(y, x @ w.full().T)
