"""Tiny real architectures (random weights) for the surgery tests, as a registry."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import HealthCheck, settings
from torch import nn


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            num_labels=3,
        )
    )


def _roberta() -> nn.Module:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification(
        RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            num_labels=2,
        )
    )


def _deberta() -> nn.Module:
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    return DebertaV2ForSequenceClassification(
        DebertaV2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            num_labels=2,
            relative_attention=True,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=16,
        )
    )


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(
            n_embd=32,
            n_layer=2,
            n_head=2,
            vocab_size=100,
            n_positions=32,
            bos_token_id=0,
            eos_token_id=0,
        )
    )


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=100,
        )
    )


#: name -> builder of a tiny model (eval mode, seeded: two calls give identical weights).
TINY: dict[str, Callable[[], nn.Module]] = {
    "bert": _bert,
    "roberta": _roberta,
    "deberta-v2": _deberta,
    "gpt2": _gpt2,
    "llama": _llama,
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TINY[name]().eval()


def inputs(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 100, (2, 6), generator=g)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


# ---------------------------------------------------------------- shared by the surgery tests

#: Hypothesis settings of the tiny-model surgery properties.
SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: Base modules of the tiny BERT a user may unfreeze by hand (the pooler, a norm, a dense layer,
#: embeddings, a wrapped layer's own weight, the head).
UNFREEZE = (
    "bert.pooler",
    "bert.embeddings.LayerNorm",
    "bert.embeddings.word_embeddings",
    "bert.encoder.layer.0.intermediate.dense",
    "wrapped",
    "classifier",
)
#: A wrapped layer's own base weight ("wrapped" above), per mode.
WRAPPED = {
    "rep": "bert.encoder.layer.1.attention.self.query.base_layer",
    "adp": "bert.encoder.layer.1.output.dense.base_layer",
}


def unfreeze_by_hand(model: nn.Module, names: set[str], mode: str = "rep") -> None:
    for name in sorted(names):
        model.get_submodule(WRAPPED[mode] if name == "wrapped" else name).requires_grad_(True)


def flags(model: nn.Module) -> dict[str, bool]:
    return {k: p.requires_grad for k, p in model.named_parameters()}


def values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def perturb(model: nn.Module, seed: int) -> None:
    """Move every trainable tensor (as training would), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
