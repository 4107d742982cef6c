"""Adapter modes behind a registry: every mode registered, options frozen and checked once, a
new mode added from a test (one class plus a registry line) working through patch/save/load,
and TTReparam's one state machine for what its updates put into the base weight."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import tensortrain_nn as ttnn
from tensortrain._checks import check_number
from tensortrain.errors import TTTypeError, TTValueError
from tensortrain_nn import PatchConfig, TTReparam
from tensortrain_nn._options import Options
from tensortrain_nn._wrapper import AdapterWrapper, linear_features
from tensortrain_nn.adapter import AdpOptions
from tensortrain_nn.modes import MODES, Mode, Target, get_mode, register_mode
from tensortrain_nn.modes.linear import LinearOptions
from tensortrain_nn.surgery import get_state
from tensortrain_nn.surgery.io import CONFIG_NAME
from tensortrain_nn.update import RepOptions

F64 = torch.float64

# ---------------------------------------------------------------- the registry


def test_every_builtin_mode_is_registered_with_its_options() -> None:
    assert list(MODES) == ["rep", "adp", "linear"]
    assert get_mode("rep").options_class is RepOptions
    assert get_mode("adp").options_class is AdpOptions
    assert get_mode("linear").options_class is LinearOptions
    for name, mode in MODES.items():
        assert mode.name == name


def test_unknown_mode_error_lists_the_valid_names() -> None:
    with pytest.raises(
        TTValueError, match=r"mode must be one of \['rep', 'adp', 'linear'\], got 'lora'"
    ):
        get_mode("lora")
    with pytest.raises(TTValueError, match=r"mode must be one of \['rep', 'adp', 'linear'\]"):
        ttnn.patch(nn.Sequential(nn.Linear(8, 8)), mode="lora", target_modules=["0"])


def test_a_name_cannot_be_registered_twice() -> None:
    class Other(Mode):
        name = "rep"
        options_class = RepOptions

    with pytest.raises(TTValueError, match="'rep' is already registered to RepMode"):
        register_mode(Other)
    assert MODES["rep"].__name__ == "RepMode"


# ---------------------------------------------------------------- options objects


@pytest.mark.parametrize("cls", [RepOptions, AdpOptions, LinearOptions])
def test_options_are_frozen(cls: type[Options]) -> None:
    options = cls()
    name = cls.names()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, name, 3)


@pytest.mark.parametrize(
    ("cls", "values", "match"),
    [
        (RepOptions, {"r": 0}, "r must be an int >= 1, got 0"),
        (RepOptions, {"alpha": float("inf")}, "alpha must be a finite number, got inf"),
        (RepOptions, {"init": "xavier"}, r"init must be one of \['zero', 'paper', 'svd'\]"),
        (RepOptions, {"layout": "paper", "form": "full"}, "layout='paper' needs form='factors'"),
        (AdpOptions, {"dropout": 1.0}, "dropout"),
        (AdpOptions, {"placement": "inside"}, r"placement must be one of \['after', 'before'"),
        (AdpOptions, {"init": "svd"}, "init='svd' is for mode='rep'"),
        (LinearOptions, {"eps": -1.0}, "eps must be"),
        (
            RepOptions,
            {"bottleneck": 4},
            r"unknown option 'bottleneck' for RepOptions; valid: \['r'",
        ),
    ],
)
def test_a_bad_option_is_named(cls: type[Options], values: dict[str, Any], match: str) -> None:
    with pytest.raises(TTValueError, match=match):
        cls.build(values)


def test_a_wrongly_typed_option_is_a_type_error() -> None:
    with pytest.raises(TTTypeError, match="tt_rank"):
        RepOptions(tt_rank=2.5)  # type: ignore[arg-type]


def test_options_are_checked_once_and_shared_by_every_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = RepOptions.__post_init__

    def counting(self: RepOptions) -> None:
        calls.append(self)
        original(self)

    monkeypatch.setattr(RepOptions, "__post_init__", counting)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    ttnn.patch(model, target_modules=["0", "2"], r=2, tt_rank=2)
    assert len(calls) == 1  # the config built it; the dry build and both layers reuse it
    assert model[0].adapters["default"].options is model[2].adapters["default"].options


def test_patch_config_delegates_to_the_mode_options() -> None:
    config = PatchConfig(mode="adp", bottleneck=8, dropout=None)
    assert config.options == AdpOptions(bottleneck=8)  # dropout None: the mode's default
    assert PatchConfig(mode="rep").options.dropout == 0.05
    assert PatchConfig(mode="rep").resolved_dropout == 0.05
    with pytest.raises(TTValueError, match="alpha must be a finite number, got nan"):
        PatchConfig(alpha=float("nan"))


#: ``adapter_config.json`` as the code before the mode registry wrote it (rep, defaults; adp with
#: the later fields ``layout`` and ``placement`` set).
BEFORE = {
    "rep": {
        "mode": "rep", "target_modules": ["0"], "r": 2, "alpha": 16.0, "tt_rank": 2,
        "dropout": None, "form": "factors", "init": "zero", "bottleneck": 64,
        "activation": "relu", "scale": 1.0, "max_rank": None, "eps": None,
        "trainable_norms": False, "trainable_head": True, "trainable_biases": False,
        "format_version": 1, "adapter_name": "default", "model_type": None, "target_names": ["0"],
    },
    "adp": {
        "mode": "adp", "target_modules": ["0"], "r": 8, "alpha": 16.0, "tt_rank": 2,
        "dropout": None, "form": "factors", "init": "zero", "layout": "paper",
        "placement": "before", "bottleneck": 2, "activation": "relu", "scale": 1.0,
        "max_rank": None, "eps": None, "trainable_norms": False, "trainable_head": True,
        "trainable_biases": False, "format_version": 1, "adapter_name": "default",
        "model_type": None, "target_names": ["0"],
    },
}  # fmt: skip
OPTIONS = {
    "rep": {"r": 2, "tt_rank": 2},
    "adp": {"bottleneck": 2, "tt_rank": 2, "placement": "before", "layout": "paper"},
}


@pytest.mark.parametrize("mode", list(BEFORE))
def test_adapter_config_file_is_the_one_written_before(mode: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ttnn.patch(
        nn.Sequential(nn.Linear(8, 8)), mode=mode, target_modules=["0"], **OPTIONS[mode]
    )
    folder = ttnn.save_adapter(model, tmp_path / "new")
    text = (folder / CONFIG_NAME).read_text()
    assert text == json.dumps(BEFORE[mode], indent=2) + "\n"  # byte for byte
    (folder / CONFIG_NAME).write_text(json.dumps(BEFORE[mode]))  # an old folder loads
    fresh = nn.Sequential(nn.Linear(8, 8))
    fresh.load_state_dict(
        {
            k.replace("base_layer.", ""): v
            for k, v in model.state_dict().items()
            if "adapters" not in k
        }
    )
    x = torch.randn(2, 8)
    assert torch.equal(ttnn.load_adapter(fresh, folder)(x), model(x))


# ---------------------------------------------------------------- a new mode from a test


@dataclass(frozen=True)
class GainOptions(Options):
    """A toy mode's options: an option no PatchConfig field holds."""

    gain: float = 0.0

    def __post_init__(self) -> None:
        check_number("gain", self.gain)


