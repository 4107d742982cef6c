"""Chat and instruction data: rendering, assistant-only labels, the Alpaca mapping, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import CHAT_TEMPLATE, chat_rows, fails_in_one_line, tiny_chat_model, tiny_tokenizer

from tensortrain_nn.tasks import (
    DataError,
    FinetuneError,
    TaskOptions,
    decide_kind,
    make_task,
    read_data,
)
from tensortrain_nn.tasks.batching import IGNORE_INDEX
from tensortrain_nn.tasks.chat import (
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    check_messages,
    encode_conversation,
)
from tensortrain_nn.tasks.forms import ChatData

#: :data:`CHAT_TEMPLATE` with the assistant's text marked for transformers' own mask.
MARKED = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ '<assistant>' }}"
    "{% generation %}{{ m['content'] + '<eos>' }}{% endgeneration %}"
    "{% else %}{{ '<' + m['role'] + '>' + m['content'] + '<eos>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    tok = tiny_tokenizer(bos=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _trained_pieces(tokenizer: Any, ids: list[int], trained: list[bool]) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    pieces, run = [], []
    for token, keep in [*zip(ids, trained), (None, False)]:
        if keep:
            run.append(token)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    return pieces


def test_assistant_turns_only_token_by_token(tokenizer: Any) -> None:
    messages = chat_rows(2)[1]["messages"]
    ids, trained = encode_conversation(tokenizer, CHAT_TEMPLATE, messages)
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _trained_pieces(tokenizer, ids, trained) == ["yes<eos>", "yes<eos>"]
    untrained = tokenizer.decode([t for t, keep in zip(ids, trained) if not keep])
    assert (
        untrained == "<system>Answer yes or no.<eos><user>a great film?<eos><assistant>"
        "<user>sure?<eos><assistant>"
    )


def test_prefix_spans_equal_the_templates_own_mask(tokenizer: Any) -> None:
    messages = chat_rows(1)[0]["messages"]
    ours = encode_conversation(tokenizer, CHAT_TEMPLATE, messages)
    marked = encode_conversation(tokenizer, MARKED, messages)
    assert ours == marked  # same text, same ids, the same tokens trained, one by one


def test_loss_on_all_tokens(tokenizer: Any) -> None:
    ids, trained = encode_conversation(
        tokenizer, CHAT_TEMPLATE, chat_rows(1)[0]["messages"], assistant_only=False
    )
    assert trained == [False] + [True] * (len(ids) - 1)


def _chat_task(tokenizer: Any, rows: Any, **extra: Any) -> Any:
    options = TaskOptions(data=rows, test_size=2, max_length=128, **extra)
    kind = decide_kind(options, decoder_only=True, model="tiny")
    data = read_data(options, kind)
    assert isinstance(data, ChatData)
    return make_task(kind, tokenizer, data, options)


def test_chat_batches_put_labels_on_assistant_tokens(tokenizer: Any) -> None:
    task = _chat_task(tokenizer, chat_rows(6))
    batch = task.train_batch([0, 1])
    for row, (ids, trained) in zip(batch["labels"].tolist(), task.train_encoded[:2]):
        kept = [t for t in row if t != IGNORE_INDEX]
        assert kept == [t for t, keep in zip(ids, trained) if keep]
    ref = task.answer_references[0]
    assert ref in ("yes", "no")
    prompt = tokenizer.decode(task.answer_contexts[0])
    assert prompt.endswith("<user>sure?<eos><assistant>") and prompt.startswith("<system>")


def test_messages_detected_by_default_and_by_flag(tokenizer: Any) -> None:
    rows = [{"chat": r["messages"], "id": k} for k, r in enumerate(chat_rows(6))]
    assert _chat_task(tokenizer, rows).num_train == 4
    named = [{**r, "text": "x"} for r in rows]
    assert _chat_task(tokenizer, named, messages_column="chat").num_train == 4


def test_short_max_length_keeps_the_end(tokenizer: Any) -> None:
    options = TaskOptions(data=chat_rows(6), test_size=2, max_length=12)
    kind = decide_kind(options, decoder_only=True, model="tiny")
    task = make_task(kind, tokenizer, read_data(options, kind), options)
    assert all(len(ids) == 12 and not trained[0] for ids, trained in task.train_encoded)
    assert task.truncated["train"] == 4


def test_alpaca_mapping() -> None:
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ] * 3
    options = TaskOptions(data=rows, test_size=2, split_seed=0)
    train, test = read_data(options, decide_kind(options, decoder_only=True, model="tiny"))
    by_answer = {e.reference: e.prompt for e in [*train, *test]}
    assert by_answer["5"] == ALPACA_TEMPLATE.format(instruction="Add the numbers.", input="2 and 3")
    assert by_answer["hi"] == ALPACA_TEMPLATE_NO_INPUT.format(instruction="Say hi.")
    assert by_answer["5"].endswith("### Input:\n2 and 3\n\n### Response:\n")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "holds an empty conversation"),
        ("hi", "holds str; expected a list"),
        ([{"role": "user"}], "message 1 has no 'content' key"),
        ([{"content": "x"}], "message 1 has no 'role' key"),
        ([{"role": "bot", "content": "x"}], "has role 'bot'; roles: system, user, assistant"),
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
            "message 2 is a system message; only the first may be",
        ),
        ([{"role": "user", "content": "a"}], "has no assistant message"),
        ([{"role": "assistant", "content": 3}], "message 1 has content of type int"),
    ],
)
def test_bad_conversations(value: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        check_messages(value, where="d.jsonl", number=4, column="messages")


def test_no_chat_template_names_the_template_flag() -> None:
    tok = tiny_tokenizer(bos=True)
    with pytest.raises(DataError, match="has none: give one with --template"):
        _chat_task(tok, chat_rows(4))
    assert _chat_task(tok, chat_rows(4), template=CHAT_TEMPLATE).num_train == 2


def test_metric_accuracy_needs_options(tokenizer: Any) -> None:
    with pytest.raises(FinetuneError, match="--metric accuracy ranks answer options"):
        _chat_task(tokenizer, chat_rows(4), metric="accuracy")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("chat-models")
    return {
        "chat": tiny_chat_model(root / "chat"),
        "plain": tiny_chat_model(root / "plain", template=None),
    }


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


BAD = {
    "list-as-text": (
        [{"text": r["messages"], "label": "a"} for r in chat_rows(4)],
        "--text-column 'text'",
    ),
    "missing-key": (
        [{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}] * 4,
        "message 1 has no 'content' key",
    ),
    "bad-role": (
        [{"messages": [{"role": "robot", "content": "a"}]}] * 4,
        "has role 'robot'",
    ),
    "empty": ([{"messages": []}] * 4, "--messages-column 'messages'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_chat_data_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: dict[str, str], case: str
) -> None:
    rows, message = BAD[case]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "run"
    argv = ["finetune", "--model", models["chat"], "--data", data, "--output-dir", str(out)]
    fails_in_one_line(capsys, [*argv, "--method", "rep", "--epochs", "1"], message)
    assert not out.exists()


@pytest.mark.slow
def test_no_chat_template_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: dict[str, str]
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", chat_rows(6))
    out = tmp_path / "run"
    argv = ["finetune", "--model", models["plain"], "--data", data, "--output-dir", str(out)]
    fails_in_one_line(capsys, argv, "give one with --template")
    assert not out.exists()


@pytest.mark.slow
def test_chat_run_exact_match_and_generate_chat(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: dict[str, str]
) -> None:
    from tensortrain_nn import cli

    data = _jsonl(tmp_path / "d.jsonl", chat_rows(12))
    out = tmp_path / "run"
    argv = [
        "finetune",
        "--model",
        models["chat"],
        "--data",
        data,
        "--output-dir",
        str(out),
        "--metric",
        "exact_match",
        "--test-size",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["metrics"]["exact_match"] <= 1.0
    assert {"prompt", "reference", "generated", "match"} <= set(report["samples"][0])
    assert "exact match" in (out / "report.md").read_text()
    capsys.readouterr()
    gen = [
        "generate",
        "--adapter",
        str(out),
        "--chat",
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "3",
        "a good film?",
        "sure?",
    ]
    assert cli.main(gen) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_collate_matches_the_mask(tokenizer: Any) -> None:
    task = _chat_task(tokenizer, chat_rows(6))
    batch = task.train_batch([0, 1, 2])
    assert batch["input_ids"].shape == batch["labels"].shape
    assert torch.equal(
        batch["attention_mask"].sum(1),
        torch.tensor([len(task.train_encoded[i][0]) for i in range(3)]),
    )


def test_chat_samples_without_a_metric(tokenizer: Any) -> None:
    from _helpers import tiny_llama

    task = _chat_task(tokenizer, chat_rows(6))
    task.num_samples = 1
    out = task.evaluate(tiny_llama(tokenizer), batch_size=2)
    assert out["examples"] == 2 and out["tokens"] == 12  # 2 conversations x 2 turns x 3 tokens
    assert len(out["samples"]) == 1 and out["samples"][0]["reference"] in ("yes", "no")


@pytest.mark.slow
def test_python_api_takes_a_dataset(tmp_path: Path, models: dict[str, str]) -> None:
    import datasets

    from tensortrain_nn.finetune import FinetuneConfig, run

    data = datasets.Dataset.from_list(chat_rows(12))
    config = FinetuneConfig(
        model=models["chat"],
        data=data,
        test_size=4,
        epochs=1,
        batch_size=4,
        max_length=128,
        progress=False,
        device="cpu",
        output_dir=str(tmp_path / "run"),
        metric="contains",
    )
    result = run(config)
    assert result.num_train == 8 and "contains" in result.metrics
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["config"]["data"] == "an in-memory Dataset"
