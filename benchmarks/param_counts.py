"""Trainable-parameter counts of LoRETTA_rep / LoRETTA_adp / LoRA / full fine-tuning.

Every model is built from its config on ``torch.device("meta")`` (no weights, no download), patched
with :func:`tensortrain_nn.patch` (or peft's LoRA), and counted. Writes ``docs/param_counts.md``.

Run: ``python benchmarks/param_counts.py [--out docs/param_counts.md]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tensortrain_nn as ttnn


@dataclass(frozen=True)
class Spec:
    """A model to count: a builder on the meta device and the options it is patched with."""

    name: str
    build: Callable[[], nn.Module]
    lora_targets: tuple[str, ...]
    rep: dict[str, int]


def _cls(config_cls: str, **kw: object) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        config = getattr(transformers, config_cls)(**kw)
        auto: Any = transformers.AutoModelForSequenceClassification
        if config.model_type in ("gpt2", "llama"):
            auto = transformers.AutoModelForCausalLM
        with torch.device("meta"):
            return auto.from_config(config)

    return build


_ENC = {"rep": {"r": 8, "tt_rank": 5}}
_LLAMA = {"rep": {"r": 16, "tt_rank": 8}}
SPECS = [
    Spec("BERT-base", _cls("BertConfig", num_labels=2), ("query", "value"), **_ENC),
    Spec(
        "RoBERTa-base",
        _cls("RobertaConfig", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
        ("query", "value"),
        **_ENC,
    ),
    Spec(
        "RoBERTa-large",
        _cls(
            "RobertaConfig",
            vocab_size=50265,
            max_position_embeddings=514,
            type_vocab_size=1,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
        ),
        ("query", "value"),
        **_ENC,
    ),
    Spec(
        "DeBERTa-v3-base",
        _cls(
            "DebertaV2Config",
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            relative_attention=True,
            position_buckets=256,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
        ),
        ("query_proj", "value_proj"),
        **_ENC,
    ),
    Spec("GPT-2", _cls("GPT2Config"), ("c_attn",), **_ENC),
    Spec(
        "LLaMA-2-7B",
        _cls(
            "LlamaConfig",
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
        ),
        ("q_proj", "v_proj"),
        **_LLAMA,
    ),
    Spec(
        "LLaMA-2-13B",
        _cls(
            "LlamaConfig",
            hidden_size=5120,
            intermediate_size=13824,
            num_hidden_layers=40,
            num_attention_heads=40,
            num_key_value_heads=40,
            vocab_size=32000,
        ),
        ("q_proj", "v_proj"),
        **_LLAMA,
    ),
    Spec(
        "LLaMA-2-70B",
        _cls(
            "LlamaConfig",
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=32000,
        ),
        ("q_proj", "v_proj"),
        **_LLAMA,
    ),
]


def adapter_params(model: nn.Module) -> int:
    """Trainable parameters inside TT adapters (no head, no norms)."""
    return sum(
        p.numel() for n, p in model.named_parameters() if p.requires_grad and ".adapters." in n
    )


def norm_params(model: nn.Module) -> int:
    from tensortrain_nn.surgery.targets import is_norm

    return sum(
        p.numel() for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)
    )


def lora_params(spec: Spec, r: int) -> int:
    """LoRA through peft (r on the q/v targets), counted on the meta device."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        spec.build(), LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(spec.lora_targets))
    )
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def _fallback(model: nn.Module) -> bool:
    """Whether some paper-layout factor of ``model`` is not in the official shape table."""
    from tensortrain_nn._paper import PAPER_ADP_SHAPES, PAPER_SHAPES, TTTensorLinear

    for m in model.modules():
        if isinstance(m, TTTensorLinear):
            narrow = min(m.in_features, m.out_features)
            wide = max(m.in_features, m.out_features)
            if wide not in PAPER_SHAPES.get(narrow, {}) and (wide, narrow) not in PAPER_ADP_SHAPES:
                return True
    return False


