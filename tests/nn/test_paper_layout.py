"""layout="paper": the official LoRETTA code's TT tensor factors, against dense float64 references,
and its LLaMA-2-7B parameter counts reproduced exactly on the meta device."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from _surgery_models import build, inputs, logits
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import factorize
from tensortrain.testing import assert_close
from tensortrain_nn._paper import PAPER_SHAPES, TTTensorLinear, paper_shape
from tensortrain_nn.surgery import get_state

F64 = torch.float64


def dense_tt(cores: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor of TT cores by a plain chain of tensordots (the official code's get_full)."""
    out = cores[0]
    for core in cores[1:]:
        out = torch.tensordot(out, core, dims=([-1], [0]))
    return out.squeeze(0).squeeze(-1)


def ref_weight_t(layer: TTTensorLinear) -> torch.Tensor:
    """The ``(in, out)`` matrix the official code applies: ``x @ full.reshape(in, out)``."""
    return dense_tt([c.detach() for c in layer.cores]).reshape(
        layer.in_features, layer.out_features
    )


# ---------------------------------------------------------------------------- shapes


def test_paper_shape_reads_the_official_tables():
    assert paper_shape(4096, 64, "adp") == (16, 16, 16, 4, 4, 4)
    assert paper_shape(64, 4096, "adp") == (4, 4, 4, 16, 16, 16)
    assert paper_shape(5120, 64, "adp") == (5, 8, 8, 16, 8, 8)
    assert paper_shape(4096, 8, "rep") == paper_shape(8, 4096, "rep") == (16, 16, 8, 4, 4)
    assert paper_shape(768, 8, "rep") == (8, 8, 12, 8)
    assert paper_shape(1536, 64, "adp") == (4, 8, 8, 8, 8, 6)  # the rep table's r=64 row
    assert paper_shape(64, 1536, "adp") == (6, 8, 8, 8, 8, 4)  # up: reversed, as for 4096


def test_every_table_shape_holds_its_projection():
    for r, row in PAPER_SHAPES.items():
        for features, shape in row.items():
            assert math.prod(shape) == r * features, (r, features, shape)


@given(st.integers(1, 3000), st.integers(1, 300), st.sampled_from(["rep", "adp"]))
def test_paper_shape_fallback_is_a_balanced_factorisation(n_in, n_out, role):
    shape = paper_shape(n_in, n_out, role)
    assert math.prod(shape) == n_in * n_out
    known = PAPER_SHAPES.get(min(n_in, n_out), {}).get(max(n_in, n_out))
    if known is None and (role == "rep" or (max(n_in, n_out), min(n_in, n_out)) != (4096, 64)):
        d = max(2, round(math.log(n_in * n_out, 8)))
        expected = factorize(n_in * n_out, d)
        assert shape == (expected[::-1] if n_in < n_out else expected)


# ---------------------------------------------------------------------------- TTTensorLinear


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(6, 4, (2, 3, 4)), (4, 6, (4, 6)), (8, 3, (2, 2, 2, 3)), (5, 5, (5, 5))]),
    st.integers(1, 7),
    st.booleans(),
    st.lists(st.integers(1, 3), max_size=2),
    st.integers(0, 2**31 - 1),
)
def test_tensor_linear_equals_dense_reference(spec, rank, bias, lead, seed):
    n_in, n_out, shape = spec
    torch.manual_seed(seed)
    layer = TTTensorLinear(n_in, n_out, shape=shape, rank=rank, bias=bias, dtype=F64)
    x = torch.randn(*lead, n_in, dtype=F64)
    w = ref_weight_t(layer)
    ref = x @ w + (layer.bias.detach() if layer.bias is not None else 0)
    assert_close(layer(x), ref)
    assert_close(layer.weight, w.T)
    # ranks are not clipped: every internal bond is `rank`, as in the official code
    assert layer.ranks == (1, *[rank] * (len(shape) - 1), 1)
    entries = sum(layer.ranks[k] * n * layer.ranks[k + 1] for k, n in enumerate(shape))
    assert layer.num_parameters == entries + (n_out if bias else 0)


