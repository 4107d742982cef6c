"""LoRETTA on a small causal LM against peft's LoRA, side by side in one run: training step time,
peak step memory, and generation after merging. Writes the ``## LLM (SmolLM2-135M)`` section of
docs/benchmarks.md and docs/results/llm_bench.png.

Model: the packaged SmolLM2-135M (LLaMA architecture), float32, CPU, loaded once; every method is
built on its own deep copy. Methods, each trained with AdamW on causal-LM loss (batch 8 x 64
random token ids, labels = input ids):

* LoRETTA_rep: ``tensortrain_nn.patch(model, mode="rep", **TT_DEFAULTS["rep"])``, the
  fine-tuning job's defaults (targets q_proj/v_proj, r=8, TT rank 5; RMSNorm weights train too);
* LoRA (peft): r=8, alpha 16, dropout 0.05, targets q_proj/v_proj;
* LoRETTA_adp: ``mode="adp"`` with the job's defaults (around each MLP, bottleneck 16, TT rank 3,
  GELU, RMSNorm weights train).

Every method's optimiser is ``AdamW(fused=True)``.

TT layers use ``init="paper"`` (every core random), so that every core has a gradient from the
first step and a merge changes the weights.

Measured:

* step time (forward, backward, AdamW), methods interleaved round-robin with a rotating order,
  median of the repeats after two warm-ups each;
* peak resident memory of a training step, each method in a fresh process (Linux: ``VmHWM`` reset
  through ``/proc/self/clear_refs`` after a warm-up step; ``MALLOC_MMAP_THRESHOLD_`` unmaps large
  buffers when freed): above the state just before the steps, and above the loaded base model
  (which adds the adapter, its gradients and the optimiser state);
* greedy ``generate`` with the KV cache, exactly 32 new tokens for 4 short prompts: the base model
  as loaded and a deep copy of it, LoRETTA_rep after ``merge_and_unload`` and LoRETTA_rep not
  merged, interleaved, median;
* the share of the machine's CPU time that other processes used while the timings ran (from
  ``/proc/stat``), since the machine is shared.

    python benchmarks/llm_bench.py [--threads 2] [--repeats 9] [--gen-repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from _doc import DOC, record_target, replace_section
from layer_bench import _status_kib, time_interleaved
from torch import nn

import tensortrain_nn
from tensortrain_nn.finetune.methods import TT_DEFAULTS

HEADING = "## LLM (SmolLM2-135M)"
PLOT = DOC.parent / "results" / "llm_bench.png"
METHODS = ("LoRETTA_rep", "LoRA (peft)", "LoRETTA_adp")
BATCH, SEQ = 8, 64
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics",
)
NEW_TOKENS = 32
STEP_TARGET, GEN_TOLERANCE = 1.1, 0.05  # rep step <= 1.1x LoRA; merged generation 1.00x +- 5%


def load_base() -> tuple[nn.Module, Any]:
    """The packaged SmolLM2-135M causal LM (float32, CPU) and its tokenizer."""
    from tensortrain_nn.models import load_model, resolve_model

    return load_model(resolve_model("smollm2"))


def build(base: nn.Module, method: str, fresh_copy: bool = True) -> nn.Module:
    """``method`` put onto a deep copy of ``base`` (or onto ``base`` itself); seed 0."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(0)
    model = copy.deepcopy(base) if fresh_copy else base
    if method == "LoRA (peft)":
        cfg = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
        )
        return get_peft_model(model, cfg)
    mode = {"LoRETTA_rep": "rep", "LoRETTA_adp": "adp"}[method]
    return tensortrain_nn.patch(model, mode=mode, init="paper", **TT_DEFAULTS[mode])


def _options(mode: str) -> str:
    """The job's default LoRETTA options for ``mode``, as the doc shows them."""
    return ", ".join(f"`{k}={v}`" for k, v in TT_DEFAULTS[mode].items())


