"""Trainable parameters of one TTAdapter / TTReparam against their dense counterparts, per hidden size.

Writes docs/layer_counts.md. Layers are built on the meta device: no memory, no weights.

    python benchmarks/layer_counts.py
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tensortrain_nn import TTAdapter, TTLinear, TTReparam

HIDDEN = (384, 768, 1024, 2048, 4096, 5120, 8192)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def row(h: int) -> str:
    with torch.device("meta"):
        adp = count(TTAdapter(nn.Linear(h, h), bottleneck=64, tt_rank=5))
        rep8 = count(TTReparam(nn.Linear(h, h), r=8, tt_rank=5))
        rep16 = count(TTReparam(nn.Linear(h, h), r=16, tt_rank=8))
        modes = TTLinear(h, 16, rank=8).in_modes  # the modes of h that TTReparam's A uses
    dense_adp = 2 * h * 64 + 64 + h
    lora8, lora16 = 2 * 8 * h, 2 * 16 * h
    return (
        f"| {h} | {modes} | {adp:,} | {dense_adp:,} | {rep8:,} | {lora8:,} | {rep16:,} | {lora16:,} "
        f"| {lora16 / rep16:.0f}x |"
    )


def main() -> None:
    lines = [
        "# Parameters per layer",
        "",
        "One square `(h, h)` layer. Adapter: bottleneck 64, TT rank 5, biases included (a dense",
        "bottleneck adapter has `2 h 64 + 64 + h`). Reparam: `r = 8` at TT rank 5 (the LoRETTA",
        "defaults for BERT-size models) and `r = 16` at TT rank 8 (its LLaMA setting), against LoRA's",
        "`2 r h`. Input modes are chosen by `tensortrain.shapes.choose_modes`.",
        "Made by `python benchmarks/layer_counts.py`.",
        "",
        "| hidden | modes of h | TTAdapter | dense adapter | TTReparam r=8 | LoRA r=8 "
        "| TTReparam r=16 | LoRA r=16 | LoRA / TTReparam (r=16) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *[row(h) for h in HIDDEN],
        "",
    ]
    out = Path(__file__).resolve().parent.parent / "docs" / "layer_counts.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
