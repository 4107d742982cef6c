"""bfloat16 on CPU and ``torch.compile``, each beside float32 eager in one run. Writes the
``## bfloat16 and torch.compile (CPU)`` section of docs/benchmarks.md.

bfloat16 (each timed against its float32 twin, interleaved round-robin, median):

* ``tensortrain.tt_linear`` forward, 384x384 and 4096x4096 TT-matrices (TT rank 8), cores and
  input cast to bfloat16, beside the dense ``F.linear`` of the same matrix in both dtypes;
* ``TTReparam`` (LoRETTA_rep, r=8, TT rank 5, ``init="paper"``) on a frozen 384x384 and
  4096x4096 ``nn.Linear``: forward and backward, float32 weights, the bfloat16 run under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``;
* the packaged MiniLM with LoRETTA_rep, batch 16 x 64: one AdamW step, the same autocast.

The relative error is ``||y_bf16 - y_fp32|| / ||y_fp32||`` (Frobenius) of the output, and of
the trainable tensors' gradients (all concatenated), with dropout off so both runs compute the
same function.

``torch.compile`` (inductor): one AdamW step of MiniLM with LoRETTA_rep and with peft's LoRA
(r=8, q/v), batch 16 x 64, float32: the eager step beside the compiled one (model compiled,
optimiser eager), and the time of the first compiled call (compilation).

    python benchmarks/modes_bench.py [--threads 1] [--repeats 10] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import cast

import torch
import torch.nn.functional as F
from _doc import record_target, replace_section
from layer_bench import minilm, time_interleaved
from llm_bench import busy_note, other_load
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import tensortrain_nn
from tensortrain import TTMatrix, tt_linear

HEADING = "## bfloat16 and torch.compile (CPU)"
SIZES = {384: ((6, 8, 8), (16, 64)), 4096: ((16, 16, 16), (4, 128))}  # n: (TT modes, x lead)
TT_RANK = 8  # of the tt_linear cases
BATCH, SEQ = 16, 64


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64."""
    ref64 = ref.detach().double()
    return ((a.detach().double() - ref64).norm() / ref64.norm()).item()


def err(a: torch.Tensor, ref: torch.Tensor) -> str:
    """:func:`rel_err`, formatted."""
    return f"{rel_err(a, ref):.1e}"


def autocast(bf16: bool) -> AbstractContextManager[object]:
    """bfloat16 CPU autocast, or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


Row = tuple[str, str, float, float]  # case, error, fp32 ms, bf16 ms


def tt_linear_rows(n: int, repeats: int) -> list[Row]:
    """(case, error, fp32 ms, bf16 ms) of tt_linear and of the dense F.linear, size n x n."""
    modes, lead = SIZES[n]
    torch.manual_seed(0)
    ranks = [1] + [TT_RANK] * (len(modes) - 1) + [1]
    shapes = [(ranks[k], m, m, ranks[k + 1]) for k, m in enumerate(modes)]
    cores = [torch.randn(s) / (s[0] * s[2]) ** 0.5 for s in shapes]
    x = torch.randn(*lead, n)
    dense = TTMatrix(cores).full()
    half = [c.bfloat16() for c in cores]
    xh, dh = x.bfloat16(), dense.bfloat16()
    with torch.no_grad():
        fns: dict[str, Callable[[], object]] = {
            "tt32": lambda: tt_linear(x, cores),
            "tt16": lambda: tt_linear(xh, half),
            "d32": lambda: F.linear(x, dense),
            "d16": lambda: F.linear(xh, dh),
        }
        t = time_interleaved(fns, repeats)
        out = {k: cast(torch.Tensor, f()) for k, f in fns.items()}
    label = f"{n}x{n}, x {tuple(lead)}"
    return [
        (f"`tt_linear` forward, {label}", err(out["tt16"], out["tt32"]), t["tt32"], t["tt16"]),
        (f"dense `F.linear` forward, {label}", err(out["d16"], out["d32"]), t["d32"], t["d16"]),
    ]


def grad_vector(model: nn.Module) -> torch.Tensor:
    """The trainable tensors' gradients, flattened and concatenated."""
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def output_of(model: nn.Module, batch: torch.Tensor | dict) -> torch.Tensor:
    """The model's output on ``batch`` (its logits where it returns an object)."""
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    return out.logits if hasattr(out, "logits") else out


def bf16_step_row(
    label: str, model: nn.Module, batch: torch.Tensor | dict, repeats: int, optimizer: bool
) -> Row:
    """(case, error, fp32 ms, bf16 ms) of a training step in float32 and under bf16 autocast.

    The error is that of the output and of the gradients, from one step each with dropout off.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4) if optimizer else None

    def step(bf16: bool, update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with autocast(bf16):
            y = output_of(model, batch)
        y.float().pow(2).mean().backward()
        if opt is not None and update:
            opt.step()
        return y, grad_vector(model)

    model.eval()  # dropout off and no update: both dtypes compute the same function
    (y32, g32), (y16, g16) = step(False, update=False), step(True, update=False)
    errors = f"{err(y16, y32)} / {err(g16, g32)}"
    model.train()
    t = time_interleaved({"fp32": lambda: step(False), "bf16": lambda: step(True)}, repeats)
    return (label, errors, t["fp32"], t["bf16"])


def reparam_model(n: int) -> nn.Module:
    """A frozen ``nn.Linear(n, n)`` in TTReparam (r=8, TT rank 5, paper init, no dropout)."""
    torch.manual_seed(0)
    base = nn.Linear(n, n).requires_grad_(False)
    return tensortrain_nn.TTReparam(base, init="paper", dropout=0.0)


def minilm_batch() -> dict[str, torch.Tensor]:
    """Random token ids (batch 16 x 64) and a full attention mask; deterministic."""
    ids = torch.randint(1000, 20000, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def minilm_method(method: str) -> nn.Module:
    """MiniLM with LoRETTA_rep (paper init) or peft's LoRA (r=8, q/v); seed 0."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = minilm()
    if method == "LoRA (peft)":
        cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"])
        return get_peft_model(base, cfg)
    return tensortrain_nn.patch(base, mode="rep", init="paper")


