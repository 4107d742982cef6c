"""Tuning with one budget for every method: a grid per method, picked on validation, then tested.

``tensortrain finetune --compare rep,lora --tune lr=1e-4,3e-4,1e-3`` runs, for every method,
every point of its grid at every tuning seed on the training data less a validation part
(``val_size``, default :data:`DEFAULT_VAL_SIZE`); each run is scored on the validation part
only. The pick is the point with the best mean validation score (``val_metric``; ties go to
the earlier point). Only then is the test split read: the picked point's runs are scored on it,
and the point is trained at the remaining seeds (on the same data) and scored on it too.

With ``widen`` (``--tune-widen N``), a pick on an end of a method's grid (one numeric key
varied, e.g. the learning rate) may only mean the grid stopped too early: one more point is added
beyond that end, a step as wide as the last one (x2 on a x2 ladder), trained at the tuning seeds,
and the pick made again, up to ``N`` times; the same rule for every method.

A grid spec is ``KEY=V1,V2,...``: ``KEY`` is ``lr`` or another training field
(:data:`TRAINING_KEYS`), or a method option; ``method.KEY`` gives one method its own values.
Several specs make the cartesian product, in the order given; a method's own values replace
the shared ones for it.

Example:
    >>> [label(p) for p in parse_grid(["lr=1e-3,3e-3", "rep.rank=4,8"], ["rep", "lora"])["rep"]]
    ['lr=0.001 rank=4', 'lr=0.001 rank=8', 'lr=0.003 rank=4', 'lr=0.003 rank=8']
    >>> parse_grid(["lr=1e-3,3e-3"], ["rep", "lora"])["lora"]
    [{'lr': 0.001}, {'lr': 0.003}]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensortrain_nn._options import option_value
from tensortrain_nn.finetune import job, runs
from tensortrain_nn.finetune.config import FinetuneConfig, Result, history_row
from tensortrain_nn.finetune.methods import get_method
from tensortrain_nn.finetune.report import write_comparison
from tensortrain_nn.finetune.saved import evaluate
from tensortrain_nn.finetune.selection import best, metric_key
from tensortrain_nn.tasks import FinetuneError

#: Validation part carved from the training data when a tuning run does not set ``val_size``.
DEFAULT_VAL_SIZE = 0.1
#: Config fields a grid may vary besides method options.
TRAINING_KEYS = (
    "lr",
    "epochs",
    "batch_size",
    "weight_decay",
    "tt_weight_decay",
    "warmup_ratio",
    "schedule",
    "max_grad_norm",
)


def _split_values(text: str) -> list[str]:
    """``"1,[2,3],x"`` -> ``["1", "[2,3]", "x"]``: commas inside brackets or quotes stay."""
    parts, depth, quoted, current = [], 0, False, ""
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_grid(specs: Sequence[str], methods: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Each method's grid points (dicts of key -> value) from ``--tune`` specs.

    Raises:
        FinetuneError: A spec without ``=``, an empty value, a key given twice for a method
            (shared twice, or its own twice), a method prefix not in ``methods`` or ``none``
            (zero-shot trains nothing: it has no grid, and shared specs skip it), or a value
            repeated within a spec.
    """
    axes: dict[str, dict[str, list[Any]]] = {m: {} for m in methods if m != "none"}
    given: set[tuple[str, str, bool]] = set()
    for spec in specs:
        key, sep, raw = spec.partition("=")
        owner, dot, name = key.strip().rpartition(".")
        texts = [t.strip() for t in _split_values(raw)]
        if not sep or not name or not raw.strip() or "" in texts:
            raise FinetuneError(f"--tune expects KEY=V1,V2,... with no empty value, got {spec!r}")
        if dot and owner == "none":
            raise FinetuneError(f"--tune {spec!r}: none (zero-shot) trains nothing to tune")
        if dot and owner not in axes:
            raise FinetuneError(
                f"--tune {spec!r}: method {owner!r} is not compared (methods: {', '.join(methods)})"
            )
        values = [option_value(t) for t in texts]
        if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
            raise FinetuneError(f"--tune {spec!r}: a value is repeated")
        for method in [owner] if dot else list(axes):
            if (method, name, bool(dot)) in given:
                raise FinetuneError(f"--tune: {method}'s {name!r} is given twice")
            given.add((method, name, bool(dot)))
            if dot or (method, name, True) not in given:  # a method's own values win
                axes[method][name] = values
    return {
        m: [dict(zip(a, combo, strict=True)) for combo in itertools.product(*a.values())]
        for m, a in axes.items()
    }


