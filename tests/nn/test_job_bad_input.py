"""Bad input to the job and the command line: one-line errors, runs that stay whole and portable.

What is checked: lengths the model cannot take and devices that do not exist are refused in one
line before anything is written; damaged adapter files give one-line errors; a non-finite loss
stops the run; label strings (newlines, numbers) and file encodings (byte-order mark) are read
as written; a saved run works from any folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from _helpers import fails_in_one_line, make_tiny_bert, minilm_folder

from tensortrain_nn import cli
from tensortrain_nn.finetune import DataError, FinetuneConfig, FinetuneError, run
from tensortrain_nn.tasks import load_table
from tensortrain_nn.tasks.data import label_names


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (64 positions) and a 24-row CSV (columns text, label)."""
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    folder = tmp_path_factory.mktemp("defects")
    make_tiny_bert(folder / "model", dropout=0.0)
    rows = [f"good film {i},yes" for i in range(12)] + [f"bad film {i},no" for i in range(12)]
    (folder / "data.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--model", str(root / "model"), "--data", str(root / "data.csv"),
        "--test-size", "8", "--epochs", "1", "--batch-size", "8", "--no-progress",
        "--output-dir", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-length", "1"], "--max-length 1 leaves no room for text"),
        (["--max-length", "2"], "the tokenizer adds 2 special tokens (give at least 3)"),
        (["--max-length", "65"], "--max-length 65 exceeds the model's 64 positions"),
        (["--device", "cuda"], "--device cuda: this torch sees"),
        (["--device", "cuda:3"], "--device cuda:3"),
        (["--device", "bogus"], "device must be auto, cpu, cuda or cuda:N, got 'bogus'"),
        (["--lr", "inf"], "expected a finite number, got 'inf'"),
        (["--opt", "alpha=NaN"], "method option alpha must be a finite number"),
        (["--opt", "alpha=Infinity"], "method option alpha must be a finite number"),
        (["--warmup-ratio", "nan"], "expected a finite number"),
    ],
)
def test_bad_options_fail_in_one_line_and_write_nothing(
    capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path, extra: list[str], message: str
) -> None:
    if extra[0] == "--device" and extra[1].startswith("cuda") and torch.cuda.device_count() > 3:
        pytest.skip("these CUDA devices exist here")
    out = tmp_path / "run"
    fails_in_one_line(capsys, _argv(root, out, *extra), message)
    assert not out.exists()


def test_a_loss_that_goes_non_finite_stops_the_run(root: Path, tmp_path: Path) -> None:
    values = dict(
        method="full", model=str(root / "model"), data=str(root / "data.csv"), test_size=8,
        epochs=2, batch_size=4, lr=1e30, max_grad_norm=0.0, progress=False, device="cpu",
        output_dir=str(tmp_path / "run"),
    )  # fmt: skip
    with pytest.raises(FinetuneError, match=r"the training loss became .* at step"):
        run(FinetuneConfig(**values))
    assert not (tmp_path / "run" / "adapter").exists()
    assert not (tmp_path / "run" / "report.json").exists()


def test_damaged_saved_runs_give_one_line_errors(
    capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path
) -> None:
    head, lora = tmp_path / "head", tmp_path / "lora"
    assert cli.main(_argv(root, head, "--method", "head")) == 0
    assert cli.main(_argv(root, lora, "--method", "lora")) == 0
    capsys.readouterr()
    tensors = head / "adapter" / "trainable.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:50])
    fails_in_one_line(capsys, ["evaluate", "--adapter", str(head)], "corrupted or truncated")
    lora_file = lora / "adapter" / "adapter_model.safetensors"
    data = lora_file.read_bytes()
    lora_file.write_bytes(data[:50])
    fails_in_one_line(capsys, ["evaluate", "--adapter", str(lora)], "corrupted or truncated")
    lora_file.unlink()
    fails_in_one_line(
        capsys, ["evaluate", "--adapter", str(lora)], "has no adapter_model.safetensors"
    )


def test_a_saved_run_works_from_any_folder(
    capsys: pytest.CaptureFixture[str],
    root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(root)
    argv = _argv(root, tmp_path / "run", "--method", "head")
    argv[argv.index("--data") + 1] = "data.csv"  # relative to where the run starts
    assert cli.main(argv) == 0
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert Path(saved["config"]["data"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["evaluate", "--adapter", str(tmp_path / "run")]) == 0
    assert "(8 examples)" in capsys.readouterr().out


def test_a_label_with_a_newline_prints_on_one_line(
    capsys: pytest.CaptureFixture[str], root: Path, tmp_path: Path
) -> None:
    data = tmp_path / "odd.jsonl"
    rows = [{"text": f"good film {i}", "label": "yes\nreally"} for i in range(8)]
    rows += [{"text": f"bad film {i}", "label": "no"} for i in range(8)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    argv = _argv(root, tmp_path / "run", "--method", "head")
    argv[argv.index("--data") + 1] = str(data)
    argv[argv.index("--test-size") + 1] = "4"
    assert cli.main(argv) == 0
    (tmp_path / "in.txt").write_text("good film\nbad film\nso-so film\n")
    capsys.readouterr()
    argv = ["predict", "--adapter", str(tmp_path / "run"), "--input", str(tmp_path / "in.txt")]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and set(lines) <= {"yes\\nreally", "no"}


def test_label_strings_that_look_like_numbers() -> None:
    assert label_names(["10", "-2", "3"]) == ["-2", "3", "10"]
    assert label_names(["--5", "3"]) == ["--5", "3"]  # not integers: sorted as strings
    assert label_names(["²", "1"]) == ["1", "²"]
    assert label_names(["٣", "1"]) == ["1", "٣"]  # a non-ASCII digit is not an integer label


def test_byte_order_mark_and_encodings(tmp_path: Path) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes("text,label\nfine,a\nbad,b\n".encode("utf-8-sig"))
    assert load_table(bom) == (["fine", "bad"], ["a", "b"])
    latin = tmp_path / "latin.csv"
    latin.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv is not UTF-8 text"):
        load_table(latin)
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.csv\.gz cannot be read"):
        load_table(broken)
