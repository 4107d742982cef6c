"""Generation: greedy and sampled decoding with the KV cache, left padding, merged adapters."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from _helpers import tiny_llama, tiny_tokenizer

import tensortrain_nn
from tensortrain.errors import TTValueError
from tensortrain_nn.tasks.batching import prompt_ids
from tensortrain_nn.tasks.generation import generate, generate_ids

PROMPTS = ["a good film", "the plot is boring but the actor", "Review:", ""]


@pytest.fixture(scope="module")
def tok() -> Any:
    return tiny_tokenizer(False)


@pytest.fixture(scope="module")
def model(tok: Any) -> Any:
    return tiny_llama(tok, seed=3)


def test_left_padded_batch_generates_what_each_prompt_generates_alone(tok: Any, model: Any) -> None:
    batched = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=4)
    alone = [generate(model, tok, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == alone


def test_greedy_ids_are_the_new_tokens_of_a_plain_generate_call(tok: Any, model: Any) -> None:
    context = prompt_ids(tok, ["a bad movie"])[0]
    new = generate_ids(model, [context], pad_id=0, eos_id=None, max_new_tokens=5)[0]
    with torch.no_grad():
        full = model.generate(
            torch.tensor([context]),
            do_sample=False,
            max_new_tokens=5,
            pad_token_id=0,
            eos_token_id=None,
        )
    assert len(new) == 5
    assert new == full[0, len(context) :].tolist()


def test_generation_stops_before_eos(tok: Any) -> None:
    model = tiny_llama(tok, seed=3)
    assert tok.eos_token_id == 0
    with torch.no_grad():  # every logit 0: greedy takes the first of the tied ids, EOS
        model.lm_head.weight.zero_()
    new = generate_ids(
        model, prompt_ids(tok, PROMPTS), pad_id=0, eos_id=tok.eos_token_id, max_new_tokens=4
    )
    assert new == [[]] * len(PROMPTS)
    assert generate(model, tok, PROMPTS[:2]) == ["", ""]


def test_sampling_is_reproducible_and_leaves_the_global_rng_alone(tok: Any, model: Any) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.5, top_p=0.9, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert (
        generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.5, top_p=0.9, seed=7) == first
    )
    others = [
        generate(model, tok, PROMPTS, max_new_tokens=8, temperature=1.5, seed=s) for s in (1, 2)
    ]
    assert any(o != first for o in others)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an int >= 1, got 0"),
        ({"temperature": -0.5}, "temperature must be in [0, inf], got -0.5"),
        ({"top_p": 0.0}, "top_p must be in (0, 1], got 0.0"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
    ],
)
def test_bad_arguments_name_the_argument(tok: Any, model: Any, kwargs: dict, message: str) -> None:
    with pytest.raises(TTValueError) as caught:
        generate(model, tok, PROMPTS, **kwargs)
    assert str(caught.value) == message


def test_merged_adapter_generates_what_the_unmerged_model_generates(tok: Any) -> None:
    model = tiny_llama(tok, seed=5)
    tensortrain_nn.patch(model, mode="rep", target_modules=["q_proj", "v_proj"], dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # the adapter cores: random, none zero
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    model.eval()
    merged = tensortrain_nn.merge_and_unload(copy.deepcopy(model))
    assert not any("adapters" in name for name, _ in merged.named_parameters())
    base = tiny_llama(tok, seed=5)
    unmerged = generate(model, tok, PROMPTS, max_new_tokens=8)
    assert generate(merged, tok, PROMPTS, max_new_tokens=8) == unmerged
    assert generate(base, tok, PROMPTS, max_new_tokens=8) != unmerged  # the adapter does something
