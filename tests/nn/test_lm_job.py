"""The causal-LM job end to end on a tiny LLaMA saved to a folder: the three data forms, every
method, generation from a saved run, and the bad input that must fail in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from _helpers import fails_in_one_line, tiny_llama, tiny_tokenizer

from tensortrain_nn import cli
from tensortrain_nn.finetune import FinetuneConfig, evaluate, generate_text, predict, run

WORDS_POS = ["good", "warm", "superb", "great"]
WORDS_NEG = ["bad", "dull", "cold", "boring"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder, a labelled CSV, a prompt/completion JSONL and a plain-text CSV."""
    folder = tmp_path_factory.mktemp("lmjob")
    tokenizer = tiny_tokenizer(True)
    tiny_llama(tokenizer).save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    rows = [f"{a} film {b},pos" for a in WORDS_POS for b in WORDS_POS]
    rows += [f"{a} film {b},neg" for a in WORDS_NEG for b in WORDS_NEG]
    (folder / "labelled.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    pairs = [{"q": f"Question: is it {w}?", "a": f" {w} film"} for w in WORDS_POS + WORDS_NEG]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs * 2))
    (folder / "plain.csv").write_text("body\n" + "\n".join(f"a {w} story" for w in WORDS_POS * 3))
    return folder


def _values(root: Path, out: Path, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "model": str(root / "llama"),
        "data": str(root / "labelled.csv"),
        "template": "Review: {text}\nSentiment:",
        "verbalizer": 'pos=" good",neg=" bad"',
        "test_size": 8,
        "epochs": 1,
        "batch_size": 8,
        "max_length": 24,
        "progress": False,
        "device": "cpu",
        "output_dir": str(out),
        "lr": 1e-2,
    }
    return {**values, **extra}


@pytest.mark.parametrize(
    ("method", "options"),
    [("rep", {}), ("adp", {"bottleneck": 8}), ("lora", {}), ("full", {}), ("none", {})],
)
def test_classification_as_text_for_every_method(
    root: Path, tmp_path: Path, method: str, options: dict
) -> None:
    config = FinetuneConfig(
        **_values(root, tmp_path / method, method=method, method_options=options)
    )
    result = run(config)
    assert result.task == "lm" and 0.0 <= result.accuracy <= 1.0 and result.num_test == 8
    assert math.isfinite(result.metrics["perplexity"]) and result.metrics["truncated"] == 0
    assert len(result.samples) == 3 and all("generated" in s for s in result.samples)
    report = json.loads((tmp_path / method / "report.json").read_text())
    assert report["accuracy"] == result.accuracy
    if method == "none":
        assert result.trainable_params == 0 and result.history[0]["epoch"] == 0
    else:
        assert result.trainable_params > 0 and result.tokens_per_second > 0
        again = evaluate(tmp_path / method)
        assert again["accuracy"] == pytest.approx(result.accuracy)
        assert again["perplexity"] == pytest.approx(result.metrics["perplexity"], rel=1e-4)
    labels = predict(tmp_path / method, ["good film great", "dull film cold"])
    assert set(labels) <= {"pos", "neg"}


def test_prompt_completion_and_plain_text(root: Path, tmp_path: Path) -> None:
    pairs = _values(
        root, tmp_path / "pairs", data=str(root / "pairs.jsonl"), template=None, verbalizer=None,
        prompt_column="q", completion_column="a", test_size=4,
    )  # fmt: skip
    result = run(FinetuneConfig(**pairs))
    assert math.isnan(result.accuracy) and result.labels == []
    assert math.isfinite(result.metrics["loss"]) and result.metrics["perplexity"] > 1
    assert evaluate(tmp_path / "pairs")["perplexity"] == pytest.approx(
        result.metrics["perplexity"], rel=1e-4
    )
    plain = _values(
        root, tmp_path / "plain", data=str(root / "plain.csv"), template=None, verbalizer=None,
        text_column="body", test_size=3,
    )  # fmt: skip
    result = run(FinetuneConfig(**plain))
    assert result.num_train == 9 and math.isfinite(result.metrics["perplexity"])


def test_generate_merged_equals_unmerged_under_greedy(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep"
    run(FinetuneConfig(**_values(root, out, epochs=2, lr=5e-2)))
    prompts = ["Review: good film\nSentiment:", "Review: dull\nSentiment:"]
    merged = generate_text(out, prompts, max_new_tokens=6)
    assert merged == generate_text(out, prompts, max_new_tokens=6, merge=False)
    assert cli.main(["generate", "--adapter", str(out), "--max-new-tokens", "6", *prompts]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [cli.one_line(text) for text in merged]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--template", "Review:"], "--template 'Review:' has no {text} placeholder"),
        (["--verbalizer", 'pos=" good"'], "has no answer for label 'neg'"),
        (["--verbalizer", 'pos=" good",neg=" bad",meh=" so-so"'], "names label 'meh'"),
        (["--verbalizer", 'pos=" good",neg=" good"'], "same tokens"),
        (["--verbalizer", 'pos="",neg=" bad"'], "tokenizes to nothing"),
        (["--task", "classify"], "--template needs --task lm"),
        (["--method", "head"], "--method head needs --task classify"),
        (["--max-length", "1"], "--max-length 1 leaves no room"),
    ],
)
def test_bad_lm_input_fails_in_one_line_and_writes_nothing(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    argv = ["finetune", "--model", str(root / "llama"), "--data", str(root / "labelled.csv")]
    argv += ["--template", "Review: {text}\nSentiment:", "--verbalizer", 'pos=" good",neg=" bad"']
    argv += ["--test-size", "8", "--epochs", "1", "--no-progress", "--output-dir", str(out)]
    fails_in_one_line(capsys, argv + extra, message)
    assert not out.exists()


def test_lm_on_an_encoder_and_generate_on_a_classifier(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from _helpers import make_tiny_bert, minilm_folder

    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    bert = make_tiny_bert(tmp_path / "bert", dropout=0.0)
    argv = ["finetune", "--task", "lm", "--model", bert, "--data", str(root / "labelled.csv")]
    fails_in_one_line(
        capsys, [*argv, "--output-dir", str(tmp_path / "x")], "--task lm needs a decoder-only LM"
    )
    argv = ["finetune", "--method", "head", "--model", bert, "--data", str(root / "labelled.csv")]
    argv += ["--epochs", "1", "--no-progress", "--output-dir", str(tmp_path / "cls")]
    assert cli.main(argv) == 0
    capsys.readouterr()
    fails_in_one_line(
        capsys, ["generate", "--adapter", str(tmp_path / "cls"), "hi"], "generate needs an lm run"
    )
