"""TTLinear, TTReparam and TTAdapter against dense references built from their own weights."""

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.testing import assert_close
from tensortrain_nn import TTAdapter, TTLinear, TTReparam

features = st.sampled_from([1, 2, 3, 6, 8, 12, 16, 24, 30, 64])
lead = st.lists(st.integers(1, 3), min_size=0, max_size=2)


@given(features, features, st.integers(1, 6), lead, st.booleans(), st.integers(0, 2**31 - 1))
def test_ttlinear_equals_dense_reference(n_in, n_out, rank, lead_shape, bias, seed):
    torch.manual_seed(seed)
    layer = TTLinear(n_in, n_out, rank=rank, bias=bias, dtype=torch.float64)
    x = torch.randn(*lead_shape, n_in, dtype=torch.float64)
    ref = x @ layer.weight.T + (layer.bias if bias else 0)
    assert_close(layer(x), ref)
    assert layer(x).shape == (*lead_shape, n_out)
    assert max(layer.ranks) <= rank


def test_ttlinear_3d_input_and_given_modes():
    layer = TTLinear(24, 12, rank=3, in_modes=(2, 3, 4), out_modes=(3, 2, 2), dtype=torch.float64)
    x = torch.randn(4, 7, 24, dtype=torch.float64)
    assert_close(layer(x), x @ layer.weight.T + layer.bias)
    assert "in_modes=(2, 3, 4)" in repr(layer) and "params=" in repr(layer)


@pytest.mark.parametrize("scheme", ["torch", "glorot", "lecun"])
def test_ttlinear_init_std_matches_scheme(scheme):
    torch.manual_seed(0)
    from tensortrain.init import linear_init_std

    stds = torch.stack(
        [
            TTLinear(256, 256, rank=8, init=scheme, bias=False).weight.detach().std()
            for _ in range(20)
        ]
    )
    target = linear_init_std(256, 256, scheme)
    assert abs(float(stds.pow(2).mean().sqrt()) / target - 1) < 0.25


def test_ttlinear_gradcheck():
    from tensortrain import tt_linear

    layer = TTLinear(6, 4, rank=2, dtype=torch.float64)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    cores = tuple(layer.cores)
    assert torch.autograd.gradcheck(
        lambda x, b, *c: tt_linear(x, list(c), b), (x, layer.bias, *cores)
    )


@given(features, features, st.integers(0, 2**31 - 1))
def test_from_linear_full_rank_reproduces_layer(n_in, n_out, seed):
    torch.manual_seed(seed)
    dense = nn.Linear(n_in, n_out).double()
    tt = TTLinear.from_linear(dense)
    x = torch.randn(5, n_in, dtype=torch.float64)
    assert_close(tt(x), dense(x))


@given(st.floats(0.01, 0.9), st.integers(0, 2**31 - 1))
def test_from_linear_eps_bound(eps, seed):
    torch.manual_seed(seed)
    dense = nn.Linear(64, 48).double()
    tt = TTLinear.from_linear(dense, eps=eps)
    err = torch.linalg.matrix_norm(tt.weight - dense.weight)
    assert err <= eps * torch.linalg.matrix_norm(dense.weight) * (1 + 1e-9)
    assert torch.equal(tt.bias, dense.bias)
    assert tt.bias is not dense.bias


def test_from_linear_does_not_touch_original():
    dense = nn.Linear(16, 8)
    before = copy.deepcopy(dense.state_dict())
    TTLinear.from_linear(dense, max_rank=2)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"in_features": 0, "out_features": 4},
            TTValueError,
            "in_features must be a positive int, got 0",
        ),
        ({"in_features": 8, "out_features": 4, "rank": 0}, TTValueError, r"rank"),
        (
            {"in_features": 8, "out_features": 4, "in_modes": (2, 2), "out_modes": (2, 2)},
            TTShapeError,
            r"in_modes must be positive with product 8, got \(2, 2\)",
        ),
        (
            {"in_features": 8, "out_features": 4, "in_modes": (8,), "out_modes": (2, 2)},
            TTShapeError,
            "same length",
        ),
        ({"in_features": 8, "out_features": 4, "in_modes": (8,)}, TTShapeError, "together"),
    ],
)
def test_ttlinear_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TTLinear(**kwargs)


def test_from_linear_rejects_other_modules():
    with pytest.raises(TTTypeError, match=r"linear must be an nn\.Linear, got Conv1d"):
        TTLinear.from_linear(nn.Conv1d(2, 2, 1))


# ---------------------------------------------------------------- TTReparam


