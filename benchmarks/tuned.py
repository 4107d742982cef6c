"""Every method tuned with the same budget on a validation split, then tested at 3 seeds.

The protocol of ``benchmarks/accuracy.py`` (packaged MiniLM, 640 training examples, 3 epochs,
batch 16, 400 test examples), plus a validation part of :data:`VAL_SIZE` examples carved from the
training data before the 640 are taken (so no method trains on it). Each method (rep, adp, LoRA,
full fine-tuning) has a grid of :data:`GRID_SIZE` learning rates, the same size for all, on a x2
ladder around its default, widened by one x2 step (at most twice) while the pick is one of its
ends, the same rule for every method; every point trains at seed 0 and is scored on validation
(each epoch) and, after training, on the test split. The pick reads the validation accuracy only (ties: the
earlier point); the test scores of the other points are kept to show what a pick on the test
split would have claimed. The picked learning rate then trains at seeds 1 and 2 as well.

Then the paper's forgetting claim: the debates (task A, at each method's debates pick), then
Rotten Tomatoes with the same adapter and a fresh head (task B, at the rt pick), 3 seeds, with
rep and adp also with their LayerNorms frozen; and its overfitting claim, at each method's picked learning rate: the debates with 160
training examples, 20 epochs at a constant learning rate, held-out accuracy per epoch, 3 seeds.

Commands (each skips the runs already in ``docs/results/accuracy/runs.json``)::

    python benchmarks/tuned.py grid   [--tasks debates,rt,rt_full]   # every grid point, seed 0
    python benchmarks/tuned.py seeds  [--tasks ...]                   # the picks at seeds 1, 2
    python benchmarks/tuned.py grid --protocol tuned-w20              # the same, 20 % warm-up
    python benchmarks/tuned.py seeds --protocol tuned-w20
    python benchmarks/tuned.py ties   [--protocol ...]                # past an end that ties
    python benchmarks/tuned.py probe                                  # what moves the rt stall
    python benchmarks/tuned.py overfit                                # needs the debates picks
    python benchmarks/tuned.py forget                                 # needs debates, rt picks
    python benchmarks/tuned.py docs                                   # tables into docs/accuracy.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import (
    TASKS,
    Setting,
    _forget_one,
    _mean_sd,
    config_for,
    forget_table,
    load_store,
    replace_blocks,
    run_all,
)

#: Validation examples carved from each task's training data (the same count on every task).
VAL_SIZE = 200
#: Learning rates per method: the same number of points each, a x2 ladder around the default.
GRIDS: dict[str, tuple[float, ...]] = {
    "rep": (1.5e-3, 3e-3, 6e-3),
    "adp": (2e-3, 4e-3, 8e-3),
    "lora": (5e-4, 1e-3, 2e-3),
    "full": (2.5e-5, 5e-5, 1e-4),
}
GRID_SIZE = 3
#: How many times a grid is widened when its pick is one of its ends (:func:`grid_of`).
MAX_WIDEN = 2
assert all(len(g) == GRID_SIZE for g in GRIDS.values())
#: Seed-0 probes of the rt stall (rep and adp at their picked learning rates): what moves them.
PROBES: list[tuple[str, float, dict[str, Any]]] = [
    ("rep", 3e-3, {"warmup_ratio": 0.2}),
    ("rep", 3e-3, {"epochs": 5}),
    ("adp", 2e-3, {"epochs": 5}),
    ("rep", 3e-3, {"batch_size": 8}),
]
#: The protocols the tuned comparison runs under: study name -> options beyond the protocol.
#: ``tuned`` is the job's defaults (6 % warm-up); ``tuned-w20`` gives every method a 20 % warm-up,
#: the schedule change that moved the rt stall in the probes, measured on every task and seed.
PROTOCOLS: dict[str, dict[str, Any]] = {"tuned": {}, "tuned-w20": {"warmup_ratio": 0.2}}
#: The overfitting study's training set and length.
OVERFIT = {"max_train": 160, "epochs": 20, "schedule": "constant", "warmup_ratio": 0.0}


def _setting(method: str, lr: float) -> Setting:
    return Setting(method, f"lr{lr:g}", lr=lr)


def _key(study: str, task: str, method: str, lr: float, seed: int) -> str:
    return f"{study}|{task}|{method}|lr{lr:g}|{seed}"


def ladder(
    lrs: Sequence[float], score: Callable[[float], float | None], times: int = MAX_WIDEN
) -> list[float]:
    """``lrs`` widened by the job's rule (:func:`~tensortrain_nn.finetune.tune.widened`) while the
    best-scoring point (the earlier on ties) is an end, at most ``times`` steps; the ladder stops
    growing at a point not yet scored (``score`` returns None).

    Example:
        >>> ladder([1e-3, 2e-3], {1e-3: 50.0, 2e-3: 60.0, 4e-3: 55.0}.get)
        [0.001, 0.002, 0.004]
    """
    from tensortrain_nn.finetune.tune import widened

    lrs = sorted(lrs)
    for _ in range(times):
        scores = [score(lr) for lr in lrs]
        if any(s is None for s in scores):
            break
        new = widened([{"values": {"lr": lr}} for lr in lrs], scores.index(max(scores)))  # type: ignore[type-var]
        if new is None:
            break
        lrs = sorted([*lrs, new["lr"]])
    return lrs


def _val(store: dict[str, Any], study: str, task: str, method: str) -> Callable[[float], Any]:
    def score(lr: float) -> float | None:
        rec = store.get(_key(study, task, method, lr, 0))
        return None if rec is None else rec["validation"]["accuracy"]

    return score


def grid_of(store: dict[str, Any], task: str, method: str, study: str = "tuned") -> list[float]:
    """``method``'s grid on ``task``: :data:`GRIDS`, widened by x2 steps while the pick is an end.

    A pick on the grid's largest (smallest) learning rate may only mean that the grid stopped
    too early, so one more point is added beyond it, up to :data:`MAX_WIDEN` times; the same
    rule holds for every method, and it is the job's ``--tune-widen`` rule (:func:`ladder`).
    """
    return ladder(GRIDS[method], _val(store, study, task, method))


def grid_jobs(
    tasks: list[str], store: dict[str, Any], study: str = "tuned"
) -> list[tuple[str, Any]]:
    """Every grid point of every method at seed 0: validation each epoch, test at the end."""
    return [
        (
            _key(study, task, method, lr, 0),
            config_for(task, _setting(method, lr), 0, val_size=VAL_SIZE, **PROTOCOLS[study]),
        )
        for task in tasks
        for method in GRIDS
        for lr in grid_of(store, task, method, study)
    ]


def picks(store: dict[str, Any], task: str, study: str = "tuned") -> dict[str, float]:
    """Each method's learning rate with the best seed-0 validation accuracy (earlier on ties)."""
    chosen = {}
    for method in GRIDS:
        lrs = grid_of(store, task, method, study)
        values = [_val(store, study, task, method)(lr) for lr in lrs]
        if None in values:
            continue  # the grid is not complete yet
        chosen[method] = lrs[values.index(max(values))]
    return chosen


