"""The LLM comparison's grids widened where a pick sat at an end, by the rule of ``tuned.py``.

``docs/results/llm-tuned/compare.json`` is the job's own ``--tune`` run (SmolLM2-135M, 512
training reviews, 100 validation, 200 test, 3 seeds at each pick; the command is in that file).
Its picks of rep (1.5e-3) and LoRA (4e-3) are ends of their grids, which may only mean the grid
stopped too early. This script adds one x2 step beyond such an end (at most :data:`MAX_WIDEN`
times, every method alike), trains the new point at seed 0 on the same data and scores it on
validation; the pick is again the best validation score (ties: the grid's own order). A pick
that moves to a new point then trains at seeds 1 and 2. Records go to ``widen.json`` beside
``compare.json`` (resumable); ``docs`` writes the table into docs/finetune.md.

Commands::

    python benchmarks/llm_tuned.py grid    # the widened points, seed 0
    python benchmarks/llm_tuned.py seeds   # a moved pick at seeds 1, 2
    python benchmarks/llm_tuned.py docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy
from accuracy import _mean_sd, run_all

RESULTS = accuracy.ROOT / "docs" / "results" / "llm-tuned"
DOC = accuracy.ROOT / "docs" / "finetune.md"
#: The flags of the documented ``--tune`` run, as FinetuneConfig fields.
RUN: dict[str, Any] = {
    "model": "smollm2",
    "val_size": 100,
    "max_train": 512,
    "max_test": 200,
    "batch_size": 16,
    "epochs": 1,
}
MAX_WIDEN = 2


def _tuning() -> dict[str, Any]:
    return json.loads((RESULTS / "compare.json").read_text())["tuning"]


def _key(method: str, lr: float, seed: int) -> str:
    return f"llm|{method}|lr{lr:g}|{seed}"


def grid(method: str, store: dict[str, Any]) -> list[tuple[float, float | None]]:
    """``method``'s ``(lr, validation accuracy)`` points, widened while the best is an end."""
    points: list[tuple[float, float | None]] = [
        (p["values"]["lr"], p["score"]) for p in _tuning()[method]["points"]
    ]
    for _ in range(MAX_WIDEN):
        if any(score is None for _, score in points):
            break
        scores = [score for _, score in points]
        best = scores.index(max(scores))  # type: ignore[type-var]
        if best not in (0, len(points) - 1):
            break
        lr = points[0][0] / 2 if best == 0 else points[-1][0] * 2
        rec = store.get(_key(method, lr, 0))
        score = rec["validation"]["accuracy"] / 100 if rec else None
        points.insert(0, (lr, score)) if best == 0 else points.append((lr, score))
    return points


def pick(method: str, store: dict[str, Any]) -> float | None:
    points = grid(method, store)
    if any(score is None for _, score in points):
        return None
    scores = [score for _, score in points]
    return points[scores.index(max(scores))][0]  # type: ignore[type-var]


def _config(method: str, lr: float, seed: int) -> Any:
    from tensortrain_nn.finetune import FinetuneConfig

    return FinetuneConfig(method=method, lr=lr, seed=seed, save=False, progress=False, **RUN)


def grid_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (_key(method, lr, 0), _config(method, lr, 0))
        for method in _tuning()
        for lr, score in grid(method, store)
        if score is None
    ]


def seed_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    """A pick that moved off the job's grid, at seeds 1 and 2 (seed 0 is its grid run)."""
    jobs = []
    for method, tuning in _tuning().items():
        lr = pick(method, store)
        if lr is not None and lr != tuning["points"][tuning["picked"]]["values"]["lr"]:
            jobs += [(_key(method, lr, s), _config(method, lr, s)) for s in (1, 2)]
    return jobs


def table(store: dict[str, Any]) -> str:
    """Each method's widened grid, its pick and the pick's test accuracy over 3 seeds."""
    runs = json.loads((RESULTS / "compare.json").read_text())["runs"]
    lines = [
        "| method | grid (lr: validation %) | pick | test accuracy % (mean ± sd) | per seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method, tuning in _tuning().items():
        points = grid(method, store)
        cells = ", ".join(f"{lr:g}: {'-' if s is None else f'{100 * s:.0f}'}" for lr, s in points)
        lr = pick(method, store)
        if lr is None:
            lines.append(f"| {method} | {cells} | (not run) | | |")
            continue
        if lr == tuning["points"][tuning["picked"]]["values"]["lr"]:
            accs = [100 * r["accuracy"] for r in runs if r["method"] == method]
        else:
            recs = [store.get(_key(method, lr, s)) for s in (0, 1, 2)]
            accs = [r["accuracy"] for r in recs if r is not None]
        per_seed = " / ".join(f"{a:.1f}" for a in accs)
        lines.append(f"| {method} | {cells} | {lr:g} | {_mean_sd(accs)} | {per_seed} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("grid", "seeds", "docs"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    accuracy.STORE = RESULTS / "widen.json"  # run_all's store
    store = accuracy.load_store()
    if args.command == "grid":
        for _ in range(MAX_WIDEN):
            run_all(grid_jobs(accuracy.load_store()), args.jobs)
    elif args.command == "seeds":
        run_all(seed_jobs(store), args.jobs)
    else:
        text = DOC.read_text()
        begin, end = "<!-- llm-widen:begin -->", "<!-- llm-widen:end -->"
        head, rest = text.split(begin, 1)
        DOC.write_text(f"{head}{begin}\n{table(store)}\n{end}{rest.split(end, 1)[1]}")


if __name__ == "__main__":
    sys.exit(main())
