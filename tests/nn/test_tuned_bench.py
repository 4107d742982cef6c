"""The tuned benchmarks' rules: grids widen past a picked end, picks read validation only.

``benchmarks/tuned.py`` and ``benchmarks/llm_tuned.py`` decide which runs to train from the
records already stored; these tests give them stores by hand and check what they decide.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def tuned() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import llm_tuned
        import tuned as module

        return module, llm_tuned
    finally:
        sys.path.remove(str(BENCH))


def _record(val: float, test: float = 50.0) -> dict[str, Any]:
    return {"validation": {"accuracy": val}, "accuracy": test}


def test_grid_widens_while_the_pick_is_an_end_and_stops_inside(tuned: Any) -> None:
    bench, _ = tuned
    key = bench._key
    store = {
        key("tuned", "rt", "rep", lr, 0): _record(v)
        for lr, v in zip(bench.GRIDS["rep"], (50, 60, 70), strict=True)
    }
    assert bench.grid_of(store, "rt", "rep") == [1.5e-3, 3e-3, 6e-3, 1.2e-2]
    assert [k for k, _ in bench.grid_jobs(["rt"], store) if "|rep|" in k][-1].endswith("lr0.012|0")
    store[key("tuned", "rt", "rep", 1.2e-2, 0)] = _record(65)  # the new point is worse: stop
    assert bench.grid_of(store, "rt", "rep") == [1.5e-3, 3e-3, 6e-3, 1.2e-2]
    assert bench.picks(store, "rt")["rep"] == 6e-3
    store[key("tuned", "rt", "rep", 1.2e-2, 0)] = _record(80)  # better: widen once more, at most
    store[key("tuned", "rt", "rep", 2.4e-2, 0)] = _record(90)
    assert bench.grid_of(store, "rt", "rep")[-1] == 2.4e-2  # MAX_WIDEN = 2 steps, no more
    assert len(bench.grid_of(store, "rt", "rep")) == bench.GRID_SIZE + bench.MAX_WIDEN


def test_picks_read_validation_not_test_and_ties_go_to_the_earlier_point(tuned: Any) -> None:
    bench, _ = tuned
    lrs = bench.GRIDS["lora"]
    store = {
        bench._key("tuned", "rt", "lora", lr, 0): _record(v, t)
        for lr, v, t in zip(lrs, (40, 70, 70), (99, 10, 10), strict=True)
    }
    assert bench.picks(store, "rt") == {
        "lora": lrs[1]
    }  # not the best test point, not the later tie


def test_llm_grid_widens_from_the_job_grid(tuned: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, llm = tuned
    points = [{"values": {"lr": lr}, "score": s} for lr, s in ((1e-3, 0.8), (2e-3, 0.9))]
    monkeypatch.setattr(llm, "_tuning", lambda: {"lora": {"points": points, "picked": 1}})
    monkeypatch.setattr(llm, "EXTRA_GRIDS", {})
    assert llm.grid("lora", {}) == [(1e-3, 0.8), (2e-3, 0.9), (4e-3, None)]
    assert [k for k, _ in llm.grid_jobs({})] == ["llm-tuned|reviews|lora|lr0.004|0"]
    assert llm.pick("lora", {}) is None  # not decided until the new point has run
    store = {"llm-tuned|reviews|lora|lr0.004|0": _record(95.0)}
    assert llm.grid("lora", store)[-2:] == [(4e-3, 0.95), (8e-3, None)]
    store["llm-tuned|reviews|lora|lr0.008|0"] = _record(85.0)
    assert llm.pick("lora", store) == 4e-3
    assert [k for k, _ in llm.seed_jobs(store)] == [
        "llm-tuned|reviews|lora|lr0.004|1",
        "llm-tuned|reviews|lora|lr0.004|2",
    ]


def test_llm_methods_the_job_did_not_tune_get_their_own_grid(
    tuned: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, llm = tuned
    monkeypatch.setattr(llm, "_tuning", lambda: {})
    monkeypatch.setattr(llm, "EXTRA_GRIDS", {"full": (1e-5, 2e-5)})
    assert [k for k, _ in llm.grid_jobs({})] == [
        "llm-tuned|reviews|full|lr1e-05|0",
        "llm-tuned|reviews|full|lr2e-05|0",
    ]
    store = {"llm-tuned|reviews|full|lr1e-05|0": _record(70.0)}
    store["llm-tuned|reviews|full|lr2e-05|0"] = _record(60.0)  # the pick is the low end: widen
    assert [k for k, _ in llm.grid_jobs(store)] == ["llm-tuned|reviews|full|lr5e-06|0"]
    store["llm-tuned|reviews|full|lr5e-06|0"] = _record(65.0)
    assert llm.pick("full", store) == 1e-5
    assert [k for k, _ in llm.seed_jobs(store)][-1] == "llm-tuned|reviews|full|lr1e-05|2"


def test_forget_table_rows_and_learning_rates(tuned: Any) -> None:
    bench, _ = tuned
    store = {
        f"forget-tuned|debates>rt|rep|{s}": {"a_before": 60.0 + s, "a_after": 50.0, "b": 70.0}
        for s in (0, 1, 2)
    }
    store["forget|debates>rt|rep|0"] = {"a_before": 0.0, "a_after": 0.0, "b": 0.0}  # another study
    table = bench.forget_table(store, "forget-tuned", {"rep": "0.012, 0.003"})
    row = table.splitlines()[2]
    assert (
        row
        == "| rep | debates>rt | 0.012, 0.003 | 3 | 61.0 ± 1.0 | 50.0 ± 0.0 | 11.0 ± 1.0 | 70.0 ± 0.0 |"
    )
    assert len(table.splitlines()) == 3


def test_a_protocol_is_a_study_of_its_own_with_its_options(tuned: Any) -> None:
    bench, _ = tuned
    key = bench._key
    store = {  # the 6 % study's records do not count for the 20 % one, and the reverse
        key("tuned", "rt", "rep", lr, 0): _record(v)
        for lr, v in zip(bench.GRIDS["rep"], (50, 70, 60), strict=True)
    }
    jobs = dict(bench.grid_jobs(["rt"], store, "tuned-w20"))
    rep = [k for k in jobs if "|rep|" in k]
    assert rep == [key("tuned-w20", "rt", "rep", lr, 0) for lr in bench.GRIDS["rep"]]
    assert {jobs[k].warmup_ratio for k in jobs} == {0.2}
    assert {c.warmup_ratio for _, c in bench.grid_jobs(["rt"], {})} == {0.06}
    assert "rep" in bench.picks(store, "rt") and "rep" not in bench.picks(store, "rt", "tuned-w20")
    for lr, v in zip(bench.GRIDS["rep"], (70, 60, 50), strict=True):
        store[key("tuned-w20", "rt", "rep", lr, 0)] = _record(v)
    assert "rep" not in bench.picks(store, "rt", "tuned-w20")  # the low end: widen first
    assert bench.grid_of(store, "rt", "rep", "tuned-w20")[0] == 7.5e-4
    store[key("tuned-w20", "rt", "rep", 7.5e-4, 0)] = _record(65)
    assert bench.picks(store, "rt", "tuned-w20")["rep"] == 1.5e-3
    seeds = dict(bench.seed_jobs(["rt"], store, "tuned-w20"))
    assert list(seeds) == [key("tuned-w20", "rt", "rep", 1.5e-3, s) for s in (1, 2)]
    assert {c.warmup_ratio for c in seeds.values()} == {0.2}


def test_a_tie_at_an_end_is_tried_one_step_further_and_seeded_if_it_wins(tuned: Any) -> None:
    bench, _ = tuned
    key = bench._key
    lrs = bench.GRIDS["lora"]  # 5e-4, 1e-3, 2e-3: the top two tie, the pick is the earlier one
    store = {
        key("tuned", "rt", "lora", lr, s): _record(v)
        for lr, v in zip(lrs, (40, 70, 70), strict=True)
        for s in (0, 1, 2)
    }
    assert bench.picks(store, "rt")["lora"] == 1e-3
    assert bench.tied_ends(store) == [("rt", "lora", 4e-3)]
    assert [k for k, _ in bench.tie_jobs(store)] == ["tie-tuned|rt|lora|lr0.004|0"]
    store["tie-tuned|rt|lora|lr0.004|0"] = _record(70)  # only ties again: no more runs
    assert [k for k, _ in bench.tie_jobs(store)] == ["tie-tuned|rt|lora|lr0.004|0"]
    store["tie-tuned|rt|lora|lr0.004|0"] = _record(71)  # beats the tie: its seeds too
    assert [k for k, _ in bench.tie_jobs(store)][1:] == [
        "tie-tuned|rt|lora|lr0.004|1",
        "tie-tuned|rt|lora|lr0.004|2",
    ]
    assert "| tuned | rt | lora | 0.001, 0.002: 70.0 | 0.004 | 71.0 | 50.0 | - |" in (
        bench.tie_table(store)
    )
    store[key("tuned", "rt", "lora", lrs[2], 0)] = _record(69)  # no tie: nothing to try
    assert bench.tied_ends(store) == []