def seed_jobs(
    tasks: list[str], store: dict[str, Any], study: str = "tuned"
) -> list[tuple[str, Any]]:
    """The picked learning rates at seeds 1 and 2 (seed 0 is the grid run)."""
    return [
        (
            _key(study, task, method, lr, seed),
            config_for(task, _setting(method, lr), seed, val_size=VAL_SIZE, **PROTOCOLS[study]),
        )
        for task in tasks
        for method, lr in picks(store, task, study).items()
        for seed in (1, 2)
    ]


def probe_jobs() -> list[tuple[str, Any]]:
    """The :data:`PROBES` on rt, seed 0, with the same validation part as the grid."""
    return [
        (
            f"probe|rt|{method}|lr{lr:g} " + " ".join(f"{k}={v}" for k, v in extra.items()) + "|0",
            config_for("rt", _setting(method, lr), 0, val_size=VAL_SIZE, **extra),
        )
        for method, lr, extra in PROBES
    ]


def probe_table(store: dict[str, Any]) -> str:
    lines = [
        "| method | lr | change | validation per epoch % | test % |",
        "|---|---|---|---|---|",
    ]
    for key, _ in probe_jobs():
        rec = store.get(key)
        if rec is not None:
            _, _, method, setting, _ = key.split("|")
            lr, _, change = setting.partition(" ")
            history = " / ".join(f"{h:.1f}" for h in rec["history"])
            lines.append(f"| {method} | {lr[2:]} | {change} | {history} | {rec['accuracy']:.1f} |")
    return "\n".join(lines)


def tied_ends(store: dict[str, Any], study: str = "tuned") -> list[tuple[str, str, float]]:
    """``(task, method, lr)``: one step past a grid's top that ties the best validation score.

    Ties go to the earlier point, so a grid whose best score is reached both inside and at its
    top is not widened (a tie at the bottom is a pick there, and widens); this is the point that
    a rule widening on such a tie would try next.
    """
    from tensortrain_nn.finetune.tune import widened

    found = []
    for task in TASKS:
        for method in GRIDS:
            lrs = grid_of(store, task, method, study)
            values = [_val(store, study, task, method)(lr) for lr in lrs]
            if (
                None in values
                or values[-1] != max(values)
                or values.index(values[-1]) == len(lrs) - 1
            ):
                continue  # not complete, top not best, or the top is the pick (it widened)
            new = widened([{"values": {"lr": lr}} for lr in lrs], len(lrs) - 1)
            found += [(task, method, new["lr"])] if new else []
    return found


