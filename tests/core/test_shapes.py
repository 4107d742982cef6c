"""Tests of tensortrain.shapes: factorisations, mode choice, rank resolution and budgets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import (
    check_ranks,
    choose_modes,
    clip_ranks,
    factorize,
    num_parameters,
    ranks_for_budget,
    resolve_ranks,
)

LAYER_SIZES = [8, 16, 64, 384, 768, 1024, 2304, 3072, 4096, 5120, 8192, 11008, 28672]
mode_sizes_st = st.lists(st.integers(1, 12), min_size=1, max_size=6).map(tuple)


def all_factorizations(n: int, d: int, cap: int) -> list[tuple[int, ...]]:
    """Brute force: every non-increasing d-tuple of ints <= cap with product n."""
    if d == 1:
        return [(n,)] if n <= cap else []
    return [
        (f, *rest)
        for f in range(1, min(n, cap) + 1)
        if n % f == 0
        for rest in all_factorizations(n // f, d - 1, f)
    ]


def bond_caps(sizes: tuple[int, ...]) -> list[int]:
    return [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(len(sizes) + 1)]


# factorize


@given(st.integers(1, 10**7), st.integers(1, 8))
def test_factorize_has_d_factors_with_product_n(n: int, d: int) -> None:
    factors = factorize(n, d)
    assert len(factors) == d
    assert math.prod(factors) == n


@given(st.integers(1, 10**7), st.integers(1, 8))
def test_factorize_is_non_increasing(n: int, d: int) -> None:
    factors = factorize(n, d)
    assert list(factors) == sorted(factors, reverse=True)


@given(st.integers(1, 720), st.integers(1, 4))
def test_factorize_is_the_most_balanced_factorization(n: int, d: int) -> None:
    assert factorize(n, d) == min(all_factorizations(n, d, n))


@given(st.sampled_from([2, 3, 5, 7, 13, 8191, 999_983]), st.integers(1, 6))
def test_factorize_pads_primes_with_ones(p: int, d: int) -> None:
    assert factorize(p, d) == (p,) + (1,) * (d - 1)


@pytest.mark.parametrize(
    ("n", "d", "expected"),
    [(768, 3, (12, 8, 8)), (4096, 4, (8, 8, 8, 8)), (8, 4, (2, 2, 2, 1)), (1, 3, (1, 1, 1))],
)
def test_factorize_examples(n: int, d: int, expected: tuple[int, ...]) -> None:
    assert factorize(n, d) == expected


@pytest.mark.parametrize(("n", "d", "name"), [(0, 2, "n"), (-5, 2, "n"), (6, 0, "d")])
def test_factorize_rejects_values_below_one(n: int, d: int, name: str) -> None:
    with pytest.raises(TTValueError, match=rf"{name} must be an int >= 1, got {min(n, d)}"):
        factorize(n, d)


@pytest.mark.parametrize(("n", "d"), [(6.0, 2), (6, "2"), (True, 2)])
def test_factorize_rejects_non_ints(n: object, d: object) -> None:
    with pytest.raises(TypeError, match="must be an int"):
        factorize(n, d)  # type: ignore[arg-type]


# choose_modes


@given(st.integers(1, 10**5), st.integers(1, 10**5), st.integers(1, 7))
def test_choose_modes_products_and_explicit_d(out: int, inp: int, d: int) -> None:
    rows, cols = choose_modes(out, inp, d)
    assert (math.prod(rows), math.prod(cols)) == (out, inp)
    assert len(rows) == len(cols) == d


@given(st.integers(1, 10**7), st.integers(1, 10**7))
def test_choose_modes_default_d_is_between_two_and_six(out: int, inp: int) -> None:
    rows, cols = choose_modes(out, inp)
    assert 2 <= len(rows) == len(cols) <= 6
    assert (math.prod(rows), math.prod(cols)) == (out, inp)


@pytest.mark.parametrize("k", range(2, 7))
def test_choose_modes_picks_modes_of_eight(k: int) -> None:
    assert choose_modes(8**k, 8**k) == ((8,) * k, (8,) * k)


@pytest.mark.parametrize("n", LAYER_SIZES)
def test_choose_modes_layer_sizes_have_small_modes(n: int) -> None:
    rows, _ = choose_modes(n, n)
    largest = max(rows)
    assert largest <= 16 or factorize(largest, 2) == (largest, 1)  # else an unavoidable prime


@pytest.mark.parametrize(
    ("out", "inp", "expected"),
    [
        (64, 4096, ((4, 4, 2, 2), (8, 8, 8, 8))),
        (4096, 8, ((8, 8, 8, 8), (2, 2, 2, 1))),
        (11008, 4096, ((43, 8, 8, 4), (8, 8, 8, 8))),
        (768, 768, ((12, 8, 8), (12, 8, 8))),
        (28672, 28672, ((8, 8, 8, 8, 7), (8, 8, 8, 8, 7))),
    ],
)
def test_choose_modes_examples(out: int, inp: int, expected: tuple) -> None:
    assert choose_modes(out, inp) == expected


@pytest.mark.parametrize(
    ("args", "exc", "name"),
    [((0, 4), TTValueError, "out_features"), ((4, 0), TTValueError, "in_features"),
     ((4, 4, 0), TTValueError, "d"), ((4.0, 4), TTTypeError, "out_features")],
)  # fmt: skip
def test_choose_modes_rejects_bad_arguments(args: tuple, exc: type, name: str) -> None:
    with pytest.raises(exc, match=name):
        choose_modes(*args)


# resolve_ranks, clip_ranks, check_ranks


@given(st.integers(1, 100), mode_sizes_st)
def test_resolve_int_rank_is_clipped_uniform_rank(rank: int, sizes: tuple[int, ...]) -> None:
    caps = bond_caps(sizes)
    assert resolve_ranks(rank, sizes) == tuple(min(rank, c) for c in caps)


@given(mode_sizes_st.flatmap(lambda s: st.tuples(st.just(s), st.lists(st.integers(1, 50),
       min_size=len(s) - 1, max_size=len(s) - 1))))  # fmt: skip
def test_resolve_bond_tuple_equals_full_tuple(case: tuple[tuple[int, ...], list[int]]) -> None:
    sizes, bonds = case
    expected = tuple(min(r, c) for r, c in zip([1, *bonds, 1], bond_caps(sizes), strict=True))
    assert resolve_ranks(bonds, sizes) == resolve_ranks((1, *bonds, 1), sizes) == expected


@given(st.integers(1, 100), mode_sizes_st)
def test_clipped_ranks_fit_their_neighbours(rank: int, sizes: tuple[int, ...]) -> None:
    ranks = resolve_ranks(rank, sizes)
    for k, n in enumerate(sizes):
        assert ranks[k + 1] <= ranks[k] * n
        assert ranks[k] <= n * ranks[k + 1]


@given(st.integers(1, 100), mode_sizes_st)
def test_clip_ranks_is_idempotent(rank: int, sizes: tuple[int, ...]) -> None:
    ranks = resolve_ranks(rank, sizes)
    assert clip_ranks(ranks, sizes) == ranks


def test_resolve_rank_rejects_wrong_length() -> None:
    with pytest.raises(TTShapeError, match=r"rank must have 2 bond ranks .* got 1"):
        resolve_ranks((3,), (4, 4, 4))


@pytest.mark.parametrize("rank", [0, -1, (2, 0)])
def test_resolve_rank_rejects_ranks_below_one(rank: int | tuple[int, ...]) -> None:
    with pytest.raises(TTValueError, match=r"rank(\[\d\])? must be an int >= 1"):
        resolve_ranks(rank, (4, 4, 4))


@pytest.mark.parametrize("rank", [2.0, "3", True, (2, 2.5)])
def test_resolve_rank_rejects_non_ints(rank: object) -> None:
    with pytest.raises(TTTypeError, match=r"rank(\[\d\])? must be an int"):
        resolve_ranks(rank, (4, 4, 4))  # type: ignore[arg-type]


def test_resolve_rank_rejects_boundary_ranks_other_than_one() -> None:
    with pytest.raises(TTShapeError, match="rank must start and end with 1"):
        resolve_ranks((2, 3, 3, 1), (4, 4, 4))


def test_resolve_rank_rejects_empty_mode_sizes() -> None:
    with pytest.raises(TTShapeError, match="mode_sizes"):
        resolve_ranks(2, ())


def test_check_ranks_names_the_argument_and_lengths() -> None:
    with pytest.raises(TTShapeError, match=r"ranks must have 4 entries for 3 cores, got 3"):
        check_ranks((1, 2, 1), 3)


# num_parameters and ranks_for_budget


@given(st.integers(1, 30), mode_sizes_st)
def test_num_parameters_is_sum_of_core_sizes(rank: int, sizes: tuple[int, ...]) -> None:
    ranks = resolve_ranks(rank, sizes)
    core_shapes = [(ranks[k], n, ranks[k + 1]) for k, n in enumerate(sizes)]
    assert num_parameters(sizes, ranks) == sum(math.prod(s) for s in core_shapes)


def test_num_parameters_rejects_mismatched_ranks() -> None:
    with pytest.raises(TTShapeError, match="ranks must have 3 entries"):
        num_parameters((4, 4), (1, 2, 2, 1))


@given(mode_sizes_st, st.integers(0, 5000))
def test_ranks_for_budget_is_the_largest_rank_that_fits(sizes: tuple[int, ...], extra: int) -> None:
    budget = sum(sizes) + extra
    ranks = ranks_for_budget(budget, sizes)
    assert num_parameters(sizes, ranks) <= budget
    next_ranks = resolve_ranks(max(ranks) + 1, sizes)
    assert next_ranks == ranks or num_parameters(sizes, next_ranks) > budget


@given(mode_sizes_st)
def test_ranks_for_budget_rejects_budget_below_rank_one(sizes: tuple[int, ...]) -> None:
    with pytest.raises(TTValueError, match=rf"budget={sum(sizes) - 1} is below"):
        ranks_for_budget(sum(sizes) - 1, sizes)
