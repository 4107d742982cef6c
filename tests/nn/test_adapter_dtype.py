"""adapter_dtype: TT cores (and adp biases) in float32 on half-precision bases by default, cast at
the boundary as peft's ``autocast_adapter_dtype``; ``"base"`` keeps the base's dtype."""

from __future__ import annotations

import pytest
import torch
from _llm_bases import batch, load, logits, randomize_adapters, train_steps
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTValueError
from tensortrain_nn import TTReparam
from tensortrain_nn.surgery.state import get_state

pytest.importorskip("transformers")
HALF = [torch.float16, torch.bfloat16]


def _adapter_dtypes(model):
    return {p.dtype for n, p in model.named_parameters() if ".adapters." in n}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("mode", ["rep", "adp"])
def test_half_base_trains_20_steps_with_float32_adapter(tiny_llama, dtype, mode):
    model = load(tiny_llama, str(dtype).removeprefix("torch."))
    ttnn.patch(model, mode=mode, tt_rank=2, **({"r": 4} if mode == "rep" else {"bottleneck": 8}))
    assert _adapter_dtypes(model) == {torch.float32}
    assert {p.dtype for n, p in model.named_parameters() if ".adapters." not in n} == {dtype}
    losses = train_steps(model, 20)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0] - 0.05, losses
    assert logits(model, batch()).isfinite().all()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_adapter_dtype_base_keeps_the_base_dtype(tiny_llama, dtype):
    model = load(tiny_llama, str(dtype).removeprefix("torch."))
    ttnn.patch(model, mode="adp", bottleneck=8, tt_rank=2, adapter_dtype="base")
    assert _adapter_dtypes(model) == {dtype}
    assert get_state(model).configs["default"].adapter_dtype == "base"


def test_float64_and_float32_bases_keep_their_dtype_by_default():
    for dtype in (torch.float32, torch.float64):
        layer = TTReparam(nn.Linear(16, 16, dtype=dtype), r=2, tt_rank=2)
        assert {p.dtype for p in layer.adapters.parameters()} == {dtype}
    forced = TTReparam(
        nn.Linear(16, 16, dtype=torch.float64), r=2, tt_rank=2, adapter_dtype="float32"
    )
    assert {p.dtype for p in forced.adapters.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_merge_casts_once_exactly(dtype):
    torch.manual_seed(0)
    layer = TTReparam(nn.Linear(64, 64).to(dtype), r=4, tt_rank=2, dropout=0.0)
    update = layer.adapters["default"]
    randomize_adapters(nn.ModuleDict({"adapters": layer.adapters}))
    assert {p.dtype for p in update.parameters()} == {torch.float32}
    x = torch.randn(3, 64).to(dtype)
    expected_y = layer.base_layer(x) + (x.float() @ update.delta_weight().T).to(dtype)
    assert torch.equal(layer(x), expected_y)  # the boundary: float32 update, one cast back
    expected_w = (layer.base_layer.weight.float() + update.delta_weight(torch.float32)).to(dtype)
    layer.merge()
    assert torch.equal(layer.base_layer.weight, expected_w)
    assert layer.base_layer.weight.dtype == dtype


def test_save_load_onto_half_base_keeps_float32_adapter(tiny_llama, tmp_path):
    model = load(tiny_llama, "bfloat16")
    ttnn.patch(model, mode="rep", r=4, tt_rank=2)
    randomize_adapters(model)
    ttnn.save_adapter(model, tmp_path)
    fresh = ttnn.load_adapter(load(tiny_llama, "bfloat16"), tmp_path)
    assert _adapter_dtypes(fresh) == {torch.float32}
    assert torch.equal(logits(fresh, batch()), logits(model, batch()))


def test_bad_adapter_dtype_is_one_line_and_changes_nothing():
    model = nn.Sequential(nn.Linear(8, 8))
    before = repr(model)
    with pytest.raises(TTValueError, match=r"adapter_dtype must be one of \['auto', 'base'"):
        ttnn.patch(model, target_modules=["0"], adapter_dtype="int8")
    with pytest.raises(TTValueError, match="belongs to mode 'rep' / 'adp'"):
        ttnn.patch(model, mode="linear", target_modules=["0"], adapter_dtype="float32")
    assert repr(model) == before
