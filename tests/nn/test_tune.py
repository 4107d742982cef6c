"""Validation splits, early stopping and ``--tune``: picked on validation, the test split untouched.

The tiny BERT trains on the tiny two-class CSV; what is checked is where each number comes from:
which part of the data a run evaluates on, that the pick is the best validation point, and that
nothing reads the test split before the pick is made.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _helpers import fails_in_one_line, make_tiny_bert, make_tiny_csv, minilm_folder, tiny_values

from tensortrain_nn.finetune import FinetuneConfig, FinetuneError, run
from tensortrain_nn.finetune import tune as tune_module
from tensortrain_nn.finetune.selection import EarlyStop, best, metric_key
from tensortrain_nn.finetune.tune import label, parse_grid, tune, widened
from tensortrain_nn.tasks import DataError, TaskOptions
from tensortrain_nn.tasks import build as build_module
from tensortrain_nn.tasks.data import take_parts, validation_count


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    root = tmp_path_factory.mktemp("tune")
    return {
        "model": make_tiny_bert(root / "bert", dropout=0.0),
        "data": make_tiny_csv(root / "tiny.csv", n=40),
    }


def _config(assets: dict[str, str], out: Path, **extra: Any) -> FinetuneConfig:
    values = tiny_values(assets["model"], assets["data"], out, **{"epochs": 2, **extra})
    return FinetuneConfig(**values)


# ----------------------------------------------------------------------------- the split


@given(
    n_train=st.integers(2, 300),
    n_test=st.integers(0, 50),
    val=st.one_of(st.integers(1, 400), st.floats(0.01, 0.99)),
    max_train=st.one_of(st.none(), st.integers(1, 400)),
    part=st.sampled_from(["test", "validation"]),
)
def test_validation_is_carved_from_training_data_only(
    n_train: int, n_test: int, val: int | float, max_train: int | None, part: str
) -> None:
    train = [f"t{i}" for i in range(n_train)]
    test = [f"x{i}" for i in range(n_test)]
    options = TaskOptions(val_size=val, max_train=max_train)
    count = max(1, round(val * n_train)) if isinstance(val, float) else val
    if count >= n_train:
        with pytest.raises(DataError, match=f"val_size {val} leaves no training data"):
            take_parts(train, test, options, part)
        return
    kept, held = take_parts(train, test, options, part)
    assert validation_count(n_train, val) == count
    assert kept == train[count:][:max_train]  # never a validation example
    assert held == (train[:count] if part == "validation" else test)
    # The training examples are the same whichever part is held out.
    assert take_parts(train, test, options, "test")[0] == take_parts(train, test, options)[0]


def test_a_run_with_validation_reports_test_scores_and_keeps_validation_apart(
    assets: dict[str, str], tmp_path: Path
) -> None:
    result = run(_config(assets, tmp_path / "run", val_size=12))
    # 80 rows: 16 test, 12 validation, 52 trained on; history on validation, result on test.
    assert result.num_train == 52 and result.num_test == 16
    assert [row["examples"] for row in result.history] == [12, 12]
    assert result.validation["epoch"] == 2 and result.validation["examples"] == 12
    assert result.validation["accuracy"] == result.history[-1]["accuracy"]
    assert 0.0 <= result.accuracy <= 1.0
    assert json.loads((tmp_path / "run" / "report.json").read_text())["validation"]["epoch"] == 2
    without_test = run(_config(assets, tmp_path / "b", val_size=12, test_at_end=False))
    assert math.isnan(without_test.accuracy) and without_test.num_test == 0
    # The same training either way: the test split only adds a score at the end.
    assert [r["train_loss"] for r in without_test.history] == pytest.approx(
        [r["train_loss"] for r in result.history]
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"early_stop": 2}, "early_stop needs val_size"),
        ({"val_metric": "loss"}, "val_metric needs val_size"),
        ({"test_at_end": False}, "test_at_end=False needs val_size"),
        ({"val_size": 8, "val_metric": "f1"}, "val_metric must be one of auto, accuracy"),
        ({"val_size": 0}, "val_size must be"),
        ({"val_size": 1.5}, "val_size must be"),
        (
            {"val_size": 8, "early_stop": 1, "checkpoint_every": 2},
            "early_stop with checkpoint_every/resume",
        ),
        ({"val_size": 8, "early_stop": 1, "eval_every_epoch": False}, "needs eval_every_epoch"),
    ],
)
def test_validation_options_without_their_split_are_refused(
    assets: dict[str, str], tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(FinetuneError, match=message):
        _config(assets, tmp_path, **extra)


# ----------------------------------------------------------------------------- early stopping


def test_early_stop_stops_after_patience_and_restores_the_best_epoch() -> None:
    layer = torch.nn.Linear(2, 2)
    stop = EarlyStop(patience=2, metric="accuracy")
    scores = [0.5, 0.7, 0.6, 0.65, 0.9]
    kept = {}
    for epoch, score in enumerate(scores, start=1):
        with torch.no_grad():
            layer.weight.fill_(float(epoch))
        if epoch == 2:
            kept = {k: v.clone() for k, v in layer.state_dict().items()}
        if stop.update({"epoch": epoch, "accuracy": score}, layer):
            break
    assert stop.best_epoch == 2 and stop.stopped_epoch == 4
    stop.restore(layer)
    assert torch.equal(layer.weight, kept["weight"]) and torch.equal(layer.bias, kept["bias"])
    loss = EarlyStop(patience=1, metric="loss")
    assert not loss.update({"epoch": 1, "eval_loss": 0.5}, layer)
    assert not loss.update({"epoch": 2, "eval_loss": 0.4}, layer)  # lower loss is better
    assert loss.update({"epoch": 3, "eval_loss": 0.4}, layer)  # a tie is no improvement
    assert EarlyStop(0, "auto").update({"epoch": 1, "accuracy": 0.1}, layer) is False


def test_early_stop_in_a_run_ends_training_at_the_kept_epoch(
    assets: dict[str, str], tmp_path: Path
) -> None:
    # lr 1e-12: the scores do not move, so no epoch beats the first and patience 1 stops after epoch 2.
    config = _config(assets, tmp_path, val_size=12, early_stop=1, epochs=5, lr=1e-12)
    result = run(config)
    assert result.stopped_epoch == 2 and len(result.history) == 2
    assert result.validation["epoch"] == 1


@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12))
def test_best_is_the_first_maximum_and_the_first_minimum_of_loss(values: list[float]) -> None:
    rows = [{"accuracy": v, "eval_loss": v} for v in values]
    assert best(rows, "accuracy") == values.index(max(values))
    assert best(rows, "eval_loss") == values.index(min(values))


def test_metric_key_names_what_the_evaluation_lacks() -> None:
    assert metric_key("auto", {"eval_loss": 1.0, "accuracy": math.nan}) == "eval_loss"
    assert metric_key("macro_f1", {"macro_f1": 0.5}) == "macro_f1"
    with pytest.raises(FinetuneError, match=r"val_metric macro_f1: .* no macro_f1"):
        metric_key("macro_f1", {"eval_loss": 1.0})


# ----------------------------------------------------------------------------- grids


def test_grid_is_the_product_per_method_in_order() -> None:
    grid = parse_grid(
        ["lr=1e-3,3e-3", "rep.rank=4,8", 'lora.target_modules=["q","v"],["q"]'],
        ["rep", "lora", "none"],
    )
    assert [label(p) for p in grid["rep"]] == [
        "lr=0.001 rank=4",
        "lr=0.001 rank=8",
        "lr=0.003 rank=4",
        "lr=0.003 rank=8",
    ]
    assert grid["lora"][0] == {"lr": 1e-3, "target_modules": ["q", "v"]}
    assert len(grid["lora"]) == 4 and "none" not in grid  # zero-shot has nothing to tune
    with pytest.raises(FinetuneError, match=r"none \(zero-shot\) trains nothing to tune"):
        parse_grid(["none.lr=1,2"], ["rep", "none"])
    assert parse_grid([], ["rep"]) == {"rep": [{}]}
    # A method's own values replace the shared ones, whichever comes first.
    for specs in (["lr=1,2", "lora.lr=3"], ["lora.lr=3", "lr=1,2"]):
        grid = parse_grid(specs, ["rep", "lora"])
        assert grid == {"rep": [{"lr": 1}, {"lr": 2}], "lora": [{"lr": 3}]}


@given(st.lists(st.floats(1e-6, 1.0), min_size=1, max_size=6, unique=True))
def test_grid_values_round_trip(values: list[float]) -> None:
    grid = parse_grid(["lr=" + ",".join(repr(v) for v in values)], ["rep"])
    assert [p["lr"] for p in grid["rep"]] == values


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lr", "--tune expects KEY=V1,V2"),
        ("lr=", "--tune expects KEY=V1,V2"),
        ("lr=1e-3,,2e-3", "--tune expects KEY=V1,V2"),
        ("adp.lr=1e-3", "method 'adp' is not compared"),
        ("lr=1e-3,1e-3", "a value is repeated"),
    ],
)
def test_bad_grids_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(FinetuneError, match=message):
        parse_grid([spec], ["rep", "lora"])
    with pytest.raises(FinetuneError, match="given twice"):
        parse_grid(["lr=1", "lr=2"], ["rep"])


def test_cli_tune_errors(capsys: pytest.CaptureFixture[str]) -> None:
    fails_in_one_line(capsys, ["finetune", "--tune", "lr="], "--tune expects KEY=V1,V2")
    fails_in_one_line(capsys, ["finetune", "--tune-seeds", "0"], "--tune-seeds has no effect")
    fails_in_one_line(capsys, ["finetune", "--early-stop", "2"], "early_stop needs val_size")


# ----------------------------------------------------------------------------- tune


def _spy(monkeypatch: pytest.MonkeyPatch, events: list[str]) -> None:
    """Record every held-out part read, every file the split reads, and the pick."""
    take, load, pick = build_module.take_parts, build_module.load_table, tune_module.pick

    def take_parts_spy(train: Any, tested: Any, options: Any, held_out: Any = None) -> Any:
        events.append(f"part:{build_module.held_out_part(options, held_out)}")
        return take(train, tested, options, held_out)

    def load_spy(path: Any, **kwargs: Any) -> Any:
        events.append(f"load:{Path(str(path)).name}")
        return load(path, **kwargs)

    def pick_spy(*args: Any) -> Any:
        events.append("pick")
        return pick(*args)

    monkeypatch.setattr(build_module, "take_parts", take_parts_spy)
    monkeypatch.setattr(build_module, "load_table", load_spy)
    monkeypatch.setattr(tune_module, "pick", pick_spy)


def test_tune_picks_on_validation_and_reads_the_test_split_only_after_the_pick(
    assets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    _spy(monkeypatch, events)
    config = _config(assets, tmp_path / "cmp", val_size=12, epochs=1)
    grid = parse_grid(["lr=1e-4,2e-2"], ["rep", "head"])
    results, tuning = tune(config, ["rep", "head"], grid, seeds=[0, 1], tune_seeds=[0])
    first_pick = events.index("pick")
    assert "part:test" not in events[:first_pick]
    assert events[first_pick + 1 :].count("part:test") >= 4  # each reported run is tested
    for method in ("rep", "head"):
        points = tuning[method]["points"]
        scores = [p["score"] for p in points]
        assert tuning[method]["picked"] == scores.index(max(scores))
        assert [p["runs"][0]["validation"]["examples"] for p in points] == [12, 12]
    assert [(r.method, r.seed) for r in results] == [
        ("rep", 0),
        ("rep", 1),
        ("head", 0),
        ("head", 1),
    ]
    assert all(r.num_test == 16 and 0.0 <= r.accuracy <= 1.0 for r in results)
    picked = tuning["rep"]["points"][tuning["rep"]["picked"]]
    assert results[0].output_dir == picked["runs"][0]["output_dir"]  # the tuned run, tested
    assert results[0].validation == picked["runs"][0]["validation"]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["tuning"]["rep"]["picked"] == tuning["rep"]["picked"]
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "**picked**" in text and "lr=0.0001" in text and "lr=0.02" in text


def test_a_separate_test_file_is_not_opened_before_the_pick(
    assets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = make_tiny_csv(tmp_path / "held.csv", n=6)
    events: list[str] = []
    _spy(monkeypatch, events)
    config = _config(assets, tmp_path / "cmp", val_size=0.2, epochs=1, test_data=held)
    results, _ = tune(config, ["head"], parse_grid(["lr=1e-3,1e-2"], ["head"]), seeds=[0])
    first_pick = events.index("pick")
    assert "load:held.csv" not in events[:first_pick]
    assert "load:held.csv" in events[first_pick:]
    assert results[0].num_test == 12


def test_tune_refuses_tuning_seeds_outside_the_seeds(
    assets: dict[str, str], tmp_path: Path
) -> None:
    config = _config(assets, tmp_path, val_size=8)
    with pytest.raises(FinetuneError, match=r"tune seeds \[2\] must be a non-empty subset"):
        tune(config, ["rep"], {"rep": [{}]}, seeds=[0, 1], tune_seeds=[2])


def test_cli_tune_writes_the_grid_and_the_picks(
    assets: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensortrain_nn import cli

    out = tmp_path / "cli"
    argv = ["finetune", "--model", assets["model"], "--data", assets["data"]]
    argv += ["--text-column", "review", "--label-column", "sentiment", "--test-size", "16"]
    argv += ["--epochs", "1", "--batch-size", "8", "--max-length", "16", "--no-progress"]
    argv += ["--compare", "head", "--tune", "lr=1e-3,1e-2", "--val-size", "8"]
    assert cli.main([*argv, "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**picked**" in printed and "lr=0.01" in printed
    saved = json.loads((out / "compare.json").read_text())
    assert [len(p["runs"]) for p in saved["tuning"]["head"]["points"]] == [1, 1]
    assert saved["runs"][0]["num_test"] == 16 and saved["runs"][0]["validation"]["examples"] == 8


def test_tune_refuses_a_taken_folder_before_training(
    assets: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    (out / "head-seed1").mkdir(parents=True)
    (out / "head-seed1" / "run.json").write_text("{}")
    config = _config(assets, out, val_size=8)
    with pytest.raises(FinetuneError, match="head-seed1' already holds a run"):
        tune(config, ["head"], {"head": [{}]}, seeds=[0, 1], tune_seeds=[0])
    assert not (out / "grid").exists()  # nothing trained


# ----------------------------------------------------------------------------- widening


@given(
    start=st.floats(1e-6, 1.0),
    ratio=st.sampled_from([1.5, 2.0, 3.0, 10.0]),
    size=st.integers(2, 6),
    data=st.data(),
)
def test_widened_steps_past_the_picked_end_by_the_last_step(
    start: float, ratio: float, size: int, data: st.DataObject
) -> None:
    points = [{"values": {"lr": start * ratio**i, "rank": 4}} for i in range(size)]
    picked = data.draw(st.integers(0, size - 1))
    new = widened(points, picked)
    if 0 < picked < size - 1:
        assert new is None
        return
    assert new is not None and new["rank"] == 4
    expected = start * ratio**size if picked == size - 1 else start / ratio
    assert math.isclose(new["lr"], expected, rel_tol=1e-9)
    # the same ladder given in another order widens the same way
    shuffled = data.draw(st.permutations(range(size)))
    again = widened([points[i] for i in shuffled], list(shuffled).index(picked))
    assert again == new


def test_widened_keeps_integers_and_steps_by_the_difference_past_zero() -> None:
    ranks = [{"values": {"rank": r}} for r in (2, 4)]
    assert widened(ranks, 1) == {"rank": 8} and widened(ranks, 0) == {"rank": 1}
    decay = [{"values": {"weight_decay": w}} for w in (0.0, 0.01)]
    assert widened(decay, 1) == {"weight_decay": 0.02}
    assert widened(decay, 0) is None  # a non-negative grid does not step below zero
    signed = [{"values": {"x": v}} for v in (-1, 1)]
    assert widened(signed, 0) == {"x": -3}


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"head": [{"lr": 1e-3}]}, "vary one number over two or more points; it is: lr=0.001"),
        ({"head": [{"lr": 1e-3, "epochs": 1}, {"lr": 2e-3, "epochs": 2}]}, "vary one number"),
        ({"head": [{"schedule": "linear"}, {"schedule": "constant"}]}, "vary one number"),
        ({"head": [{}]}, "it is: defaults"),
    ],
)
def test_widening_a_grid_that_is_not_one_number_is_refused_before_training(
    assets: dict[str, str], tmp_path: Path, grid: dict[str, Any], message: str
) -> None:
    config = _config(assets, tmp_path / "cmp", val_size=8)
    with pytest.raises(FinetuneError, match=message) as info:
        tune(config, ["head"], grid, seeds=[0], widen=1)
    assert "\n" not in str(info.value) and "head's grid" in str(info.value)
    assert not (tmp_path / "cmp").exists()  # nothing trained
    with pytest.raises(FinetuneError, match="--tune-widen must be 0 or more, got -1"):
        tune(config, ["head"], grid, seeds=[0], widen=-1)


def test_tune_widens_a_grid_whose_pick_is_an_end(
    assets: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Validation accuracy made to grow with lr: the pick runs off the top, twice."""
    real = tune_module.job.run_configs

    def scored_by_lr(configs: Any, jobs: int, progress: bool) -> list[Any]:
        results = real(configs, jobs, progress)
        return [
            dataclasses.replace(r, validation={**r.validation, "accuracy": c.lr})
            if c.test_at_end is False
            else r
            for c, r in zip(configs, results, strict=True)
        ]

    monkeypatch.setattr(tune_module.job, "run_configs", scored_by_lr)
    config = _config(assets, tmp_path / "cmp", val_size=8, epochs=1)
    grid = parse_grid(["lr=1e-4,2e-4"], ["head"])
    results, tuning = tune(config, ["head"], grid, seeds=[0], widen=2)
    points = tuning["head"]["points"]
    assert [p["values"]["lr"] for p in points] == [1e-4, 2e-4, 4e-4, 8e-4]
    assert tuning["head"]["picked"] == 3 and tuning["head"]["at_end"]
    assert results[0].output_dir == str(tmp_path / "cmp" / "grid" / "head-3-seed0")
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "lr=0.0008" in text and "The pick of head is an end of its grid" in text


def test_cli_tune_widen_needs_tune(capsys: pytest.CaptureFixture[str]) -> None:
    fails_in_one_line(capsys, ["finetune", "--tune-widen", "1"], "--tune-widen has no effect")
