"""One owner of a model's surgery state; peft's names; the state's save_pretrained."""

from __future__ import annotations

import ast
import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTValueError
from tensortrain_nn import TTReparam
from tensortrain_nn.surgery import SurgeryState, get_state
from tensortrain_nn.surgery.io import CONFIG_NAME, WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from _surgery_models import build, inputs, logits

SURGERY = Path(ttnn.surgery.__file__).parent


def flags(model: nn.Module) -> dict[str, bool]:
    return {k: p.requires_grad for k, p in model.named_parameters()}


# ---------------------------------------------------------------- structure


def _surgery_imports(path: Path) -> set[str]:
    """Sibling modules a surgery module imports, lazy (in-function) imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            sibling = len(parts) > 2 and (SURGERY / f"{parts[2]}.py").is_file()
            if parts[:2] == ["tensortrain_nn", "surgery"] and sibling:
                found.add(parts[2])
    return found


def test_surgery_modules_have_no_import_cycle() -> None:
    graph = {p.stem: _surgery_imports(p) - {p.stem} for p in SURGERY.glob("*.py")}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"import cycle: {' -> '.join((*path, node))}"
        if node in done:
            return
        for nxt in graph[node]:
            visit(nxt, (*path, node))
        done.add(node)

    for node in graph:
        visit(node, ())


def test_state_attribute_comes_with_the_first_adapter_and_goes_with_the_last() -> None:
    model = build("bert")
    with pytest.raises(TTValueError, match="matched no module"):
        ttnn.patch(model, mode="rep", target_modules=["nope"])
    assert "tt_surgery" not in model.__dict__  # a failed first patch attaches nothing
    ttnn.patch(model, mode="rep", adapter_name="a")
    state = model.__dict__["tt_surgery"]
    assert state is get_state(model) and state.attached
    ttnn.add_adapter(model, "b", mode="rep")
    assert model.__dict__["tt_surgery"] is state  # one object for the model's life
    ttnn.delete_adapter(model, "b")
    assert model.__dict__["tt_surgery"] is state
    ttnn.delete_adapter(model, "a")  # the last adapter: the model is unpatched
    assert "tt_surgery" not in model.__dict__ and not state.attached
    assert get_state(model, required=False) is None


def test_state_is_one_object_per_model() -> None:
    model = ttnn.patch(build("bert"), mode="rep", adapter_name="a")
    state = get_state(model)
    assert isinstance(state, SurgeryState) and state.model is model
    ttnn.patch(model, mode="rep", adapter_name="b", target_modules=["query"])
    assert get_state(model) is state and list(state.configs) == ["a", "b"]
    assert state.active == "b" and state.targets["b"] == [
        f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)
    ]
    ttnn.unpatch(model)
    assert get_state(model, required=False) is None
    with pytest.raises(TTValueError, match="not patched"):
        get_state(model)


def test_deepcopy_of_a_patched_model_owns_its_own_state() -> None:
    model = ttnn.patch(build("bert"), mode="rep")
    twin = copy.deepcopy(model)
    assert get_state(twin).model is twin and get_state(twin) is not get_state(model)
    ttnn.unpatch(twin)
    assert get_state(model).model is model
    assert sum(isinstance(m, TTReparam) for m in model.modules()) == 4


# ---------------------------------------------------------------- install: all or nothing


def test_failed_second_install_keeps_user_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    model = ttnn.patch(build("bert"), mode="rep", adapter_name="a")
    model.bert.pooler.requires_grad_(True)  # the user's own choices
    model.classifier.requires_grad_(False)
    before = (
        flags(model),
        repr(model),
        [m.active_adapter for m in model.modules() if isinstance(m, TTReparam)],
    )
    calls = []
    real = TTReparam.add_adapter

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        real(self, *args, **kwargs)

    monkeypatch.setattr(TTReparam, "add_adapter", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        ttnn.patch(model, mode="rep", adapter_name="b")
    active = [m.active_adapter for m in model.modules() if isinstance(m, TTReparam)]
    assert (flags(model), repr(model), active) == before
    assert list(get_state(model).configs) == ["a"] and get_state(model).active == "a"


def test_set_adapter_keeps_what_the_user_unfroze() -> None:
    model = ttnn.patch(build("bert"), mode="rep", adapter_name="a", trainable_norms=True)
    ttnn.patch(model, mode="rep", adapter_name="b", trainable_head=False)
    model.bert.pooler.requires_grad_(True)
    assert not model.classifier.weight.requires_grad  # b does not train the head
    assert not model.bert.embeddings.LayerNorm.weight.requires_grad  # nor the norms
    ttnn.set_adapter(model, "a")
    assert (
        model.classifier.weight.requires_grad
        and model.bert.embeddings.LayerNorm.weight.requires_grad
    )
    assert model.bert.pooler.dense.weight.requires_grad
    ttnn.delete_adapter(model, "a")
    assert get_state(model).active == "b"
    assert (
        not model.classifier.weight.requires_grad and model.bert.pooler.dense.weight.requires_grad
    )


# ---------------------------------------------------------------- peft names


def test_add_adapter_does_not_activate() -> None:
    model, x = build("bert"), inputs()
    ttnn.add_adapter(model, "a", ttnn.PatchConfig(init="paper"))  # first one: active
    out_a = logits(model, x)
    ttnn.add_adapter(model, "b", init="paper", target_modules=["query"])
    assert get_state(model).active == "a" and torch.equal(logits(model, x), out_a)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad and ".adapters." in k}
    assert trainable and all(".adapters.a." in k for k in trainable)
    ttnn.set_adapter(model, "b")
    assert not torch.equal(logits(model, x), out_a)


def test_inactive_adapter_parameters() -> None:
    model = build("bert")
    assert ttnn.inactive_adapter_parameters(model) == []
    ttnn.patch(model, mode="rep", adapter_name="a")
    ttnn.patch(model, mode="rep", adapter_name="b")
    assert ttnn.inactive_adapter_parameters(model) == []
    for name, p in model.named_parameters():
        if ".adapters.a." in name:
            p.requires_grad_(True)
    found = ttnn.surgery.inactive_adapter_parameters(model)
    params = dict(model.named_parameters())
    assert found and all(".adapters.a." in n and params[n] is p for n, p in found)
    assert len(found) == sum(".adapters.a." in n for n in params)


def test_peft_aliases(capsys: pytest.CaptureFixture[str]) -> None:
    assert ttnn.disable_adapter is ttnn.disable_adapters and ttnn.unload is ttnn.unpatch
    model, x = build("llama"), inputs()
    ref = logits(model, x)
    ttnn.patch(model, mode="rep", init="paper")
    with ttnn.disable_adapter(model):
        assert torch.equal(logits(model, x), ref)
    ttnn.print_trainable_parameters(model)
    assert capsys.readouterr().out == ttnn.trainable_report(model).line + "\n"
    ttnn.unload(model)
    assert torch.equal(logits(model, x), ref) and get_state(model, required=False) is None


def test_merge_adapter_and_unmerge_adapter() -> None:
    model, x = build("bert"), inputs()
    ttnn.patch(model, mode="rep", init="paper")
    patched = logits(model, x)
    weight = model.bert.encoder.layer[0].attention.self.query.base_layer.weight.detach().clone()
    ttnn.merge_adapter(model)
    layer = model.bert.encoder.layer[0].attention.self.query
    assert layer.merged_adapters == ["default"] and not torch.equal(layer.base_layer.weight, weight)
    torch.testing.assert_close(logits(model, x), patched, atol=1e-5, rtol=1e-4)
    ttnn.unmerge_adapter(model)
    assert layer.merged_adapters == []
    torch.testing.assert_close(layer.base_layer.weight, weight, atol=1e-6, rtol=0)


def test_merge_adapter_is_all_or_nothing() -> None:
    model = ttnn.patch(build("bert"), mode="rep", init="paper")
    last = model.bert.encoder.layer[1].attention.self.value
    with torch.no_grad():
        last.adapters["default"].B.cores[0].fill_(float("inf"))
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TTValueError, match="non-finite"):
        ttnn.merge_adapter(model)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    assert not any(m.merged_adapters for m in model.modules() if isinstance(m, TTReparam))


# ---------------------------------------------------------------- save_pretrained of the state


def test_state_save_pretrained_writes_the_adapter(tmp_path: Path) -> None:
    model, x = build("bert"), inputs()
    fresh = copy.deepcopy(model)
    ttnn.patch(model, mode="rep", init="paper")
    state = get_state(model)
    state.save_pretrained(tmp_path / "a", state_dict=model.state_dict(), safe_serialization=True)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert json.loads((tmp_path / "a" / CONFIG_NAME).read_text())["adapter_name"] == "default"
    ttnn.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(logits(fresh, x), logits(model, x))
    assert state.save_pretrained(tmp_path / "b", is_main_process=False) is None
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("verb", ["patch", "unpatch", "unload", "merge_and_unload"])
def test_model_save_pretrained_is_never_replaced(tmp_path: Path, verb: str) -> None:
    model = build("bert")
    ttnn.patch(model, mode="rep")
    if verb != "patch":
        getattr(ttnn, verb)(model)
    assert "save_pretrained" not in model.__dict__
    assert model.save_pretrained.__func__ is type(model).save_pretrained
    model.save_pretrained(tmp_path)  # the model's own: the whole model
    assert (tmp_path / "config.json").is_file()


def test_own_save_pretrained_attribute_survives(tmp_path: Path) -> None:
    model = build("bert")
    mine = lambda *a, **k: "mine"  # noqa: E731
    model.__dict__["save_pretrained"] = mine
    ttnn.patch(model, mode="rep")
    assert model.save_pretrained is mine
    ttnn.unpatch(model)
    assert model.save_pretrained is mine


def test_plain_modules_get_no_save_pretrained() -> None:
    model = ttnn.patch(nn.Sequential(nn.Linear(8, 8)), target_modules=["0"], r=2, tt_rank=2)
    assert "save_pretrained" not in model.__dict__


# ---------------------------------------------------------------- the folder format


def test_format_version_1_folder_loads(tmp_path: Path) -> None:
    """A folder as the first release wrote it (config keys spelled out here) still loads."""
    model, x = build("bert"), inputs()
    fresh = copy.deepcopy(model)
    ttnn.patch(model, mode="rep", init="paper", target_modules=["query"])
    ttnn.save_adapter(model, tmp_path)
    first_release = {
        "mode": "rep", "target_modules": ["query"], "r": 8, "alpha": 16.0, "tt_rank": 5,
        "dropout": None, "form": "factors", "init": "paper", "bottleneck": 64,
        "activation": "relu", "scale": 1.0, "max_rank": None, "eps": None,
        "trainable_norms": False, "trainable_head": True, "trainable_biases": False,
        "format_version": 1, "adapter_name": "default", "model_type": "bert",
        "target_names": [f"bert.encoder.layer.{i}.attention.self.query" for i in range(2)],
    }  # fmt: skip
    assert json.loads((tmp_path / CONFIG_NAME).read_text()) == first_release
    (tmp_path / CONFIG_NAME).write_text(json.dumps(first_release, indent=2))
    ttnn.load_adapter(fresh, tmp_path)
    assert torch.equal(logits(fresh, x), logits(model, x))
