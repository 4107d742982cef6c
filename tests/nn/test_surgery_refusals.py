"""What surgery refuses, and that a refusal changes nothing: non-finite options and tensors,
and loads that fail part way (the model, its values and its requires_grad flags as they were)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTError, TTValueError
from tensortrain_nn import TTBottleneck, TTReparam
from tensortrain_nn.surgery.io import CONFIG_NAME, WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from _surgery_models import (
    SETTINGS,
    UNFREEZE,
    build,
    flags,
    unfreeze_by_hand,
    values,
)

# ---------------------------------------------------------------- non-finite options and tensors are refused

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


# ---------------------------------------------------------------- a failed load changes nothing


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