def reparam_pair(n_in=24, n_out=16, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    base = nn.Linear(n_in, n_out).to(dtype)
    return base, TTReparam(copy.deepcopy(base), **kw)


@given(features, features, st.sampled_from(["factors", "full"]), lead, st.integers(1, 8))
def test_reparam_zero_at_init_and_dense_reference(n_in, n_out, form, lead_shape, r):
    base, layer = reparam_pair(n_in, n_out, form=form, r=r, dropout=0.0)
    x = torch.randn(*lead_shape, n_in, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))
    for p in layer.adapters["default"].parameters():  # give the update a nonzero value
        p.data.normal_()
    update = layer.adapters["default"]
    assert_close(layer(x), base(x) + x @ update.delta_weight().T)


def test_reparam_paper_init_is_small_but_nonzero():
    base, layer = reparam_pair(768, 768, init="paper", dropout=0.0)
    x = torch.randn(16, 768, dtype=torch.float64)
    diff = torch.linalg.vector_norm(layer(x) - base(x))
    assert 0 < diff < 0.5 * torch.linalg.vector_norm(base(x))


def test_reparam_one_step_changes_only_tt_cores_and_reaches_them():
    _, layer = reparam_pair(dtype=torch.float32)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    opt = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(8, 24)
    for step in range(2):
        opt.zero_grad()
        layer(x).pow(2).sum().backward()
        grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
        assert all(g is not None for g in grads.values())
        if step == 0:
            last = len(layer.adapters["default"].B.cores) - 1
            assert grads[f"adapters.default.B.cores.{last}"].abs().sum() > 0  # the zero core first
        opt.step()
    after = layer.state_dict()
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (".cores." in k), k  # base weight and bias frozen; every core moved
    assert not any(p.requires_grad for p in layer.base_layer.parameters())


@pytest.mark.parametrize("form", ["factors", "full"])
def test_reparam_merge_unmerge(form):
    base, layer = reparam_pair(form=form, dropout=0.0)
    for p in layer.adapters["default"].parameters():
        p.data.normal_(std=0.1)
    x = torch.randn(5, 24, dtype=torch.float64)
    y = layer(x)
    layer.merge()
    assert layer.merged_adapters == ["default"]
    assert_close(layer(x), y)
    assert_close(layer.base_layer(x), y)  # folded: the base alone now gives the adapted output
    with layer_disabled(layer):
        assert_close(layer(x), base(x))  # merged but disabled: the update is taken back out
    layer.unmerge()
    assert_close(layer.base_layer.weight, base.weight, rtol=1e-12)
    assert_close(layer(x), y)


class layer_disabled:
    def __init__(self, layer):
        self.layer = layer

    def __enter__(self):
        self.layer.adapters_disabled = True

    def __exit__(self, *exc):
        self.layer.adapters_disabled = False


def test_reparam_merge_state_survives_state_dict_round_trip():
    _, layer = reparam_pair(dropout=0.0)
    for p in layer.adapters["default"].parameters():
        p.data.normal_(std=0.1)
    layer.merge()
    state = layer.state_dict()
    _, fresh = reparam_pair(dropout=0.0)
    fresh.load_state_dict(state)
    assert fresh.merged_adapters == ["default"]
    x = torch.randn(3, 24, dtype=torch.float64)
    assert_close(fresh(x), layer(x))
    fresh.unmerge()
    layer.unmerge()
    assert_close(fresh.base_layer.weight, layer.base_layer.weight)


def test_reparam_safe_merge_refuses_non_finite():
    _, layer = reparam_pair(dropout=0.0)
    layer.adapters["default"].B.cores[0].data.fill_(float("inf"))
    w = layer.base_layer.weight.clone()
    with pytest.raises(TTValueError, match="non-finite"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w) and layer.merged_adapters == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reparam_half_precision_keeps_dtype_and_merges_in_float32(dtype):
    base, layer = reparam_pair(64, 64, dtype=dtype, dropout=0.0, adapter_dtype="base")
    assert all(p.dtype == dtype for p in layer.parameters())
    for p in layer.adapters["default"].parameters():
        p.data.normal_(std=0.3)
    x = torch.randn(4, 64, dtype=dtype)
    y = layer(x)
    assert y.dtype == dtype
    expected = (base.weight.float() + layer.adapters["default"].delta_weight(torch.float32)).to(
        dtype
    )
    layer.merge()
    assert torch.equal(layer.base_layer.weight, expected)
    assert layer.base_layer.weight.dtype == dtype


