"""init="svd" for rep: TT factors from the frozen weight's principal part, taken out of the weight.

Dense float64 references (numpy's SVD, independent of the code under test); the model's output is
unchanged at step 0; save/load onto a fresh base, disable, unpatch, delete, merge and failures.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _surgery_models import build, inputs, logits
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTValueError
from tensortrain.testing import assert_close
from tensortrain_nn.reparam import TTReparam
from tensortrain_nn.surgery import get_state

F64 = torch.float64


def principal(w: torch.Tensor, r: int) -> torch.Tensor:
    """``U_r S_r V_r^T`` of ``w`` by numpy's float64 SVD (sign-free: a product)."""
    u, s, vh = np.linalg.svd(w.detach().double().numpy(), full_matrices=False)
    return torch.from_numpy((u[:, :r] * s[:r]) @ vh[:r])


def f32_tol(*ts: torch.Tensor) -> float:
    """A few float32 roundings of the largest magnitude involved."""
    return 8 * torch.finfo(torch.float32).eps * max(float(t.detach().abs().max()) for t in ts)


def close(actual: torch.Tensor, expected: torch.Tensor, atol: float, msg: str = "") -> None:
    """Elementwise ``|actual - expected| <= atol`` in float64."""
    torch.testing.assert_close(
        actual.detach().double(), expected.detach().double(), atol=atol, rtol=0, msg=msg or None
    )