def compile_rows(repeats: int) -> tuple[list[str], dict[str, float]]:
    """Eager against inductor-compiled MiniLM training steps, rep and LoRA: the table rows and
    each method's compiled / eager time. Inductor's caches are off, so compilation is timed cold.
    """
    inductor_config.force_disable_caches = True
    batch = minilm_batch()
    steps: dict[str, Callable[[], object]] = {}
    compile_s: dict[str, float] = {}
    breaks: dict[str, int] = {}
    for method in ("LoRETTA_rep", "LoRA (peft)"):
        eager = minilm_method(method).train()
        compiled = cast(nn.Module, torch.compile(copy.deepcopy(eager)))
        for name, model in (("eager", eager), ("compiled", compiled)):
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
                opt.zero_grad(set_to_none=True)
                output_of(model, batch).pow(2).mean().backward()
                opt.step()

            if name == "compiled":
                counters.clear()
                t0 = time.perf_counter()
                step()
                compile_s[method] = time.perf_counter() - t0
                breaks[method] = sum(counters["graph_break"].values())
            steps[f"{method}|{name}"] = step
    t = time_interleaved(steps, repeats)
    rows, ratios = [], {}
    for method in compile_s:
        e, c = t[f"{method}|eager"], t[f"{method}|compiled"]
        rows.append(
            f"| {method} | {e:.0f} | {c:.0f} | {c / e:.2f}x | {compile_s[method]:.0f} "
            f"| {breaks[method]} |"
        )
        ratios[method] = c / e
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 repeats, print only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    load: dict[str, float] = {}
    with other_load(load):
        rows = [r for n in SIZES for r in tt_linear_rows(n, repeats)]
        rows += [
            bf16_step_row(
                f"`TTReparam` forward + backward, {n}x{n}, x {SIZES[n][1]}",
                reparam_model(n),
                torch.randn(*SIZES[n][1], n),
                repeats,
                optimizer=False,
            )
            for n in SIZES
        ]
        rows.append(
            bf16_step_row(
                f"MiniLM + LoRETTA_rep, AdamW step, batch {BATCH} x {SEQ}",
                minilm_method("LoRETTA_rep"),
                minilm_batch(),
                repeats,
                optimizer=True,
            )
        )
        comp, comp_ratios = compile_rows(repeats)
    bf16_lines = [
        f"| {case} | {error} | {t32:.2f} | {t16:.2f} | {t16 / t32:.2f}x |"
        for case, error, t32, t16 in rows
    ]
    text = "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/modes_bench.py`: one run, {repeats} repeats after 2 "
            f"warm-ups, the variants of each case interleaved round-robin, median wall time; torch "
            f"{torch.__version__}, {args.threads} thread(s), CPU with AVX-512 BF16. Other "
            f"processes used {load['share']:.0%} of the machine's CPU time meanwhile; 1-minute load "
            f"average at the end: {os.getloadavg()[0]:.2f}{busy_note(load['share'])}.",
            "",
            "bfloat16 against float32. `tt_linear` and `F.linear`: cores (or weight) and input cast "
            "to bfloat16. `TTReparam` and MiniLM: float32 weights, the bfloat16 run under "
            '`torch.autocast("cpu", dtype=torch.bfloat16)`; the error column gives the output\'s '
            "relative error, then the gradients' (trainable tensors, concatenated), both against "
            "float32 with dropout off. `TTReparam`: r=8, TT rank 5, paper init; MiniLM: "
            "LoRETTA_rep on query/value, the step includes AdamW.",
            "",
            "| case | relative error vs float32 (output / grads) | float32 ms | bfloat16 ms "
            "| bf16 / fp32 |",
            "| --- | ---: | ---: | ---: | ---: |",
            *bf16_lines,
            "",
            f"`torch.compile` (inductor, default mode) of the model, one AdamW step (optimiser "
            f"eager), MiniLM batch {BATCH} x {SEQ}, float32, dropout on; LoRETTA_rep (query/value, "
            "r=8, TT rank 5, paper init) and peft's LoRA (r=8, query/value). Compile: the first "
            "compiled call, forward and backward graphs, inductor's caches off; graph breaks: Dynamo's count in that call. "
            "Outputs and gradients of compiled "
            "patched models match eager in `tests/nn/test_compile.py`.",
            "",
            "| method | eager step ms | compiled step ms | compiled / eager | compile s "
            "| graph breaks |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *comp,
            "",
        ]
    )
    print(text)
    if args.quick:
        return
    replace_section(HEADING, text)
    for case, error, t32, t16 in rows:
        record_target(f"bf16 / fp32 time (CPU): {case}", t16 / t32, None, note=f"error {error}")
    for method, ratio in comp_ratios.items():
        record_target(f"compiled / eager time: MiniLM {method} step", ratio, None)


if __name__ == "__main__":
    main()
