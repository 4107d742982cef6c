"""How good is tt_linear's plan? Every path timed on random TT-matrix shapes, against the plan's pick.

For random shapes (2-5 cores, modes 2-16, ranks 2-32, batch 16-4096), the forward of every grouping
of the cores into blocks and of the dense path (reconstruct, then one GEMM) is timed; the plan's
choice is then compared with the fastest measured path. The same is done for the FLOP-only rule
that came before the cost model (fewest-FLOP grouping; dense when its FLOPs are at most twice
the TT path's). Writes the ``## Planning`` section of docs/benchmarks.md.

    python benchmarks/plan_bench.py [--seconds 300] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from _doc import replace_section

from tensortrain import contract, plan
from tensortrain.matrix import dense

HEADING = "## Planning"
Groups = tuple[tuple[int, int], ...]


def groupings(d: int) -> Iterator[Groups]:
    """Every split of ``d`` cores into at least two consecutive blocks."""
    for cuts in itertools.product((False, True), repeat=d - 1):
        groups, start = [], 0
        for i, cut in enumerate(cuts):
            if cut:
                groups.append((start, i + 1))
                start = i + 1
        groups.append((start, d))
        if len(groups) > 1:
            yield tuple(groups)


def median_s(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_paths(cores: list[torch.Tensor], x: torch.Tensor) -> dict[Groups | str, float]:
    """Seconds of the dense path and of the block sweep under every grouping."""
    out: dict[Groups | str, float] = {"dense": median_s(lambda: x @ dense(cores).T)}
    for groups in groupings(len(cores)):
        out[groups] = median_s(lambda groups=groups: contract._sweep_groups(x, cores, groups))
    return out


def flop_rule(batch: int, rows: tuple, cols: tuple, ranks: tuple) -> Groups | str:
    """The FLOP-only rule: fewest-FLOP grouping; dense when at most 2x the TT FLOPs.

    The planner's own search with the cost model's surcharges set to zero counts bare FLOPs.
    """
    names = ("SMALL_K", "SMALL_A", "SMALL_Q", "CALL")
    saved = {n: getattr(contract, n) for n in names}
    try:
        for n in names:
            setattr(contract, n, 0.0)
        _, flops, groups = contract._best_groups(batch, rows, cols, ranks)
    finally:
        for n, v in saved.items():
            setattr(contract, n, v)
    return "dense" if plan(batch, rows, cols, ranks).dense_flops <= 2 * flops else groups


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0, help="time budget for the shapes")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="30 seconds, print only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    budget = 30.0 if args.quick else args.seconds
    rng, gen = random.Random(args.seed), torch.Generator().manual_seed(args.seed)
    ratios: dict[str, list[float]] = {"cost model (tt_linear)": [], "FLOP-only rule": []}
    picks_best = dict.fromkeys(ratios, 0)
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        shape = random_shape(rng)
        if shape is None:
            continue
        rows, cols, ranks, batch = shape
        cores = [
            torch.randn(ranks[k], rows[k], cols[k], ranks[k + 1], generator=gen)
            for k in range(len(rows))
        ]
        x = torch.randn(batch, math.prod(cols), generator=gen)
        times = time_paths(cores, x)
        fastest = min(times.values())
        p = plan(batch, rows, cols, ranks)
        chosen = {
            "cost model (tt_linear)": "dense" if p.kind == "dense" else p.groups,
            "FLOP-only rule": flop_rule(batch, rows, cols, ranks),
        }
        for name, pick in chosen.items():
            ratios[name].append(times[pick] / fastest)
            picks_best[name] += times[pick] == fastest
    n = len(ratios["cost model (tt_linear)"])
    lines = [
        HEADING,
        "",
        f"Produced by `benchmarks/plan_bench.py`: {n} random TT-matrix shapes (2-5 cores, modes",
        "2-16, ranks 2-32, batch 16-4096; float32, forward, median of 3 after a warm-up,",
        f"torch.set_num_threads({args.threads}), load average at the end"
        f" {os.getloadavg()[0]:.2f}). Every path is timed (each grouping of the cores into",
        "blocks, and the dense path); the table gives the time of the path a rule picks over the",
        "fastest measured path.",
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


if __name__ == "__main__":
    main()