def lm_batch(vocab: int) -> torch.Tensor:
    """Random token ids, ``(BATCH, SEQ)``; deterministic."""
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def lm_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """One AdamW step on the causal-LM loss of ``ids`` (labels = inputs), trainable tensors only."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # one kernel for many small tensors
    mask = torch.ones_like(ids)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()
        opt.step()

    return step


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable adapter parameters, trainable normalisation-layer parameters)."""
    norm_params = {
        id(p)
        for m in model.modules()
        if "Norm" in type(m).__name__
        for p in m.parameters(recurse=False)
    }
    adapter = norms = 0
    for p in model.parameters():
        if p.requires_grad:
            if id(p) in norm_params:
                norms += p.numel()
            else:
                adapter += p.numel()
    return adapter, norms


@contextmanager
def other_load(result: dict[str, float]) -> Iterator[None]:
    """Fill ``result["share"]`` with the fraction of all cores' time that other processes used."""

    def busy() -> float:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal (guest time is already in user)
            fields = [float(x) for x in f.readline().split()[1:9]]
        return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")

    t0, b0, own0 = time.perf_counter(), busy(), sum(os.times()[:4])
    yield
    wall, other = time.perf_counter() - t0, busy() - b0 - (sum(os.times()[:4]) - own0)
    result["share"] = max(0.0, other) / (wall * (os.cpu_count() or 1))


def peak_step_mib(method: str, threads: int) -> tuple[float, float]:
    """Peak resident memory of two steps (MiB): above the state before them, and above the loaded
    base model. Run in a fresh process (see :func:`peak_in_fresh_process`)."""
    torch.set_num_threads(threads)
    base, _ = load_base()
    gc.collect()
    loaded = _status_kib("VmRSS")
    model = build(base, method, fresh_copy=False)
    model.train()
    step = lm_step(model, lm_batch(base.config.vocab_size))
    step()  # warm-up: optimiser state, one-time initialisation
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
    except OSError:
        return math.nan, math.nan
    before = _status_kib("VmRSS")
    step()
    step()
    peak = _status_kib("VmHWM")
    return (peak - before) / 1024, (peak - loaded) / 1024


def peak_in_fresh_process(method: str, threads: int) -> tuple[float, float]:
    """:func:`peak_step_mib` in a fresh interpreter (large buffers unmapped when freed)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}  # read by glibc at start
    cmd = [sys.executable, __file__, "--peak", method, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    step, above_loaded = out.strip().splitlines()[-1].split()
    return float(step), float(above_loaded)


def training(
    base: nn.Module, repeats: int, threads: int, load: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Step time (interleaved), trainable counts and peak step memory of each method."""
    ids = lm_batch(base.config.vocab_size)
    models = {name: build(base, name).train() for name in METHODS}
    with other_load(load):
        times = time_interleaved({k: lm_step(m, ids) for k, m in models.items()}, repeats)
    counts = {k: trainable_counts(m) for k, m in models.items()}
    del models
    gc.collect()
    res: dict[str, dict[str, float]] = {}
    for name in METHODS:
        step_mib, above_loaded = peak_in_fresh_process(name, threads)
        adapter, norms = counts[name]
        res[name] = {"ms": times[name], "adapter": adapter, "norms": norms}
        res[name] |= {"step_mib": step_mib, "loaded_mib": above_loaded}
    return res