def perturb(model: nn.Module, seed: int = 3) -> None:
    """Move every trainable tensor a little, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))


# ---------------------------------------------------------------------------- the layer


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([(12, 8), (8, 12), (16, 16), (6, 10)]),
    st.integers(1, 4),
    st.sampled_from(["matrix", "paper"]),
    st.sampled_from([1.0, 16.0]),
    st.integers(0, 2**31 - 1),
)
def test_svd_init_equals_dense_reference(sizes, r, layout, alpha, seed):
    """With TT ranks large enough to be exact, B0 A0 = U_r S_r V_r^T / s and W0 loses exactly it."""
    n_in, n_out = sizes
    torch.manual_seed(seed)
    base = nn.Linear(n_in, n_out, dtype=F64)
    w0 = base.weight.detach().clone()
    layer = TTReparam(
        copy.deepcopy(base), r=r, alpha=alpha, tt_rank=64, dropout=0.0, init="svd", layout=layout
    )
    update = layer.adapters["default"]
    ref = principal(w0, r)
    assert_close(update.delta_weight(), ref)  # scaling * B0 A0
    assert_close(update.init_delta(), ref)
    assert_close(layer.base_layer.weight, w0 - ref)
    # the two factors are balanced: A0 A0^T = B0^T B0 = S_r / s
    a, b = update.A.weight, update.B.weight
    assert_close(a @ a.T, b.T @ b)
    x = torch.randn(3, n_in, dtype=F64)
    assert_close(layer(x), base(x))


@pytest.mark.parametrize("layout", ["matrix", "paper"])
def test_truncated_tt_still_leaves_the_output_unchanged(layout):
    """At a TT rank that cannot hold the factors exactly, the correction is what the TT factors
    hold, so the output is unchanged all the same (float32 weights)."""
    torch.manual_seed(0)
    base = nn.Linear(64, 48)
    layer = TTReparam(copy.deepcopy(base), r=8, tt_rank=2, init="svd", layout=layout).eval()
    update = layer.adapters["default"]
    assert float((update.delta_weight().detach() - principal(base.weight, 8)).abs().max()) > 1e-3
    x = torch.randn(4, 64)
    close(layer(x), base(x), f32_tol(base(x), base.weight))
    # the correction is the product the adapter computes, in float64
    close(
        layer.base_layer.weight.double(),
        base.weight.double() - update.delta_weight(F64),
        f32_tol(base.weight),
    )


def test_full_form_svd_init():
    torch.manual_seed(0)
    base = nn.Linear(16, 12, dtype=F64)
    layer = TTReparam(copy.deepcopy(base), r=3, tt_rank=64, dropout=0.0, init="svd", form="full")
    assert_close(layer.adapters["default"].delta_weight(), principal(base.weight, 3))
    x = torch.randn(2, 16, dtype=F64)
    assert_close(layer(x), base(x))


def test_conv1d_base_is_corrected_in_its_layout():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    conv = transformers.pytorch_utils.Conv1D(12, 16)  # weight (in=16, out=12)
    w0 = conv.weight.detach().clone()
    layer = TTReparam(copy.deepcopy(conv), r=2, tt_rank=64, dropout=0.0, init="svd")
    close(layer.base_layer.weight.T.double(), w0.T.double() - principal(w0.T, 2), 1e-5)
    x = torch.randn(3, 16)
    close(layer(x), conv(x), f32_tol(conv(x), w0))


def test_second_svd_update_on_a_layer_is_refused():
    layer = TTReparam(nn.Linear(8, 8), r=2, tt_rank=2, init="svd")
    weight = layer.base_layer.weight.detach().clone()
    with pytest.raises(TTValueError, match="already holds init='svd' adapter 'default'"):
        layer.add_adapter("two", r=2, tt_rank=2, init="svd")
    assert list(layer.adapters) == ["default"] and torch.equal(layer.base_layer.weight, weight)


# ---------------------------------------------------------------------------- through patch


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_patch_svd_keeps_the_output_tiny_and_bert():
    model, x = _tiny(), torch.randn(5, 16)
    before = model(x).detach()
    ttnn.patch(model, mode="rep", init="svd", r=4, tt_rank=3, target_modules=["0", "2"])
    close(model(x), before, f32_tol(before, model[0].base_layer.weight))

    bert, ids = build("bert"), inputs()
    before = logits(bert, ids)
    ttnn.patch(bert, mode="rep", init="svd", r=4, tt_rank=3)
    close(logits(bert, ids), before, 1e-5)


@pytest.mark.parametrize("how", ["save_adapter", "save_pretrained"])
def test_svd_adapter_loads_onto_a_fresh_base(tmp_path, how):
    model, fresh, ids = build("bert"), build("bert"), inputs()
    ttnn.patch(model, mode="rep", init="svd", r=4, tt_rank=3)
    perturb(model)  # trained: the cores are no longer the initial ones
    y = logits(model, ids)
    if how == "save_adapter":
        ttnn.save_adapter(model, tmp_path)
    else:
        ttnn.surgery.get_state(model).save_pretrained(tmp_path)
    ttnn.load_adapter(fresh, tmp_path)
    close(logits(fresh, ids), y, 1e-5)
    # the fresh base carries the same corrected weight, and gives W0 back on unpatch
    query = "bert.encoder.layer.0.attention.self.query"
    close(
        fresh.get_submodule(query).base_layer.weight,
        model.get_submodule(query).base_layer.weight,
        1e-6,
    )
    ttnn.unpatch(fresh)
    ref = build("bert")
    for (n, p), q in zip(fresh.named_parameters(), ref.parameters(), strict=True):
        if not n.startswith("classifier."):  # the head trained; every base weight is W0 again
            close(p, q, f32_tol(q), msg=n)


def test_disable_unpatch_delete_and_merge():
    base = _tiny()
    x = torch.randn(5, 16)
    y0 = base(x).detach()
    w0 = base[0].weight.detach().clone()
    model = copy.deepcopy(base)
    ttnn.patch(model, mode="rep", init="svd", r=4, tt_rank=3, target_modules=["0"])
    perturb(model)
    tol = f32_tol(y0, w0)
    with ttnn.disable_adapters(model):
        close(model(x), y0, tol)  # the base model, correction added back
    # another adapter active: the svd one's correction is added back too
    ttnn.patch(model, mode="rep", r=2, tt_rank=2, target_modules=["0"], adapter_name="other")
    close(model(x), y0, tol)
    ttnn.set_adapter(model, "default")
    y = model(x).detach()
    # merge_and_unload: W0 - s B0 A0 + s B A
    update = model[0].adapters["default"]
    expected = w0.double() - update.init_delta() + update.delta_weight(F64)
    merged = ttnn.merge_and_unload(copy.deepcopy(model))
    close(merged[0].weight.double(), expected, tol)
    close(merged(x), y, tol)
    # delete the svd adapter: W0 back; the other stays
    ttnn.delete_adapter(model, "default")
    close(model[0].base_layer.weight, w0, f32_tol(w0))
    # unpatch: W0 back
    ttnn.patch(
        model, mode="rep", init="svd", r=4, tt_rank=3, target_modules=["0"], adapter_name="s"
    )
    ttnn.unpatch(model)
    assert isinstance(model[0], nn.Linear)
    close(model[0].weight, w0, f32_tol(w0))


def test_merge_unmerge_with_svd():
    model, x = _tiny(), torch.randn(5, 16)
    ttnn.patch(model, mode="rep", init="svd", r=4, tt_rank=3, target_modules=["0"])
    perturb(model)
    y = model(x).detach()
    ttnn.merge_adapter(model)
    close(model(x), y, 1e-5)
    with ttnn.disable_adapters(model):
        close(model(x), _tiny()(x), 1e-5)
    ttnn.unmerge_adapter(model)
    close(model(x), y, 1e-5)


# ---------------------------------------------------------------------------- failures


def _snapshot(model: nn.Module) -> tuple[str, list[torch.Tensor], list[bool]]:
    params = list(model.parameters())
    return repr(model), [p.detach().clone() for p in params], [p.requires_grad for p in params]


def _same(model: nn.Module, snap: tuple[str, list[torch.Tensor], list[bool]]) -> None:
    text, values, flags = snap
    assert repr(model) == text
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, v in zip(model.parameters(), values, strict=True):
        close(p.detach(), v, f32_tol(v))


def test_failed_svd_patches_leave_the_model_unchanged(monkeypatch):
    model = _tiny()
    ttnn.patch(model, mode="rep", init="svd", r=2, tt_rank=2, target_modules=["0"])
    snap = _snapshot(model)
    with pytest.raises(TTValueError, match="'0': cannot add init='svd' adapter 'b'"):
        ttnn.patch(model, mode="rep", init="svd", target_modules=["0", "2"], adapter_name="b")
    _same(model, snap)
    with pytest.raises(TTValueError, match="init='svd' is for mode='rep'"):
        ttnn.patch(model, mode="adp", init="svd", target_modules=["2"], adapter_name="c")
    _same(model, snap)

    fresh = _tiny()
    with torch.no_grad():
        fresh[2].weight[0, 0] = float("nan")
    snap = _snapshot(fresh)
    with pytest.raises(TTValueError, match="init='svd' needs a finite weight, but '2'"):
        ttnn.patch(fresh, mode="rep", init="svd", r=2, tt_rank=2, target_modules=["0", "2"])
    text, values, flags = snap
    assert repr(fresh) == text and [p.requires_grad for p in fresh.parameters()] == flags
    for p, v in zip(fresh.parameters(), values, strict=True):  # bit for bit (NaN included)
        assert torch.allclose(p, v, rtol=0, atol=0, equal_nan=True)

    # an error while installing (after the first layer was corrected) is undone
    fresh = _tiny()
    snap = _snapshot(fresh)
    calls = []
    correct = TTReparam.correct

    def failing(self: TTReparam, name: str) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("boom")
        correct(self, name)

    monkeypatch.setattr(TTReparam, "correct", failing)
    with pytest.raises(RuntimeError, match="boom"):
        ttnn.patch(fresh, mode="rep", init="svd", r=2, tt_rank=2, target_modules=["0", "2"])
    _same(fresh, snap)
    assert get_state(fresh, required=False) is None