def tie_jobs(store: dict[str, Any], study: str = "tuned") -> list[tuple[str, Any]]:
    """:func:`tied_ends` at seed 0; where one beats the tie on validation, at seeds 1 and 2."""
    jobs = []
    for task, method, lr in tied_ends(store, study):
        rec = store.get(_key(f"tie-{study}", task, method, lr, 0))
        tie = store[_key(study, task, method, picks(store, task, study)[method], 0)]
        better = rec is not None and rec["validation"]["accuracy"] > tie["validation"]["accuracy"]
        jobs += [
            (
                _key(f"tie-{study}", task, method, lr, seed),
                config_for(task, _setting(method, lr), seed, val_size=VAL_SIZE, **PROTOCOLS[study]),
            )
            for seed in ((0, 1, 2) if better else (0,))
        ]
    return jobs


def tie_table(store: dict[str, Any]) -> str:
    lines = [
        "| protocol | task | method | tied at (lr: validation %) | next lr | validation % "
        "| test % (seed 0) | test % (3 seeds) | pick's test % (3 seeds) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for study in PROTOCOLS:
        for task, method, lr in tied_ends(store, study):
            recs = [store.get(_key(f"tie-{study}", task, method, lr, s)) for s in (0, 1, 2)]
            if recs[0] is None:
                continue
            picked = picks(store, task, study)[method]
            best = _val(store, study, task, method)(picked)
            grid = grid_of(store, task, method, study)
            tied = [x for x in grid if _val(store, study, task, method)(x) == best]
            pick_accs = [store[_key(study, task, method, picked, s)]["accuracy"] for s in (0, 1, 2)]
            three = _mean_sd([r["accuracy"] for r in recs]) if None not in recs else "-"
            lines.append(
                f"| {study} | {task} | {method} | {', '.join(f'{x:g}' for x in tied)}: {best:.1f}"
                f" | {lr:g} | {recs[0]['validation']['accuracy']:.1f} | {recs[0]['accuracy']:.1f}"
                f" | {three} | {_mean_sd(pick_accs)} |"
            )
    return "\n".join(lines)


def overfit_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    """160 debates examples, 20 epochs at a constant learning rate (each method's pick)."""
    chosen = picks(store, "debates")
    if len(chosen) < len(GRIDS):
        raise SystemExit("run `tuned.py grid --tasks debates` first: the picks are not complete")
    return [
        (
            _key("overfit20", "debates", method, lr, seed),
            config_for("debates", _setting(method, lr), seed, **OVERFIT),
        )
        for method, lr in chosen.items()
        for seed in (0, 1, 2)
    ]


#: The forgetting study's rows: method name -> (method, options).
FORGET = {
    "rep": ("rep", {}),
    "adp": ("adp", {}),
    "lora": ("lora", {}),
    "full": ("full", {}),
    "rep-frozen-norms": ("rep", {"trainable_norms": False}),
    "adp-frozen-norms": ("adp", {"trainable_norms": False}),
}


def _forget_lrs(store: dict[str, Any]) -> dict[str, tuple[float, float]]:
    a, b = picks(store, "debates"), picks(store, "rt")
    if len(a) < len(GRIDS) or len(b) < len(GRIDS):
        raise SystemExit("run `tuned.py grid --tasks debates,rt` first: the picks are not complete")
    return {name: (a[method], b[method]) for name, (method, _) in FORGET.items()}


def forget_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    """debates then rt with one adapter, each task at the method's pick there, 3 seeds."""
    lrs = _forget_lrs(store)
    jobs = []
    for name, (method, options) in FORGET.items():
        lr_a, lr_b = lrs[name]
        a = Setting(method, name, lr=lr_a, options=options)
        b = Setting(method, name, lr=lr_b, options=options)
        jobs += [
            (f"forget-tuned|debates>rt|{name}|{seed}", ("debates", "rt", a, b, seed))
            for seed in (0, 1, 2)
        ]
    return jobs


def tuned_table(store: dict[str, Any], study: str = "tuned") -> str:
    lines = [
        "| task | method | grid (lr) | picked lr | validation % | seeds | test accuracy % "
        "| macro-F1 % | vs LoRA | adapter params | LoRA / adapter |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        rows = {}
        for method, lr in picks(store, task, study).items():
            recs = [store.get(_key(study, task, method, lr, s)) for s in (0, 1, 2)]
            rows[method] = (lr, [r for r in recs if r is not None])
        lora = rows.get("lora", (0, []))[1]
        lora_mean = statistics.mean(r["accuracy"] for r in lora) if lora else float("nan")
        for method, (lr, recs) in rows.items():
            accs = [r["accuracy"] for r in recs]
            params = recs[0]["adapter_params"]
            shown = f"{params:,}" if method != "full" else f"all ({recs[0]['other_params']:,})"
            ratio = "-"
            if lora and params and method in ("rep", "adp"):
                ratio = f"{lora[0]['adapter_params'] / params:.1f}x"
            grid = ", ".join(f"{x:g}" for x in grid_of(store, task, method, study))
            lines.append(
                f"| {task} | {method} | {grid} | {lr:g} | {recs[0]['validation']['accuracy']:.1f}"
                f" | {len(recs)} | {_mean_sd(accs)} | {_mean_sd([r['macro_f1'] for r in recs])}"
                f" | {statistics.mean(accs) - lora_mean:+.1f} | {shown} | {ratio} |"
            )
    return "\n".join(lines)


def grid_table(store: dict[str, Any], study: str = "tuned") -> str:
    """Every grid point at seed 0: validation and test accuracy side by side."""
    lines = [
        "| task | method | lr | validation % | test % | picked on validation | best on test |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in TASKS:
        chosen = picks(store, task, study)
        for method in GRIDS:
            lrs = grid_of(store, task, method, study)
            recs = [store.get(_key(study, task, method, lr, 0)) for lr in lrs]
            if any(r is None for r in recs):
                continue
            tests = [r["accuracy"] for r in recs]  # type: ignore[index]
            for lr, rec, test in zip(lrs, recs, tests, strict=True):
                lines.append(
                    f"| {task} | {method} | {lr:g} | {rec['validation']['accuracy']:.1f} "  # type: ignore[index]
                    f"| {test:.1f} | {'yes' if chosen.get(method) == lr else ''} "
                    f"| {'yes' if test == max(tests) else ''} |"
                )
    return "\n".join(lines)


def overfit_table(store: dict[str, Any]) -> str:
    lines = [
        "| method | lr | seeds | best epoch acc. % | last epoch acc. % | best - last | "
        "train loss at the end |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, lr in picks(store, "debates").items():
        recs = [store.get(_key("overfit20", "debates", method, lr, s)) for s in (0, 1, 2)]
        recs = [r for r in recs if r is not None]
        if not recs:
            continue
        best = [max(r["history"]) for r in recs]
        last = [r["history"][-1] for r in recs]
        gap = [b - x for b, x in zip(best, last, strict=True)]
        losses = [r["train_loss"] for r in recs]
        lines.append(
            f"| {method} | {lr:g} | {len(recs)} | {_mean_sd(best)} | {_mean_sd(last)} | "
            f"{_mean_sd(gap)} | {statistics.mean(losses):.3f} |"
        )
    return "\n".join(lines)


def write_docs(store: dict[str, Any]) -> None:
    """Replace the tuned, grid and overfit20 blocks of docs/accuracy.md."""
    blocks = {
        "tuned": tuned_table(store),
        "grid": grid_table(store),
        "tuned-w20": tuned_table(store, "tuned-w20"),
        "grid-w20": grid_table(store, "tuned-w20"),
        "overfit20": overfit_table(store),
        "probe": probe_table(store),
        "ties": tie_table(store),
        "forget-tuned": forget_table(
            store, "forget-tuned", {k: f"{a:g}, {b:g}" for k, (a, b) in _forget_lrs(store).items()}
        ),
    }
    replace_blocks(blocks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "command", choices=("grid", "seeds", "ties", "probe", "overfit", "forget", "docs")
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="comma-separated methods (rows) to run; default all")
    parser.add_argument("--tasks", default="debates,rt,rt_full")
    parser.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), default="tuned", help="grid and seeds only"
    )
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    if args.command == "grid":
        for _ in range(1 + MAX_WIDEN):  # the grid, then the points that widen it
            run_all(grid_jobs(tasks, load_store(), args.protocol), args.jobs, only=args.only)
    elif args.command == "seeds":
        run_all(seed_jobs(tasks, load_store(), args.protocol), args.jobs, only=args.only)
    elif args.command == "ties":
        for _ in range(2):  # the point past the tied end, then its seeds if it wins
            run_all(tie_jobs(load_store(), args.protocol), args.jobs, only=args.only)
    elif args.command == "probe":
        run_all(probe_jobs(), args.jobs, only=args.only)
    elif args.command == "overfit":
        run_all(overfit_jobs(load_store()), args.jobs, only=args.only)
    elif args.command == "forget":
        run_all(forget_jobs(load_store()), args.jobs, _forget_one, args.only)
    else:
        write_docs(load_store())


if __name__ == "__main__":
    sys.exit(main())