def generation(
    base: nn.Module, tok: Any, repeats: int, load: dict[str, float]
) -> tuple[dict[str, float], dict[str, object]]:
    """Median ms of greedy generation per model, and checks that the merge did something."""
    rep = build(base, "LoRETTA_rep").eval()
    unmerged = copy.deepcopy(rep)
    merged = tensortrain_nn.merge_and_unload(rep).eval()
    q_base = base.get_submodule("model.layers.0.self_attn.q_proj").weight
    q_merged = merged.get_submodule("model.layers.0.self_attn.q_proj").weight
    tok.padding_side = "left"
    enc = tok(list(PROMPTS), return_tensors="pt", padding=True)
    models = {"base": base.eval(), "copy": copy.deepcopy(base), "merged": merged}
    models["unmerged"] = unmerged

    def gen(m: nn.Module) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.no_grad():
                return m.generate(
                    **enc,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tok.pad_token_id,
                )

        return run

    with other_load(load):
        times = time_interleaved({k: gen(m) for k, m in models.items()}, repeats)
    out = {k: gen(m)() for k, m in models.items()}
    checks: dict[str, object] = {
        "dw": (q_merged - q_base).abs().max().item(),
        "same_tokens": torch.equal(out["merged"], out["unmerged"]),
        "differs_from_base": not torch.equal(out["merged"], out["base"]),
        "new_tokens": out["base"].shape[1] - enc["input_ids"].shape[1],
    }
    return times, checks


