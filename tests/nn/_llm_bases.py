"""A tiny LLaMA saved once per session, and the bases the LLM-path tests load it as.

The forms: float32, float16, bfloat16, bitsandbytes 4-bit (nf4 / fp4, with or without double
quant) and 8-bit, and accelerate-offloaded (see ``test_quantized``, ``test_adapter_dtype``,
``test_offload``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

#: 4-bit settings by id: ``(quant_type, double_quant)``.
FOUR_BIT = {
    "nf4": ("nf4", False),
    "nf4-dq": ("nf4", True),
    "fp4": ("fp4", False),
    "fp4-dq": ("fp4", True),
}
VOCAB = 128


def save_tiny_llama(folder: Path) -> Path:
    """A 2-layer LLaMA (hidden 64) with random weights, saved in ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def load(folder: Path, form: str = "float32", **kwargs: Any) -> nn.Module:
    """The saved LLaMA as ``form``: a dtype name, a :data:`FOUR_BIT` id or ``"8bit"``."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    if form in FOUR_BIT:
        quant, double = FOUR_BIT[form]
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=quant, bnb_4bit_use_double_quant=double
        )
    elif form == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    else:
        kwargs["dtype"] = getattr(torch, form)
    model = LlamaForCausalLM.from_pretrained(folder, **kwargs)
    return model.eval()


def batch(seed: int = 0, rows: int = 2, length: int = 8) -> torch.Tensor:
    """Token ids ``(rows, length)``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (rows, length), generator=gen)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's logits for ``ids`` in float32, no grad."""
    with torch.no_grad():
        return model(ids).logits.float()


def randomize_adapters(model: nn.Module, std: float = 0.2, seed: int = 0) -> None:
    """Give every adapter tensor a nonzero random value (an update that changes outputs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".adapters." in name:
                noise = torch.randn(param.shape, generator=gen) * std
                param.copy_(noise.to(param.dtype))


def train_steps(model: nn.Module, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps of causal-LM loss on one fixed batch; the losses seen."""
    ids = batch(seed=1, rows=4, length=12)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses
