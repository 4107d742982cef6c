"""How good is tt_linear's plan? Every path timed on random TT-matrix shapes, against the plan's pick.

For random shapes (2-5 cores, modes 2-16, ranks 2-32, batch 16-4096), the forward of every grouping
of the cores into blocks and of the dense path (reconstruct, then one GEMM) is timed; the plan's
choice is then compared with the fastest measured path. The same is done for the FLOP-only rule
that came before the cost model (fewest-FLOP grouping; dense when its FLOPs are at most twice
the TT path's). Writes the ``## Planning`` section of docs/benchmarks.md.

A path's time is the median of its calls: the paths near the fastest (and those the rules pick)
are called, interleaved, until each has run at least 5 times and 40 ms, so that microsecond-scale
shapes and changes of machine load do not decide the ratios; far slower paths are timed once.

With ``--fit`` it refits the cost model instead: every path of random shapes (drawn with seed 0,
not the check's seed 1) is timed, the constants ``SMALL_K, SMALL_A, SMALL_Q, CALL`` are fitted by
non-negative least squares on the relative error of the modelled times of the paths at most 3x
the fastest (:data:`NEAR`), refined by a search for the least mean pick time / fastest, and
written to ``tensortrain/_plan_constants.py``.

    python benchmarks/plan_bench.py [--seconds 300] [--threads 1] [--quick] [--fit]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import pathlib
import random
import statistics
import textwrap
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from _doc import record_target, replace_section

from tensortrain import contract, plan
from tensortrain._planning import (
    ALTERNATIVES,
    DENSE,
    FITTED,
    CostModel,
    Groups,
    Path,
    Signature,
    best_groups,
    groupings,
    path_terms,
)

HEADING = "## Planning"
Shape = tuple[tuple, tuple, tuple, int]  # row modes, column modes, ranks, batch


def _call_s(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_paths(
    cores: list[torch.Tensor],
    x: torch.Tensor,
    picks: Callable[[], list[Groups | str]] = list,
    min_seconds: float = 0.04,
    min_calls: int = 5,
) -> dict[Groups | str, float]:
    """Seconds of the dense path and of the block sweep under every grouping (medians).

    Every path is called once to warm up and once timed. The contenders (at most twice the fastest
    of those calls) and the paths in ``picks()`` are then called again, in interleaved rounds so
    that a change of machine load hits them alike, until each has at least ``min_calls`` timed
    calls and ``min_seconds`` of them; the others keep their one timed call.
    """
    fns: dict[Groups | str, Callable[[], object]] = {
        _key(path): functools.partial(contract.run_path, x, cores, path)
        for path in [DENSE, *(Path("tt", g) for g in groupings(len(cores)))]
    }
    for fn in fns.values():
        fn()
    times = {path: [_call_s(fn)] for path, fn in fns.items()}
    fastest = min(t[0] for t in times.values())
    close = {path for path, t in times.items() if t[0] <= 2 * fastest} | set(picks())
    while todo := [p for p in close if len(times[p]) < min_calls or sum(times[p]) < min_seconds]:
        for path in todo:
            times[path].append(_call_s(fns[path]))
    return {path: statistics.median(t) for path, t in times.items()}


def _key(path: Path) -> Groups | str:
    """How the tables here name a path: its blocks, or ``"dense"``."""
    return "dense" if path.kind == "dense" else path.groups


CONSTANTS = pathlib.Path(__file__).resolve().parents[1] / "tensortrain" / "_plan_constants.py"


def model_pick(
    batch: int, rows: tuple, cols: tuple, ranks: tuple, model: CostModel = FITTED
) -> Groups | str:
    """The plan's pick under ``model`` (uncached, unlike :func:`plan`)."""
    sig = Signature(batch, rows, cols, ranks)
    tt_cost, _, groups = best_groups(sig, model)
    dense_cost = model.cost(path_terms(sig, DENSE))
    return "dense" if dense_cost <= tt_cost else groups


def flop_rule(batch: int, rows: tuple, cols: tuple, ranks: tuple) -> Groups | str:
    """The FLOP-only rule: fewest-FLOP grouping; dense when at most 2x the TT FLOPs.

    The planner's own search with the cost model's surcharges set to zero counts bare FLOPs.
    """
    _, flops, groups = best_groups(Signature(batch, rows, cols, ranks), CostModel(0, 0, 0, 0))
    return "dense" if plan(batch, rows, cols, ranks).dense_flops <= 2 * flops else groups


