"""The causal-LM task: data forms, prompt masking, answer scoring, truncation and bad input.

Everything runs on a 2-layer, 32-wide random LLaMA and a byte-level BPE tokenizer trained here on
a few sentences (built in well under a second); the packaged SmolLM2 runs end to end in test_cli.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import SENTENCES, tiny_llama, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from tensortrain_nn.models import ModelSpec, is_decoder_only, load_model
from tensortrain_nn.tasks import DataError, FinetuneError, LMExample, LMTask, ModelError, Split
from tensortrain_nn.tasks import split_items as split_examples
from tensortrain_nn.tasks.batching import IGNORE_INDEX, collate, sequence_logprobs
from tensortrain_nn.tasks.data import load_lm_examples
from tensortrain_nn.tasks.lm import classification_task
from tensortrain_nn.tasks.scoring import BUILTIN_TEMPLATE, parse_verbalizer

WORDS = ["good", "bad", "film", "plot", "warm", "dull", "actor", "scene", "story", "superb"]
VERBALIZER = 'pos=" good",neg=" very bad"'
ATOL, RTOL = 1e-4, 1e-5  # float32 sums of a few log-probabilities


@pytest.fixture(scope="module", params=[False, True], ids=["no_bos", "bos"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return tiny_tokenizer(request.param)


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(True)


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return tiny_llama(tok)


def make_split(n_train: int = 8, n_test: int = 6) -> Split:
    texts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(2 + i % 4)) for i in range(20)]
    labels = [i % 2 for i in range(20)]
    return Split(
        train_texts=texts[:n_train],
        train_labels=labels[:n_train],
        test_texts=texts[10 : 10 + n_test],
        test_labels=labels[10 : 10 + n_test],
        labels=["neg", "pos"],
    )


def manual_logprob(model: Any, context: list[int], target: list[int]) -> float:
    """``log p(target | context)`` from one plain forward over the unpadded sequence."""
    ids = torch.tensor([context + target])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    return float(sum(logp[len(context) - 1 + j, t] for j, t in enumerate(target)))


texts_st = st.lists(st.sampled_from(WORDS), min_size=0, max_size=12).map(" ".join)


# --- parse_verbalizer -----------------------------------------------------------------------


def test_verbalizer_quoted_answers_keep_spaces_commas_and_escapes() -> None:
    parsed = parse_verbalizer('a=" x, y" , b="say \\"hi\\"\\n",c = plain words ,d="\\q"')
    assert parsed == {"a": " x, y", "b": 'say "hi"\n', "c": "plain words", "d": "\\q"}


@pytest.mark.parametrize(
    "text",
    ["", "fresh", 'fresh=" good', '=" good"', 'a=" x",,b=" y"', 'a=" x"y', "a=x,a=y"],
)
def test_malformed_verbalizer_is_one_line_naming_flag_and_value(text: str) -> None:
    with pytest.raises(DataError) as caught:
        parse_verbalizer(text)
    message = str(caught.value)
    assert message.startswith(f"--verbalizer {text!r}")
    assert "\n" not in message


# --- bad input of the classification form ----------------------------------------------------


def test_template_without_text_placeholder(tok: Any) -> None:
    with pytest.raises(DataError, match=r"--template 'Review: \{review\}' has no \{text\}"):
        classification_task(tok, make_split(), template="Review: {review}", verbalizer=VERBALIZER)


def test_verbalizer_missing_a_label_of_the_data(tok: Any) -> None:
    with pytest.raises(DataError, match=r"--verbalizer 'pos=good' has no answer for label 'neg'"):
        classification_task(tok, make_split(), template="{text}", verbalizer="pos=good")


def test_verbalizer_naming_a_label_not_in_the_data(tok: Any) -> None:
    with pytest.raises(DataError, match=r"names label 'meh', which is not in the data"):
        classification_task(tok, make_split(), template="{text}", verbalizer=VERBALIZER + ",meh=x")


def test_answer_that_tokenizes_to_nothing(tok: Any) -> None:
    with pytest.raises(DataError, match=r"--verbalizer answer '' of label 'neg' tokenizes to"):
        classification_task(tok, make_split(), template="{text}", verbalizer='pos=" good",neg=""')


def test_answers_with_identical_tokens(tok: Any) -> None:
    with pytest.raises(
        DataError, match=r"answers ' good' \('neg'\) and ' good' \('pos'\) tokenize"
    ):
        classification_task(
            tok, make_split(), template="{text}", verbalizer={"pos": " good", "neg": " good"}
        )


def test_max_length_leaving_no_room_for_the_prompt(tok: Any) -> None:
    longest = len(tok(" very bad", add_special_tokens=False)["input_ids"])
    with pytest.raises(FinetuneError, match=rf"--max-length {longest} leaves no room"):
        classification_task(
            tok, make_split(), template="{text}", verbalizer=VERBALIZER, max_length=longest
        )


def test_malformed_verbalizer_through_the_task(tok: Any) -> None:
    with pytest.raises(DataError, match=r"--verbalizer 'pos good' is malformed"):
        classification_task(tok, make_split(), template="{text}", verbalizer="pos good")


# --- files -----------------------------------------------------------------------------------


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"q": f"say {w}", "a": f" {w} {w}", "body": f"the {w}"} for w in WORDS]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_load_prompt_completion_pairs(pairs_file: Path) -> None:
    examples = load_lm_examples(pairs_file, prompt_column="q", completion_column="a")
    assert examples[0] == LMExample("say good", " good good")
    assert len(examples) == len(WORDS)


def test_load_plain_texts(pairs_file: Path) -> None:
    examples = load_lm_examples(pairs_file, text_column="body")
    assert examples[1] == LMExample("", "the bad")


@pytest.mark.parametrize(
    ("columns", "flag", "value"),
    [
        ({"prompt_column": "question", "completion_column": "a"}, "--prompt-column", "question"),
        ({"prompt_column": "q", "completion_column": "answer"}, "--completion-column", "answer"),
        ({"text_column": "content"}, "--text-column", "content"),
    ],
)
def test_missing_column(pairs_file: Path, columns: dict, flag: str, value: str) -> None:
    with pytest.raises(DataError) as caught:
        load_lm_examples(pairs_file, **columns)
    message = str(caught.value)
    assert message.startswith(f"{flag} {value!r}")
    assert "its columns are: q, a, body" in message
    assert "\n" not in message


def test_prompt_column_without_completion_column(pairs_file: Path) -> None:
    with pytest.raises(FinetuneError, match=r"--prompt-column 'q' needs --completion-column"):
        load_lm_examples(pairs_file, prompt_column="q")


def test_split_examples_is_a_seeded_partition() -> None:
    examples = [LMExample("", str(i)) for i in range(10)]
    train, test = split_examples(examples, test_size=3, seed=1)
    assert len(test) == 3
    assert sorted(e.reference for e in train + test) == sorted(e.reference for e in examples)
    assert split_examples(examples, test_size=0.3, seed=1) == (train, test)


# --- masking, scoring, padding, truncation (properties) --------------------------------------


@given(
    prompts=st.lists(texts_st, min_size=1, max_size=4),
    completions=st.lists(texts_st, min_size=1, max_size=4),
    max_length=st.integers(2, 24),
)
def test_prompt_positions_never_carry_loss(
    tokenizer: Any, prompts: list[str], completions: list[str], max_length: int
) -> None:
    examples = [LMExample(p, c) for p, c in zip(prompts, completions)]
    task = LMTask(tokenizer, examples, examples[:1], max_length=max_length)
    batch = task.train_batch(range(len(examples)))
    width = batch["input_ids"].shape[1]
    assert width <= max_length
    for row, (example, item) in enumerate(zip(examples, task.train_encoded)):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        n_target = len(item.target)
        assert (labels[: width - n_target] == IGNORE_INDEX).all()  # padding and prompt
        assert (
            labels[width - n_target :].tolist() == item.target == ids[width - n_target :].tolist()
        )
        full = tokenizer(example.reference, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        assert item.target == full[: max_length - 1]  # completion + EOS, cut only at the end


@settings(max_examples=10)
@given(
    n_test=st.integers(1, 5),
    batch_size=st.integers(1, 4),
    template=st.sampled_from(["{text}", "Review: {text}\nSentiment:", "Q: {text} good or bad? A:"]),
)
def test_option_scores_equal_unpadded_token_loglikelihood_sums(
    tok: Any, model: Any, n_test: int, batch_size: int, template: str
) -> None:
    task = classification_task(tok, make_split(4, n_test), template=template, verbalizer=VERBALIZER)
    scores = task.answer_logprobs(model, batch_size)
    assert scores.shape == (n_test, 2)
    assert task.options is not None
    for i, item in enumerate(task.test_encoded):
        for k, option in enumerate(task.options):
            expected = manual_logprob(model, item.context, option)
            assert math.isclose(float(scores[i, k]), expected, abs_tol=ATOL, rel_tol=RTOL)


@settings(max_examples=10)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 12), st.integers(1, 6)), min_size=2, max_size=5),
    seed=st.integers(0, 1000),
)
def test_left_padding_gives_the_scores_of_no_padding(
    model: Any, lengths: list[tuple[int, int]], seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    pairs = [
        (
            torch.randint(0, 320, (c,), generator=gen).tolist(),
            torch.randint(0, 320, (t,), generator=gen).tolist(),
        )
        for c, t in lengths
    ]
    with torch.no_grad():
        padded = sequence_logprobs(model, collate(pairs, pad_id=0))
        alone = torch.cat([sequence_logprobs(model, collate([p], pad_id=0)) for p in pairs])
    torch.testing.assert_close(padded, alone, atol=ATOL, rtol=RTOL)


@given(
    words=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    max_length=st.integers(4, 30),
)
def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_answer(
    tokenizer: Any, words: list[int], max_length: int
) -> None:
    texts = [" ".join(WORDS[(n + j) % len(WORDS)] for j in range(n)) for n in words]
    split = Split(
        texts, [i % 2 for i in range(len(texts))], texts, [0] * len(texts), ["neg", "pos"]
    )
    task = classification_task(
        tokenizer, split, template=BUILTIN_TEMPLATE, verbalizer=VERBALIZER, max_length=max_length
    )
    assert task.options is not None
    full = tokenizer([BUILTIN_TEMPLATE.replace("{text}", t) for t in texts])["input_ids"]
    cut = 0
    for ids, item in zip(full, task.train_encoded):
        assert item.label is not None
        assert item.target == task.options[item.label]  # the answer is whole
        assert len(item.context) + max(map(len, task.options)) <= max_length
        if len(item.context) < len(ids):
            cut += 1
            bos = tokenizer.bos_token_id
            keeps_bos = bos is not None and len(item.context) >= 2
            kept = item.context[1:] if keeps_bos else item.context
            assert ids[len(ids) - len(kept) :] == kept  # a suffix of the prompt (after BOS)
            assert not keeps_bos or item.context[0] == bos
        else:
            assert item.context == ids
    assert task.truncated["train"] == cut


# --- the three forms end to end --------------------------------------------------------------


def test_classification_evaluate(tok: Any, model: Any) -> None:
    task = classification_task(tok, make_split(), template=BUILTIN_TEMPLATE, verbalizer=VERBALIZER)
    out = task.evaluate(model, batch_size=4)
    raw = task.answer_logprobs(model, 4)
    gold = torch.tensor(make_split().test_labels)
    assert task.options is not None
    n_tokens = sum(len(task.options[y]) for y in gold.tolist())
    assert out["loss"] == pytest.approx(-float(raw[torch.arange(len(gold)), gold].sum()) / n_tokens)
    assert out["perplexity"] == pytest.approx(math.exp(out["loss"]))
    assert out["accuracy"] == pytest.approx(float((raw.argmax(1) == gold).float().mean()))
    assert 0.0 <= out["macro_f1"] <= 1.0
    assert (out["examples"], out["tokens"], out["truncated"]) == (6, n_tokens, 0)
    assert [set(s) for s in out["samples"]] == [{"prompt", "reference", "generated"}] * 3
    assert out["samples"][0]["prompt"] == BUILTIN_TEMPLATE.replace(
        "{text}", make_split().test_texts[0]
    )


def test_length_normalised_prediction_divides_by_answer_tokens(tok: Any, model: Any) -> None:
    task = classification_task(
        tok, make_split(), template="{text}", verbalizer=VERBALIZER, length_normalise=True
    )
    assert task.options is not None
    lengths = torch.tensor([float(len(o)) for o in task.options])
    assert lengths[0] > lengths[1] == 1  # " very bad" takes more tokens than " good"
    torch.testing.assert_close(
        task.option_scores(model, 3), task.answer_logprobs(model, 3) / lengths
    )


@pytest.mark.parametrize("form", ["completion", "text"])
def test_completion_and_text_evaluate(tokenizer: Any, form: str) -> None:
    examples = [
        LMExample(
            f"say {w}" if form == "completion" else "",
            f" {w} story" if form == "completion" else SENTENCES[i % 5],
        )
        for i, w in enumerate(WORDS)
    ]
    task = LMTask(
        tokenizer, examples[:6], examples[6:], max_length=16, num_samples=2, sample_tokens=3
    )
    model = tiny_llama(tokenizer)
    out = task.evaluate(model, batch_size=3)
    pairs = [(i.context, i.target) for i in task.test_encoded]
    total = sum(manual_logprob(model, c, t) for c, t in pairs)
    tokens = sum(len(t) for _, t in pairs)
    assert out["tokens"] == tokens
    assert out["loss"] == pytest.approx(-total / tokens, rel=1e-5)
    assert "accuracy" not in out
    assert len(out["samples"]) == 2
    assert all(isinstance(s["generated"], str) for s in out["samples"])
    first = out["samples"][0]
    if (
        form == "text"
    ):  # a plain text is cut in two: the first half prompts, the rest is the reference
        assert first["prompt"] + first["reference"] == examples[6].reference
    else:
        assert (first["prompt"], first["reference"]) == (examples[6].prompt, examples[6].reference)


def test_loss_is_the_mean_over_target_tokens_and_training_lowers_it(tok: Any) -> None:
    model = tiny_llama(tok, seed=1).train()
    task = classification_task(tok, make_split(8, 4), template="{text} ->", verbalizer=VERBALIZER)
    batch = task.train_batch(range(8))
    loss = task.loss(model, batch)
    items = task.train_encoded
    model.eval()
    manual = -sum(manual_logprob(model, i.context, i.target) for i in items) / sum(
        len(i.target) for i in items
    )
    assert float(loss.detach()) == pytest.approx(manual, rel=1e-5)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = float(task.loss(model, batch).detach())
    for _ in range(5):
        optimizer.zero_grad()
        task.loss(model, batch).backward()
        optimizer.step()
    assert float(task.loss(model, batch).detach()) < first


def test_long_completion_is_cut_at_the_end_and_counted(tok: Any) -> None:
    examples = [LMExample("a prompt", " good" * 30), LMExample("p", " bad")]
    task = LMTask(tok, examples, examples, max_length=8)
    assert task.targets_cut == {"train": 1, "test": 1}
    assert len(task.train_encoded[0].target) == 7
    prompt = tok("a prompt")["input_ids"]
    assert task.train_encoded[0].context == prompt[-1:]  # room for one prompt token only
    assert task.truncated == {"train": 1, "test": 1}


# --- models ----------------------------------------------------------------------------------


def test_is_decoder_only_on_configs_models_and_specs(tok: Any, model: Any, tmp_path: Path) -> None:
    from transformers import BertConfig, GPT2Config, T5Config

    assert is_decoder_only(model) and is_decoder_only(GPT2Config())
    assert not is_decoder_only(BertConfig()) and not is_decoder_only(T5Config())
    model.save_pretrained(tmp_path / "llama")
    BertConfig().save_pretrained(tmp_path / "bert")
    assert is_decoder_only(ModelSpec("llama", str(tmp_path / "llama")))
    assert not is_decoder_only(ModelSpec("bert", str(tmp_path / "bert")))


def test_load_causal_lm_from_a_folder(tok: Any, model: Any, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded: Any
    loaded, tokenizer = load_model(ModelSpec("tiny", str(tmp_path)))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == loaded.config.pad_token_id
    assert next(loaded.parameters()).dtype == torch.float32
    torch.testing.assert_close(loaded.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_load_causal_lm_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError) as caught:
        load_model(ModelSpec("broken", str(tmp_path)))
    assert str(caught.value).startswith(f"cannot load a causal LM from {tmp_path}")
    assert "\n" not in str(caught.value)
