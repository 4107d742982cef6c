"""Shape helpers: balanced factorisations, TT-matrix mode shapes and TT ranks.

Ranks are always the full tuple ``(r_0, r_1, ..., r_d)`` with ``r_0 = r_d = 1``. For a TT-matrix,
the ``mode_sizes`` these helpers take are the products ``m_k * n_k`` of each core's row and column
modes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

from tensortrain._checks import check_int
from tensortrain.errors import TTShapeError, TTValueError

__all__ = [
    "check_ranks",
    "choose_modes",
    "clip_ranks",
    "factorize",
    "num_parameters",
    "ranks_for_budget",
    "resolve_ranks",
]

#: Mode size that :func:`choose_modes` aims for when it picks the number of cores.
TARGET_MODE_SIZE = 8
#: Range of core counts :func:`choose_modes` picks from.
MIN_CORES, MAX_CORES = 2, 6


def _check_mode_sizes(mode_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(check_int(f"mode_sizes[{k}]", n) for k, n in enumerate(mode_sizes))
    if not sizes:
        raise TTShapeError("mode_sizes must hold at least one mode, got ()")
    return sizes


def _divisors(n: int) -> tuple[int, ...]:
    """All divisors of ``n`` in increasing order (trial division, O(sqrt(n)))."""
    small = [f for f in range(1, math.isqrt(n) + 1) if n % f == 0]
    return tuple(sorted(set(small + [n // f for f in small])))


@lru_cache(maxsize=4096)
def _balanced(n: int, d: int, cap: int) -> tuple[int, ...] | None:
    """Lexicographically smallest non-increasing ``d``-tuple of factors ``<= cap`` of ``n``."""
    if d == 1:
        return (n,) if n <= cap else None
    for first in _divisors(n):
        if first > cap:
            return None
        if first**d < n:  # d factors all <= first cannot reach n
            continue
        rest = _balanced(n // first, d - 1, first)
        if rest is not None:
            return (first, *rest)
    return None


def factorize(n: int, d: int) -> tuple[int, ...]:
    """Split ``n`` into ``d`` factors whose product is exactly ``n``, as balanced as possible.

    The factors minimise the largest factor; ties are broken by minimising the second largest, then
    the third, and so on (the lexicographically smallest tuple in non-increasing order). The result
    is sorted in non-increasing order. When ``n`` has fewer than ``d`` prime factors (a prime, a
    small ``n``), the tail is padded with 1s.

    Complexity: O(sqrt(n)) for the divisors, then a search that stops at the first feasible
    largest factor (fast for every size a neural-network layer has).

    Args:
        n: The integer to factorise, ``>= 1``.
        d: The number of factors, ``>= 1``.

    Returns:
        ``d`` positive ints in non-increasing order whose product is ``n``.

    Raises:
        TTTypeError: ``n`` or ``d`` is not an int.
        TTValueError: ``n < 1`` or ``d < 1``.

    Example:
        >>> factorize(768, 3)
        (12, 8, 8)
        >>> factorize(7, 3)
        (7, 1, 1)
    """
    check_int("n", n)
    check_int("d", d)
    result = _balanced(n, d, n)
    assert result is not None  # (n, 1, ..., 1) always fits under cap n
    return result


def choose_modes(
    out_features: int, in_features: int, d: int | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pick row (output) and column (input) modes for an ``(out_features, in_features)`` TT-matrix.

    Both sides are factorised with :func:`factorize` (so each mode tuple is non-increasing, padded
    with 1s when a side has too few prime factors). When ``d`` is None it is the number of cores
    that makes the modes of the larger side closest to ``TARGET_MODE_SIZE`` (8), i.e.
    ``round(log8(max(out_features, in_features)))`` clamped to ``[2, 6]``: cores of about 8 x 8
    keep ``m_k * n_k`` near ``r**2`` at the usual TT ranks 4-16.

    Args:
        out_features: Rows ``M = prod(row_modes)``, ``>= 1``.
        in_features: Columns ``N = prod(col_modes)``, ``>= 1``.
        d: Number of cores, ``>= 1``; None picks it as above.

    Returns:
        ``(row_modes, col_modes)``, two tuples of length ``d``.

    Raises:
        TTTypeError: An argument is not an int.
        TTValueError: An argument is ``< 1``.

    Example:
        >>> choose_modes(768, 3072)
        ((8, 6, 4, 4), (8, 8, 8, 6))
        >>> choose_modes(4096, 4096)
        ((8, 8, 8, 8), (8, 8, 8, 8))
    """
    check_int("out_features", out_features)
    check_int("in_features", in_features)
    if d is None:
        ideal = round(math.log(max(out_features, in_features), TARGET_MODE_SIZE))
        d = min(max(ideal, MIN_CORES), MAX_CORES)
    check_int("d", d)
    return factorize(out_features, d), factorize(in_features, d)