#: The rules compared, in the order :func:`rule_picks` returns their picks.
RULES = ("cost model (tt_linear)", "FLOP-only rule", 'measure mode (set_plan_mode("measure"))')


def rule_picks(shape: Shape, cores: list[torch.Tensor], x: torch.Tensor) -> list[Groups | str]:
    """The paths that the cost model (:func:`plan`), the FLOP-only rule and the ``"measure"``
    mode (:func:`tensortrain.set_plan_mode`; timed on ``x`` once per shape) pick for ``shape``."""
    rows, cols, ranks, batch = shape
    p = plan(batch, rows, cols, ranks)
    measured = _key(plan.measure(x, cores, Signature(batch, rows, cols, ranks)))
    return [
        "dense" if p.kind == "dense" else p.groups,
        flop_rule(batch, rows, cols, ranks),
        measured,
    ]


def random_shape(rng: random.Random) -> tuple[tuple, tuple, tuple, int] | None:
    d = rng.choice([2, 3, 3, 4, 4, 5])
    modes = [2, 4, 4, 6, 8, 8, 16]
    rows = tuple(rng.choice(modes) for _ in range(d))
    cols = tuple(rng.choice(modes) for _ in range(d))
    m, n = math.prod(rows), math.prod(cols)
    r, batch = rng.choice([2, 4, 5, 8, 16, 32]), rng.choice([16, 64, 256, 1024, 4096])
    if not (64 <= m <= 8192 and 64 <= n <= 8192) or batch * max(m, n) * r > 2**26:
        return None
    if batch * m * n > 2**33:
        return None
    return rows, cols, (1, *([r] * (d - 1)), 1), batch


Picks = Callable[[Shape, list[torch.Tensor], torch.Tensor], list[Groups | str]]


def timed_shapes(
    seconds: float, seed: int, picks: Picks | None = None
) -> Iterator[tuple[Shape, list[torch.Tensor], torch.Tensor, dict[Groups | str, float]]]:
    """Random shapes (seeded), their cores and input, and the seconds of each path, for ``seconds``.

    ``picks(shape, cores, x)`` names paths to time as closely as the contenders
    (:func:`time_paths`).
    """
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        shape = random_shape(rng)
        if shape is None:
            continue
        rows, cols, ranks, batch = shape
        cores = [
            torch.randn(ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen)
            for k in range(len(rows))
        ]
        x = torch.randn(batch, math.prod(cols), generator=gen)
        chosen = functools.partial(picks, shape, cores, x) if picks else list
        yield shape, cores, x, time_paths(cores, x, chosen)


def regret(
    samples: list[tuple[Shape, dict[Groups | str, float]]], model: CostModel = FITTED
) -> tuple[float, float]:
    """Mean and worst time of ``model``'s pick over the fastest path."""
    ratios = [t[model_pick(b, r, c, k, model)] / min(t.values()) for (r, c, k, b), t in samples]
    return statistics.fmean(ratios), max(ratios)


def refine(samples: list[tuple[Shape, dict[Groups | str, float]]], values: tuple) -> tuple:
    """Coordinate search from ``values`` for the least mean (then worst) pick time / fastest.

    The least-squares fit weighs every path alike; the plan only needs the fastest path to be
    modelled cheapest, so each constant in turn is scaled (or set from zero) while that helps.
    """

    def score(vals: tuple) -> tuple[float, float]:
        return regret(samples, CostModel(*vals))

    best = score(values)
    for _ in range(3):
        for i, v in enumerate(values):
            tries = [v * f for f in (0.25, 0.5, 0.7, 1.4, 2.0, 4.0)] + [0.0]
            tries += [1.0, 10.0, 1e3, 1e4] if v == 0 else []
            for t in tries:
                trial = (*values[:i], float(f"{t:.3g}"), *values[i + 1 :])
                if (got := score(trial)) < best:
                    best, values = got, trial
    return tuple(float(f"{v:.3g}") for v in values)


#: The least-squares fit takes the paths at most this many times slower than a shape's fastest.
NEAR = 3.0


