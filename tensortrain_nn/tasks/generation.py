"""Generation with transformers' ``generate``: greedy or sampled, left-padded batches.

Example (a real model)::

    model, tokenizer = load_model(resolve_model("smollm2"))
    generate(model.eval(), tokenizer, ["The capital of France is"], max_new_tokens=5)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tensortrain._checks import check_int, check_number
from tensortrain_nn.tasks.batching import collate, model_device, pad_id, prompt_ids
from tensortrain_nn.tasks.errors import FinetuneError

#: Most new tokens one ``generate`` call may ask for (``--max-new-tokens``), whatever the model.
MAX_NEW_TOKENS = 4096


def position_limit(model: nn.Module) -> int | None:
    """The model's number of positions (``max_position_embeddings`` or ``n_positions``)."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_new_tokens(
    model: nn.Module, contexts: Sequence[Sequence[int]], max_new_tokens: int
) -> None:
    """``max_new_tokens`` must be at most :data:`MAX_NEW_TOKENS`, and fit the model's positions
    after the longest prompt.

    Raises:
        FinetuneError: One line naming ``--max-new-tokens``, the prompt's tokens and the limit.
    """
    if max_new_tokens > MAX_NEW_TOKENS:
        raise FinetuneError(f"--max-new-tokens must be <= {MAX_NEW_TOKENS}, got {max_new_tokens}")
    limit = position_limit(model)
    longest = max((len(c) for c in contexts), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        raise FinetuneError(
            f"--max-new-tokens {max_new_tokens} after a prompt of {longest} tokens exceeds the "
            f"model's {limit} positions (give --max-new-tokens <= {max(0, limit - longest)} "
            "or a shorter prompt)"
        )


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
    nucleus ``top_p``, reproducibly for a given ``seed``. Prompts are tokenized with special
    tokens and left-padded in batches; the model's mode is left as it is (call ``model.eval()``).

    Args:
        model: A transformers causal LM (patched or not), on any device.
        tokenizer: Its tokenizer.
        prompts: ``B`` prompt texts.
        max_new_tokens: Most tokens generated per prompt (generation also stops at EOS), at most
            :data:`MAX_NEW_TOKENS` and the model's positions less the longest prompt's tokens.
        temperature: 0 for greedy decoding, else the sampling temperature.
        top_p: Nucleus mass for sampling, in ``(0, 1]``.
        seed: Seed of the sampling.
        batch_size: Prompts per ``generate`` call.

    Returns:
        ``B`` strings.

    Raises:
        TTValueError / TTTypeError: An argument out of range, named in the message.
        FinetuneError: ``max_new_tokens`` above :data:`MAX_NEW_TOKENS` or past the model's
            positions (:func:`check_new_tokens`).

    Example (a real model)::

        model, tokenizer = load_model(resolve_model("smollm2"))
        generate(model.eval(), tokenizer, ["The capital of France is"], max_new_tokens=5)
    """
    check_int("max_new_tokens", max_new_tokens)
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=0)
    check_number("temperature", temperature, minimum=0.0)
    check_number("top_p", top_p, minimum=0.0, maximum=1.0, open_min=True)
    contexts = prompt_ids(tokenizer, prompts)
    check_new_tokens(model, contexts, max_new_tokens)
    new = generate_ids(
        model,
        contexts,
        pad_id=pad_id(tokenizer),
        eos_id=tokenizer.eos_token_id,
        max_new_tokens=max_new_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        batch_size=batch_size,
    )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