def official(spec: Spec) -> dict[str, int]:
    """The official code's LLaMA runs, counted as it trains them (adapters + every norm).

    rep: r=8, TT rank 8, q/v, ``layout="paper"``. adp: bottleneck 64, TT rank 5, before the gate
    and up projections and after the down projection (``placement="paper"``), ``layout="paper"``.
    """
    common: dict[str, Any] = {"layout": "paper", "trainable_norms": True, "trainable_head": False}
    rep = ttnn.patch(spec.build(), mode="rep", r=8, tt_rank=8, **common)
    adp = ttnn.patch(
        spec.build(),
        mode="adp",
        bottleneck=64,
        tt_rank=5,
        placement="paper",
        target_modules=["gate_proj", "up_proj", "down_proj"],
        **common,
    )
    return {
        "rep": trainable_params(rep),
        "rep_adapter": adapter_params(rep),
        "adp": trainable_params(adp),
        "adp_adapter": adapter_params(adp),
        "adp_count": sum(isinstance(m, ttnn.TTAdapter) for m in adp.modules()),
        "norms": norm_params(rep),
    }


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count(spec: Spec) -> dict[str, Any]:
    full = sum(p.numel() for p in spec.build().parameters())
    r, rank = spec.rep["r"], spec.rep["tt_rank"]
    out: dict[str, Any] = {
        "full": full,
        "lora8": lora_params(spec, 8),
        "lora16": lora_params(spec, 16),
    }
    for layout in ("matrix", "paper"):
        rep = ttnn.patch(
            spec.build(), mode="rep", r=r, tt_rank=rank, layout=layout, trainable_head=False
        )
        adp = ttnn.patch(
            spec.build(), mode="adp", bottleneck=64, tt_rank=5, layout=layout, trainable_head=False
        )
        out[f"rep_{layout}"], out[f"adp_{layout}"] = adapter_params(rep), adapter_params(adp)
        if layout == "paper":
            out["rep_fallback"], out["adp_fallback"] = _fallback(rep), _fallback(adp)
        out["norms"] = norm_params(rep)
    return out


def _m(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _size(n: int, nbytes: int) -> str:
    b = n * nbytes
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.0f} KiB"


def table(rows: list[tuple[Spec, dict[str, Any]]]) -> str:
    head = (
        "| model | full FT | LoRA r=8 | LoRA r=16 | rep settings | LoRETTA_rep matrix "
        "| LoRETTA_rep paper | LoRETTA_adp matrix | LoRETTA_adp paper | norms (+) |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = ""
    for spec, c in rows:
        opts = f"r={spec.rep['r']}, tt {spec.rep['tt_rank']}"
        rep_p = _m(c["rep_paper"]) + (" †" if c["rep_fallback"] else "")
        adp_p = _m(c["adp_paper"]) + (" †" if c["adp_fallback"] else "")
        body += (
            f"| {spec.name} | {_m(c['full'])} | {_m(c['lora8'])} | {_m(c['lora16'])} | {opts} | "
            f"{_m(c['rep_matrix'])} | {rep_p} | {_m(c['adp_matrix'])} | {adp_p} | "
            f"{_m(c['norms'])} |\n"
        )
    if any(c["rep_fallback"] or c["adp_fallback"] for _, c in rows):
        body += "\n† a factor's size is not in the official shape table: the documented fallback.\n"
    sizes = (
        "\nFile sizes (matrix layout):\n\n"
        "| model | rep fp32 | rep bf16 | adp fp32 | adp bf16 | LoRA r=8 fp32 | LoRA r=8 bf16 |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    for spec, c in rows:
        rep, adp, lora = int(c["rep_matrix"]), int(c["adp_matrix"]), int(c["lora8"])
        sizes += (
            f"| {spec.name} | {_size(rep, 4)} | {_size(rep, 2)} | {_size(adp, 4)} | "
            f"{_size(adp, 2)} | {_size(lora, 4)} | {_size(lora, 2)} |\n"
        )
    return head + body + sizes


def official_table(name: str, c: dict[str, int]) -> str:
    """The official settings on one model: exact counts, split into adapters and norms."""
    return (
        f'\n{name}, the official code\'s settings (`layout="paper"`, norms trained):\n\n'
        "| method | adapters | norms | trainable |\n|---|---|---|---|\n"
        f"| LoRETTA_rep (r=8, TT rank 8, q/v) | {c['rep_adapter']:,} | {c['norms']:,} | "
        f"**{c['rep']:,}** |\n"
        f"| LoRETTA_adp (bottleneck 64, TT rank 5, {c['adp_count']} adapters) | "
        f"{c['adp_adapter']:,} | {c['norms']:,} | **{c['adp']:,}** |\n"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/param_counts.md")
    args = parser.parse_args(argv)
    rows = [(spec, count(spec)) for spec in SPECS]
    llama = next(spec for spec in SPECS if spec.name == "LLaMA-2-7B")
    text = table(rows) + official_table(llama.name, official(llama))
    print(text)
    out = Path(args.out)
    doc = out.read_text() if out.exists() else ""
    begin, end = "<!-- table:begin -->", "<!-- table:end -->"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin) + len(begin)] + "\n" + text + doc[doc.index(end) :]
    else:
        doc = f"# Parameter counts\n\n{begin}\n{text}{end}\n"
    out.write_text(doc)


if __name__ == "__main__":
    main()