def fit(seconds: float, threads: int) -> None:
    """Time random shapes' paths, fit the constants, write ``tensortrain/_plan_constants.py``."""
    samples = [(shape, times) for shape, _, _, times in timed_shapes(seconds, seed=0)]
    terms, secs = [], []
    for (rows, cols, ranks, batch), times in samples:
        fastest = min(times.values())
        for path, t in times.items():
            if t > NEAR * fastest:  # the plan only has to rank the paths near the fastest
                continue
            route = DENSE if isinstance(path, str) else Path("tt", path)
            terms.append(path_terms(Signature(batch, rows, cols, ranks), route))
            secs.append(t)
    a = np.array(terms) / np.array(secs)[:, None]  # modelled / measured: fit it to 1
    import scipy.optimize

    w, _ = scipy.optimize.nnls(a, np.ones(len(secs)))
    if w[0] <= 0:
        raise SystemExit(f"the fit gave no FLOP term ({w}); time more shapes (--seconds)")
    err = float(np.median(np.abs(a @ w - 1)))
    before = regret(samples)
    values = refine(samples, tuple(float(v) for v in w[1:] / w[0]))
    after = regret(samples, CostModel(*values))
    CONSTANTS.write_text(
        f'''"""The planner's cost-model constants (see :mod:`tensortrain._planning`). Generated file.

Written by ``python benchmarks/plan_bench.py --fit --seconds {seconds:g} --threads {threads}``
(benchmarks/README.md, planning section) on {time.strftime("%Y-%m-%d")}, torch {torch.__version__}:
non-negative least squares on the relative error of {len(secs)} path times (those at most
{NEAR:g}x the fastest) of {len(samples)} random shapes (median error {err:.0%}), then a search for
the least mean pick time. On those shapes the pick took {after[0]:.2f}x the fastest path on
average, {after[1]:.2f}x at worst ({before[0]:.2f}x and {before[1]:.2f}x with the constants before;
the pick's time is one call when it is not near the fastest).
"""

SMALL_K, SMALL_A, SMALL_Q, CALL = {values[0]!r}, {values[1]!r}, {values[2]!r}, {values[3]!r}
'''
    )
    print(CONSTANTS.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="time budget for the shapes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="30 seconds, print only")
    ap.add_argument("--fit", action="store_true", help="refit the cost model's constants")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budget = 30.0 if args.quick else args.seconds
    if args.fit:
        fit(budget, args.threads)
        return
    ratios: dict[str, list[float]] = {name: [] for name in RULES}
    picks_best = dict.fromkeys(ratios, 0)
    for shape, cores, x, times in timed_shapes(budget, args.seed, rule_picks):
        fastest = min(times.values())
        chosen = dict(zip(ratios, rule_picks(shape, cores, x), strict=True))
        for name, pick in chosen.items():
            ratios[name].append(times[pick] / fastest)
            picks_best[name] += times[pick] == fastest
    n = len(ratios[RULES[0]])
    lines = [
        HEADING,
        "",
        textwrap.fill(
            f"Produced by `benchmarks/plan_bench.py`: {n} random TT-matrix shapes (2-5 cores, "
            "modes 2-16, ranks 2-32, batch 16-4096; float32, forward, "
            f"torch.set_num_threads({args.threads}), load average at the end "
            f"{os.getloadavg()[0]:.2f}). Every path is timed (each grouping of the cores into "
            "blocks, and the dense path): one warm-up call and one timed call each; then the "
            "contenders (at most twice the fastest of those calls) and the paths the three rules "
            "pick are called again, in interleaved rounds, until each has at least 5 timed calls "
            "and 40 ms of them; a path's time is the median of its calls. The table gives the "
            "time of the path a rule picks over the fastest measured path. The measure mode "
            f"times the {ALTERNATIVES} paths of least modelled cost on the shape's "
            "input (a warm-up round and three timed rounds, its own calls) and keeps the "
            "fastest; its pick is then judged by the timings above, like the others.",
            width=100,
        ),
        "",
        "| rule | picks the fastest | mean time / fastest | 90th percentile | worst |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, values in ratios.items():
        q90 = (
            statistics.quantiles(values, n=10, method="inclusive")[-1]
            if len(values) > 1
            else values[0]
        )
        lines.append(
            f"| {name} | {picks_best[name]} / {n} | {statistics.fmean(values):.2f}x "
            f"| {q90:.2f}x | {max(values):.2f}x |"
        )
    section = "\n".join([*lines, ""])
    print(section)
    if args.quick:
        return
    replace_section(HEADING, section)
    for name, label in zip(RULES[::2], ("cost model", "measure mode"), strict=True):
        got = ratios[name]
        record_target(f"4. planner's worst pick / fastest path, {label}", max(got), 1.3)
        record_target(
            f"4. planner's mean pick / fastest path, {label}", statistics.fmean(got), None
        )


if __name__ == "__main__":
    main()
