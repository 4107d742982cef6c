"""Batches of token ids: left-padded collation and the log-likelihood of target tokens.

A sequence is a list of token ids: a *context* the model reads and a *target* it is scored or
trained on. Batches are left-padded (every sequence ends in the last column) with position ids
that count real tokens only, so a padded sequence gets the logits it gets alone (within float
rounding), and only the last columns, where the targets are, go through the LM head.

Example:
    >>> batch = collate([([5, 6], [7]), ([5], [8])], pad_id=0)
    >>> batch["input_ids"].tolist()
    [[5, 6, 7], [0, 5, 8]]
    >>> batch["labels"].tolist()
    [[-100, -100, 7], [-100, -100, 8]]
    >>> batch["position_ids"].tolist()
    [[0, 1, 2], [0, 0, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

#: Label of a position that carries no loss (padding and context), as in transformers.
IGNORE_INDEX = -100


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token id, else its EOS id (decoder LMs often have no pad token)."""
    value = tokenizer.pad_token_id
    return int(tokenizer.eos_token_id if value is None else value)


def prompt_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts, with the tokenizer's special tokens (its BOS, if it adds one).

    A prompt that tokenizes to nothing becomes the BOS token, or the EOS token when there is none,
    so that every sequence has a first token to condition on.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad_id(tokenizer)
    encoded = tokenizer(list(texts), add_special_tokens=True)["input_ids"] if texts else []
    return [list(ids) or [int(start)] for ids in encoded]


def collate(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, Any]:
    """Left-pad ``(context, target)`` pairs into one batch.

    Args:
        pairs: ``B`` pairs of token-id lists; every context has at least one token.
        pad_id: Token id written into padding.

    Returns:
        ``input_ids``, ``attention_mask``, ``position_ids`` and ``labels``, each ``(B, T)`` int64
        with ``T`` the longest ``len(context) + len(target)``. ``labels`` holds the target ids at
        the target positions and :data:`IGNORE_INDEX` elsewhere; position ids count real tokens
        from 0 (padding gets 0).

    Raises:
        ValueError: No pairs, or an empty context.
    """
    if not pairs:
        raise ValueError("collate needs at least one sequence")
    width = max(len(c) + len(t) for c, t in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (context, target) in enumerate(pairs):
        if not context:
            raise ValueError(f"sequence {row} has an empty context")
        n = len(context) + len(target)
        ids[row, width - n :] = torch.tensor([*context, *target], dtype=torch.long)
        mask[row, width - n :] = 1
        if target:
            labels[row, width - len(target) :] = torch.tensor(list(target), dtype=torch.long)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels}


def target_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Log-probability of every target token of a left-padded batch (from :func:`collate`).

    One forward; only the columns from the first target on go through the LM head
    (``logits_to_keep``), and the log-softmax runs on the target rows alone, so padding and
    context cost no ``(T, vocab)`` float32 tensors.

    Args:
        model: A causal LM taking ``input_ids``, ``attention_mask``, ``position_ids`` and
            ``logits_to_keep`` (every transformers ``*ForCausalLM``).
        batch: ``(B, T)`` tensors on the model's device.

    Returns:
        ``(N,)`` float32 log-probabilities of the ``N`` target tokens, in row-major order of
        ``batch["labels"] != IGNORE_INDEX`` (a graph when grad is on).
    """
    labels = batch["labels"]
    targeted = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if targeted.numel() == 0:
        raise ValueError("the batch has no target tokens")
    first = max(1, int(targeted[0]))  # position 0 has nothing before it to predict it
    width = labels.shape[1]
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
        logits_to_keep=width - first + 1,
    )
    target = labels[:, first:]
    chosen = target != IGNORE_INDEX
    logits = out.logits[:, :-1][chosen].float()  # (N, vocab): the rows that predict a target
    return logits.log_softmax(dim=-1).gather(1, target[chosen].unsqueeze(1)).squeeze(1)


def sequence_logprobs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-probability of each row's target tokens: ``(B,)`` float32 (0 for no target)."""
    labels = batch["labels"]
    rows = (labels != IGNORE_INDEX).nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=labels.device)
    return sums.index_add(0, rows, target_logprobs(model, batch))


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    first = next(iter(model.parameters()), None)
    return torch.device("cpu") if first is None else first.device
