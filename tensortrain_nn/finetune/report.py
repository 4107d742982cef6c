"""Reports: one run's table (text, markdown, JSON), and the side-by-side comparison with its plot.

Example::

    print(format_report(result))
    rows = write_comparison(results, Path("runs/compare"))
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensortrain_nn.finetune.config import Result, history_row

nan = math.nan


def _size(num_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024  # type: ignore[assignment]
    return str(num_bytes)


def report_rows(result: Result) -> list[tuple[str, str]]:
    """``(field, value)`` rows of one run's report, formatted for people."""
    rows = [("method", f"{result.method}: {result.description}"), ("task", result.task)]
    if not math.isnan(result.accuracy):
        rows += [
            ("accuracy", f"{100 * result.accuracy:.2f} %  ({result.num_test} held-out examples)"),
            ("macro-F1", f"{100 * result.macro_f1:.2f} %"),
        ]
    rows += [
        (name.replace("_", " "), f"{100 * result.metrics[name]:.2f} %  (generated answers)")
        for name in ANSWER_METRICS
        if name in result.metrics
    ]
    if "perplexity" in result.metrics:
        rows += [
            ("held-out loss", f"{result.metrics['loss']:.4f} per token"),
            ("perplexity", f"{result.metrics['perplexity']:.3f}"),
            (
                "truncated prompts",
                f"{int(result.metrics.get('truncated', 0))} of {result.num_test}",
            ),
        ]
        if "completions_cut" in result.metrics:
            cut = int(result.metrics["completions_cut"])
            rows.append(("cut completions", f"{cut} of {result.num_test} (at --max-length)"))
        if "exact_match" in result.metrics:
            rows.append(("exact match", f"{100 * result.metrics['exact_match']:.2f} %"))
    rows += [
        ("trainable (adapter)", f"{result.adapter_params:,}"),
        ("trainable (head)", f"{result.head_params:,}"),
        ("trainable (other)", f"{result.other_params:,}  (norms, biases or base weights)"),
        (
            "trainable share",
            f"{100 * result.trainable_share:.4f} % of {result.total_params:,} parameters",
        ),
        ("adapter file size", _size(result.adapter_bytes) if result.adapter_bytes else "not saved"),
        ("seconds per step", f"{result.seconds_per_step:.3f}"),
        ("tokens per second", f"{result.tokens_per_second:.0f}"),
        ("training time", f"{result.train_seconds:.1f} s ({result.num_train} examples)"),
        ("peak memory", f"{result.peak_memory_mb:.0f} MiB"),
    ]
    if result.base:
        rows.append(("base model", f"{result.base}, {_size(result.base_memory_bytes)}"))
    if result.world_size > 1:
        sync = f"{result.world_size} ({_size(result.allreduce_bytes_per_step)} all-reduced / step)"
        rows.append(("processes", sync))
    if result.output_dir:
        rows.append(("saved to", result.output_dir))
    return rows


def format_report(result: Result) -> str:
    """One run's report as aligned plain text (what the command line prints)."""
    rows = report_rows(result)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(result: Result, folder: Path) -> None:
    """Write ``report.json`` and ``report.md`` for one run into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    body = _markdown(["field", "value"], report_rows(result))
    epochs = _markdown(
        ["epoch", "train loss", "eval loss", "accuracy", "macro-F1"],
        [
            (
                h["epoch"],
                f"{h.get('train_loss', nan):.4f}",
                f"{h.get('eval_loss', nan):.4f}",
                f"{100 * h.get('accuracy', nan):.2f}",
                f"{100 * h.get('macro_f1', nan):.2f}",
            )
            for h in map(history_row, result.history)
        ],
    )
    samples = "".join(
        f"- prompt: `{s['prompt']!r}`\n  reference: `{s['reference']!r}`\n  "
        f"generated: `{s['generated']!r}`\n" + (f"  match: {s['match']}\n" if "match" in s else "")
        for s in result.samples
    )
    text = f"# Run report\n\n{body}\n## Per epoch\n\n{epochs}"
    (folder / "report.md").write_text(text + (f"\n## Samples\n\n{samples}" if samples else ""))


def _spread(values: list[float]) -> float:
    """Sample standard deviation; NaN when a value is NaN (statistics.stdev raises on NaN).

    Example:
        >>> _spread([1.0, 3.0]), _spread([float("nan"), 0.5])
        (1.414..., nan)
    """
    if any(math.isnan(v) for v in values):
        return math.nan
    return statistics.stdev(values) if len(values) > 1 else 0.0


#: Generated-answer metrics (``--metric``), shown in place of accuracy when a run has one.
ANSWER_METRICS = ("exact_match", "contains")


def _score(runs: Sequence[Result]) -> tuple[str, list[float]]:
    """The metric a comparison shows: accuracy, or the runs' generated-answer metric."""
    for name in ANSWER_METRICS:
        if all(name in r.metrics for r in runs):
            return name, [float(r.metrics[name]) for r in runs]
    return "accuracy", [r.accuracy for r in runs]