class Gain(nn.Module):
    def __init__(self, features: int, options: GainOptions) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.full((features,), options.gain))


class GainWrapper(AdapterWrapper):
    """``base(x) * (1 + g)``: a toy wrapper with named adapters."""

    def __init__(self, base_layer: nn.Module, options: GainOptions, adapter_name: str) -> None:
        super().__init__(base_layer)
        self.add_adapter(adapter_name, options)

    def add_adapter(self, adapter_name: str, options: Any = None, **fields: Any) -> None:
        self._add(adapter_name, Gain(linear_features(self.base_layer)[1], options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        active = self._active()
        return y if active is None else y * (1 + active.g)


class GainMode(Mode):
    name = "gain"
    options_class = GainOptions
    wrapper = GainWrapper

    def build(self, target: Target, adapter_name: str, from_weight: bool = True) -> nn.Module:
        return GainWrapper(target.module, self.options, adapter_name)


@pytest.fixture
def gain_mode() -> Iterator[type[Mode]]:
    register_mode(GainMode)  # the one registry line a new mode needs
    yield GainMode
    del MODES["gain"]


def test_a_new_mode_works_through_patch_save_and_load(
    gain_mode: type[Mode], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 4))
    fresh = nn.Sequential(nn.Linear(6, 4))
    fresh.load_state_dict(base.state_dict())
    x = torch.randn(3, 6)
    before = base(x)
    model = ttnn.patch(base, mode="gain", target_modules=["0"], gain=0.5)
    assert isinstance(model[0], GainWrapper)
    torch.testing.assert_close(model(x), before * 1.5)
    with pytest.raises(TTValueError, match="option 'r' belongs to mode 'rep'"):
        ttnn.patch(fresh, mode="gain", target_modules=["0"], r=2)
    folder = ttnn.save_adapter(model, tmp_path)
    assert json.loads((folder / CONFIG_NAME).read_text())["mode_options"] == {"gain": 0.5}
    loaded = ttnn.load_adapter(fresh, folder)
    assert torch.equal(loaded(x), model(x))
    assert get_state(loaded).configs["default"].options == GainOptions(gain=0.5)
    with pytest.raises(TTValueError, match="nonlinear adapter"):
        ttnn.merge_adapter(model)  # the wrapper's default: cannot be merged
    restored = ttnn.unpatch(model)
    assert isinstance(restored[0], nn.Linear) and torch.equal(restored(x), before)


def test_a_new_mode_option_is_checked_by_its_options(gain_mode: type[Mode]) -> None:
    with pytest.raises(TTValueError, match="gain must be a finite number"):
        ttnn.patch(
            nn.Sequential(nn.Linear(6, 4)), mode="gain", target_modules=["0"], gain=float("nan")
        )


# ---------------------------------------------------------------- TTReparam's one state machine


def _layer(init: str = "zero", **options: Any) -> TTReparam:
    torch.manual_seed(0)
    layer = TTReparam(
        nn.Linear(12, 10, dtype=F64), init=init, r=2, tt_rank=2, dropout=0.0, **options
    )
    with torch.no_grad():
        for p in layer.adapters.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # trained: no longer the initial cores
    return layer.eval()


def test_merge_unmerge_restore_round_trips_exactly() -> None:
    layer = _layer()
    w0 = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 12, dtype=F64)
    y = layer(x)
    update = layer.adapters["default"]
    assert update.state == "clean"
    layer.merge()
    assert update.state == "merged" and bool(update.merged)
    torch.testing.assert_close(layer(x), y)
    layer.unmerge()
    assert update.state == "clean" and not bool(update.merged)
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-15)
    layer.merge()
    assert layer.restore_base() is layer.base_layer
    assert update.state == "clean"
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-15)


