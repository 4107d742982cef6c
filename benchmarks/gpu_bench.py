"""The CUDA table in one short run: half-precision TT kernels against dense cuBLAS, and LoRETTA_rep
against peft's LoRA training steps with their peak memory. Writes the ``## GPU`` section of
docs/benchmarks.md (and docs/results/gpu_bench.json) when run on CUDA; ``--out DIR`` writes
``gpu_bench.md`` and ``gpu_bench.json`` there instead.

Cases, each in every dtype of the run (CUDA: bfloat16 and float16; CPU: float32 and bfloat16,
float16 being slow or unsupported there):

* ``tt_svd`` of a dense tensor of TT rank 8 (plus 1e-3 noise), ``max_rank=8``: time and the
  relative reconstruction error (half-precision input is decomposed in float32 and cast back);
* ``tt_linear`` forward and forward + backward against the dense ``x @ W.T`` of the same matrix
  (cuBLAS on CUDA), each with its forward's relative error against a float64 reference;
* one AdamW training step of LoRETTA_rep (``init="paper"``) and of peft's LoRA (r=8, alpha 16) on
  the packaged MiniLM (query/value, classification loss) and the packaged SmolLM2-135M (q/v
  projections, causal-LM loss), float32 weights under ``torch.autocast`` in the run's dtype (no
  loss scaling: float16 steps are timed, not trained), methods interleaved round-robin, median;
  and each step's peak memory above the memory held before it
  (``torch.cuda.max_memory_allocated``; not measured on CPU).

``--quick`` shrinks the sizes and repeats; with ``--device cpu --quick`` the SmolLM2 row uses a
2-layer LLaMA of random weights instead of the real model (whose GGUF file takes a minute to load
on a small CPU): a smoke test of the script, not a measurement.

    python benchmarks/gpu_bench.py [--device cuda|cpu] [--repeats 20] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _doc import DOC, replace_section
from layer_bench import minilm, time_interleaved
from torch import nn

import tensortrain_nn
from tensortrain import TTMatrix, TTTensor, tt_linear, tt_svd

HEADING = "## GPU"
JSON = DOC.parent / "results" / "gpu_bench.json"
METHODS = ("LoRETTA_rep", "LoRA (peft)")
#: (full, quick) sizes: tt_svd tensor modes; tt_linear modes, rank, tokens; model batch x seq.
SIZES: dict[str, tuple[Any, Any]] = {
    "svd": ((16,) * 5, (8,) * 4),
    "linear": (((16, 16, 16), 16, 8192), ((4, 8, 8), 8, 64)),
    "minilm": ((32, 128), (2, 16)),
    "llm": ((8, 256), (2, 16)),
}


class Bench:
    """The device, the dtypes and the timing of one run."""

    def __init__(self, device: str, quick: bool, repeats: int) -> None:
        self.device = torch.device(device)
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # OpenMP threads stall on a shared CPU; one is steadier
        self.cuda = self.device.type == "cuda"
        self.quick, self.repeats = quick, repeats
        self.dtypes = (
            (torch.bfloat16, torch.float16) if self.cuda else (torch.float32, torch.bfloat16)
        )

    def size(self, key: str) -> Any:
        return SIZES[key][1 if self.quick else 0]

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Median ms of each callable (synchronised), interleaved round-robin."""

        def synced(fn: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                fn()
                self.sync()

            return run

        return time_interleaved({k: synced(f) for k, f in fns.items()}, self.repeats)

    def peak_mib(self, step: Callable[[], object]) -> float:
        """Peak memory of two calls above the memory held before them (MiB); NaN off CUDA."""
        if not self.cuda:
            return math.nan
        self.sync()
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        step(), step()
        self.sync()
        return (torch.cuda.max_memory_allocated(self.device) - before) / 2**20


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in float64."""
    ref64 = ref.detach().double()
    return ((a.detach().double() - ref64).norm() / ref64.norm()).item()


def random_tt_cores(modes: tuple[Any, ...], rank: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Cores of TT rank ``rank`` whose full tensor has entries of about unit size (float64).

    ``modes`` holds ints (a TT tensor) or ``(m, n)`` pairs (a TT-matrix).
    """
    ranks = [1] + [rank] * (len(modes) - 1) + [1]
    cores = []
    for k, m in enumerate(modes):
        shape = (ranks[k], *(m if isinstance(m, tuple) else (m,)), ranks[k + 1])
        cores.append(torch.randn(shape, generator=gen, dtype=torch.float64) / ranks[k] ** 0.5)
    return cores


def svd_rows(b: Bench) -> list[dict[str, Any]]:
    """tt_svd of a noisy rank-8 tensor in each dtype: ms and reconstruction error."""
    gen = torch.Generator().manual_seed(0)
    full = TTTensor(random_tt_cores(b.size("svd"), 8, gen)).full()
    full = full + 1e-3 * full.std() * torch.randn(full.shape, generator=gen, dtype=torch.float64)
    full = full.to(b.device)
    xs = {name(dt): full.to(dt) for dt in b.dtypes}

    def decompose(x: torch.Tensor) -> Callable[[], object]:
        return lambda: tt_svd(x, max_rank=8)

    times = b.time({k: decompose(x) for k, x in xs.items()})
    shape = "x".join(map(str, full.shape))
    return [
        {
            "case": f"tt_svd {shape}, max_rank 8",
            "dtype": k,
            "ms": times[k],
            "error": rel_err(tt_svd(x, max_rank=8).full(), full),
        }
        for k, x in xs.items()
    ]


def linear_rows(b: Bench) -> list[dict[str, Any]]:
    """tt_linear against the dense matmul of the same matrix: fwd and fwd+bwd ms, fwd error."""
    modes, rank, tokens = b.size("linear")
    gen = torch.Generator().manual_seed(0)
    cores64 = [c.to(b.device) for c in random_tt_cores(tuple((m, m) for m in modes), rank, gen)]
    n = math.prod(modes)
    x64 = torch.randn(tokens, n, generator=gen, dtype=torch.float64).to(b.device)
    ref = tt_linear(x64, cores64)
    w64 = TTMatrix(cores64).full()
    rows = []
    for dt in b.dtypes:
        cores = [c.to(dt).requires_grad_() for c in cores64]
        w = w64.to(dt).requires_grad_()
        x = x64.to(dt).requires_grad_()

        def tt(x: torch.Tensor = x, cores: list[torch.Tensor] = cores) -> torch.Tensor:
            return tt_linear(x, cores)

        def dense(x: torch.Tensor = x, w: torch.Tensor = w) -> torch.Tensor:
            return x @ w.T

        def backward(fwd: Callable[[], torch.Tensor]) -> Callable[[], None]:
            return lambda: fwd().sum().backward()

        with torch.no_grad():
            fwd_t = b.time({"tt": tt, "dense": dense})
            errors = {"tt": rel_err(tt(), ref), "dense": rel_err(dense(), ref)}
        bwd_t = b.time({"tt": backward(tt), "dense": backward(dense)})
        for k in ("tt", "dense"):
            case = f"`tt_linear` {n}x{n}, TT rank {rank}" if k == "tt" else f"dense x @ W.T {n}x{n}"
            rows.append(
                {
                    "case": f"{case}, {tokens} tokens",
                    "dtype": name(dt),
                    "fwd_ms": fwd_t[k],
                    "fwd_bwd_ms": bwd_t[k],
                    "vs_dense": fwd_t[k] / fwd_t["dense"],
                    "error": errors[k],
                }
            )
    return rows


def load_llm(b: Bench) -> tuple[nn.Module, str]:
    """The packaged SmolLM2-135M (a 2-layer random LLaMA for ``--device cpu --quick``), named."""
    if b.quick and not b.cuda:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        return LlamaForCausalLM(cfg), "2-layer random LLaMA (stand-in for SmolLM2)"
    from tensortrain_nn.models import load_model, resolve_model

    return load_model(resolve_model("smollm2"))[0], "SmolLM2-135M"


def build(base: nn.Module, method: str, targets: list[str], task: str) -> nn.Module:
    """``method`` on a deep copy of ``base`` (seed 0)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = copy.deepcopy(base)
    if method == "LoRA (peft)":
        cfg = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type=task
        )
        return get_peft_model(model, cfg)
    return tensortrain_nn.patch(model, mode="rep", init="paper", target_modules=targets)


def train_step(
    model: nn.Module, batch: dict[str, torch.Tensor], b: Bench, dtype: torch.dtype
) -> Callable[[], None]:
    """One AdamW step on the model's own loss (``labels`` in ``batch``), under autocast."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    amp = dtype != torch.float32

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(b.device.type, dtype=dtype, enabled=amp):
            loss = model(**batch).loss
        loss.backward()
        opt.step()

    return step


def train_rows(b: Bench) -> list[dict[str, Any]]:
    """Rep against LoRA training steps on MiniLM and SmolLM2: ms and peak memory per dtype."""
    rows = []
    for key in ("minilm", "llm"):
        batch_size, seq = b.size(key)
        gen = torch.Generator().manual_seed(0)
        if key == "minilm":
            base, label = minilm(), "MiniLM"
            ids = torch.randint(1000, 20000, (batch_size, seq), generator=gen)
            labels = torch.zeros(batch_size, dtype=torch.long)
            targets, task = ["query", "value"], "SEQ_CLS"
        else:
            base, label = load_llm(b)
            vocab = int(getattr(base.config, "vocab_size"))  # noqa: B009 (mypy: a Module attribute)
            ids = torch.randint(0, vocab, (batch_size, seq), generator=gen)
            labels, targets, task = ids, ["q_proj", "v_proj"], "CAUSAL_LM"
        base.requires_grad_(False)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        batch = {k: v.to(b.device) for k, v in batch.items()}
        models = {m: build(base, m, targets, task).to(b.device).train() for m in METHODS}
        del base
        for dt in b.dtypes:
            steps: dict[str, Callable[[], object]] = {
                m: train_step(model, batch, b, dt) for m, model in models.items()
            }
            times = b.time(steps)
            for m in METHODS:
                rows.append(
                    {
                        "case": f"{label}, batch {batch_size} x {seq}",
                        "method": m,
                        "dtype": name(dt),
                        "ms": times[m],
                        "vs_lora": times[m] / times["LoRA (peft)"],
                        "peak_mib": b.peak_mib(steps[m]),
                    }
                )
        del models
    return rows


def fmt(v: float, spec: str) -> str:
    return "n/a" if math.isnan(v) else format(v, spec)


def markdown(b: Bench, res: dict[str, list[dict[str, Any]]]) -> str:
    """The ``## GPU`` section: what ran, then the three tables."""
    if b.cuda:
        where = f"{torch.cuda.get_device_name(b.device)}, CUDA {torch.version.cuda}"
        note = "bfloat16 and float16"
    else:
        where = f"CPU ({os.cpu_count()} cores seen), not a GPU"
        note = "float32 and bfloat16 (float16 is slow or unsupported on CPU, so not timed)"
    quick = (
        " `--quick`: small sizes, few repeats, and with `--device cpu` a 2-layer random LLaMA "
        "in place of SmolLM2: a smoke test, not a measurement."
        if b.quick
        else ""
    )
    svd = [
        f"| {r['case']} | {r['dtype']} | {r['ms']:.2f} | {r['error']:.1e} |" for r in res["tt_svd"]
    ]
    lin = [
        f"| {r['case']} | {r['dtype']} | {r['fwd_ms']:.3f} | {r['fwd_bwd_ms']:.3f} "
        f"| {r['vs_dense']:.2f}x | {r['error']:.1e} |"
        for r in res["tt_linear"]
    ]
    train = [
        f"| {r['case']} | {r['method']} | {r['dtype']} | {r['ms']:.1f} | {r['vs_lora']:.2f}x "
        f"| {fmt(r['peak_mib'], '.0f')} |"
        for r in res["train"]
    ]
    return "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/gpu_bench.py` on {where}: one run, torch {torch.__version__}, "
            f"{b.repeats} repeats after 2 warm-ups, variants interleaved round-robin, median wall "
            f"time (synchronised); dtypes: {note}.{quick}",
            "",
            "| case | dtype | ms | relative error |",
            "| --- | --- | ---: | ---: |",
            *svd,
            "",
            "`tt_linear` against the dense matmul of the same matrix (errors against float64):",
            "",
            "| case | dtype | forward ms | forward + backward ms | forward vs dense | error |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
            *lin,
            "",
            "One AdamW training step, float32 weights under `torch.autocast` in the dtype (no loss "
            'scaling); LoRETTA_rep `init="paper"`, r=8, TT rank 5; LoRA r=8, alpha 16; targets '
            "query/value (MiniLM), q_proj/v_proj (SmolLM2). Peak: `torch.cuda.max_memory_allocated`"
            " over two steps, above the memory held before them.",
            "",
            "| model | method | dtype | step ms | vs LoRA | peak MiB |",
            "| --- | --- | --- | ---: | ---: | ---: |",
            *train,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument("--device", choices=("cuda", "cpu"), default=default)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--out", type=Path, help="folder for gpu_bench.md and gpu_bench.json")
    args = parser.parse_args()
    b = Bench(args.device, args.quick, 3 if args.quick else args.repeats)
    res = {"tt_svd": svd_rows(b), "tt_linear": linear_rows(b), "train": train_rows(b)}
    text = markdown(b, res)
    data = {"device": str(b.device), "torch": torch.__version__, "quick": b.quick, **res}
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_bench.md").write_text(text)
        (args.out / "gpu_bench.json").write_text(json.dumps(data, indent=1))
    elif b.cuda:
        replace_section(HEADING, text)
        JSON.parent.mkdir(parents=True, exist_ok=True)
        JSON.write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