def check_ranks(ranks: Sequence[int], num_cores: int, name: str = "ranks") -> tuple[int, ...]:
    """Validate a full rank tuple ``(1, r_1, ..., r_{d-1}, 1)`` for ``num_cores`` cores.

    Args:
        ranks: The ranks, ``num_cores + 1`` positive ints with boundary ranks 1.
        num_cores: The number of cores ``d``.
        name: The argument name used in error messages.

    Returns:
        ``ranks`` as a tuple of ints.

    Raises:
        TTTypeError: A rank is not an int.
        TTValueError: A rank is ``< 1``.
        TTShapeError: Wrong length, or a boundary rank is not 1.

    Example:
        >>> check_ranks([1, 4, 1], 2)
        (1, 4, 1)
    """
    if len(ranks) != num_cores + 1:
        raise TTShapeError(
            f"{name} must have {num_cores + 1} entries for {num_cores} cores, got {len(ranks)}: "
            f"{tuple(ranks)}"
        )
    full = tuple(check_int(f"{name}[{k}]", r) for k, r in enumerate(ranks))
    if full[0] != 1 or full[-1] != 1:
        raise TTShapeError(f"{name} must start and end with 1, got {full}")
    return full


def clip_ranks(ranks: Sequence[int], mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Clip each bond rank to the largest the shapes allow.

    Bond ``k`` is capped at ``min(prod(mode_sizes[:k]), prod(mode_sizes[k:]))``, the rank of the
    unfolding that splits the first ``k`` modes from the rest.

    Args:
        ranks: Full rank tuple ``(1, r_1, ..., r_{d-1}, 1)``.
        mode_sizes: ``(n_1, ..., n_d)``; ``m_k * n_k`` for a TT-matrix.

    Returns:
        The clipped full rank tuple.

    Example:
        >>> clip_ranks((1, 16, 16, 1), (2, 3, 4))
        (1, 2, 4, 1)
    """
    sizes = _check_mode_sizes(mode_sizes)
    full = check_ranks(ranks, len(sizes))
    return tuple(min(r, math.prod(sizes[:k]), math.prod(sizes[k:])) for k, r in enumerate(full))


def resolve_ranks(rank: int | Sequence[int], mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """Turn a rank spec into the full, clipped rank tuple ``(1, r_1, ..., r_{d-1}, 1)``.

    Args:
        rank: One int for every bond, ``d - 1`` bond ranks, or ``d + 1`` ranks with boundary 1s.
        mode_sizes: ``(n_1, ..., n_d)``; ``m_k * n_k`` for a TT-matrix.

    Returns:
        The full rank tuple, each bond clipped as in :func:`clip_ranks`.

    Raises:
        TTTypeError: ``rank`` (or an entry) is not an int.
        TTValueError: A rank is ``< 1``.
        TTShapeError: ``rank`` has neither ``d - 1`` nor ``d + 1`` entries.

    Example:
        >>> resolve_ranks(8, (4, 4, 4))
        (1, 4, 4, 1)
        >>> resolve_ranks((2, 3), (4, 4, 4))
        (1, 2, 3, 1)
    """
    sizes = _check_mode_sizes(mode_sizes)
    d = len(sizes)
    if isinstance(rank, Sequence) and not isinstance(rank, str):
        if len(rank) == d - 1:
            rank = (1, *rank, 1)
        elif len(rank) != d + 1:
            raise TTShapeError(
                f"rank must have {d - 1} bond ranks (or {d + 1} with boundary 1s) for {d} modes, "
                f"got {len(rank)}: {tuple(rank)}"
            )
        return clip_ranks(check_ranks(rank, d, name="rank"), sizes)
    check_int("rank", rank)
    return clip_ranks((1, *[rank] * (d - 1), 1), sizes)


def num_parameters(mode_sizes: Sequence[int], ranks: Sequence[int]) -> int:
    """Number of entries in TT cores: ``sum_k r_{k-1} * mode_sizes[k] * r_k``.

    Example:
        >>> num_parameters((4, 4, 4), (1, 2, 3, 1))
        44
    """
    sizes = _check_mode_sizes(mode_sizes)
    full = check_ranks(ranks, len(sizes))
    return sum(full[k] * n * full[k + 1] for k, n in enumerate(sizes))


def ranks_for_budget(budget: int, mode_sizes: Sequence[int]) -> tuple[int, ...]:
    """The largest uniform bond rank (after clipping) whose cores fit in ``budget`` parameters.

    Args:
        budget: Maximum number of core entries.
        mode_sizes: ``(n_1, ..., n_d)``; ``m_k * n_k`` for a TT-matrix.

    Returns:
        The full rank tuple, as :func:`resolve_ranks` returns it.

    Raises:
        TTValueError: ``budget`` is below the parameter count at rank 1 (``sum(mode_sizes)``).

    Example:
        >>> ranks_for_budget(100, (4, 4, 4))
        (1, 4, 4, 1)
    """
    sizes = _check_mode_sizes(mode_sizes)
    check_int("budget", budget, minimum=0)
    if num_parameters(sizes, resolve_ranks(1, sizes)) > budget:
        raise TTValueError(
            f"budget={budget} is below the {sum(sizes)} parameters rank 1 needs for mode_sizes "
            f"{sizes}"
        )
    lo, hi = 1, max(resolve_ranks(math.prod(sizes), sizes))
    while lo < hi:  # invariant: rank lo fits, every rank > hi does not
        mid = (lo + hi + 1) // 2
        if num_parameters(sizes, resolve_ranks(mid, sizes)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return resolve_ranks(lo, sizes)
