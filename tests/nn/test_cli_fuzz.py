"""Fuzzing the command line: random argument vectors and random data files.

The promise under test: ``tensortrain finetune`` exits 0 with a valid report, or exits 2 with one
line on stderr and no traceback, and the output folder never holds a partial run (a report without
its adapter, or an adapter without its ``run.json``). ``make fuzz`` runs these with more examples.
"""

from __future__ import annotations

import csv
import io
import json
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from _helpers import make_tiny_bert, minilm_folder

from tensortrain_nn import cli

pytestmark = pytest.mark.fuzz
#: A training run per example: a third of the profile's examples keeps CI short.
FEW = settings(
    max_examples=max(4, settings.default.max_examples // 3),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    deadline=None,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    return make_tiny_bert(tmp_path_factory.mktemp("fuzz") / "bert", dropout=0.0)


def _check(capsys: pytest.CaptureFixture[str], argv: list[str], out: Path) -> int:
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert code in (0, 2), (code, captured.err[-2000:])
    if code == 2:
        assert captured.err.startswith("tensortrain: error: "), captured.err
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    else:
        report = json.loads((out / "report.json").read_text())
        assert 0.0 <= report["accuracy"] <= 1.0 and report["num_train"] > 0
    files = {p.name for p in out.iterdir()} if out.exists() else set()
    whole = {"run.json", "report.json", "adapter"}
    assert not files & whole or whole <= files, files  # all of a saved run, or none of it
    return code


_VALUES = {
    "--method": st.sampled_from(["rep", "adp", "lora", "head", "full", "nope", ""]),
    "--epochs": st.sampled_from(["1", "0", "-1", "x", "1.5"]),
    "--batch-size": st.sampled_from(["4", "1", "0", "999"]),
    "--gradient-accumulation": st.sampled_from(["1", "2", "0", "9"]),
    "--max-length": st.sampled_from(["16", "1", "2", "3", "64", "65", "-4"]),
    "--lr": st.sampled_from(["1e-3", "0", "-1", "inf", "nan", "1e300", "abc"]),
    "--warmup-ratio": st.sampled_from(["0", "0.5", "1", "-0.1", "nan"]),
    "--test-size": st.sampled_from(["4", "0.25", "0", "1.0", "48", "1e9"]),
    "--max-train": st.sampled_from(["8", "1", "0"]),
    "--text-column": st.sampled_from(["review", "text", "Review", ""]),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "bogus", "cuda:7"]),
    "--opt": st.sampled_from(["dropout=0.0", "alpha=NaN", "rank=2", "rank=0", "nope=1", "x"]),
    "--seed": st.sampled_from(["0", "-3", "7"]),
}


@FEW
@given(
    chosen=st.dictionaries(st.sampled_from(sorted(_VALUES)), st.just(None), max_size=4),
    data=st.data(),
)
def test_random_argument_vectors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: str, chosen: dict, data: Any
) -> None:
    from _helpers import make_tiny_csv

    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    csv_path = tmp_path / "tiny.csv"
    if not csv_path.exists():
        make_tiny_csv(csv_path, n=8)
    argv = ["finetune", "--model", model, "--data", str(csv_path), "--no-progress"]
    argv += ["--text-column", "review", "--label-column", "sentiment", "--test-size", "4"]
    argv += ["--epochs", "1", "--max-length", "16", "--batch-size", "4", "--device", "cpu"]
    argv += ["--output-dir", str(out)]
    for flag in chosen:
        argv += [flag, data.draw(_VALUES[flag], label=flag)]
    _check(capsys, argv, out)


_LABEL = st.text(alphabet=string.printable + "éß²٣\u00a0\ufeff", min_size=0, max_size=6)


@st.composite
def tables(draw: st.DrawFn) -> tuple[bytes, str]:
    """A CSV or JSONL file: random header names, encoding, label strings and row count."""
    rows = draw(st.integers(0, 14))
    labels = draw(st.lists(_LABEL, min_size=1, max_size=3))
    text_col = draw(st.sampled_from(["text", "Text", "t e x t", "\ufefftext"]))
    records = [(f"good film {i}", labels[i % len(labels)]) for i in range(rows)]
    if draw(st.booleans()):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([text_col, "label"])
        writer.writerows(records)
        body, suffix = buffer.getvalue(), ".csv"
    else:
        body = "".join(json.dumps({text_col: t, "label": y}) + "\n" for t, y in records)
        suffix = ".jsonl"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "latin-1", "utf-16"]))
    return body.encode(encoding, errors="replace"), suffix


@FEW
@given(table=tables())
def test_random_data_files(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, model: str, table: tuple[bytes, str]
) -> None:
    count = len(list(tmp_path.iterdir()))
    path = tmp_path / f"data{count}{table[1]}"
    path.write_bytes(table[0])
    out = tmp_path / f"run{count}"
    argv = ["finetune", "--method", "head", "--model", model, "--data", str(path)]
    argv += ["--test-size", "2", "--epochs", "1", "--max-length", "16", "--batch-size", "4"]
    argv += ["--no-progress", "--device", "cpu", "--output-dir", str(out)]
    _check(capsys, argv, out)
