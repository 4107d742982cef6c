"""The lm job's flags and data, checked before anything runs: escape sequences, answers that are
token prefixes of each other, empty or ineffective flags, generate's limits and prompt files,
JSONL rows without their keys, evaluation of a prompt/completion run on new data, and the
per-epoch history with training and held-out losses apart."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from _helpers import fails_in_one_line, pairs_values, tiny_llama, tiny_tokenizer

from tensortrain_nn import cli
from tensortrain_nn.finetune import FinetuneConfig, evaluate, run
from tensortrain_nn.finetune.config import Result, history_row
from tensortrain_nn.finetune.report import write_report
from tensortrain_nn.tasks import (
    DataError,
    FinetuneError,
    LMExample,
    Split,
    TaskOptions,
    decide_kind,
    generate,
)
from tensortrain_nn.tasks.data import load_lm_examples
from tensortrain_nn.tasks.generation import MAX_NEW_TOKENS
from tensortrain_nn.tasks.lm import classification_task
from tensortrain_nn.tasks.scoring import BUILTIN_TEMPLATE, parse_verbalizer
from tensortrain_nn.tasks.text import split_prompts, unescape

WORDS = ["good", "warm", "superb", "great", "bad", "dull", "cold", "boring"]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(True)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tok: Any) -> Path:
    """A tiny LLaMA folder, a labelled CSV, a prompt/completion JSONL, and a zero-shot run on it."""
    folder = tmp_path_factory.mktemp("lmflags")
    tiny_llama(tok).save_pretrained(folder / "llama")
    tok.save_pretrained(folder / "llama")
    rows = [f"{a} film {b},{'pos' if i < 4 else 'neg'}" for i, a in enumerate(WORDS) for b in WORDS]
    (folder / "labelled.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    pairs = [{"q": f"Question: is it {w}?", "a": f" a {w} film"} for w in WORDS]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs * 2))
    run(FinetuneConfig(**_pairs(folder, folder / "zero", method="none")))
    return folder


def _pairs(root: Path, out: Path, **extra: Any) -> dict[str, Any]:
    return pairs_values(root, out, **extra)


def _split() -> Split:
    return Split(["good film", "dull film"], [1, 0], ["warm film"], [1], ["neg", "pos"])


# --- one rule for escape sequences ----------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        (r"a\nb", "a\nb"),
        (r"a\tb", "a\tb"),
        (r"a\\nb", "a\\nb"),
        (r"say \"hi\"", 'say "hi"'),
        (r"C:\dir\ ", "C:\\dir\\ "),
        ("real\nbreak", "real\nbreak"),
        ("trailing\\", "trailing\\"),
    ],
)
def test_unescape_reads_newline_tab_backslash_and_quote_only(typed: str, meant: str) -> None:
    assert unescape(typed) == meant


def test_typed_template_escape_is_the_builtin_template(tok: Any) -> None:
    """``--template "Review: {text}\\nSentiment:"`` as a shell passes it: a line break."""
    typed = classification_task(tok, _split(), template=r"Review: {text}\nSentiment:",
                                verbalizer='pos=" good",neg=" bad"')  # fmt: skip
    builtin = classification_task(tok, _split(), template=BUILTIN_TEMPLATE,
                                  verbalizer='pos=" good",neg=" bad"')  # fmt: skip
    assert [e.prompt for e in typed.train_examples] == [e.prompt for e in builtin.train_examples]
    assert typed.train_examples[0].prompt == "Review: good film\nSentiment:"
    assert typed.predict(tiny_llama(tok), ["warm"], 4) == builtin.predict(
        tiny_llama(tok), ["warm"], 4
    )


def test_verbalizer_answers_follow_the_same_rule() -> None:
    assert parse_verbalizer(r'pos=" yes\n",neg=no\t') == {"pos": " yes\n", "neg": "no\t"}


def test_generate_reads_escapes_in_arguments_and_multi_line_prompt_files(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    import tensortrain_nn.finetune as finetune

    seen: list[list[str]] = []

    def echo(folder: Any, prompts: list[str], **options: Any) -> list[str]:
        seen.append(list(prompts))
        return ["out"] * len(prompts)

    monkeypatch.setattr(finetune, "generate_text", echo)
    zero = str(root / "zero")
    assert cli.main(["generate", "--adapter", zero, r"Review: a gem\nSentiment:"]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Review: a gem\nSentiment:\n---\n\nReview: dull\nSentiment:\n---\n")
    assert cli.main(["generate", "--adapter", zero, "--prompt-file", str(prompts)]) == 0
    assert seen == [
        ["Review: a gem\nSentiment:"],
        ["Review: a gem\nSentiment:", "Review: dull\nSentiment:"],
    ]
    assert capsys.readouterr().out.splitlines() == ["out", "out", "out"]
    fails_in_one_line(capsys, ["generate", "--adapter", zero, "--prompt-file", str(prompts), "x"],
                      "--prompt-file")  # fmt: skip


def test_split_prompts_keeps_inner_lines_and_drops_empty_parts() -> None:
    assert split_prompts("a\nb\n---\n---\n  \n---\nc") == ["a\nb", "c"]


# --- verbalizer answers that are token prefixes of others --------------------------------------


def test_answer_that_is_a_token_prefix_of_another_is_refused(tok: Any) -> None:
    verbalizer = 'neg=" good film",pos=" good"'
    with pytest.raises(DataError) as caught:
        classification_task(tok, _split(), template="{text}", verbalizer=verbalizer)
    message = str(caught.value)
    assert "'pos'" in message and "'neg'" in message and "--length-normalise" in message
    assert "\n" not in message
    task = classification_task(
        tok, _split(), template="{text}", verbalizer=verbalizer, length_normalise=True
    )
    assert task.options is not None and len(task.options) == 2


# --- empty and ineffective flags ---------------------------------------------------------------


def _lm_argv(root: Path, out: Path, *extra: str) -> list[str]:
    argv = ["finetune", "--model", str(root / "llama"), "--data", str(root / "labelled.csv")]
    return [*argv, "--epochs", "1", "--no-progress", "--output-dir", str(out), *extra]


def test_empty_template_is_refused_naming_the_flag(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _lm_argv(
        root, tmp_path / "r", "--template", "", "--verbalizer", 'pos=" good",neg=" bad"'
    )
    fails_in_one_line(capsys, argv, "--template is empty")
    assert not (tmp_path / "r").exists()


def test_empty_verbalizer_is_refused_without_quoting_a_default(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _lm_argv(root, tmp_path / "r", "--template", "{text} is", "--verbalizer", "")
    err = fails_in_one_line(capsys, argv, "--verbalizer is empty")
    assert "fresh" not in err and "good" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"task": "classify", "length_normalise": True}, "--length-normalise needs --task lm"),
        ({"task": "classify", "metric": "exact_match"}, "--metric needs --task lm"),
        ({"task": "classify", "chat_loss": "all"}, "--chat-loss needs --task lm"),
        (
            {
                "task": "lm",
                "prompt_column": "q",
                "completion_column": "a",
                "length_normalise": True,
            },
            "--length-normalise has no effect on prompt/completion data",
        ),
        ({"task": "lm", "length_normalise": True}, "--length-normalise has no effect on plain"),
        (
            {
                "task": "lm",
                "template": "{text}",
                "verbalizer": "a=b",
                "prompt_column": "q",
                "completion_column": "a",
            },
            "--prompt-column 'q' has no effect with --template and --verbalizer",
        ),
        ({"task": "lm", "data": None, "completion_column": "a"}, "--completion-column 'a' has no"),
    ],
)
def test_flags_without_effect_are_refused(options: dict[str, Any], message: str) -> None:
    values = {"data": "x.csv", **options}
    with pytest.raises(FinetuneError, match=message):
        decide_kind(TaskOptions(**values), decoder_only=True, model="llama")


def test_chat_loss_on_data_without_messages_is_refused(tok: Any) -> None:
    from tensortrain_nn.tasks import TaskKind, make_task

    options = TaskOptions(prompt_column="q", completion_column="a", chat_loss="all")
    data = ([LMExample("Q", " a")], [LMExample("Q", " b")])
    with pytest.raises(FinetuneError, match="--chat-loss all has no effect"):
        make_task(TaskKind("lm", labelled=False), tok, data, options)


def test_length_normalise_with_classify_fails_on_the_command_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _lm_argv(root, tmp_path / "r", "--task", "classify", "--length-normalise")
    fails_in_one_line(capsys, argv, "--length-normalise needs --task lm")
    assert not (tmp_path / "r").exists()


# --- generate: positions and a documented maximum ---------------------------------------------


def test_new_tokens_past_the_positions_fail_in_one_line(tok: Any) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=16, n_layer=1, n_head=2)
    gpt2 = GPT2LMHeadModel(config).eval()
    with pytest.raises(FinetuneError) as caught:
        generate(gpt2, tok, ["a good film"], max_new_tokens=20)
    assert "--max-new-tokens 20" in str(caught.value) and "16 positions" in str(caught.value)
    assert len(generate(gpt2, tok, ["a good film"], max_new_tokens=4)) == 1


def test_new_tokens_are_capped_by_a_documented_maximum(
    tok: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_llama(tok)
    model.config.max_position_embeddings = 10**9
    with pytest.raises(FinetuneError, match=f"--max-new-tokens must be <= {MAX_NEW_TOKENS}"):
        generate(model, tok, ["a"], max_new_tokens=100_000_000)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "--help"])
    assert f"at most {MAX_NEW_TOKENS}" in " ".join(capsys.readouterr().out.split())


def test_generate_past_the_positions_on_the_command_line(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--adapter", str(root / "zero"), "--max-new-tokens", "500", "hi"]
    fails_in_one_line(capsys, argv, "exceeds the model's 128 positions")


# --- prompt/completion data -------------------------------------------------------------------


def test_jsonl_row_without_the_completion_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "a", "a": "b"}\n{"q": "c"}\n')
    with pytest.raises(DataError, match=r"row 2 has no value for --completion-column 'a'"):
        load_lm_examples(path, prompt_column="q", completion_column="a")


def test_evaluate_a_prompt_completion_run_on_new_data(root: Path, tmp_path: Path) -> None:
    new = tmp_path / "new.jsonl"
    rows = [{"q": f"Question: {w}?", "a": f" {w}"} for w in WORDS[:5]]
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = evaluate(root / "zero", str(new))
    assert scores["examples"] == 5 and math.isfinite(scores["loss"])
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]))
    assert 0.0 <= scores["exact_match"] <= 1.0
    with pytest.raises(DataError, match="--label-column"):
        evaluate(root / "zero", str(new), label_column="label")


def test_prompt_completion_data_is_scored_by_exact_match_by_default(
    tok: Any, monkeypatch: Any
) -> None:
    import tensortrain_nn.tasks.answers as answers
    from tensortrain_nn.tasks import TaskKind, TaskOptions, make_task

    test = [LMExample("Q: a", " good  film"), LMExample("Q: b", " bad"), LMExample("Q: c", "x")]
    options = TaskOptions(prompt_column="q", completion_column="a", max_length=24)
    task = make_task(TaskKind("lm", labelled=False), tok, ([LMExample("Q", " a")], test), options)

    def fake(model: Any, contexts: Any, **_: Any) -> list[list[int]]:
        texts = {"Q: a": "Good film.", "Q: b": " awful", "Q: c": "x"}
        prompts = [tok.decode(c, skip_special_tokens=True) for c in contexts]
        return [tok(texts[p], add_special_tokens=False)["input_ids"] for p in prompts]

    monkeypatch.setattr(answers, "generate_ids", fake)
    assert task.answers(None, batch_size=8) == ["Good film.", " awful", "x"]  # type: ignore[arg-type]
    hits = [
        answers.answer_matches(a, e.reference, "exact_match")
        for a, e in zip(task.answers(None, 8), test)
    ]  # type: ignore[arg-type]
    assert hits == [True, False, True]


def test_cut_completions_are_counted_in_the_report(root: Path, tmp_path: Path) -> None:
    result = run(FinetuneConfig(**_pairs(root, tmp_path / "cut", method="none", max_length=3)))
    assert result.metrics["completions_cut"] > 0
    report = (tmp_path / "cut" / "report.md").read_text()
    assert f"cut completions | {int(result.metrics['completions_cut'])} of" in report


# --- per-epoch history: training and held-out losses apart ------------------------------------


def test_history_keeps_training_and_held_out_losses_apart(root: Path, tmp_path: Path) -> None:
    values = _pairs(root, tmp_path / "h", method="rep", epochs=2, lr=1e-2)
    result = run(FinetuneConfig(**values))
    assert [sorted(h) for h in result.history] == [
        sorted(["epoch", "train_loss", "eval_loss", "perplexity", "tokens", "examples",
                "truncated", "completions_cut", "samples", "exact_match"])
    ] * 2  # fmt: skip
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and row["train_loss"] != row["eval_loss"]
        assert row["perplexity"] == pytest.approx(math.exp(row["eval_loss"]))
    assert result.metrics["loss"] == result.history[-1]["eval_loss"]
    text = (tmp_path / "h" / "report.md").read_text()
    assert "| epoch | train loss | eval loss |" in text
    assert f"{result.history[-1]['train_loss']:.4f} | {result.metrics['loss']:.4f}" in text


def test_history_rows_of_older_runs_still_load(tmp_path: Path) -> None:
    old_lm = {"epoch": 1, "loss": 2.5, "perplexity": math.exp(2.5)}
    old_classify = {"epoch": 1, "loss": 0.7, "accuracy": 0.5}
    assert history_row(old_lm) == {"epoch": 1, "perplexity": math.exp(2.5), "eval_loss": 2.5}
    assert history_row(old_classify) == {"epoch": 1, "accuracy": 0.5, "train_loss": 0.7}
    fields = {f: 0 for f in Result.__dataclass_fields__ if f not in ("history", "metrics")}
    fields.update(method="rep", description="", accuracy=0.5, macro_f1=0.5, total_params=1)
    fields.update(labels=[], samples=[], budget={}, output_dir=None, task="classify")
    result = Result(history=[old_classify], metrics={}, **fields)  # type: ignore[arg-type]
    write_report(result, tmp_path)
    assert "| 1 | 0.7000 | nan | 50.00 | nan |" in (tmp_path / "report.md").read_text()
