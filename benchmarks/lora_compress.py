"""Compress a trained peft LoRA through TT (LoRETTA_rep) at several eps: accuracy vs adapter size.

1. Trains LoRA on the default task (packaged MiniLM, Rotten Tomatoes snippets, peft r=8 on
   query/value, 3 epochs): ``tensortrain_nn.finetune.run(FinetuneConfig(method="lora", ...))``.
2. For each eps: :func:`tensortrain_nn.peft_io.compress_lora` (TT-SVD of every ``A`` and ``B``),
   then the held-out accuracy of the TT adapter (loaded with ``tensortrain_nn.load_adapter``).
3. Exports one compressed LoRETTA_rep adapter back to a peft LoRA, serves it with peft, re-imports
   it with ``from_lora``: the three accuracies must be identical.

Evaluation is this file's own: the same 800-example test split as the job
(``build_split(FinetuneConfig())``), tokenised with max length 64, argmax of the logits.
Writes ``docs/results/lora_compress.{md,json,png}`` and the results section of ``docs/peft.md``.

Run: ``python benchmarks/lora_compress.py`` (about 10 minutes on 2 cores; ``--reuse`` skips the
training when ``runs/lora_compress/lora/adapter`` exists; ``--quick`` is a smoke run that
writes nothing under docs/).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import replace_section

import tensortrain_nn as ttnn
from tensortrain_nn.finetune import FinetuneConfig, build_split, run
from tensortrain_nn.models import load_model, resolve_model
from tensortrain_nn.peft_io import compress_lora, export_lora, from_lora

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
EPS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
ROUND_TRIP_EPS = 0.1
HEADING = "## Measured: compressing a trained LoRA"


def accuracy(model: nn.Module, tokenizer: Any, texts: list[str], labels: list[int]) -> float:
    """Percent of ``texts`` whose argmax logit is the label (batches of 64, max length 64)."""
    model.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(texts), 64):
            batch = tokenizer(
                texts[i : i + 64],
                max_length=64,
                truncation=True,
                padding=True,
                return_tensors="pt",
            )
            pred = model(**batch).logits.argmax(-1)
            right += int((pred == torch.tensor(labels[i : i + 64])).sum())
    return 100.0 * right / len(texts)


def file_bytes(folder: Path) -> int:
    """Bytes of the folder's ``adapter_model.safetensors``."""
    return (folder / "adapter_model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/lora_compress")
    parser.add_argument("--reuse", action="store_true", help="reuse a trained LoRA if present")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run, docs untouched")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    out = Path(args.out)
    extra: dict[str, Any] = {"max_train": 64, "max_test": 64, "epochs": 1} if args.quick else {}
    lora_dir = out / "lora" / "adapter"
    started = time.perf_counter()
    if not (args.reuse and (lora_dir / "adapter_config.json").is_file()):
        run(FinetuneConfig(method="lora", output_dir=str(out / "lora"), progress=False, **extra))
    train_s = time.perf_counter() - started
    split = build_split(FinetuneConfig(**({"max_test": 64} if args.quick else {})))
    texts, labels = split.test_texts, split.test_labels
    base, tokenizer = load_model(resolve_model("minilm"), len(split.labels), labels=split.labels)
    base.eval()

    def evaluate(model: nn.Module) -> float:
        return accuracy(model, tokenizer, texts, labels)

    from peft import PeftModel

    lora_config = json.loads((lora_dir / "adapter_config.json").read_text())
    lora_params = sum(
        t.numel()
        for k, t in _tensors(lora_dir).items()
        if "lora_" in k  # the factors; the head is counted apart
    )
    head_params = sum(t.numel() for k, t in _tensors(lora_dir).items() if "lora_" not in k)
    rows: list[dict[str, Any]] = [
        {
            "adapter": f"LoRA r={lora_config['r']} (peft, trained)",
            "eps": None,
            "params": lora_params,
            "head": head_params,
            "bytes": file_bytes(lora_dir),
            "accuracy": evaluate(PeftModel.from_pretrained(copy.deepcopy(base), str(lora_dir))),
            "max_update_error": 0.0,
            "tt_rank": None,
        }
    ]
    print(rows[-1], flush=True)
    for eps in EPS:
        target = out / f"eps_{eps:g}"
        report = compress_lora(lora_dir, target, base, eps=eps)
        print(report, flush=True)
        tt = ttnn.load_adapter(copy.deepcopy(base), target / "tt_adapter")
        rows.append(
            {
                "adapter": f"LoRETTA_rep from LoRA, eps {eps:g}",
                "eps": eps,
                "params": report.stored_params,
                "params_at_reached_ranks": report.tt_params,
                "head": report.head_params,
                "bytes": file_bytes(target / "tt_adapter"),
                "accuracy": evaluate(tt),
                "max_update_error": report.max_update_error,
                "mean_update_error": sum(m.update_error for m in report.modules)
                / len(report.modules),
                "max_factor_error": max(max(m.error_a, m.error_b) for m in report.modules),
                "tt_rank": report.patched_tt_rank,
            }
        )
        print(rows[-1], flush=True)
    # Round trip: the eps=ROUND_TRIP_EPS LoRETTA_rep adapter -> peft LoRA -> LoRETTA_rep again.
    target = out / f"eps_{ROUND_TRIP_EPS:g}"
    tt = ttnn.load_adapter(copy.deepcopy(base), target / "tt_adapter")
    export_lora(tt, out / "round_trip" / "lora")
    served = PeftModel.from_pretrained(copy.deepcopy(base), str(out / "round_trip" / "lora"))
    again = copy.deepcopy(base)
    back = from_lora(again, out / "round_trip" / "lora")
    trip = {
        "eps": ROUND_TRIP_EPS,
        "tt_adapter": evaluate(tt),
        "exported_lora_served_by_peft": evaluate(served),
        "re_imported": evaluate(again),
        "re_import_max_update_error": back.max_update_error,
    }
    print(trip, flush=True)
    result = {
        "task": "packaged MiniLM, Rotten Tomatoes snippets, 800 test / 4,066 train, 3 epochs",
        "test_examples": len(texts),
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "round_trip": trip,
    }
    if args.quick:
        print(json.dumps(result, indent=2))
        return
    write(result)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def table(result: dict[str, Any]) -> str:
    """The markdown table of ``result``."""
    lines = [
        "| adapter | TT rank | adapter params | + head | file bytes | max / mean update error "
        "| accuracy % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        err = (
            "0 (the LoRA)"
            if row["eps"] is None
            else f"{row['max_update_error']:.3f} / {row['mean_update_error']:.3f}"
        )
        lines.append(
            f"| {row['adapter']} | {row['tt_rank'] or '-'} | {row['params']:,} | {row['head']:,} "
            f"| {row['bytes']:,} | {err} | {row['accuracy']:.2f} |"
        )
    trip = result["round_trip"]
    lines += [
        "",
        f"Round trip of the eps {trip['eps']:g} adapter: LoRETTA_rep {trip['tt_adapter']:.2f} %, "
        f"exported to a peft LoRA and served by peft {trip['exported_lora_served_by_peft']:.2f} %, "
        f"re-imported with `from_lora` {trip['re_imported']:.2f} % (update error of the "
        f"re-import {trip['re_import_max_update_error']:.1e}).",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Accuracy against adapter parameters (log scale), one point per eps, LoRA as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lora, tt = result["rows"][0], result["rows"][1:]
    ax.axhline(lora["accuracy"], color="grey", ls="--", label=f"LoRA ({lora['params']:,} params)")
    ax.plot([r["params"] for r in tt], [r["accuracy"] for r in tt], "o-", label="TT of the LoRA")
    for r in tt:
        ax.annotate(f"eps {r['eps']:g}", (r["params"], r["accuracy"]), fontsize=8,
                    textcoords="offset points", xytext=(4, -10))  # fmt: skip
    ax.scatter([lora["params"]], [lora["accuracy"]], color="grey", marker="s")
    ax.set_xscale("log")
    ax.set_xlabel("adapter parameters (without the 770-parameter head)")
    ax.set_ylabel("test accuracy % (800 examples)")
    ax.set_title("LoRA compressed by TT-SVD of A and B")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(result: dict[str, Any]) -> None:
    """docs/results/lora_compress.{json,md,png} and the section of docs/peft.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lora_compress.json").write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    (RESULTS / "lora_compress.md").write_text(
        "# A trained LoRA compressed through TT\n\n"
        f"{result['task']}; made by `python benchmarks/lora_compress.py` "
        f"({result['total_seconds']:.0f} s on 2 shared cores).\n\n{text}\n\n"
        "![accuracy vs size](lora_compress.png)\n"
    )
    plot(result, RESULTS / "lora_compress.png")
    replace_section(
        HEADING,
        f"{HEADING}\n\nMade by `python benchmarks/lora_compress.py` ({result['task']}); raw "
        "numbers in [results/lora_compress.json](results/lora_compress.json).\n\n"
        f"{text}\n\n![accuracy vs size](results/lora_compress.png)\n",
        path=ROOT / "docs" / "peft.md",
    )


if __name__ == "__main__":
    main()