def test_tensor_linear_gradcheck():
    torch.manual_seed(0)
    layer = TTTensorLinear(6, 4, shape=(2, 3, 4), rank=3, bias=True, dtype=F64)
    x = torch.randn(2, 6, dtype=F64, requires_grad=True)
    params = (*layer.cores, layer.bias)

    def f(x: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(
            layer, {f"cores.{k}": p for k, p in enumerate(ps[:-1])} | {"bias": ps[-1]}, (x,)
        )

    assert torch.autograd.gradcheck(f, (x, *params))


def test_tensor_linear_bad_shape_is_named():
    with pytest.raises(TTShapeError, match=r"shape must have product .* 24, got \(2, 3\)"):
        TTTensorLinear(6, 4, shape=(2, 3), rank=2)
    with pytest.raises(TTValueError, match="rank"):
        TTTensorLinear(6, 4, shape=(6, 4), rank=0)


# ---------------------------------------------------------------------------- the adapters


@pytest.mark.parametrize("init", ["zero", "paper"])
def test_reparam_paper_layout_equals_dense_reference(init):
    torch.manual_seed(0)
    base = nn.Linear(24, 12, dtype=F64)
    layer = ttnn.TTReparam(
        copy.deepcopy(base), r=4, tt_rank=3, dropout=0.0, init=init, layout="paper"
    )
    update = layer.adapters["default"]
    assert isinstance(update.A, TTTensorLinear) and isinstance(update.B, TTTensorLinear)
    a = ref_weight_t(update.A).T  # (r, in)
    b = ref_weight_t(update.B).T  # (out, r)
    x = torch.randn(3, 24, dtype=F64)
    ref = base(x) + update.scaling * x @ (b @ a).T
    assert_close(layer(x), ref)
    if init == "zero":
        assert torch.equal(layer(x), base(x))
    with torch.no_grad():  # make the update nonzero, then merge / unmerge round-trips
        for c in update.B.cores:
            c.normal_()
    y = layer(x)
    layer.merge()
    assert_close(layer(x), y)
    layer.unmerge()
    assert_close(layer.base_layer.weight, base.weight)


def test_reparam_paper_layout_refuses_full_form():
    with pytest.raises(TTValueError, match="layout='paper' needs form='factors'"):
        ttnn.TTReparam(nn.Linear(8, 8), r=2, tt_rank=2, form="full", layout="paper")
    with pytest.raises(TTValueError, match="layout must be one of"):
        ttnn.TTReparam(nn.Linear(8, 8), r=2, tt_rank=2, layout="tensor")  # type: ignore[arg-type]


@pytest.mark.parametrize("placement", ["after", "before"])
def test_adapter_paper_layout_equals_dense_reference(placement):
    torch.manual_seed(0)
    base = nn.Linear(16, 24, dtype=F64)
    layer = ttnn.TTAdapter(
        copy.deepcopy(base),
        bottleneck=4,
        tt_rank=3,
        init="paper",
        layout="paper",
        placement=placement,
    )
    bott = layer.adapters["default"]
    features = 16 if placement == "before" else 24
    assert layer.features == features and bott.down.in_features == features

    def adapter(h: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(h @ ref_weight_t(bott.down) + bott.down.bias)
        return hidden @ ref_weight_t(bott.up) + bott.up.bias

    x = torch.randn(2, 3, 16, dtype=F64)
    ref = base(x + adapter(x)) if placement == "before" else base(x) + adapter(base(x))
    assert_close(layer(x), ref)


def test_adapter_placement_errors():
    with pytest.raises(TTValueError, match="placement must be one of"):
        ttnn.TTAdapter(nn.Linear(8, 8), placement="inside")  # type: ignore[arg-type]
    with pytest.raises(TTValueError, match="placement='before' on a Sequential needs features="):
        ttnn.TTAdapter(nn.Sequential(nn.Linear(8, 8)), placement="before")


# ---------------------------------------------------------------------------- surgery


def test_patch_paper_layout_saves_and_loads(tmp_path):
    model = build("llama")
    fresh = build("llama")
    x = inputs()
    ttnn.patch(model, mode="rep", r=4, tt_rank=3, init="paper", layout="paper")
    y = logits(model, x)
    ttnn.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "tt_adapter_config.json").read_text())
    assert saved["layout"] == "paper"
    ttnn.load_adapter(fresh, tmp_path)
    assert get_state(fresh).configs["default"].layout == "paper"
    assert torch.equal(logits(fresh, x), y)