def test_reparam_wraps_gpt2_conv1d():
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(48, 16).double()  # nf=48 out, nx=16 in
    layer = TTReparam(copy.deepcopy(conv), dropout=0.0)
    assert (layer.in_features, layer.out_features) == (16, 48)
    for p in layer.adapters["default"].parameters():
        p.data.normal_(std=0.1)
    x = torch.randn(2, 3, 16, dtype=torch.float64)
    assert_close(layer(x), conv(x) + x @ layer.adapters["default"].delta_weight().T)
    y = layer(x)
    layer.merge()
    assert_close(layer(x), y)
    layer.unmerge()
    assert_close(layer.base_layer.weight, conv.weight)


def test_reparam_named_adapters():
    base, layer = reparam_pair(dropout=0.0)
    layer.add_adapter("task2", r=4, tt_rank=2, dropout=0.0)
    for p in layer.adapters["task2"].parameters():
        p.data.normal_(std=0.1)
    x = torch.randn(3, 24, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))  # "default" (zero) is active
    layer.set_adapter("task2")
    assert_close(layer(x), base(x) + x @ layer.adapters["task2"].delta_weight().T)
    with pytest.raises(TTValueError, match="already exists"):
        layer.add_adapter("task2")
    with pytest.raises(
        TTValueError, match=r"adapter_name must be one of \['default', 'task2'\], got 'nope'"
    ):
        layer.set_adapter("nope")
    layer.merge()
    with pytest.raises(TTValueError, match="unmerge"):
        layer.delete_adapter("task2")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0}, TTValueError, "r must be an int >= 1, got 0"),
        ({"tt_rank": 0}, TTValueError, "rank"),
        ({"dropout": 1.5}, TTValueError, "dropout"),
        ({"alpha": float("nan")}, TTValueError, "alpha must be a finite number, got nan"),
        ({"dropout": float("nan")}, TTValueError, "dropout must be a finite number"),
        ({"form": "dense"}, TTValueError, r"form must be one of \['factors', 'full'\]"),
        ({"adapter_name": "a b"}, TTValueError, "identifier"),
    ],
)
def test_reparam_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        TTReparam(nn.Linear(8, 8), **kwargs)


def test_reparam_rejects_unsupported_module():
    with pytest.raises(
        TTTypeError,
        match=r"base_layer must be an nn\.Linear or a transformers Conv1D, got Embedding",
    ):
        TTReparam(nn.Embedding(4, 4))


# ---------------------------------------------------------------- TTAdapter


@given(
    st.sampled_from([8, 16, 24, 48]),
    st.sampled_from([2, 4, 8]),
    lead,
    st.sampled_from(["relu", "gelu", "tanh"]),
)
def test_adapter_identity_at_init_and_dense_reference(h, b, lead_shape, act):
    torch.manual_seed(0)
    base = nn.Linear(h, h).double()
    layer = TTAdapter(copy.deepcopy(base), bottleneck=b, tt_rank=3, activation=act)
    x = torch.randn(*lead_shape, h, dtype=torch.float64)
    assert torch.equal(layer(x), base(x))
    ad = layer.adapters["default"]
    for p in ad.parameters():
        p.data.normal_(std=0.3)
    hidden = base(x)
    ref = hidden + ad.act(hidden @ ad.down.weight.T + ad.down.bias) @ ad.up.weight.T + ad.up.bias
    assert_close(layer(x), ref)


def test_adapter_paper_init_and_training_step():
    torch.manual_seed(0)
    base = nn.Linear(32, 32)
    layer = TTAdapter(copy.deepcopy(base), bottleneck=8, init="paper")
    x = torch.randn(4, 32)
    assert not torch.equal(layer(x), base(x))
    zero = TTAdapter(copy.deepcopy(base), bottleneck=8)
    opt = torch.optim.AdamW([p for p in zero.parameters() if p.requires_grad], lr=1e-2)
    zero(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(zero.base_layer.weight, base.weight)
    assert not torch.equal(zero(x), base(x))


def test_adapter_around_non_linear_sublayer_needs_features():
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    with pytest.raises(TTTypeError, match="got Sequential"):
        TTAdapter(mlp)
    layer = TTAdapter(mlp, features=16, bottleneck=4)
    assert layer(torch.randn(2, 16)).shape == (2, 16)


def test_adapter_bad_activation():
    with pytest.raises(
        TTValueError,
        match=r"activation must be one of \['gelu', 'identity', 'relu', 'silu', 'tanh'\], got 'swish'",
    ):
        TTAdapter(nn.Linear(8, 8), activation="swish")


# ---------------------------------------------------------------- counts, dtypes, compile


def tt_matrix_params(out_modes, in_modes, ranks):
    return sum(ranks[k] * m * n * ranks[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes)))


