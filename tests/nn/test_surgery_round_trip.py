"""What a patched model saves loads back exactly (whatever the user made trainable), and
disabled or inactive adapters give the base model's outputs in train and eval mode."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTShapeError
from tensortrain_nn import TTReparam
from tensortrain_nn.surgery.io import WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from _surgery_models import (
    SETTINGS,
    UNFREEZE,
    build,
    flags,
    inputs,
    logits,
    perturb,
    unfreeze_by_hand,
    values,
)

# ---------------------------------------------------------------- whatever trains is saved and loads back


@SETTINGS
@given(
    mode=st.sampled_from(["rep", "adp"]),
    head=st.booleans(),
    norms=st.booleans(),
    biases=st.booleans(),
    unfreeze=st.sets(st.sampled_from(UNFREEZE)),
    freeze_head=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_whatever_trains_round_trips(
    tmp_path: Path, mode, head, norms, biases, unfreeze, freeze_head, seed
) -> None:
    opts = {"bottleneck": 8} if mode == "adp" else {}
    model = ttnn.patch(
        build("bert"),
        mode=mode,
        trainable_head=head,
        trainable_norms=norms,
        trainable_biases=biases,
        **opts,
    )
    unfreeze_by_hand(model, unfreeze, mode)
    if freeze_head:
        model.classifier.requires_grad_(False)
    perturb(model, seed)
    folder = ttnn.save_adapter(model, tmp_path / f"a{seed}")

    fresh = ttnn.load_adapter(build("bert"), folder)
    assert flags(fresh) == flags(model)  # trainable after loading as when saved
    want, got = values(model), values(fresh)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    x = inputs()
    assert torch.equal(logits(fresh, x), logits(model, x))


def test_pooler_as_documented(tmp_path: Path) -> None:
    """docs/surgery.md: unfreeze the pooler, it is saved, and it loads back trainable."""
    model = ttnn.patch(build("bert"), mode="rep")
    model.bert.pooler.requires_grad_(True)
    perturb(model, 0)
    ttnn.save_adapter(model, tmp_path)
    fresh = ttnn.load_adapter(build("bert"), tmp_path)
    assert torch.equal(fresh.bert.pooler.dense.bias, model.bert.pooler.dense.bias)
    assert fresh.bert.pooler.dense.weight.requires_grad


def test_unknown_base_tensor_is_still_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = ttnn.patch(build("bert"), mode="rep")
    ttnn.save_adapter(model, tmp_path)
    tensors = load_file(tmp_path / WEIGHTS_NAME)
    tensors["bert.pooler.dense.gamma"] = torch.zeros(3)
    save_file(tensors, tmp_path / WEIGHTS_NAME)
    fresh = build("bert")
    before = values(fresh), flags(fresh), repr(fresh)
    with pytest.raises(TTShapeError, match=r"'bert\.pooler\.dense\.gamma' .* no counterpart"):
        ttnn.load_adapter(fresh, tmp_path)
    assert (values(fresh).keys(), flags(fresh), repr(fresh)) == (
        before[0].keys(),
        before[1],
        before[2],
    )


# ---------------------------------------------------------------- disabled or inactive adapters give the base


@SETTINGS
@given(
    p=st.floats(0.0, 0.9),
    train=st.booleans(),
    how=st.sampled_from(["disabled", "inactive"]),
    seed=st.integers(0, 2**16),
)
def test_merged_but_off_equals_base(p: float, train: bool, how: str, seed: int) -> None:
    torch.manual_seed(seed)
    base = nn.Linear(16, 12)
    original = nn.Linear(16, 12)
    original.load_state_dict(base.state_dict())
    layer = TTReparam(base, r=4, tt_rank=2, dropout=p, init="paper")
    layer.merge()
    if how == "disabled":
        layer.adapters_disabled = True
    else:  # a zero-init second adapter is active: the merged one must cancel out
        layer.add_adapter("other", r=2, tt_rank=1, dropout=0.0)
        layer.set_adapter("other")
    layer.train(train)
    x = torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), original(x), atol=1e-5, rtol=1e-5)


def test_merged_disabled_single_layer_dropout_half() -> None:
    """The issue's case: dropout 0.5, train mode, merged and disabled (was off by ~4)."""
    torch.manual_seed(0)
    base = nn.Linear(64, 64)
    ref = base.weight.detach().clone(), base.bias.detach().clone()
    layer = TTReparam(base, dropout=0.5, init="paper").train()
    layer.merge()
    layer.adapters_disabled = True
    x = torch.randn(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ ref[0].T + ref[1], atol=1e-5, rtol=1e-5)


def test_model_disabled_in_train_mode_equals_base() -> None:
    model, x = build("llama"), inputs()
    model.train()  # LLaMA has no dropout of its own: the base model is deterministic
    ref = logits(model, x)
    ttnn.patch(model, mode="rep", init="paper")  # dropout 0.05
    for m in model.modules():
        if isinstance(m, TTReparam):
            m.merge()
    model.train()
    with ttnn.disable_adapters(model):
        torch.testing.assert_close(logits(model, x), ref, atol=1e-5, rtol=1e-5)