def test_patch_paper_placement_on_llama_mlp(tmp_path):
    model = build("llama")
    fresh = build("llama")
    x = inputs()
    before = logits(model, x)
    ttnn.patch(
        model,
        mode="adp",
        bottleneck=4,
        tt_rank=2,
        layout="paper",
        placement="paper",
        target_modules=["gate_proj", "up_proj", "down_proj"],
    )
    mlp = model.model.layers[0].mlp
    assert (mlp.gate_proj.placement, mlp.up_proj.placement, mlp.down_proj.placement) == (
        "before",
        "before",
        "after",
    )
    assert all(m.features == 32 for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    assert torch.equal(logits(model, x), before)  # zero init: unchanged at step 0
    ttnn.save_adapter(model, tmp_path)
    ttnn.load_adapter(fresh, tmp_path)
    assert fresh.model.layers[1].mlp.up_proj.placement == "before"


def test_failed_paper_patch_leaves_the_model_unchanged():
    model = build("llama")
    flags = [p.requires_grad for p in model.parameters()]
    text = repr(model)
    with pytest.raises(TTTypeError, match=r"placement='before' needs an nn\.Linear or Conv1D"):
        ttnn.patch(model, mode="adp", placement="before", target_modules=["mlp"], layout="paper")
    with pytest.raises(TTValueError, match="layout='paper' needs form='factors'"):
        ttnn.patch(model, mode="rep", form="full", layout="paper")
    with pytest.raises(TTValueError, match="option 'placement' belongs to mode 'adp'"):
        ttnn.patch(model, mode="rep", placement="before")
    assert repr(model) == text and [p.requires_grad for p in model.parameters()] == flags


def test_stacking_another_placement_is_refused_before_any_change():
    model = build("llama")
    ttnn.patch(model, mode="adp", bottleneck=4, tt_rank=2, target_modules=["up_proj"])
    text = repr(model)
    with pytest.raises(TTValueError, match="placed 'after' its sublayer; placement='paper'"):
        ttnn.patch(
            model,
            mode="adp",
            bottleneck=4,
            tt_rank=2,
            placement="paper",
            target_modules=["up_proj"],
            adapter_name="second",
        )
    assert repr(model) == text and list(get_state(model).configs) == ["default"]


# ---------------------------------------------------------------------------- the paper's counts


def _llama_7b() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_llama2_7b_counts_reproduce_the_paper_exactly():
    """LoRETTA_rep 516,096 (paper 0.51M) and LoRETTA_adp 876,800 (paper 0.88M), norms included
    as the official code trains them (65 RMSNorms x 4096 = 266,240)."""
    common = {"layout": "paper", "trainable_norms": True, "trainable_head": False}
    rep = ttnn.patch(_llama_7b(), mode="rep", r=8, tt_rank=8, **common)
    assert _trainable(rep) == 516_096
    adp = ttnn.patch(
        _llama_7b(),
        mode="adp",
        bottleneck=64,
        tt_rank=5,
        placement="paper",
        target_modules=["gate_proj", "up_proj", "down_proj"],
        **common,
    )
    assert _trainable(adp) == 876_800
    adapters = [m for m in adp.modules() if isinstance(m, ttnn.TTAdapter)]
    assert len(adapters) == 96
