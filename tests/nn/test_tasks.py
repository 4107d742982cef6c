"""The task layer: the one decision of the task kind, the one split, the one option scorer."""

from __future__ import annotations

from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from _helpers import tiny_llama, tiny_tokenizer

from tensortrain_nn.tasks import (
    DataError,
    FinetuneError,
    Split,
    TaskKind,
    TaskOptions,
    decide_kind,
    split_items,
)
from tensortrain_nn.tasks.lm import classification_task

# ----------------------------------------------------------------------------- the task kind

CLASSIFY = TaskKind("classify", labelled=True)
AS_TEXT = TaskKind("lm", labelled=True)
LM = TaskKind("lm", labelled=False)
BOTH = {"template": "T: {text}", "verbalizer": "a=x,b=y"}


@pytest.mark.parametrize(
    ("options", "decoder_only", "kind"),
    [
        ({}, False, CLASSIFY),  # auto on an encoder
        ({}, True, AS_TEXT),  # auto on a decoder, built-in data: a default verbalizer
        ({"task": "classify"}, True, CLASSIFY),  # a decoder's score head
        ({"data": "a.csv"}, True, LM),  # plain text
        ({"data": "a.csv", "prompt_column": "p", "completion_column": "c"}, True, LM),
        ({"data": "a.csv", **BOTH}, True, AS_TEXT),
        ({"template": "T: {text}"}, True, AS_TEXT),  # built-in data: its verbalizer
        ({"task": "lm", "data": "a.csv"}, True, LM),
    ],
)
def test_the_task_kind_of_each_form(options: dict, decoder_only: bool, kind: TaskKind) -> None:
    assert decide_kind(TaskOptions(**options), decoder_only=decoder_only, model="m") == kind


@pytest.mark.parametrize(
    ("options", "decoder_only", "message"),
    [
        ({"task": "lm"}, False, "--task lm needs a decoder-only LM; --model m is not one"),
        ({"task": "classify", "template": "{text}"}, True, "--template needs --task lm"),
        ({"verbalizer": "a=x"}, False, "--verbalizer needs --task lm"),
        ({"data": "a.csv", "template": "{text}"}, True, "needs both --template and --verbalizer"),
        ({"data": "a.csv", "verbalizer": "a=x"}, True, "needs both --template and --verbalizer"),
        ({"task": "regress"}, True, "task must be auto, classify or lm, got 'regress'"),
    ],
)
def test_ambiguous_or_contradictory_options_are_refused(
    options: dict, decoder_only: bool, message: str
) -> None:
    with pytest.raises(FinetuneError, match=message):
        decide_kind(TaskOptions(**options), decoder_only=decoder_only, model="m")


# ----------------------------------------------------------------------------- the split


@pytest.mark.parametrize(("n", "size", "n_test"), [(10, 3, 3), (10, 0.25, 2), (7, 0.01, 1)])
def test_split_is_a_disjoint_partition_of_the_asked_size(n: int, size: Any, n_test: int) -> None:
    train, test = split_items(list(range(n)), test_size=size, seed=5)
    assert len(test) == n_test and len(train) == n - n_test
    assert sorted(train + test) == list(range(n))


def test_split_is_deterministic_by_seed() -> None:
    items = list(range(50))
    assert split_items(items, test_size=10, seed=1) == split_items(items, test_size=10, seed=1)
    assert split_items(items, test_size=10, seed=1) != split_items(items, test_size=10, seed=2)


def test_an_explicit_test_set_keeps_every_item_for_training() -> None:
    train, test = split_items(list("abcd"), test_size=2, seed=0, test=["z"])
    assert sorted(train) == list("abcd") and test == ["z"]


@pytest.mark.parametrize(
    ("items", "size", "test", "message"),
    [
        ([], 1, None, "the data set is empty"),
        ([1, 2], 2, None, "test_size 2 leaves no training data"),
        ([1, 2], 1, [], "the test data set is empty"),
    ],
)
def test_unusable_splits_are_refused(items: list, size: int, test: Any, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_items(items, test_size=size, seed=0, test=test)


# ----------------------------------------------------------------------------- option scoring


@pytest.mark.parametrize("length_normalise", [False, True])
def test_predict_and_evaluate_choose_the_same_options(length_normalise: bool) -> None:
    tokenizer = tiny_tokenizer(bos=True)
    model = tiny_llama(tokenizer, seed=3)
    texts = ["a good film", "a bad film", "the plot", "a warm story", "cold actors", "dull"]
    split = Split([], [], texts, [0, 1, 0, 1, 0, 1], ["pos", "neg"])
    task = classification_task(
        tokenizer,
        split,
        template="Review: {text}\nSentiment:",
        verbalizer='pos=" good",neg=" very bad"',
        length_normalise=length_normalise,
    )
    predicted = task.predict(model, texts, batch_size=4)
    scores = task.option_scores(model, batch_size=3)
    assert predicted == scores.argmax(dim=1).tolist()
    gold = split.test_labels
    expected = sum(p == y for p, y in zip(predicted, gold, strict=True)) / len(gold)
    with torch.no_grad():
        assert task.evaluate(model, batch_size=2)["accuracy"] == pytest.approx(expected)