def test_svd_update_goes_corrected_merged_corrected_clean() -> None:
    torch.manual_seed(1)
    base = nn.Linear(12, 10, dtype=F64)
    w0 = base.weight.detach().clone()
    layer = TTReparam(base, init="svd", r=2, tt_rank=2, dropout=0.0).eval()
    update = layer.adapters["default"]
    assert update.state == "corrected"  # the initial part came out of the base weight
    x = torch.randn(4, 12, dtype=F64)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, w0, base.bias))
    layer.merge()
    assert update.state == "merged"
    layer.unmerge()
    assert update.state == "corrected"
    with pytest.raises(TTValueError, match="already taken out"):
        layer.correct("default")
    layer.restore_base()
    assert update.state == "clean"
    torch.testing.assert_close(layer.base_layer.weight, w0, rtol=0, atol=1e-14)


def test_restore_base_keeps_the_named_update_merged() -> None:
    layer = _layer()
    layer.add_adapter("b", r=2, tt_rank=2, dropout=0.0)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge("default")
    layer.merge("b")
    merged_default = w0 + layer.adapters["default"].delta_weight()
    layer.restore_base(keep="default")
    assert layer.merged_adapters == ["default"]
    torch.testing.assert_close(layer.base_layer.weight, merged_default)


def test_an_update_not_running_gives_back_what_it_put_in_the_base() -> None:
    layer = _layer()
    layer.add_adapter("b", r=2, tt_rank=2, dropout=0.0)
    x = torch.randn(4, 12, dtype=F64)
    y_default = layer(x)
    layer.merge("default")
    layer.set_adapter("b")
    y_b = layer(x)
    layer.unmerge()
    torch.testing.assert_close(y_b, layer(x))
    layer.set_adapter("default")
    torch.testing.assert_close(layer(x), y_default)


def test_merge_state_follows_a_loaded_state_dict() -> None:
    layer, fresh = _layer(), _layer()
    layer.merge()
    fresh.load_state_dict(layer.state_dict())
    assert fresh.adapters["default"].state == "merged" and fresh.merged_adapters == ["default"]