def plot(res: dict[str, dict[str, float]], gen: dict[str, float], path: Path) -> None:
    """Step time, peak step memory and generation time, as three bar panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = (
        (axes[0], list(res), [r["ms"] for r in res.values()], "training step (ms)"),
        (axes[1], list(res), [r["loaded_mib"] for r in res.values()], "peak above model (MiB)"),
        (axes[2], list(gen), list(gen.values()), f"generate {NEW_TOKENS} tokens x 4 (ms)"),
    )
    for ax, names, values, title in panels:
        ax.barh(names, values, color=["C0", "C1", "C2", "C7"][: len(names)])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"SmolLM2-135M, batch {BATCH} x {SEQ}, float32, CPU: LoRETTA against LoRA (peft)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def busy_note(share: float) -> str:
    """A warning for the docs when other processes took a noticeable share of the CPUs."""
    if share < 0.1:
        return ""
    return (
        " (the machine was not quiet: other processes competed for the cores, so the medians are"
        " noisier and slower than on an idle machine; the ratios are what to read)"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def section(
    res: dict[str, dict[str, float]],
    gen: dict[str, float],
    checks: dict[str, object],
    load: dict[str, float],
    args: argparse.Namespace,
) -> str:
    """The markdown section: what was run, the tables, the ratios against their targets."""
    lora, rep = res["LoRA (peft)"], res["LoRETTA_rep"]
    step_ratio, mem_ratio = rep["ms"] / lora["ms"], rep["loaded_mib"] / lora["loaded_mib"]
    merged, unmerged = gen["merged"] / gen["base"], gen["unmerged"] / gen["base"]
    rows = [
        f"| {name} | {r['adapter']:,} | {r['norms']:,} | {r['ms']:.0f} | "
        f"{r['ms'] / lora['ms']:.2f}x | {r['step_mib']:.1f} | {r['loaded_mib']:.1f} | "
        f"{r['loaded_mib'] / lora['loaded_mib']:.2f}x |"
        for name, r in res.items()
    ]
    labels = {
        "base": "base model, as loaded",
        "copy": "base model, deep copy",
        "merged": "LoRETTA_rep after merge_and_unload",
        "unmerged": "LoRETTA_rep, not merged",
    }
    gen_rows = [
        f"| {labels[k]} | {v:.0f} | {v / gen['base']:.2f}x | {v / gen['copy']:.2f}x |"
        for k, v in gen.items()
    ]
    return "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/llm_bench.py`: one run on a shared 2-core x86_64 CPU "
            f"({os.cpu_count()} cores seen), torch {torch.__version__}, {args.threads} thread(s), "
            f"float32. Other processes used {load['train']:.0%} of the machine's CPU time while "
            f"the training steps were timed and {load['gen']:.0%} during generation; 1-minute "
            f"load average at the end: {os.getloadavg()[0]:.2f}"
            f"{busy_note(max(load.values()))}. The packaged SmolLM2-135M "
            "(LLaMA architecture), loaded once; each method on its own deep copy. A step is "
            f"forward, backward and AdamW (`fused=True`, for every method) on causal-LM loss, "
            f"batch {BATCH} x {SEQ} random tokens; {args.repeats} repeats after 2 warm-ups, "
            "methods interleaved round-robin, median. Both LoRETTA methods with the fine-tuning "
            f"job's defaults (`TT_DEFAULTS`: rep {_options('rep')}; adp {_options('adp')}) and "
            '`init="paper"`; `trainable_norms=True` means the RMSNorm weights train, their count '
            "is apart. LoRA: peft, r=8, alpha 16, dropout 0.05, q_proj/v_proj. Peak "
            "memory: each method in a fresh process, peak resident memory of two steps after a "
            'warm-up step, above the state just before them ("step") and above the loaded base '
            'model ("above model": adds the adapter, its gradients, the optimiser state).',
            "",
            "| method | adapter params | norm params | step ms | vs LoRA | peak, step (MiB) "
            "| peak above model (MiB) | vs LoRA |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            f"Greedy `generate` with the KV cache, exactly {checks['new_tokens']} new tokens for "
            f"{len(PROMPTS)} short prompts (left-padded), {args.gen_repeats} repeats after 2 "
            "warm-ups, interleaved, median. The rep cores are random before the merge: the "
            f"merge changed layer 0's q_proj weight by up to {checks['dw']:.2e}; merged and "
            f"unmerged generate {'the same' if checks['same_tokens'] else '**different**'} "
            f"tokens, {'different from' if checks['differs_from_base'] else 'the same as'} the "
            "base model's.",
            "",
            "| model | generate ms | vs base | vs base copy |",
            "| --- | ---: | ---: | ---: |",
            *gen_rows,
            "",
            f"![SmolLM2-135M step time, peak memory and generation]({PLOT.relative_to(DOC.parent)})",
            "",
            "Targets (issue 12), from this run:",
            "",
            f"- training step, LoRETTA_rep / LoRA = {step_ratio:.2f}x (target <= "
            f"{STEP_TARGET:.1f}x): {verdict(step_ratio <= STEP_TARGET)};",
            f"- peak memory above the model, LoRETTA_rep / LoRA = {mem_ratio:.2f}x (target <= "
            f"1.00x): {verdict(mem_ratio <= 1.0)};",
            f"- generation, merged / base = {merged:.2f}x (target about 1.00x, taken as within "
            f"{GEN_TOLERANCE:.0%}): {verdict(abs(merged - 1) <= GEN_TOLERANCE)}; unmerged / base "
            f"= {unmerged:.2f}x (no target).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="training steps per method")
    parser.add_argument("--gen-repeats", type=int, default=7, help="generate calls per model")
    parser.add_argument("--quick", action="store_true", help="2 repeats each, print only")
    parser.add_argument("--peak", metavar="METHOD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:  # the child of peak_in_fresh_process
        print(*peak_step_mib(args.peak, args.threads))
        return
    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats = args.gen_repeats = 2
    base, tok = load_base()
    base.requires_grad_(False)
    load: dict[str, dict[str, float]] = {"train": {}, "gen": {}}
    res = training(base, args.repeats, args.threads, load["train"])
    gen, checks = generation(base, tok, args.gen_repeats, load["gen"])
    text = section(res, gen, checks, {k: v["share"] for k, v in load.items()}, args)
    print(text)
    if args.quick:
        return
    plot(res, gen, PLOT)
    replace_section(HEADING, text)
    for name in ("LoRETTA_rep", "LoRETTA_adp"):  # issue 16: at or under LoRA's step time
        ratio = res[name]["ms"] / res["LoRA (peft)"]["ms"]
        record_target(f"{name} step time / LoRA's, SmolLM2-135M, batch 8 x 64", ratio, 1.0)


if __name__ == "__main__":
    main()
