"""Fuzzing the command line: random argument vectors and random data files.

The promise under test: ``tensortrain finetune`` exits 0 with a valid report, or exits 2 with one
line on stderr and no traceback, and the output folder never holds a partial run (a report without
its adapter, or an adapter without its ``run.json``); the same for random causal-LM flags on a tiny
LLaMA. The commands that read a run folder (``predict``, ``evaluate``, ``generate``,
``export-lora``, ``compress-lora``) meet randomly damaged ``run.json`` files with the same promise,
and never write into a non-empty output folder. ``make fuzz`` runs these with more examples.
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

from _helpers import make_tiny_bert, make_tiny_csv, minilm_folder, tiny_llama, tiny_tokenizer

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
        accuracy = report["accuracy"]
        assert report["num_train"] > 0 and (accuracy != accuracy or 0.0 <= accuracy <= 1.0)
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


# --- run folders: damaged run.json, non-empty output folders ------------------------------------


def _one_line_or_zero(capsys: pytest.CaptureFixture[str], argv: list[str]) -> int:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err[-2000:])
    if code == 2:
        assert err.startswith("tensortrain: error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    return code


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, model: str) -> Path:
    """A finished rep run and a finished lora run of the tiny BERT, and a text file to label."""
    root = tmp_path_factory.mktemp("finished")
    data = make_tiny_csv(root / "tiny.csv", n=8)
    for method in ("rep", "lora"):
        argv = ["finetune", "--method", method, "--model", model, "--data", data, "--epochs", "1"]
        argv += ["--text-column", "review", "--label-column", "sentiment", "--test-size", "4"]
        argv += ["--max-length", "16", "--no-progress", "--output-dir", str(root / method)]
        assert cli.main(argv) == 0
    (root / "texts.txt").write_text("a good film\na dull plot\n")
    return root


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def damaged(draw: st.DrawFn, info: dict[str, Any]) -> Any:
    """``info`` with keys dropped, values replaced (at the top or one level down), or not an object."""
    if draw(st.integers(0, 9)) == 0:
        return draw(_JSON)
    out = {k: v for k, v in info.items() if not draw(st.booleans()) or k == "labels"}
    for key in draw(st.lists(st.sampled_from(sorted(info)), max_size=2)):
        if isinstance(out.get(key), dict) and out[key] and draw(st.booleans()):
            inner = draw(st.sampled_from(sorted(out[key])))
            out[key] = {**out[key], inner: draw(_JSON)}
        else:
            out[key] = draw(_JSON)
    return out


_READERS = {
    "predict": lambda run, root: ["predict", "--adapter", run, "--input", str(root / "texts.txt")],
    "evaluate": lambda run, root: ["evaluate", "--adapter", run],
    "generate": lambda run, root: ["generate", "--adapter", run, "hi", "--max-new-tokens", "2"],
    "export-lora": lambda run, root: ["export-lora", run, run + "-lora"],
    "compress-lora": lambda run, root: ["compress-lora", run, run + "-small"],
}


@FEW
@given(
    data=st.data(),
    command=st.sampled_from(sorted(_READERS)),
    method=st.sampled_from(["rep", "lora"]),
)
def test_damaged_run_json(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    finished: Path,
    data: Any,
    command: str,
    method: str,
) -> None:
    import shutil

    run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    shutil.copytree(finished / method, run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(data.draw(damaged(info), label="run.json")))
    _one_line_or_zero(capsys, _READERS[command](str(run), finished))


@FEW
@given(
    command=st.sampled_from(["export-lora", "compress-lora"]),
    held=st.lists(
        st.sampled_from(["adapter_config.json", "notes.txt", ".hidden", "sub/x"]),
        min_size=1,
        max_size=3,
    ),
    own=st.booleans(),
)
def test_a_non_empty_out_is_never_written(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    finished: Path,
    command: str,
    held: list[str],
    own: bool,
) -> None:
    run = finished / ("rep" if command == "export-lora" else "lora")
    out = run / "adapter" if own else tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    for name in held if not own else []:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("mine")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _one_line_or_zero(capsys, [command, str(run), str(out)]) == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


# --- causal-LM flags on a tiny LLaMA ------------------------------------------------------------


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder, a labelled CSV and a prompt/completion JSONL."""
    root = tmp_path_factory.mktemp("fuzz_lm")
    tokenizer = tiny_tokenizer(True)
    tiny_llama(tokenizer).save_pretrained(root / "llama")
    tokenizer.save_pretrained(root / "llama")
    rows = [f"{a} film,pos" for a in ("good", "warm", "great", "superb")]
    rows += [f"{a} film,neg" for a in ("bad", "dull", "cold", "boring")]
    (root / "labelled.csv").write_text("text,label\n" + "\n".join(rows * 2) + "\n")
    pairs = [
        {"q": f"Question: is it {w}?", "a": f" {w} film"} for w in ("good", "bad", "dull", "warm")
    ]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs * 3))
    return root


_LM_VALUES = {
    "--template": st.sampled_from(
        [
            "Review: {text}\nSentiment:",
            "Review: {text}\\nSentiment:",
            "",
            "no slot",
            "{text}",
            "{nope} {text}",
        ]
    ),
    "--verbalizer": st.sampled_from(
        [
            'pos=" good",neg=" bad"',
            "",
            'pos=" good"',
            'pos=" good",neg=" good film"',
            "garbage",
            'pos="",neg=" bad"',
        ]
    ),
    "--prompt-column": st.sampled_from(["q", "text", "nope", ""]),
    "--completion-column": st.sampled_from(["a", "label", "nope", ""]),
    "--length-normalise": st.just(None),
    "--no-length-normalise": st.just(None),
    "--task": st.sampled_from(["auto", "lm", "classify", "bogus"]),
    "--method": st.sampled_from(["rep", "adp", "lora", "none", "head"]),
}


@FEW
@given(
    chosen=st.dictionaries(st.sampled_from(sorted(_LM_VALUES)), st.just(None), max_size=4),
    jsonl=st.booleans(),
    data=st.data(),
)
def test_random_lm_flags(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    llama: Path,
    chosen: dict,
    jsonl: bool,
    data: Any,
) -> None:
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    table = llama / ("pairs.jsonl" if jsonl else "labelled.csv")
    argv = ["finetune", "--model", str(llama / "llama"), "--data", str(table), "--no-progress"]
    argv += ["--test-size", "4", "--epochs", "1", "--max-length", "24", "--batch-size", "4"]
    argv += ["--device", "cpu", "--output-dir", str(out)]
    for flag in chosen:
        value = data.draw(_LM_VALUES[flag], label=flag)
        argv += [flag] if value is None else [flag, value]
    _check(capsys, argv, out)
