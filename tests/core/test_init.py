"""Tests of tensortrain.init: entry std of the reconstruction, zero-output init, init schemes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.init import linear_init_std, random_cores

SEED = 1234
no_deadline = settings(deadline=None)  # the first call pays for torch's lazy setup


def reconstruct(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Dense reference in float64: all entries of the TT tensor/matrix, flattened."""
    result = torch.ones(1, 1, dtype=torch.float64)
    for core in cores:
        flat = core.to(torch.float64).reshape(core.shape[0], -1, core.shape[-1])
        result = torch.einsum("pa,anb->pnb", result, flat).reshape(-1, core.shape[-1])
    return result.flatten()


def gen(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@st.composite
def tt_layouts(draw: st.DrawFn) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    """Random (mode_shapes, ranks): TT tensors or TT-matrices with 1-5 cores."""
    d = draw(st.integers(1, 5))
    ndim = draw(st.sampled_from([1, 2]))
    shapes = [tuple(draw(st.integers(1, 4)) for _ in range(ndim)) for _ in range(d)]
    bonds = [draw(st.integers(1, 6)) for _ in range(d - 1)]
    return shapes, (1, *bonds, 1)


@given(tt_layouts())
@no_deadline
def test_core_shapes_follow_modes_and_ranks(layout: tuple) -> None:
    shapes, ranks = layout
    cores = random_cores(shapes, ranks)
    assert [tuple(c.shape) for c in cores] == [
        (ranks[k], *s, ranks[k + 1]) for k, s in enumerate(shapes)
    ]


@pytest.mark.parametrize(
    ("shapes", "ranks", "std"),
    [
        ([(3, 4), (4, 3), (2, 2)], (1, 6, 5, 1), 0.05),
        ([(4,), (5,), (3,), (2,)], (1, 4, 12, 2, 1), 3.0),
        ([(8,)], (1, 1), 0.5),
    ],
)
def test_reconstructed_entries_have_target_std(shapes: list, ranks: tuple, std: float) -> None:
    g = gen()
    # Draws are independent; entries within a draw are not, so the error bar comes from draws.
    per_draw = torch.stack(
        [
            reconstruct(random_cores(shapes, ranks, std=std, generator=g, dtype=torch.float64))
            .square()
            .mean()
            for _ in range(2000)
        ]
    )
    variance = per_draw.mean().item()
    standard_error = per_draw.std().item() / math.sqrt(len(per_draw))
    assert standard_error < 0.05 * std**2  # the test can tell a 10% error apart
    assert abs(variance - std**2) < 6 * standard_error


@given(tt_layouts(), st.floats(1e-4, 1e3))
@no_deadline
def test_std_scales_every_core_equally(layout: tuple, std: float) -> None:
    shapes, ranks = layout
    unit = random_cores(shapes, ranks, generator=gen(), dtype=torch.float64)
    scaled = random_cores(shapes, ranks, std=std, generator=gen(), dtype=torch.float64)
    for u, s in zip(unit, scaled, strict=True):
        torch.testing.assert_close(s, u * std ** (1 / len(shapes)))


def test_many_cores_with_large_ranks_stay_in_range() -> None:
    d, rank = 40, 512
    cores = random_cores([(1,)] * d, (1, *[rank] * (d - 1), 1), std=1e-3, generator=gen())
    expected = (1e-6 / rank ** (d - 1)) ** (1 / (2 * d))
    for core in cores:
        assert torch.isfinite(core).all()
        assert 0.5 * expected < core.std().item() < 2 * expected


@given(tt_layouts(), st.data())
@no_deadline
def test_zero_core_makes_reconstruction_exactly_zero(layout: tuple, data: st.DataObject) -> None:
    shapes, ranks = layout
    k = data.draw(st.integers(-len(shapes), len(shapes) - 1))
    assert torch.count_nonzero(reconstruct(random_cores(shapes, ranks, zero_core=k))) == 0


@given(tt_layouts(), st.data())
@no_deadline
def test_zero_core_leaves_other_cores_unchanged(layout: tuple, data: st.DataObject) -> None:
    shapes, ranks = layout
    k = data.draw(st.integers(0, len(shapes) - 1))
    plain = random_cores(shapes, ranks, std=0.1, generator=gen())
    zeroed = random_cores(shapes, ranks, std=0.1, zero_core=k, generator=gen())
    for j, (p, z) in enumerate(zip(plain, zeroed, strict=True)):
        assert torch.equal(z, torch.zeros_like(p) if j == k else p)


@given(st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
@settings(deadline=None, max_examples=10)
def test_dtype_is_honoured(dtype: torch.dtype) -> None:
    cores = random_cores([(2, 3), (3, 2)], (1, 4, 1), dtype=dtype, generator=gen())
    assert all(c.dtype == dtype for c in cores)


def test_default_dtype_is_torch_default() -> None:
    assert random_cores([(2,)], (1, 1))[0].dtype == torch.get_default_dtype()


@pytest.mark.parametrize(
    "device",
    ["cpu", "meta", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA"))],
)  # fmt: skip
def test_device_is_honoured(device: str) -> None:
    cores = random_cores([(2,), (3,)], (1, 2, 1), device=device, generator=gen())
    assert all(c.device.type == device for c in cores)


def test_same_seed_gives_same_cores() -> None:
    first = random_cores([(2, 3), (3, 2)], (1, 4, 1), generator=gen())
    second = random_cores([(2, 3), (3, 2)], (1, 4, 1), generator=gen())
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize(
    ("shapes", "ranks", "exc", "match"),
    [
        ([(2,), (3,)], (1, 2, 2, 1), TTShapeError, r"ranks must have 3 entries for 2 cores"),
        ([(2,), (3,)], (2, 2, 1), TTShapeError, r"ranks must start and end with 1"),
        ([(2,), (3,)], (1, 0, 1), TTValueError, r"ranks\[1\] must be an int >= 1, got 0"),
        ([(2,), (3,)], (1, 2.0, 1), TTTypeError, r"ranks\[1\] must be an int"),
        ([(2,), (3, 3)], (1, 2, 1), TTShapeError, r"mode_shapes must be non-empty tuples"),
        ([(2,), (0,)], (1, 2, 1), TTValueError, r"mode_shapes\[1\]\[0\] must be an int >= 1"),
        ([], (1,), TTShapeError, r"mode_shapes must hold at least one core"),
    ],
)
def test_rejects_bad_layouts(shapes: list, ranks: tuple, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        random_cores(shapes, ranks)


@pytest.mark.parametrize("zero_core", [2, -3])
def test_rejects_zero_core_out_of_range(zero_core: int) -> None:
    with pytest.raises(TTValueError, match=rf"zero_core must be in \[-2, 1\].*got {zero_core}"):
        random_cores([(2,), (3,)], (1, 2, 1), zero_core=zero_core)


@pytest.mark.parametrize("std", [-1.0, math.inf, math.nan])
def test_rejects_bad_std(std: float) -> None:
    with pytest.raises(TTValueError, match=r"std must be (a finite number|in \[0, inf\])"):
        random_cores([(2,)], (1, 1), std=std)


def test_rejects_integer_dtype() -> None:
    with pytest.raises(TTTypeError, match="dtype must be a floating dtype"):
        random_cores([(2,)], (1, 1), dtype=torch.int64)


# linear_init_std


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("torch", 1 / math.sqrt(3 * 300)),
        ("glorot", math.sqrt(2 / 500)),
        ("xavier", math.sqrt(2 / 500)),
        ("kaiming", math.sqrt(2 / 300)),
        ("he", math.sqrt(2 / 300)),
        ("lecun", 1 / math.sqrt(300)),
    ],
)
def test_linear_init_std_formulas(scheme: str, expected: float) -> None:
    assert linear_init_std(300, 200, scheme) == pytest.approx(expected, rel=1e-12)


def test_torch_scheme_matches_nn_linear() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        weight = torch.nn.Linear(512, 384).weight.detach().double()
    # A uniform sample of 196608 entries: the relative error of its std is about 0.1%.
    assert weight.std().item() == pytest.approx(linear_init_std(512, 384), rel=0.01)


def test_linear_init_std_rejects_unknown_scheme() -> None:
    with pytest.raises(TTValueError, match=r"scheme must be one of \['glorot', .*got 'orthogonal'"):
        linear_init_std(4, 4, "orthogonal")


@pytest.mark.parametrize(("fan_in", "fan_out", "name"), [(0, 4, "fan_in"), (4, -1, "fan_out")])
def test_linear_init_std_rejects_bad_fans(fan_in: int, fan_out: int, name: str) -> None:
    with pytest.raises(TTValueError, match=rf"{name} must be an int >= 1"):
        linear_init_std(fan_in, fan_out)
