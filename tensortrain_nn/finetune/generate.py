"""The model side of the causal-LM task: loading, left-padded batches, scoring and generation.

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

from tensortrain._checks import check_int, check_number

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


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    contexts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    eos_id: int | None,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[int]]:
    """New token ids after each context: transformers' ``generate`` with its KV cache.

    Contexts are left-padded in batches of ``batch_size``; decoding is greedy when
    ``temperature == 0``, else sampling with nucleus ``top_p`` from a generator seeded with
    ``seed`` (the caller's global RNG state is restored afterwards). Each result stops before
    the first EOS.

    Returns:
        One list of at most ``max_new_tokens`` ids per context, in order.
    """
    from transformers import GenerationConfig

    sampling = temperature > 0
    options: dict[str, Any] = {"temperature": temperature, "top_p": top_p} if sampling else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        top_k=0 if sampling else None,
        **options,
    )
    device = model_device(model)
    results: list[list[int]] = []
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for start in range(0, len(contexts), batch_size):
            chunk: list[tuple[list[int], list[int]]] = [
                (list(c), []) for c in contexts[start : start + batch_size]
            ]
            batch = collate(chunk, pad_id)
            width = batch["input_ids"].shape[1]
            out = model.generate(  # type: ignore[operator]
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                generation_config=config,
            )
            for row in out[:, width:].tolist():
                end = row.index(eos_id) if eos_id is not None and eos_id in row else len(row)
                results.append(row[:end])
    return results


def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Continue each prompt; returns only the new text (special tokens dropped).

    Greedy when ``temperature == 0`` (the default), else sampled with ``temperature`` and
    nucleus ``top_p``, reproducibly for a given ``seed``. Prompts are tokenized with the
    tokenizer's special tokens and left-padded in batches of ``batch_size``; the model's mode
    is left as it is (call ``model.eval()`` first to turn dropout off).

    Args:
        model: A transformers causal LM (patched or not), on any device.
        tokenizer: Its tokenizer.
        prompts: ``B`` prompt texts.
        max_new_tokens: Most tokens generated per prompt (generation also stops at EOS).
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus mass for sampling, in ``(0, 1]``.
        seed: Seed of the sampling.
        batch_size: Prompts per ``generate`` call.

    Returns:
        ``B`` strings.

    Raises:
        TTValueError / TTTypeError: An argument out of range, named in the message.

    Example (a real model)::

        model, tokenizer = load_model(resolve_model("smollm2"))
        generate(model.eval(), tokenizer, ["The capital of France is"], max_new_tokens=5)
    """
    check_int("max_new_tokens", max_new_tokens)
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=0)
    check_number("temperature", temperature, minimum=0.0)
    check_number("top_p", top_p, minimum=0.0, maximum=1.0, open_min=True)
    new = generate_ids(
        model,
        prompt_ids(tokenizer, prompts),
        pad_id=pad_id(tokenizer),
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        batch_size=batch_size,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