def point_config(config: FinetuneConfig, method: str, point: dict[str, Any], **extra: Any) -> Any:
    """``config`` for ``method`` at grid ``point`` (training fields and method options)."""
    fields = {k: v for k, v in point.items() if k in TRAINING_KEYS}
    options = {**config.method_options, **{k: v for k, v in point.items() if k not in fields}}
    return dataclasses.replace(config, method=method, method_options=options, **fields, **extra)


def label(point: dict[str, Any]) -> str:
    """``{"lr": 0.001, "rank": 4}`` -> ``"lr=0.001 rank=4"`` (``"defaults"`` when empty)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in point.items()) or "defaults"


def tune(
    config: FinetuneConfig,
    methods: Sequence[str],
    grid: dict[str, list[dict[str, Any]]],
    *,
    seeds: Sequence[int] = (0,),
    tune_seeds: Sequence[int] | None = None,
    method_options: dict[str, dict[str, Any]] | None = None,
    command: str | None = None,
    jobs: int = 1,
    widen: int = 0,
) -> tuple[list[Result], dict[str, Any]]:
    """Tune every method on validation with the same grid budget, then test the picks.

    Args:
        config: The shared job; ``val_size`` None means :data:`DEFAULT_VAL_SIZE`.
        methods: Method names; ``none`` (zero-shot) is run once and not tuned.
        grid: Each method's grid points (:func:`parse_grid`); a method without points runs
            at its defaults.
        seeds: The seeds every method is reported at (the picked point at each).
        tune_seeds: The seeds each grid point trains at (default: ``seeds``); must be among
            ``seeds``. The pick is by the mean validation score over them.
        method_options: Per-method options under the grid (as in :func:`job.compare`).
        command: The command line, recorded in ``compare.md``.
        jobs: Runs at a time (processes).
        widen: How many times a grid whose pick is one of its ends gets one more point beyond
            that end (:func:`widened`); every tuned method's grid must then vary one number.

    Returns:
        ``(results, tuning)``: the picked point's runs at every seed (test scores), and the
        grid (per method: each point's validation scores and the pick), also written to
        ``compare.json`` and ``compare.md`` in ``config.output_dir``.

    Raises:
        FinetuneError: An unknown method, an empty seed list, tuning seeds not among
            ``seeds``, a grid point the config refuses, a grid that cannot widen, or a run
            folder that already holds a run (all checked before the first run).
    """
    tune_seeds = _checked_seeds(methods, seeds, tune_seeds, widen)
    base = Path(config.output_dir or Path("runs") / f"tune-{job._stamp()}")
    progress = config.progress and jobs == 1
    val_size = DEFAULT_VAL_SIZE if config.val_size is None else config.val_size
    shared = dataclasses.replace(config, val_size=val_size, save=True, progress=progress)
    by_method = method_options or {}
    plan = _plan(shared, methods, grid, tune_seeds, by_method, base)
    _check_folders(shared, plan, methods, grid, seeds, tune_seeds, widen, base)
    grid_results = job.run_configs([c for _, _, c in plan], jobs, shared.progress)
    tuning = pick(plan, grid_results, shared.val_metric)
    for _ in range(widen):
        more = _widen_plan(shared, tuning, tune_seeds, by_method, base)
        if not more:
            break
        plan += more
        grid_results = [*grid_results, *job.run_configs([c for *_, c in more], jobs, False)]
        tuning = pick(plan, grid_results, shared.val_metric)
    # The pick is made: only now is the test split read.
    results = _test_picks(shared, methods, tuning, seeds, jobs, base, by_method)
    write_comparison(results, base, command=command, tuning=tuning)
    return results, tuning


def _checked_seeds(
    methods: Sequence[str], seeds: Sequence[int], tune_seeds: Sequence[int] | None, widen: int
) -> list[int]:
    """The tuning seeds, once the methods, seeds and ``widen`` are known to be valid."""
    for name in methods:
        get_method(name)
    chosen = list(seeds if tune_seeds is None else tune_seeds)
    if not seeds or not chosen or not set(chosen) <= set(seeds):
        raise FinetuneError(f"tune seeds {chosen} must be a non-empty subset of {list(seeds)}")
    if widen < 0:
        raise FinetuneError(f"--tune-widen must be 0 or more, got {widen}")
    return chosen


def _check_folders(
    config: FinetuneConfig,
    plan: Sequence[tuple[str, dict[str, Any], FinetuneConfig]],
    methods: Sequence[str],
    grid: dict[str, list[dict[str, Any]]],
    seeds: Sequence[int],
    tune_seeds: Sequence[int],
    widen: int,
    base: Path,
) -> None:
    """Refuse, before anything trains, a grid that cannot widen or a folder that holds a run."""
    later = [base / f"{m}-seed{s}" for m in methods for s in (seeds[:1] if m == "none" else seeds)]
    for method in [m for m in methods if m != "none"] if widen else []:
        _ladder_key(grid.get(method) or [], f"{method}'s grid")
        folders = [
            f"{method}-{len(grid[method]) + k}-seed{s}" for k in range(widen) for s in tune_seeds
        ]
        later += [base / "grid" / f for f in folders]
    for folder in [Path(c.output_dir or "") for _, _, c in plan] + later:
        runs.check_output_dir(dataclasses.replace(config, output_dir=str(folder)))


def _plan(
    config: FinetuneConfig,
    methods: Sequence[str],
    grid: dict[str, list[dict[str, Any]]],
    seeds: Sequence[int],
    by_method: dict[str, dict[str, Any]],
    base: Path,
) -> list[tuple[str, dict[str, Any], FinetuneConfig]]:
    """``(method, grid point, config)`` of every grid run (validation only, no test)."""
    plan = []
    for method in methods:
        if method != "none":
            own = dataclasses.replace(config, method_options=by_method.get(method, {}))
            for i, point in enumerate(grid.get(method) or [{}]):
                plan += _point_runs(own, method, i, point, seeds, base)
    return plan


def _widen_plan(
    config: FinetuneConfig,
    tuning: dict[str, Any],
    seeds: Sequence[int],
    by_method: dict[str, dict[str, Any]],
    base: Path,
) -> list[tuple[str, dict[str, Any], FinetuneConfig]]:
    """The runs of the point beyond each grid whose pick is an end (:func:`widened`)."""
    plan = []
    for method, entry in tuning.items():
        point = widened(entry["points"], entry["picked"])
        if point is not None:
            own = dataclasses.replace(config, method_options=by_method.get(method, {}))
            plan += _point_runs(own, method, len(entry["points"]), point, seeds, base)
    return plan


def _point_runs(
    config: FinetuneConfig,
    method: str,
    index: int,
    point: dict[str, Any],
    seeds: Sequence[int],
    base: Path,
) -> list[tuple[str, dict[str, Any], FinetuneConfig]]:
    """The grid runs of ``method``'s point number ``index``: one per seed, validation only."""
    runs_ = []
    for seed in seeds:
        folder = str(base / "grid" / f"{method}-{index}-seed{seed}")
        one = point_config(config, method, point, seed=seed, output_dir=folder)
        runs_.append((method, point, dataclasses.replace(one, test_at_end=False)))
    return runs_


def _ladder_key(points: Sequence[dict[str, Any]], what: str) -> str:
    """The one key whose numeric values ``points`` vary (a grid that can widen).

    Raises:
        FinetuneError: Fewer than two points, or other than one numeric key varied.
    """
    varied = sorted(
        {k for p in points for k in p if len({json.dumps(q.get(k)) for q in points}) > 1}
    )
    numeric = all(
        isinstance(p.get(k), int | float) and not isinstance(p.get(k), bool)
        for p in points
        for k in varied
    )
    if len(points) < 2 or len(varied) != 1 or not numeric:
        shown = ", ".join(label(p) for p in points) or "no grid"
        raise FinetuneError(
            f"--tune-widen needs {what} to vary one number over two or more points; it is: {shown}"
        )
    return varied[0]


def widened(points: Sequence[dict[str, Any]], picked: int) -> dict[str, Any] | None:
    """The point one step beyond the end of the grid that the pick sits on, or None.

    ``points`` are :func:`pick`'s (each with its ``values``). The step repeats the last one: the
    ratio of the end value to its neighbour (their difference where either is not positive); a
    grid of values >= 0 does not step below zero.

    Example:
        >>> grid = [{"values": {"lr": v}} for v in (1e-3, 2e-3, 4e-3)]
        >>> widened(grid, 2), widened(grid, 0), widened(grid, 1)
        ({'lr': 0.008}, {'lr': 0.0005}, None)
    """
    values = [p["values"] for p in points]
    if not _at_end(values, picked):
        return None
    key = _ladder_key(values, "the grid")
    order = sorted(range(len(values)), key=lambda i: values[i][key])
    end, near = (order[-1], order[-2]) if picked == order[-1] else (order[0], order[1])
    a, b = values[end][key], values[near][key]
    new = a * a / b if a > 0 and b > 0 else 2 * a - b
    new = round(new) if isinstance(a, int) and isinstance(b, int) else float(f"{new:.12g}")
    if new in (v[key] for v in values) or (new < 0 <= min(a, b)):
        return None  # nothing new, or a non-negative grid stepping below zero
    return {**values[end], key: new}


def pick(
    plan: Sequence[tuple[str, dict[str, Any], FinetuneConfig]],
    results: Sequence[Result],
    val_metric: str,
) -> dict[str, Any]:
    """Per method: every point's mean validation score over its seeds, and the best point.

    Reads each run's ``validation`` scores only. Returns ``{method: {"points": [...],
    "picked": index, "at_end": bool}}`` (``at_end``: the pick is an end of a one-number
    grid); a point is ``{"values", "label", "metric", "score", "runs"}``.
    """
    tuning: dict[str, Any] = {}
    for (method, values, config), result in zip(plan, results, strict=True):
        points = tuning.setdefault(method, {"points": []})["points"]
        if not points or points[-1]["values"] != values:
            key = metric_key(val_metric, result.validation)
            points.append({"values": values, "label": label(values), "metric": key, "runs": []})
        run = {"seed": config.seed, "output_dir": config.output_dir}
        points[-1]["runs"].append({**run, "validation": result.validation})
    for entry in tuning.values():
        for point in entry["points"]:
            scores = [r["validation"][point["metric"]] for r in point["runs"]]
            point["score"] = statistics.fmean(scores)
        metric = entry["points"][0]["metric"]
        entry["picked"] = best([{metric: p["score"]} for p in entry["points"]], metric)
        entry["at_end"] = _at_end([p["values"] for p in entry["points"]], entry["picked"])
    return tuning


def _at_end(values: Sequence[dict[str, Any]], picked: int) -> bool:
    """Whether ``picked`` is the smallest or largest value of a one-number grid."""
    try:
        key = _ladder_key(values, "the grid")
    except FinetuneError:
        return False
    ordered = sorted(v[key] for v in values)
    return values[picked][key] in (ordered[0], ordered[-1])


def _test_picks(
    config: FinetuneConfig,
    methods: Sequence[str],
    tuning: dict[str, Any],
    seeds: Sequence[int],
    jobs: int,
    base: Path,
    by_method: dict[str, dict[str, Any]],
) -> list[Result]:
    """The picked points at every seed, scored on the test split (tuned runs are reused)."""
    new: list[FinetuneConfig] = []
    reused: dict[str, dict[int, dict[str, Any]]] = {}
    for method in methods:
        if method == "none":  # nothing to tune: scored on the test split directly
            folder = str(base / f"none-seed{seeds[0]}")
            new.append(dataclasses.replace(config, method="none", seed=seeds[0], output_dir=folder))
            continue
        point = tuning[method]["points"][tuning[method]["picked"]]
        reused[method] = {r["seed"]: r for r in point["runs"]}
        own = dataclasses.replace(config, method_options=by_method.get(method, {}))
        for seed in seeds:
            if seed not in reused[method]:
                folder = str(base / f"{method}-seed{seed}")
                new.append(point_config(own, method, point["values"], seed=seed, output_dir=folder))
    trained = iter(job.run_configs(new, jobs, config.progress))
    results = []
    for method in methods:
        done = reused.get(method, {})
        for seed in seeds[:1] if method == "none" else seeds:
            results.append(_tested(done[seed]) if seed in done else next(trained))
    return results


def _tested(run: dict[str, Any]) -> Result:
    """A tuned run's result with its test scores (its saved adapter, scored now)."""
    folder = Path(run["output_dir"])
    saved = json.loads((folder / "report.json").read_text())
    scores = history_row(evaluate(folder), evaluated=True)
    result = Result(**{k: v for k, v in saved.items() if k in Result.__dataclass_fields__})
    return dataclasses.replace(
        result,
        accuracy=scores.get("accuracy", float("nan")),
        macro_f1=scores.get("macro_f1", float("nan")),
        num_test=int(scores["examples"]),
        metrics=job._metrics(scores),
    )