def test_parameter_counts_at_hidden_4096():
    adp = TTAdapter(nn.Linear(4096, 4096, device="meta"), bottleneck=64, tt_rank=5)
    ad = adp.adapters["default"]
    expected = sum(
        tt_matrix_params(lin.out_modes, lin.in_modes, lin.ranks) + lin.out_features
        for lin in (ad.down, ad.up)
    )
    assert sum(p.numel() for p in ad.parameters()) == expected
    assert all(max(lin.ranks) == 5 for lin in (ad.down, ad.up))
    rep = TTReparam(nn.Linear(4096, 4096, device="meta"), r=16, tt_rank=8)
    up = rep.adapters["default"]
    expected = sum(tt_matrix_params(lin.out_modes, lin.in_modes, lin.ranks) for lin in (up.A, up.B))
    assert sum(p.numel() for p in up.parameters()) == expected
    assert expected < 2 * (4096 * 16) / 10  # over 10x fewer than LoRA's A and B at r=16


@pytest.mark.parametrize("cls", ["linear", "reparam", "adapter"])
def test_torch_compile_matches_eager(cls):
    torch.manual_seed(0)
    mod = {
        "linear": lambda: TTLinear(16, 12, rank=3),
        "reparam": lambda: TTReparam(nn.Linear(16, 16), dropout=0.0, init="paper"),
        "adapter": lambda: TTAdapter(nn.Linear(16, 16), bottleneck=4, init="paper"),
    }[cls]()
    x = torch.randn(2, 3, 16)
    compiled = torch.compile(mod, backend="eager")
    assert_close(compiled(x), mod(x), rtol=1e-6)


def test_state_dict_names_are_stable_plain_tensors():
    layer = TTReparam(nn.Linear(8, 8))
    keys = list(layer.state_dict())
    assert keys == [
        "base_layer.weight",
        "base_layer.bias",
        "adapters.default.merged",
        "adapters.default.A.cores.0",
        "adapters.default.A.cores.1",
        "adapters.default.A.cores.2",
        "adapters.default.B.cores.0",
        "adapters.default.B.cores.1",
        "adapters.default.B.cores.2",
    ] or all(type(v) is torch.Tensor for v in layer.state_dict().values())
    assert all(type(v) is torch.Tensor for v in layer.state_dict().values())
    assert math.prod(layer.adapters["default"].A.in_modes) == 8


@pytest.mark.parametrize("form", ["factors", "full"])
def test_reparam_lean_backward_gives_the_same_output_and_gradients_with_dropout(form):
    _, layer = reparam_pair(dropout=0.5, init="paper", form=form)
    x = torch.randn(4, 5, 24, dtype=torch.float64, requires_grad=True)
    results = []
    for lean in (True, False):
        layer.adapters["default"].lean_backward = lean
        layer.zero_grad()
        x.grad = None
        torch.manual_seed(3)
        y = layer(x)
        y.pow(2).sum().backward()
        grads = [x.grad.clone(), *(p.grad.clone() for p in layer.adapters["default"].parameters())]
        results.append((y.detach(), grads))
    # the same dropout mask (a different one would move the output by O(1)), equal to round-off
    assert_close(results[0][0], results[1][0], rtol=1e-14)
    for a, b in zip(results[0][1], results[1][1]):
        assert_close(a, b, rtol=1e-12)


@pytest.mark.parametrize("layout", ["matrix", "paper"])
def test_reparam_factor_update_gradcheck(layout):
    """The fused node (factors rebuilt from the cores inside) against finite differences."""
    from tensortrain_nn._autograd import FactorUpdate, factor_layout

    torch.manual_seed(4)
    update = TTReparam(nn.Linear(12, 10).double(), r=3, init="paper", layout=layout)
    update = update.adapters["default"]
    layouts = (factor_layout(update.A), factor_layout(update.B))
    cores = tuple(update.A.cores) + tuple(update.B.cores)
    x = torch.randn(3, 4, 12, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 4, 12) > 0.3
    for m, p in ((mask, 0.3), (None, 0.0)):
        assert torch.autograd.gradcheck(
            lambda x, *c, m=m, p=p: FactorUpdate.apply(x, m, p, 1.7, layouts, *c), (x, *cores)
        )


