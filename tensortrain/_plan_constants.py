"""The planner's cost-model constants (see :mod:`tensortrain.contract`). Generated file.

Rewritten by ``python benchmarks/plan_bench.py --fit`` (benchmarks/README.md, planning section).
These are the constants fitted during development to single-thread timings of 220 random matrix
products (median error 21%).
"""

SMALL_K, SMALL_A, SMALL_Q, CALL = 10.0, 10.0, 20.0, 9.5e3
