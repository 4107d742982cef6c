"""The chat task: conversations rendered by a chat template, the loss on the assistant turns.

Each conversation is rendered and tokenized once (:func:`~tensortrain_nn.tasks.chat.
encode_conversation`); a batch is left-padded as the lm task's are, with labels on the trained
tokens only. The held-out answer of a conversation is its last assistant message; its prompt is
everything before it, rendered with the template's generation prompt, which is what
``evaluate``'s samples and the generation metrics (:mod:`~tensortrain_nn.tasks.answers`) use.

Example (a real model, not run here)::

    task = ChatTask(tokenizer, train, test, max_length=256)   # lists of message lists
    loss = task.loss(model, task.train_batch([0, 1]))
    task.evaluate(model.eval(), batch_size=8)["loss"]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tensortrain._checks import check_int
from tensortrain_nn.tasks.base import is_chat_template
from tensortrain_nn.tasks.batching import IGNORE_INDEX, model_device, pad_id, target_logprobs
from tensortrain_nn.tasks.chat import Messages, chat_template, encode_conversation, render
from tensortrain_nn.tasks.errors import FinetuneError
from tensortrain_nn.tasks.generation import generate_ids


def collate_labelled(sequences: Sequence[tuple[list[int], list[bool]]], pad: int) -> dict:
    """Left-pad ``(ids, trained)`` pairs: ``input_ids``, ``attention_mask``, ``position_ids``
    and ``labels`` (the id where trained, else -100), each ``(B, T)`` int64.

    Example:
        >>> collate_labelled([([5, 6, 7], [False, False, True]), ([8, 9], [False, True])], 0)[
        ...     "labels"].tolist()
        [[-100, -100, 7], [-100, -100, 9]]
    """
    width = max(len(ids) for ids, _ in sequences)
    shape = (len(sequences), width)
    ids = torch.full(shape, pad, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for row, (tokens, trained) in enumerate(sequences):
        n = len(tokens)
        ids[row, width - n :] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - n :] = 1
        labels[row, width - n :] = torch.tensor(
            [t if keep else IGNORE_INDEX for t, keep in zip(tokens, trained, strict=True)]
        )
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


class ChatTask:
    """Causal-LM fine-tuning on conversations (the ``Task`` protocol).

    Args:
        tokenizer: The model's tokenizer.
        train: Training conversations (checked message lists).
        test: Held-out conversations.
        max_length: Most tokens per conversation; a longer one loses tokens from the left.
        template: A chat template replacing the tokenizer's (None: the tokenizer's own).
        chat_loss: ``assistant`` (loss on assistant turns) or ``all`` (every token).
        num_samples: Held-out conversations whose answer ``evaluate`` generates.
        sample_tokens: Most tokens generated per sample.

    Attributes:
        name: ``"lm"``.
        num_train: Training conversations.
        truncated: Conversations cut on the left, ``{"train": n, "test": m}``.
        answer_contexts: Token ids of each held-out prompt (before the last assistant turn).
        answer_references: The last assistant message of each held-out conversation.

    Raises:
        DataError: No chat template (the message names ``--template``), or a template whose
            assistant turns cannot be found.
        FinetuneError: A bad ``chat_loss``, or a training conversation left without a trained
            token by ``max_length``.
    """

    name = "lm"

    def __init__(
        self,
        tokenizer: Any,
        train: Sequence[Messages],
        test: Sequence[Messages],
        *,
        max_length: int = 256,
        template: str | None = None,
        chat_loss: str = "assistant",
        num_samples: int = 3,
        sample_tokens: int = 32,
    ) -> None:
        if chat_loss not in ("assistant", "all"):
            raise FinetuneError(f"--chat-loss must be assistant or all, got {chat_loss!r}")
        self.max_length = check_int("max_length", max_length, minimum=2)
        self.num_samples = check_int("num_samples", num_samples, minimum=0)
        self.sample_tokens = check_int("sample_tokens", sample_tokens)
        self.tokenizer, self.template = tokenizer, chat_template(tokenizer, template)
        self.pad_id, self.eos_id = pad_id(tokenizer), tokenizer.eos_token_id
        self.assistant_only = chat_loss == "assistant"
        self.truncated: dict[str, int] = {}
        self.train_encoded = self._encode(train, "train")
        self.test_encoded = self._encode(test, "test")
        self.num_train = len(self.train_encoded)
        self.answer_contexts, self.answer_references = self._answers(test)

    def _encode(self, conversations: Sequence[Messages], part: str) -> list[tuple[list, list]]:
        out, cut = [], 0
        for number, messages in enumerate(conversations):
            ids, trained = encode_conversation(
                self.tokenizer, self.template, messages, assistant_only=self.assistant_only
            )
            if len(ids) > self.max_length:
                ids, trained, cut = ids[-self.max_length :], trained[-self.max_length :], cut + 1
                trained[0] = False
            if not any(trained):
                raise FinetuneError(
                    f"--max-length {self.max_length} leaves {part} conversation {number} "
                    "without an assistant token to train on; raise it"
                )
            out.append((ids, trained))
        self.truncated[part] = cut
        return out

    def _answers(self, conversations: Sequence[Messages]) -> tuple[list[list[int]], list[str]]:
        """The prompt ids before each conversation's last assistant turn, and that turn."""
        contexts, references = [], []
        for messages in conversations:
            last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
            text = render(self.tokenizer, self.template, messages[:last], prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            contexts.append(list(ids)[-self.max_length :] or [self.pad_id])
            references.append(messages[last]["content"])
        return contexts, references

    def train_batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """The training conversations ``indices``, left-padded, labels on trained tokens."""
        return collate_labelled([self.train_encoded[i] for i in indices], self.pad_id)

    def weight(self, indices: Sequence[int]) -> int:
        """Trained tokens of the conversations ``indices`` (the first token has no prediction):
        what :meth:`loss` averages over."""
        return sum(sum(self.train_encoded[i][1][1:]) for i in indices)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean negative log-likelihood of the trained tokens: a scalar with a graph."""
        return -target_logprobs(model, batch).mean()

    def predict(self, model: nn.Module, texts: Sequence[str], batch_size: int) -> list[int]:
        """Chat runs have no labels: refused (use ``generate --chat``)."""
        raise FinetuneError("a chat run has no labels to predict: use tensortrain generate --chat")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batch_size: int) -> dict[str, Any]:
        """Held-out ``loss`` (mean NLL per trained token), ``perplexity``, ``tokens``,
        ``examples``, ``truncated`` and ``samples`` (greedy answers to the first prompts)."""
        check_int("batch_size", batch_size)
        device, total, tokens = model_device(model), 0.0, 0
        order = sorted(range(len(self.test_encoded)), key=lambda i: len(self.test_encoded[i][0]))
        for start in range(0, len(order), batch_size):
            chunk = [self.test_encoded[i] for i in order[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in collate_labelled(chunk, self.pad_id).items()}
            total -= float(target_logprobs(model, batch).sum())
            tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = total / max(1, tokens)
        return {
            "loss": loss,
            "perplexity": math.exp(loss) if loss < 700 else math.inf,
            "tokens": tokens,
            "examples": len(self.test_encoded),
            "truncated": self.truncated["test"],
            "samples": self.samples(model),
        }

    def samples(self, model: nn.Module) -> list[dict[str, str]]:
        """Greedy answers to the first ``num_samples`` held-out prompts, with the references."""
        n = min(self.num_samples, len(self.answer_contexts))
        if n == 0:
            return []
        contexts = self.answer_contexts[:n]
        new = generate_ids(
            model,
            contexts,
            pad_id=self.pad_id,
            eos_id=self.eos_id,
            max_new_tokens=self.sample_tokens,
            batch_size=n,
        )
        decode = self.tokenizer.decode
        return [
            {
                "prompt": decode(c, skip_special_tokens=False),
                "reference": r,
                "generated": decode(g, skip_special_tokens=True),
            }
            for c, r, g in zip(contexts, self.answer_references[:n], new, strict=True)
        ]


def chat_replies(
    model: nn.Module,
    tokenizer: Any,
    turns: Sequence[str],
    *,
    template: str | None = None,
    system: str | None = None,
    **options: Any,
) -> list[str]:
    """One conversation: each of ``turns`` is a user message, answered before the next.

    Each answer is generated from the whole conversation so far, rendered with the chat template
    and its generation prompt, and joins the conversation as the assistant's turn.

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer.
        turns: The user's messages, in order.
        template: A chat template replacing the tokenizer's (a ``{text}`` prompt template, as
            a labelled run saves, is not one and is ignored).
        system: A system message opening the conversation.
        **options: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed`` of
            :func:`~tensortrain_nn.tasks.generation.generate_ids` (``batch_size`` is ignored:
            one turn at a time)

    Returns:
        One answer per turn (special tokens dropped).

    Raises:
        DataError: No chat template (the message names ``--template``).
    """
    jinja = chat_template(tokenizer, template if is_chat_template(template) else None)
    options.pop("batch_size", None)
    messages: Messages = [{"role": "system", "content": system}] if system else []
    replies = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        text = render(tokenizer, jinja, messages, prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        new = generate_ids(
            model, [ids], pad_id=pad_id(tokenizer), eos_id=tokenizer.eos_token_id, **options
        )[0]
        replies.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        messages.append({"role": "assistant", "content": replies[-1]})
    return replies
