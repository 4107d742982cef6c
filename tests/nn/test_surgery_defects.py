"""Issue 15: each defect as a test that failed before the fix (pooler round trip, merged adapter
in train mode, non-finite options and tensors, a failed load that froze what the user unfroze)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTError, TTShapeError, TTValueError
from tensortrain_nn import TTBottleneck, TTReparam
from tensortrain_nn.surgery.io import CONFIG_NAME, WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from _surgery_models import build, inputs, logits

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

#: Base modules of the tiny BERT a user may unfreeze by hand (the pooler, a norm, a dense layer,
#: embeddings, a wrapped layer's own weight, the head).
UNFREEZE = (
    "bert.pooler",
    "bert.embeddings.LayerNorm",
    "bert.embeddings.word_embeddings",
    "bert.encoder.layer.0.intermediate.dense",
    "wrapped",
    "classifier",
)
#: A wrapped layer's own base weight ("wrapped" above), per mode.
WRAPPED = {
    "rep": "bert.encoder.layer.1.attention.self.query.base_layer",
    "adp": "bert.encoder.layer.1.output.dense.base_layer",
}


def unfreeze_by_hand(model: nn.Module, names: set[str], mode: str = "rep") -> None:
    for name in sorted(names):
        model.get_submodule(WRAPPED[mode] if name == "wrapped" else name).requires_grad_(True)


def flags(model: nn.Module) -> dict[str, bool]:
    return {k: p.requires_grad for k, p in model.named_parameters()}


def values(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def perturb(model: nn.Module, seed: int) -> None:
    """Move every trainable tensor (as training would), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


# ---------------------------------------------------------------- 1: what is saved loads back


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


# ---------------------------------------------------------------- 4: disabled == base, any mode


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


# ---------------------------------------------------------------- 7: non-finite numbers

NON_FINITE = {
    "rep-alpha-nan": ({"mode": "rep", "alpha": math.nan}, "alpha must be a finite number"),
    "rep-alpha-inf": ({"mode": "rep", "alpha": math.inf}, "alpha must be a finite number"),
    "adp-scale-nan": ({"mode": "adp", "scale": math.nan}, "scale must be a finite number"),
    "linear-eps-inf": ({"mode": "linear", "eps": math.inf}, "eps must be a finite number"),
    "dropout-nan": ({"mode": "rep", "dropout": math.nan}, "dropout must be a finite number"),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_options_refused(case: str) -> None:
    options, match = NON_FINITE[case]
    with pytest.raises(TTValueError, match=match):
        ttnn.PatchConfig(**options)
    model = build("bert")
    before = values(model), flags(model), repr(model)
    with pytest.raises(TTValueError, match=match):
        ttnn.patch(model, **options)
    assert (flags(model), repr(model)) == before[1:]
    assert "tt_surgery" not in model.__dict__


def test_non_finite_layer_options_refused() -> None:
    with pytest.raises(TTValueError, match="scale must be a finite number, got nan"):
        TTBottleneck(16, bottleneck=4, scale=math.nan)
    with pytest.raises(TTValueError, match="alpha must be a finite number, got inf"):
        TTReparam(nn.Linear(8, 8), alpha=math.inf)


def test_non_finite_alpha_in_config_json_refused(tmp_path: Path) -> None:
    ttnn.save_adapter(ttnn.patch(build("bert"), mode="rep"), tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    data["alpha"] = math.nan  # json writes NaN, and Python's json reads it back
    (tmp_path / CONFIG_NAME).write_text(json.dumps(data))
    fresh = build("bert")
    before = flags(fresh), repr(fresh)
    with pytest.raises(TTValueError, match=r"adapter_config\.json: alpha must be a finite number"):
        ttnn.load_adapter(fresh, tmp_path)
    assert (flags(fresh), repr(fresh)) == before


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_save_refuses_non_finite_tensors(tmp_path: Path, bad: float) -> None:
    model = ttnn.patch(build("bert"), mode="rep")
    with torch.no_grad():
        model.bert.encoder.layer[1].attention.self.value.adapters["default"].B.cores[0][0, 0] = bad
    with pytest.raises(
        TTValueError,
        match=r"tensor 'bert\.encoder\.layer\.1\.attention\.self\.value\.adapters\.B\.cores\.0'",
    ):
        ttnn.save_adapter(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    good = ttnn.patch(build("bert"), mode="rep")
    ttnn.save_adapter(good, tmp_path / "old")
    written = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    with pytest.raises(TTValueError, match="non-finite"):
        ttnn.save_adapter(model, tmp_path / "old")
    assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == written


# ---------------------------------------------------------------- 8: a failed load changes nothing


def _damage(kind: str, folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / WEIGHTS_NAME
    tensors = load_file(path)
    adapter_key = next(k for k in tensors if ".adapters." in k)
    if kind == "extra":
        tensors["bert.encoder.layer.0.nope.weight"] = torch.zeros(2)
    elif kind == "missing":
        del tensors[adapter_key]
    elif kind == "adapter-shape":
        tensors[adapter_key] = torch.zeros(1, 2, 3)
    elif kind == "base-shape":
        tensors["bert.pooler.dense.bias"] = torch.zeros(5)
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[:-40])
        return
    save_file(tensors, path)


@SETTINGS
@given(
    kind=st.sampled_from(["extra", "missing", "adapter-shape", "base-shape", "truncated"]),
    unfreeze=st.sets(st.sampled_from(UNFREEZE)),
    freeze_head=st.booleans(),
    loaded_name=st.sampled_from(["b", "default"]),
)
def test_failed_load_restores_everything(
    tmp_path: Path, kind: str, unfreeze: set[str], freeze_head: bool, loaded_name: str
) -> None:
    donor = ttnn.patch(build("bert"), mode="rep", target_modules=["query"])
    donor.bert.pooler.requires_grad_(True)
    folder = ttnn.save_adapter(donor, tmp_path / f"{kind}-{len(unfreeze)}-{freeze_head}")
    _damage(kind, folder)

    model = ttnn.patch(build("bert"), mode="rep", trainable_norms=True)
    unfreeze_by_hand(model, unfreeze)
    if freeze_head:
        model.classifier.requires_grad_(False)
    state = ttnn.surgery.get_state(model)
    before = values(model), flags(model), repr(model), dict(state.configs), state.active
    with pytest.raises(TTError):
        ttnn.load_adapter(model, folder, adapter_name="b" if loaded_name == "b" else None)
    now = values(model), flags(model), repr(model), dict(state.configs), state.active
    assert now[1:] == before[1:]
    assert now[0].keys() == before[0].keys()
    assert all(torch.equal(now[0][k], before[0][k]) for k in before[0])


@pytest.mark.parametrize("onto", ["fresh", "patched"])
def test_truncated_safetensors_named_and_nothing_changed(tmp_path: Path, onto: str) -> None:
    ttnn.save_adapter(ttnn.patch(build("bert"), mode="rep"), tmp_path)
    _damage("truncated", tmp_path)
    model = build("bert")
    if onto == "patched":
        ttnn.patch(model, mode="rep", adapter_name="mine")
        model.bert.pooler.requires_grad_(True)
    before = flags(model), repr(model)
    with pytest.raises(TTValueError, match=r"adapter_model\.safetensors is corrupted or truncated"):
        ttnn.load_adapter(model, tmp_path, adapter_name="other")
    assert (flags(model), repr(model)) == before
