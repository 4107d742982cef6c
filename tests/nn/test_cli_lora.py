"""``tensortrain export-lora`` and ``compress-lora`` on runs of the job (tiny BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from _helpers import fails_in_one_line, make_tiny_bert, make_tiny_csv, minilm_folder

from tensortrain_nn import cli


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rep, an adp and a LoRA run of a tiny BERT on the tiny CSV."""
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    root = tmp_path_factory.mktemp("cli_lora")
    model = make_tiny_bert(root / "bert", dropout=0.0)
    data = make_tiny_csv(root / "tiny.csv")
    for method, extra in (("rep", []), ("adp", ["--opt", "bottleneck=8"]), ("lora", [])):
        argv = ["finetune", "--method", method, "--model", model, "--data", data]
        argv += ["--text-column", "review", "--label-column", "sentiment", "--test-size", "16"]
        argv += ["--epochs", "1", "--batch-size", "8", "--max-length", "16", "--no-progress"]
        assert cli.main([*argv, "--output-dir", str(root / method), *extra]) == 0
    return root


def test_export_a_rep_run_and_load_it_in_peft(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from peft import PeftModel

    from tensortrain_nn.finetune import load_base, load_run

    assert cli.main(["export-lora", str(runs / "rep" / "adapter"), str(tmp_path / "lora")]) == 0
    assert "peft LoRA adapter written" in capsys.readouterr().out
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    ours, _, _ = load_run(runs / "rep")
    _, base, _, _ = load_base(runs / "rep")
    served = PeftModel.from_pretrained(base, str(tmp_path / "lora")).eval()
    ids = torch.randint(0, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(served(input_ids=ids).logits, ours(input_ids=ids).logits)


def test_compress_a_lora_run(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "small"
    assert cli.main(["compress-lora", str(runs / "lora"), str(out), "--eps", "0.1"]) == 0
    printed = capsys.readouterr().out
    assert "max update error" in printed and "LoRA -> LoRETTA_rep" in printed
    assert (out / "adapter_config.json").is_file() and (out / "tt_adapter").is_dir()


def test_bad_exports_fail_in_one_line(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fails_in_one_line(capsys, ["export-lora", str(runs / "adp"), str(tmp_path / "x")], "adp")
    assert not (tmp_path / "x").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    fails_in_one_line(
        capsys, ["compress-lora", str(bare), str(tmp_path / "y")], "is not a saved run"
    )
    fails_in_one_line(
        capsys, ["compress-lora", str(runs / "lora"), str(tmp_path / "z"), "--eps", "nan"], "finite"
    )
