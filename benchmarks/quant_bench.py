"""Training SmolLM2-135M on float32, bfloat16 and 4-bit bases, each with LoRETTA_rep, LoRETTA_adp
and peft's LoRA (QLoRA on the 4-bit base): peak memory and seconds per step, side by side in one
run. Writes the ``## Quantized and half-precision bases (SmolLM2-135M)`` section of
docs/benchmarks.md and docs/results/quant_bench.json.

The packaged SmolLM2-135M (a GGUF file) is dequantized once into a float32 folder; every case then
runs in a fresh process that loads that folder as the fine-tuning job does
(:func:`tensortrain_nn.models.load_model` with a :class:`~tensortrain_nn.bases.BaseForm`: the
4-bit base is nf4 with double quant and float32 compute, prepared by ``prepare_kbit_training``;
bfloat16 compute is emulated, and very slow, on a CPU without AVX512-BF16),
puts the method on it (the methods of ``benchmarks/llm_bench.py``: the job's defaults,
``init="paper"``; LoRA r=8 on q_proj/v_proj; adapters in float32, the ``auto`` adapter dtype),
takes one warm-up step, then ``--steps`` timed steps (forward, backward, AdamW on causal-LM loss,
batch 8 x 64 random tokens). Memory: the base's parameter and buffer bytes as loaded, and the
peak resident memory of the process during the timed steps (``VmHWM`` reset after the warm-up).

    python benchmarks/quant_bench.py [--threads 2] [--steps 3] [--forms float32,bfloat16,4-bit nf4]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _doc import DOC, replace_section
from layer_bench import _status_kib
from llm_bench import BATCH, SEQ, build, busy_note, lm_batch, lm_step, other_load

HEADING = "## Quantized and half-precision bases (SmolLM2-135M)"
RESULTS = DOC.parent / "results" / "quant_bench.json"
FORMS = {
    "float32": {"dtype": "float32"},
    "bfloat16": {"dtype": "bfloat16"},
    "4-bit nf4": {"dtype": "float32", "quantize": "4bit"},
}
METHODS = ("LoRETTA_rep", "LoRETTA_adp", "LoRA (peft)")


def dequantized_folder(folder: Path) -> Path:
    """The packaged SmolLM2-135M saved as a float32 transformers folder in ``folder``."""
    from tensortrain_nn.models import load_model, resolve_model, save_dequantized

    model, tokenizer = load_model(resolve_model("smollm2"))
    tokenizer.save_pretrained(folder)
    return save_dequantized(model, folder)


def case(folder: str, form: str, method: str, steps: int, threads: int) -> dict[str, Any]:
    """One base form and method in this process: memory and step times (run in a child)."""
    from tensortrain_nn.bases import BaseForm, base_memory_bytes
    from tensortrain_nn.models import ModelSpec, load_model

    torch.set_num_threads(threads)
    base, _ = load_model(ModelSpec(name="smollm2", folder=folder), form=BaseForm(**FORMS[form]))
    base.requires_grad_(False)
    gc.collect()
    loaded = _status_kib("VmRSS")
    model = build(base, method, fresh_copy=False).train()
    step = lm_step(model, lm_batch(base.config.vocab_size))
    step()  # warm-up: optimiser state, one-time initialisation
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident size
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "base_mib": base_memory_bytes(base) / 2**20,
        "loaded_rss_mib": loaded / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
        "s_per_step": statistics.median(times),
        "times": times,
    }


def in_child(folder: Path, form: str, method: str, steps: int, threads: int) -> dict[str, Any]:
    """:func:`case` in a fresh interpreter (large buffers unmapped when freed)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    cmd = [sys.executable, __file__, "--child", str(folder), form, method]
    cmd += ["--steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def section(res: dict[str, dict[str, dict[str, Any]]], note: str, args: Any) -> str:
    """The markdown section: what ran, the table, the ratios against the float32 base."""
    rows = []
    for form, by_method in res.items():
        for method, r in by_method.items():
            ref = res.get("float32", by_method)[method]
            rows.append(
                f"| {form} | {method} | {r['base_mib']:.0f} | "
                f"{r['base_mib'] / ref['base_mib']:.2f}x | {r['peak_rss_mib']:.0f} | "
                f"{r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}x | {r['s_per_step']:.2f} | "
                f"{r['s_per_step'] / ref['s_per_step']:.2f}x |"
            )
    return "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/quant_bench.py`: one run on a shared 2-core x86_64 CPU, "
            f"torch {torch.__version__}, {args.threads} thread(s); {note}. SmolLM2-135M loaded "
            "as the fine-tuning job loads it (`--dtype`, `--quantize`): the 4-bit base is "
            "bitsandbytes nf4 with double quant and float32 compute (`--quantize 4bit`; bfloat16 "
            "compute is emulated on a CPU without AVX512-BF16). "
            "Each case in a fresh process: one warm-up step, then "
            f"{args.steps} timed steps (forward, backward, AdamW; batch {BATCH} x {SEQ} random "
            "tokens), median s/step. Adapters in float32 (`--adapter-dtype auto`). LoRA on the "
            "4-bit base is QLoRA. Base memory: the loaded base's parameter and buffer bytes; "
            "peak RSS: the process's peak resident memory during the timed steps (Python and "
            "torch included). Ratios are against the same method on the float32 base. Cases run "
            "one after another: a change in the machine's load between cases shows in s / step."
            + (f" {args.note}" if args.note else ""),
            "",
            "| base | method | base memory (MiB) | vs float32 | peak RSS (MiB) | vs float32 "
            "| s / step | vs float32 |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case")
    parser.add_argument("--quick", action="store_true", help="1 step each, print only")
    parser.add_argument("--forms", default=",".join(FORMS), help="comma-separated FORMS keys")
    parser.add_argument("--note", default="", help="a sentence added to the caption")
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "FORM", "METHOD"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(case(*args.child, args.steps, args.threads)))
        return
    if args.quick:
        args.steps = 1
    load: dict[str, float] = {}
    res: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp, other_load(load):
        folder = dequantized_folder(Path(tmp))
        for form in args.forms.split(","):
            for method in METHODS:
                res.setdefault(form, {})[method] = in_child(
                    folder, form, method, args.steps, args.threads
                )
                print(form, method, res[form][method], flush=True)
    average = os.getloadavg()
    note = (
        f"other processes used {load['share']:.0%} of the machine's CPU time during the run, "
        f"load average {average[0]:.1f} / {average[1]:.1f} / {average[2]:.1f} (1 / 5 / 15 min) "
        f"at the end{busy_note(load['share'])}"
    )
    text = section(res, note, args)
    print(text)
    if args.quick:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"results": res, "note": note}, indent=1) + "\n")
    replace_section(HEADING, text)


if __name__ == "__main__":
    main()
