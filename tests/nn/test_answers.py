"""Generated-answer metrics: normalisation, exact match and contains, and the scored evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from _helpers import tiny_llama, tiny_tokenizer

from tensortrain_nn.tasks import FinetuneError, LMExample, LMTask, TaskOptions
from tensortrain_nn.tasks.answers import (
    AnswerScored,
    answer_matches,
    check_task_options,
    normalise_answer,
    scored,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Republican.\n", "republican"),
        ("The   Democratic\tparty!!", "the democratic party"),
        ('"Yes," ', "yes"),
        ("ＡＢＣ", "abc"),  # NFKC: full-width letters
        ("Straße", "strasse"),  # casefold
        ("3.5", "3.5"),  # inner punctuation stays
    ],
)
def test_normalise_answer(text: str, expected: str) -> None:
    assert normalise_answer(text) == expected


def test_exact_match_and_contains() -> None:
    assert answer_matches("Republican.", "republican", "exact_match")
    assert not answer_matches("Republican, I think", "republican", "exact_match")
    assert answer_matches("Republican, I think", "republican", "contains")
    assert not answer_matches("Democratic", "Democrat", "contains")  # whole words only
    assert not answer_matches("anything", "", "contains")
    with pytest.raises(FinetuneError, match="--metric must be one of exact_match, contains"):
        answer_matches("a", "a", "accuracy")


def test_bad_metric_options() -> None:
    with pytest.raises(FinetuneError, match="--metric must be one of accuracy, exact_match"):
        check_task_options(TaskOptions(metric="bleu"))
    with pytest.raises(FinetuneError, match="--chat-loss must be assistant or all, got 'some'"):
        check_task_options(TaskOptions(chat_loss="some"))


def _task() -> LMTask:
    tokenizer = tiny_tokenizer(bos=True)
    examples = [LMExample(f"Question: {k}?\nAnswer:", f" answer {k}") for k in range(4)]
    return LMTask(tokenizer, examples, examples, max_length=32)


def test_scored_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    task = scored(_task(), "exact_match", labelled=False)
    assert isinstance(task, AnswerScored) and task.num_train == 4 and task.name == "lm"
    given = ["Answer 0.", "answer 1", "no", "answer 33"]
    monkeypatch.setattr(AnswerScored, "answers", lambda self, model, batch_size: given)
    out = task.evaluate(tiny_llama(task.tokenizer), batch_size=2)
    assert out["exact_match"] == 0.5
    assert [s["match"] for s in out["samples"]] == ["yes", "yes", "no", "no"]
    assert out["samples"][2] == {
        "prompt": "<bos>Question: 2?\nAnswer:",
        "reference": " answer 2",
        "generated": "no",
        "match": "no",
    }
    assert "perplexity" in out


def test_generated_answers_are_greedy_and_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    task: Any = scored(_task(), "contains", labelled=False)
    model = tiny_llama(task.tokenizer)
    first = task.answers(model, batch_size=3)
    assert first == task.answers(model, batch_size=1) and len(first) == 4
    assert (
        task.max_new_tokens == max(len(task.tokenizer(r)["input_ids"]) for r in task.references) + 8
    )
    assert 0.0 <= task.evaluate(model, 4)["contains"] <= 1.0
