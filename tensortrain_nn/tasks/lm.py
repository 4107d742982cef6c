"""The causal-LM task: completions, plain text, and classification as text through a verbalizer.

Three data forms, one task class (:class:`LMTask`) implementing the ``Task`` protocol:

- prompt / completion: loss on the completion tokens and a closing EOS; the prompt carries none.
- plain text (no prompt): next-token loss over the whole text and a closing EOS, conditioned on
  the tokenizer's BOS (or EOS when it has none).
- classification as text (the LoRETTA paper's protocol with LLaMA-2): each text goes through a
  ``template`` (``"Review: {text}\\nSentiment:"``), each label has an answer text
  (:func:`~tensortrain_nn.tasks.scoring.parse_verbalizer`); training puts the loss on the gold
  answer's tokens, evaluation and prediction score every answer by its log-likelihood
  (:func:`~tensortrain_nn.tasks.scoring.score_options`) and pick the most likely one.

A sequence longer than ``max_length`` loses prompt tokens from the left (the BOS is kept), never
answer tokens; the task counts the examples cut.

Example (a real model, not run here)::

    model, tokenizer = load_model(resolve_model("smollm2"))
    task = classification_task(tokenizer, split, template="Review: {text}\\nSentiment:",
                               verbalizer='fresh=" good",rotten=" bad"', max_length=64)
    loss = task.loss(model, task.train_batch([0, 1, 2, 3]))
    task.evaluate(model.eval(), batch_size=16)["accuracy"]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tensortrain._checks import check_int
from tensortrain_nn.tasks.base import metrics
from tensortrain_nn.tasks.batching import collate, model_device, pad_id, prompt_ids, target_logprobs
from tensortrain_nn.tasks.data import LMExample, Split
from tensortrain_nn.tasks.errors import DataError, FinetuneError
from tensortrain_nn.tasks.generation import generate_ids
from tensortrain_nn.tasks.scoring import (
    answer_ids,
    length_chunks,
    normalise,
    score_options,
    verbalizer_answers,
)
from tensortrain_nn.tasks.text import unescape


@dataclass(frozen=True)
class Encoded:
    """One example as token ids, after truncation.

    Attributes:
        context: Ids the model reads (never empty).
        target: Ids it is trained and scored on (for classification, the gold answer's).
        label: Label id for classification, else None.
    """

    context: list[int]
    target: list[int]
    label: int | None = None


def _fit(context: list[int], budget: int, bos: int | None) -> list[int]:
    """The last ``budget`` ids of ``context``, keeping a leading BOS."""
    if len(context) <= budget:
        return context
    if bos is not None and context[0] == bos and budget >= 2:
        return [bos, *context[len(context) - budget + 1 :]]
    return context[len(context) - budget :]


class LMTask:
    """Causal-LM fine-tuning on completions, plain texts or verbalized labels.

    Every example is tokenized once here. Batches are left-padded (see
    :func:`~tensortrain_nn.tasks.batching.collate`), so one layout serves training, scoring
    and generation.

    Args:
        tokenizer: The model's tokenizer (a pad token is not needed; EOS pads).
        train: Training examples.
        test: Held-out examples.
        max_length: Most tokens per sequence (context + target). Longer prompts lose tokens from
            the left; a completion or text longer than ``max_length - 1`` loses its end.
        answers: For classification: the answer text of each label id (``answers[label]``);
            every example then needs a ``label``. None for completions and plain text.
        label_names: Label names, for messages (default: the label ids).
        length_normalise: Score an answer by its mean token log-likelihood instead of the sum.
        num_samples: Held-out examples whose generation ``evaluate`` reports.
        sample_tokens: Most tokens generated for each sample.
        template: The prompt around a text (``{text}``), for :meth:`predict`.

    Attributes:
        name: ``"lm"``.
        num_train: Number of training examples.
        options: Token ids of each answer (classification), else None.
        train_encoded: The training examples as :class:`Encoded`; ``test_encoded`` likewise.
        truncated: Examples whose prompt was cut, ``{"train": n, "test": m}``.
        targets_cut: Completions / texts cut at the end, ``{"train": n, "test": m}``.

    Raises:
        FinetuneError: ``max_length`` too small for the longest answer.
        DataError: An answer that tokenizes to nothing, two answers with the same tokens, or an
            example without a valid label.
    """

    name = "lm"

    def __init__(
        self,
        tokenizer: Any,
        train: Sequence[LMExample],
        test: Sequence[LMExample],
        *,
        max_length: int = 64,
        answers: Sequence[str] | None = None,
        label_names: Sequence[str] | None = None,
        length_normalise: bool = False,
        num_samples: int = 3,
        sample_tokens: int = 16,
        template: str = "{text}",
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise FinetuneError(f"--max-length must be an int >= 2, got {max_length!r}")
        self.num_samples = check_int("num_samples", num_samples, minimum=0)
        self.sample_tokens = check_int("sample_tokens", sample_tokens)
        self.tokenizer, self.max_length, self.template = tokenizer, max_length, template
        self.length_normalise = bool(length_normalise)
        self.pad_id, self.eos_id = pad_id(tokenizer), tokenizer.eos_token_id
        self.train_examples, self.test_examples = list(train), list(test)
        self.num_train = len(self.train_examples)
        self.options: list[list[int]] | None = None
        if answers is not None:
            names = [str(i) for i in range(len(answers))] if label_names is None else label_names
            self.options = answer_ids(
                tokenizer, answers, names, max_length, length_normalise=self.length_normalise
            )
        self.truncated: dict[str, int] = {}
        self.targets_cut: dict[str, int] = {}
        self.train_encoded = self._encode(self.train_examples, "train")
        self.test_encoded = self._encode(self.test_examples, "test")

    def _contexts(self, prompts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Prompt ids cut to leave room for the longest answer; and how many were cut."""
        assert self.options is not None
        budget = self.max_length - max(len(o) for o in self.options)
        full = prompt_ids(self.tokenizer, prompts)
        kept = [_fit(c, budget, self.tokenizer.bos_token_id) for c in full]
        return kept, sum(len(k) < len(c) for k, c in zip(kept, full, strict=True))

    def _encode(self, examples: list[LMExample], part: str) -> list[Encoded]:
        if self.options is not None:
            for number, example in enumerate(examples):
                if example.label is None or not 0 <= example.label < len(self.options):
                    raise DataError(f"{part} example {number} has no valid label: {example.label}")
            contexts, cut = self._contexts([e.prompt for e in examples])
            self.truncated[part], self.targets_cut[part] = cut, 0
            return [
                Encoded(c, self.options[e.label], e.label)  # type: ignore[index]
                for c, e in zip(contexts, examples, strict=True)
            ]
        eos = [] if self.eos_id is None else [int(self.eos_id)]
        bos, out, cut, ends = self.tokenizer.bos_token_id, [], 0, 0
        texts = [e.reference for e in examples]
        bodies = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        contexts = prompt_ids(self.tokenizer, [e.prompt for e in examples])
        for body, context in zip(bodies, contexts, strict=True):
            target = [*body, *eos]
            if len(target) > self.max_length - 1:
                target, ends = target[: self.max_length - 1], ends + 1
            kept = _fit(context, self.max_length - len(target), bos)
            cut += len(kept) < len(context)
            out.append(Encoded(kept, target))
        self.truncated[part], self.targets_cut[part] = cut, ends
        return out

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training examples ``indices``, left-padded: ``input_ids``, ``attention_mask``,
        ``position_ids`` and ``labels`` (target ids, -100 on prompt and padding), each
        ``(B, T)`` int64 CPU tensors with ``T <= max_length``."""
        items = [self.train_encoded[i] for i in indices]
        return collate([(item.context, item.target) for item in items], self.pad_id)

    def weight(self, indices: Sequence[int]) -> int:
        """Target tokens of the training examples ``indices``: what :meth:`loss` averages over."""
        return sum(len(self.train_encoded[i].target) for i in indices)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood over the batch's target tokens: a scalar with a graph."""
        return -target_logprobs(model, batch).mean()

    def _options(self) -> list[list[int]]:
        if self.options is None:
            raise FinetuneError("answer scores need a classification task (a --verbalizer)")
        return self.options

    def answer_logprobs(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """Summed log-likelihood of every answer after every held-out prompt: ``(N, K)``
        float32 on the CPU (see :func:`~tensortrain_nn.tasks.scoring.score_options`)."""
        contexts = [item.context for item in self.test_encoded]
        return score_options(
            model, contexts, self._options(), pad_id=self.pad_id, batch_size=batch_size
        )

    def option_scores(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """:meth:`answer_logprobs`, divided by each answer's token count when
        ``length_normalise``: ``(N, K)``; the prediction is the row's argmax."""
        raw = self.answer_logprobs(model, batch_size)
        return normalise(raw, self._options(), self.length_normalise)

    @torch.no_grad()
    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> list[int]:
        """Label ids of ``texts`` (put through the template): the most likely answer of each."""
        model.eval()
        contexts, _ = self._contexts([self.template.replace("{text}", t) for t in texts])
        options = self._options()
        raw = score_options(model, contexts, options, pad_id=self.pad_id, batch_size=batch_size)
        return normalise(raw, options, self.length_normalise).argmax(dim=1).tolist()

    @torch.no_grad()
    def _target_loss(self, model: nn.Module, batch_size: int) -> tuple[float, int]:
        """Summed NLL and token count of the held-out targets."""
        device, total, tokens = model_device(model), 0.0, 0
        items = self.test_encoded
        for chunk in length_chunks([item.context for item in items], batch_size):
            pairs = [(items[i].context, items[i].target) for i in chunk]
            batch = {key: v.to(device) for key, v in collate(pairs, self.pad_id).items()}
            total -= float(target_logprobs(model, batch).sum())
            tokens += sum(len(t) for _, t in pairs)
        return total, tokens

    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Held-out metrics (the loop calls it under ``no_grad`` with the model in eval mode).

        Returns:
            ``loss`` (mean NLL per target token) and ``perplexity`` (its exp), ``tokens`` and
            ``examples`` scored, ``truncated`` (held-out prompts cut), ``completions_cut``
            (held-out completions or texts cut at the end), ``samples`` (a list of
            ``{"prompt", "reference", "generated"}`` dicts, greedy), for classification
            ``accuracy`` and ``macro_f1`` of the most likely answer (the loss is then the gold
            answer's).
        """
        check_int("batch_size", batch_size)
        out: dict[str, Any] = {}
        if self.options is not None:
            raw = self.answer_logprobs(model, batch_size)
            gold = [item.label for item in self.test_encoded if item.label is not None]
            predicted = normalise(raw, self.options, self.length_normalise).argmax(dim=1)
            out.update(metrics(predicted.tolist(), gold, len(self.options)))
            total = -float(sum(raw[i, y] for i, y in enumerate(gold)))
            tokens = sum(len(self.options[y]) for y in gold)
        else:
            total, tokens = self._target_loss(model, batch_size)
        loss = total / max(1, tokens)
        out.update(
            loss=loss,
            perplexity=math.exp(loss) if loss < 700 else math.inf,
            tokens=tokens,
            examples=len(self.test_encoded),
            truncated=self.truncated["test"],
            completions_cut=self.targets_cut["test"],
            samples=self.samples(model),
        )
        return out

    def samples(self, model: nn.Module) -> list[dict[str, str]]:
        """Greedy generations for the first ``num_samples`` held-out examples.

        A plain text is cut in two: its first half is the prompt, the rest the reference.
        """
        decode = self.tokenizer.decode
        contexts, references = [], []
        n = min(self.num_samples, len(self.test_encoded))
        for example, item in zip(self.test_examples[:n], self.test_encoded[:n], strict=True):
            if self.options is None and not example.prompt:
                body = [t for t in item.target if t != self.eos_id]
                half = len(body) // 2
                contexts.append(item.context + body[:half])
                references.append(decode(body[half:], skip_special_tokens=True))
            else:
                contexts.append(item.context)
                references.append(example.reference)
        if not contexts:
            return []
        new = generate_ids(
            model,
            contexts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=self.sample_tokens,
            batch_size=len(contexts),
        )
        return [
            {
                "prompt": decode(c, skip_special_tokens=True),
                "reference": r,
                "generated": decode(g, skip_special_tokens=True),
            }
            for c, r, g in zip(contexts, references, new, strict=True)
        ]


def classification_task(
    tokenizer: Any,
    split: Split,
    *,
    template: str,
    verbalizer: str | Mapping[str, str],
    max_length: int = 64,
    length_normalise: bool = False,
    num_samples: int = 3,
    sample_tokens: int = 4,
) -> LMTask:
    """Classification as text: ``template`` around each text, a verbalizer answer per label.

    Args:
        tokenizer: The model's tokenizer.
        split: Texts and label ids (:func:`~tensortrain_nn.tasks.data.make_split`).
        template: Prompt text with a ``{text}`` placeholder (replaced literally; other braces
            stay), e.g. :data:`~tensortrain_nn.tasks.scoring.BUILTIN_TEMPLATE`; escape
            sequences (``\\n``...) are read by :func:`~tensortrain_nn.tasks.text.unescape`.
        verbalizer: ``label=answer`` pairs (``parse_verbalizer``) or a ``{label: answer}``
            mapping naming every label of ``split`` and no other.
        max_length: Most tokens per prompt + answer.
        length_normalise: Predict by mean instead of summed answer log-likelihood.
        num_samples: Generated samples in the evaluation.
        sample_tokens: Tokens generated per sample.

    Raises:
        DataError: A template without ``{text}``; a malformed verbalizer, or one that misses a
            label of the data or names one that is not there; answers that tokenize to nothing
            or to the same tokens.
    """
    template = unescape(template)
    if "{text}" not in template:
        raise DataError(f"--template {template!r} has no {{text}} placeholder for the text")
    answers = verbalizer_answers(verbalizer, split.labels)

    def examples(texts: list[str], labels: list[int]) -> list[LMExample]:
        return [
            LMExample(template.replace("{text}", text), answers[split.labels[y]], y)
            for text, y in zip(texts, labels, strict=True)
        ]

    return LMTask(
        tokenizer,
        examples(split.train_texts, split.train_labels),
        examples(split.test_texts, split.test_labels),
        max_length=max_length,
        answers=[answers[name] for name in split.labels],
        label_names=split.labels,
        length_normalise=length_normalise,
        num_samples=num_samples,
        sample_tokens=sample_tokens,
        template=template,
    )