@given(
    features,
    features,
    st.integers(1, 5),
    st.sampled_from(["matrix", "paper"]),
    st.integers(0, 2**31 - 1),
)
def test_chain_product_and_grads_match_the_dense_factor(n_in, n_out, rank, layout, seed):
    """chain_product + FactorLayout give factor_weight's dense weight; chain_grads its gradient."""
    from tensortrain_nn._autograd import chain_grads, chain_product, factor_layout
    from tensortrain_nn._paper import factor_layer, factor_weight

    torch.manual_seed(seed)
    layer = factor_layer(
        n_in, n_out, layout=layout, role="rep", rank=rank, bias=False, std=1.0,
        zero_core=None, dtype=torch.float64, device=None,
    )  # fmt: skip
    cores, where = list(layer.cores), factor_layout(layer)
    ref = factor_weight(layer)
    prefixes = chain_product(cores)
    assert_close(where.weight(prefixes[-1]), ref, rtol=1e-12)
    upstream = torch.randn_like(ref)
    expected = torch.autograd.grad(ref, cores, upstream)
    got = chain_grads(cores, prefixes, where.flat_grad(upstream))
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        assert_close(g, e, rtol=1e-12)


@given(
    features,
    features,
    st.sampled_from(["matrix", "paper"]),
    st.booleans(),
    st.sampled_from([1.0, -0.5, 2.0]),
    lead,
    st.integers(0, 2**31 - 1),
)
def test_factor_linear_equals_dense_reference(n_in, n_out, layout, bias, scale, lead_shape, seed):
    """The adapter's one-node projection against ``scale * (x W^T + b)`` with W from factor_weight."""
    from tensortrain_nn._autograd import factor_linear
    from tensortrain_nn._paper import factor_layer, factor_weight

    torch.manual_seed(seed)
    layer = factor_layer(
        n_in, n_out, layout=layout, role="adp", rank=3, bias=bias, std=1.0,
        zero_core=None, dtype=torch.float64, device=None,
    )  # fmt: skip
    x = torch.randn(*lead_shape, n_in, dtype=torch.float64)
    ref = (x @ factor_weight(layer).T + (layer.bias if bias else 0)) * scale
    assert_close(factor_linear(x, layer, scale), ref, rtol=1e-12)


@pytest.mark.parametrize("layout", ["matrix", "paper"])
def test_factor_linear_gradcheck(layout):
    from tensortrain_nn._autograd import _FactorLinear, factor_layout
    from tensortrain_nn._paper import factor_layer

    torch.manual_seed(5)
    layer = factor_layer(
        12, 6, layout=layout, role="adp", rank=3, bias=True, std=1.0,
        zero_core=None, dtype=torch.float64, device=None,
    )  # fmt: skip
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)
    where = factor_layout(layer)
    assert torch.autograd.gradcheck(
        lambda x, b, *c: _FactorLinear.apply(x, -1.5, where, b, *c),
        (x, layer.bias, *layer.cores),
    )


def test_factor_linear_rejects_a_wrong_input_width():
    from tensortrain_nn._autograd import factor_linear
    from tensortrain_nn._paper import factor_layer

    layer = factor_layer(
        12, 6, layout="matrix", role="adp", rank=3, bias=True, std=1.0,
        zero_core=None, dtype=None, device=None,
    )  # fmt: skip
    with pytest.raises(TTShapeError, match=r"x must be \(\.\.\., 12\)"):
        factor_linear(torch.randn(2, 10), layer)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_reparam_dropout_keeps_entries_with_probability_one_minus_p(p):
    from tensortrain_nn._autograd import keep_mask

    torch.manual_seed(0)
    n = 400_000
    kept = float(keep_mask(torch.empty(n), p).double().mean())
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.manual_seed(1)  # the same random state draws the same mask
    a, b = keep_mask(torch.empty(100), p), None
    torch.manual_seed(1)
    b = keep_mask(torch.empty(100), p)
    assert torch.equal(a, b)


def test_reparam_saves_less_for_backward_than_lora():
    _, layer = reparam_pair(256, 256, dtype=torch.float32, init="paper")
    x = torch.randn(8, 32, 256)
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x).sum()
    # x itself (the caller's), the boolean dropout mask (1 byte an entry), h (8 of 256 wide), the
    # factors A and B (2 x 8 x 256) and the small products that rebuilt them from the cores
    extra = sum(saved.values()) - x.numel() * x.element_size()
    assert extra <= x.numel() + x.numel() // 256 * 8 * 4 + 64 * 1024
    # LoRA would keep dropout(x) in float32 on top of the mask: 4 bytes an entry more
    assert extra < x.numel() * 2


@pytest.mark.parametrize("cls", [TTReparam, TTAdapter])
def test_layer_trains_under_bfloat16_autocast(cls):
    """The one-node backwards run outside autocast: no mixing bfloat16 grads and float32 factors."""
    torch.manual_seed(0)
    kw = {"dropout": 0.1} if cls is TTReparam else {"bottleneck": 4}
    layer = cls(nn.Linear(16, 16), init="paper", **kw).train()
    x = torch.randn(4, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().pow(2).sum().backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads) and x.grad is not None