def summarize(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per method (in first-seen order): mean and standard deviation over seeds."""
    by_method: dict[str, list[Result]] = {}
    for result in results:
        by_method.setdefault(result.method, []).append(result)
    rows = []
    for method, runs in by_method.items():
        score, acc = _score(runs)
        f1 = [r.macro_f1 for r in runs]
        rows.append(
            {
                "method": method,
                "seeds": [r.seed for r in runs],
                "score": score,
                "accuracy_mean": statistics.fmean(acc),
                "accuracy_std": _spread(acc),
                "accuracy_min": min(acc),
                "accuracy_max": max(acc),
                "macro_f1_mean": statistics.fmean(f1),
                "macro_f1_std": _spread(f1),
                "adapter_params": runs[0].adapter_params,
                "head_params": runs[0].head_params,
                "other_params": runs[0].other_params,
                "trainable_params": runs[0].trainable_params,
                "trainable_share": runs[0].trainable_share,
                "adapter_bytes": runs[0].adapter_bytes,
                "seconds_per_step": statistics.fmean(r.seconds_per_step for r in runs),
                "peak_memory_mb": max(r.peak_memory_mb for r in runs),
            }
        )
    return rows


def comparison_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The comparison table in markdown (accuracy as mean ± standard deviation over seeds)."""
    header = [
        "method",
        "seeds",
        f"{rows[0].get('score', 'accuracy') if rows else 'accuracy'} % (mean ± sd)",
        "macro-F1 %",
        "trainable (adapter)",
        "+ head",
        "+ other",
        "share %",
        "adapter file",
        "s / step",
    ]
    table = [
        (
            r["method"],
            len(r["seeds"]),
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
            f"{100 * r['macro_f1_mean']:.2f}",
            f"{r['adapter_params']:,}",
            f"{r['head_params']:,}",
            f"{r['other_params']:,}",
            f"{100 * r['trainable_share']:.4f}",
            _size(r["adapter_bytes"]),
            f"{r['seconds_per_step']:.3f}",
        )
        for r in rows
    ]
    return _markdown(header, table)


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against all trainable parameters (log x) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        x = max(1, r["trainable_params"])
        ax.errorbar(x, 100 * r["accuracy_mean"], yerr=100 * r["accuracy_std"], fmt="o", capsize=4)
        ax.annotate(
            r["method"], (x, 100 * r["accuracy_mean"]), textcoords="offset points", xytext=(6, 4)
        )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (adapter + head + norms, log scale)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("accuracy vs trainable parameters")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tuning_markdown(tuning: dict[str, Any]) -> str:
    """The grid of a tuned comparison: each point's mean validation score, the pick marked."""
    table = []
    for method, entry in tuning.items():
        for i, point in enumerate(entry["points"]):
            metric = point["metric"]
            value = point["score"] if metric == "eval_loss" else 100 * point["score"]
            table.append(
                (
                    method,
                    point["label"],
                    ", ".join(str(r["seed"]) for r in point["runs"]),
                    f"{metric.replace('eval_', '')} {value:.2f}",
                    "**picked**" if i == entry["picked"] else "",
                )
            )
    text = _markdown(["method", "grid point", "seeds", "validation (mean)", "pick"], table)
    ends = [method for method, entry in tuning.items() if entry.get("at_end")]
    if ends:
        text += (
            f"\nThe pick of {', '.join(ends)} is an end of its grid: a wider grid might pick "
            "beyond it (`--tune-widen N` adds points there).\n"
        )
    return text


def write_comparison(
    results: Sequence[Result],
    folder: Path,
    *,
    command: str | None = None,
    tuning: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` into ``folder``.

    Args:
        results: Every run (several methods, possibly several seeds each).
        folder: Output folder.
        command: The command that made the comparison, recorded in the markdown.
        tuning: The grid of a tuned comparison (:func:`~tensortrain_nn.finetune.tune.pick`):
            written as its own table, and under ``"tuning"`` in the JSON.

    Returns:
        The summary rows (see :func:`summarize`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows = summarize(results)
    payload: dict[str, Any] = {"summary": rows, "runs": [r.to_dict() for r in results]}
    payload["command"] = command
    if tuning is not None:
        payload["tuning"] = tuning
    (folder / "compare.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = "# Comparison\n\n"
    if command:
        text += f"Made with:\n\n```\n{command}\n```\n\n"
    if tuning is not None:
        text += (
            "Every method picked its grid point by the mean validation score (the validation "
            "part is carved from the training data); the table below is the picked point's "
            "test scores.\n\n" + tuning_markdown(tuning) + "\n"
        )
    text += comparison_markdown(rows) + "\n![accuracy vs trainable parameters](compare.png)\n"
    (folder / "compare.md").write_text(text)
    plot_comparison(rows, folder / "compare.png")
    return rows
