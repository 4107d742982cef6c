"""The planner's cost-model constants (see :mod:`tensortrain._planning`). Generated file.

Written by ``python benchmarks/plan_bench.py --fit --seconds 300 --threads 1``
(benchmarks/README.md, planning section) on 2026-12-04, torch 2.13.0+cpu:
non-negative least squares on the relative error of 491 path times (those at most
3x the fastest) of 141 random shapes (median error 21%), then a search for
the least mean pick time. On those shapes the pick took 1.06x the fastest path on
average, 3.48x at worst (1.06x and 3.48x with the constants before;
the pick's time is one call when it is not near the fastest).
"""

SMALL_K, SMALL_A, SMALL_Q, CALL = 0.0, 3.87, 14.2, 15300.0
