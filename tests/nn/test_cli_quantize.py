"""``--dtype``, ``--quantize``, ``--quant-type`` and ``--adapter-dtype`` on the command line, on a
tiny LLaMA saved to a folder: runs record the base's form, evaluate and generate rebuild it, and
every bad combination is one line with exit status 2 and no output folder."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("bitsandbytes")

from _helpers import fails_in_one_line, tiny_llama, tiny_tokenizer

from tensortrain_nn import cli
from tensortrain_nn.bases import is_quantized
from tensortrain_nn.finetune import evaluate, generate_text, load_base, load_run

WORDS = {"pos": ["good", "warm", "superb", "great"], "neg": ["bad", "dull", "cold", "boring"]}
PROMPTS = ["Review: good film\nSentiment:", "Review: dull\nSentiment:"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder and a labelled CSV."""
    folder = tmp_path_factory.mktemp("quantcli")
    tokenizer = tiny_tokenizer(True)
    tiny_llama(tokenizer).save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    rows = [f"{a} film {b},{k}" for k, ws in WORDS.items() for a in ws for b in ws]
    (folder / "labelled.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder


def _argv(root: Path, out: Path, *extra: str) -> list[str]:
    argv = ["finetune", "--model", str(root / "llama"), "--data", str(root / "labelled.csv")]
    argv += ["--template", "Review: {text}\nSentiment:", "--verbalizer", 'pos=" good",neg=" bad"']
    argv += ["--test-size", "8", "--epochs", "1", "--batch-size", "8", "--max-length", "24"]
    argv += ["--lr", "1e-2", "--device", "cpu", "--no-progress", "--output-dir", str(out)]
    return [*argv, *extra]


@pytest.mark.parametrize(
    ("method", "flags", "dtype", "quantize", "shown"),
    [
        ("rep", ["--quantize", "4bit"], "float32", "4bit", "Linear4bit (nf4 double quant)"),
        ("rep", ["--dtype", "bfloat16"], "bfloat16", "none", "bfloat16"),
        ("lora", ["--quantize", "4bit", "--dtype", "bfloat16"], "bfloat16", "4bit", "Linear4bit"),
        ("adp", ["--quantize", "8bit"], "float32", "8bit", "Linear8bitLt"),
    ],
)
def test_run_records_the_base_and_evaluate_generate_rebuild_it(
    root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    flags: list[str],
    dtype: str,
    quantize: str,
    shown: str,
) -> None:
    out = tmp_path / "run"
    assert cli.main(_argv(root, out, "--method", method, *flags)) == 0
    assert "base model" in capsys.readouterr().out
    config = json.loads((out / "run.json").read_text())["config"]
    assert (config["dtype"], config["quantize"], config["quant_type"]) == (dtype, quantize, "nf4")
    report = json.loads((out / "report.json").read_text())
    assert shown in report["base"] and report["base_memory_bytes"] > 0
    assert "| base model |" in (out / "report.md").read_text()
    _, base, _, _ = load_base(out)
    assert is_quantized(base) == (quantize != "none")
    again = evaluate(out)
    assert again["accuracy"] == report["accuracy"]
    assert again["perplexity"] == pytest.approx(report["metrics"]["perplexity"], rel=1e-4)
    unmerged = generate_text(out, PROMPTS, max_new_tokens=4, merge=False)
    assert cli.main(["generate", "--adapter", str(out), "--max-new-tokens", "4", *PROMPTS]) == 0
    assert capsys.readouterr().out.splitlines() == [cli.one_line(t) for t in unmerged]


def test_old_runs_load_as_float32_and_flags_override_the_run(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert cli.main(_argv(root, out, "--quantize", "4bit", "--dtype", "bfloat16")) == 0
    _, base, _, _ = load_base(out, base={"quantize": "none", "dtype": "float16"})
    assert not is_quantized(base) and base.model.norm.weight.dtype == torch.float16
    info = json.loads((out / "run.json").read_text())
    for key in ("dtype", "quantize", "quant_type", "adapter_dtype"):
        del info["config"][key]
    (out / "run.json").write_text(json.dumps(info))
    _, base, _, _ = load_base(out)
    assert not is_quantized(base) and {p.dtype for p in base.parameters()} == {torch.float32}


def test_adapter_dtype_base_keeps_the_adapter_in_bfloat16(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = _argv(root, out, "--method", "lora", "--dtype", "bfloat16", "--adapter-dtype", "base")
    assert cli.main(argv) == 0
    model, _, _ = load_run(out)
    lora = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert lora == {torch.bfloat16}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--quantize", "4bit", "--method", "full"], "--method full cannot train a --quantize"),
        (["--quantize", "3bit"], "--quantize must be one of none, 4bit, 8bit, got '3bit'"),
        (["--dtype", "float64"], "--dtype must be one of float32, bfloat16, float16"),
        (["--quant-type", "fp4"], "--quant-type applies to --quantize 4bit only"),
        (
            ["--quantize", "8bit", "--quant-type", "fp4"],
            "got --quant-type fp4 with --quantize 8bit",
        ),
        (["--adapter-dtype", "int8"], "--adapter-dtype must be one of auto, base"),
        (["--adapter-dtype", "base", "--method", "none"], "--adapter-dtype applies to methods"),
        (["--adapter-dtype", "float32", "--opt", "adapter_dtype=base"], "disagree"),
    ],
)
def test_bad_combinations_fail_in_one_line_and_write_nothing(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    fails_in_one_line(capsys, _argv(root, out, *extra), message)
    assert not out.exists()


def test_quantize_without_bitsandbytes_names_the_extra(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find(name)
    )
    out = tmp_path / "run"
    fails_in_one_line(capsys, _argv(root, out, "--quantize", "4bit"), "tensortrain[quant]")
    assert not out.exists()


def test_bad_base_flags_on_a_saved_run_fail_in_one_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli.main(_argv(root, out, "--method", "full", "--epochs", "1")) == 0
    capsys.readouterr()
    before, csv = sorted(p.name for p in out.iterdir()), root / "labelled.csv"
    for argv, message in [
        (["evaluate", "--adapter", str(out), "--quantize", "4bit"], "--method full cannot"),
        (["generate", "--adapter", str(out), "--dtype", "half", "x"], "--dtype must be one of"),
        (
            ["predict", "--adapter", str(out), "--adapter-dtype", "base", "--input", str(csv)],
            "--adapter-dtype applies",
        ),
    ]:
        fails_in_one_line(capsys, argv, message)
    assert sorted(p.name for p in out.iterdir()) == before
