"""Model surgery on real architectures from tiny configs: patch, train, save/load, merge, unpatch."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTError, TTShapeError, TTTypeError, TTValueError
from tensortrain_nn import TTAdapter, TTLinear, TTReparam
from tensortrain_nn.surgery.io import CONFIG_NAME, WEIGHTS_NAME

sys.path.insert(0, str(Path(__file__).parent))
from _surgery_models import TINY, build, inputs, logits

ARCHS = list(TINY)
#: Options per mode that fit hidden size 32.
MODE_OPTS = {"rep": {}, "adp": {"bottleneck": 8}}


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, bool], str]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    return state, flags, repr(model)


def assert_same(before: tuple, model: nn.Module) -> None:
    state, flags, text = before
    now_state, now_flags, now_text = snapshot(model)
    assert now_text == text
    assert now_flags == flags
    assert now_state.keys() == state.keys()
    for k in state:
        assert torch.equal(state[k], now_state[k]), k
    assert "tt_surgery" not in model.__dict__


def train_steps(model: nn.Module, x: torch.Tensor, steps: int = 1) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        out = model(input_ids=x).logits
        out.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def no_tt(model: nn.Module) -> bool:
    return not any(isinstance(m, TTReparam | TTAdapter | TTLinear) for m in model.modules())


# ---------------------------------------------------------------- patch at init, training


@pytest.mark.parametrize("mode", ["rep", "adp"])
@pytest.mark.parametrize("arch", ARCHS)
def test_patched_output_equals_original_at_init(arch: str, mode: str) -> None:
    model, x = build(arch), inputs()
    ref = logits(model, x)
    assert ttnn.patch(model, mode=mode, **MODE_OPTS[mode]) is model
    assert torch.equal(logits(model, x), ref)
    wrapper = TTReparam if mode == "rep" else TTAdapter
    assert sum(isinstance(m, wrapper) for m in model.modules()) >= 2


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_changes_only_trainable(arch: str) -> None:
    model, x = build(arch), inputs()
    ttnn.patch(model, mode="rep", trainable_norms=True)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    train_steps(model, x)
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable
    assert any(".adapters.default." in k for k in changed)
    frozen = {k for k, p in model.named_parameters() if not p.requires_grad}
    assert any("base_layer.weight" in k for k in frozen)


def test_defaults_per_architecture() -> None:
    expect = {
        "bert": ("rep", r"\.attention\.self\.(query|value)$"),
        "deberta-v2": ("rep", r"\.attention\.self\.(query_proj|value_proj)$"),
        "gpt2": ("rep", r"\.attn\.c_attn$"),
        "llama": ("rep", r"\.self_attn\.(q_proj|v_proj)$"),
    }
    for arch, (mode, pattern) in expect.items():
        model = ttnn.patch(build(arch), mode=mode)
        names = [n for n, m in model.named_modules() if isinstance(m, TTReparam)]
        assert len(names) == 4 if arch != "gpt2" else len(names) == 2, arch
        assert all(re.search(pattern, n) for n in names), names


def test_adp_bert_targets_each_dense_once() -> None:
    model = ttnn.patch(build("bert"), mode="adp", bottleneck=8)
    names = [n for n, m in model.named_modules() if isinstance(m, TTAdapter)]
    assert names == [
        f"bert.encoder.layer.{i}.{s}"
        for i in range(2)
        for s in ("attention.output.dense", "output.dense")
    ]
    assert not isinstance(model.bert.pooler.dense, TTAdapter)


def test_adp_llama_wraps_mlp_with_hidden_features() -> None:
    model = ttnn.patch(build("llama"), mode="adp", bottleneck=8)
    mlps = [m for m in model.modules() if isinstance(m, TTAdapter)]
    assert len(mlps) == 2 and all(m.features == 32 for m in mlps)
    assert type(mlps[0].base_layer).__name__ == "LlamaMLP"


def test_target_matching_list_suffix_and_regex() -> None:
    model = ttnn.patch(build("bert"), target_modules=["key"])
    assert sum(isinstance(m, TTReparam) for m in model.modules()) == 2
    model = ttnn.patch(build("bert"), target_modules=r".*layer\.0\.attention\.self\.(query|key)")
    names = [n for n, m in model.named_modules() if isinstance(m, TTReparam)]
    assert names == [
        "bert.encoder.layer.0.attention.self.query",
        "bert.encoder.layer.0.attention.self.key",
    ]
    # "self.query" is a suffix after a dot; "elf.query" is not
    with pytest.raises(TTValueError, match="matched no module"):
        ttnn.patch(build("bert"), target_modules=["elf.query"])


def test_trainable_flags_head_norms_biases() -> None:
    model = ttnn.patch(build("bert"), trainable_norms=True, trainable_biases=True)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    assert flags["classifier.weight"] and flags["bert.encoder.layer.0.output.LayerNorm.weight"]
    assert flags["bert.encoder.layer.0.intermediate.dense.bias"]
    assert not flags["bert.encoder.layer.0.intermediate.dense.weight"]
    assert not flags["bert.pooler.dense.weight"]
    model = ttnn.patch(build("bert"), trainable_head=False)
    assert all(".adapters." in k for k, p in model.named_parameters() if p.requires_grad)


def test_report_line_and_table() -> None:
    model = ttnn.patch(build("llama"), mode="rep", trainable_norms=True)
    report = ttnn.trainable_report(model)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert (report.trainable, report.total) == (trainable, total)
    assert report.line == (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
    text = str(report)
    assert "model.layers.*.self_attn.q_proj" in text and "TTReparam" in text and "norm" in text
    assert sum(r.trainable for r in report.rows) == trainable


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    ("arch", "mode"),
    [(a, "rep") for a in ARCHS] + [("bert", "adp"), ("gpt2", "adp"), ("llama", "adp")],
)
def test_save_load_gives_identical_logits(arch: str, mode: str, tmp_path: Path) -> None:
    model, x = build(arch), inputs()
    fresh = copy.deepcopy(model)
    ttnn.patch(model, mode=mode, trainable_norms=True, **MODE_OPTS[mode])
    train_steps(model, x)
    trained = logits(model, x)
    ttnn.save_adapter(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / WEIGHTS_NAME)
    assert sum(t.numel() for t in saved.values()) == ttnn.trainable_report(model).trainable
    assert ttnn.load_adapter(fresh, tmp_path) is fresh
    assert torch.equal(logits(fresh, x), trained)


def test_config_json_roundtrip(tmp_path: Path) -> None:
    model = ttnn.patch(build("bert"), mode="rep", r=4, tt_rank=3, target_modules=["query"])
    ttnn.save_adapter(model, tmp_path)
    data = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert data["r"] == 4 and data["tt_rank"] == 3 and data["target_modules"] == ["query"]
    assert data["model_type"] == "bert" and data["adapter_name"] == "default"
    config, _meta, _ = ttnn.surgery.read_adapter(tmp_path)
    assert config == ttnn.PatchConfig(mode="rep", r=4, tt_rank=3, target_modules=["query"])


def _saved(tmp_path: Path, arch: str = "bert") -> Path:
    model = ttnn.patch(build(arch), mode="rep")
    train_steps(model, inputs())
    return ttnn.save_adapter(model, tmp_path / "adapter")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (
            lambda p: (p / WEIGHTS_NAME).write_bytes((p / WEIGHTS_NAME).read_bytes()[:-40]),
            "corrupted or truncated",
        ),
        (lambda p: (p / WEIGHTS_NAME).write_bytes(b"\x00" * 7), "corrupted or truncated"),
        (lambda p: (p / WEIGHTS_NAME).write_bytes(b"\xff" * 64), "corrupted or truncated"),
        (lambda p: (p / CONFIG_NAME).write_text("{not json"), "not valid JSON"),
        (lambda p: (p / WEIGHTS_NAME).unlink(), f"has no {WEIGHTS_NAME}"),
        (
            lambda p: (p / CONFIG_NAME).write_text('{"format_version": 1, "r": 0}'),
            "r must be an int >= 1",
        ),
    ],
    ids=["truncated", "tiny", "garbage", "bad-json", "missing", "bad-config"],
)
def test_load_bad_files_is_clear_and_leaves_model(tmp_path: Path, damage, match: str) -> None:
    folder = _saved(tmp_path)
    damage(folder)
    fresh = build("bert")
    before = snapshot(fresh)
    with pytest.raises(TTError, match=match):
        ttnn.load_adapter(fresh, folder)
    assert_same(before, fresh)


def test_load_onto_other_size_names_first_tensor(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    folder = _saved(tmp_path)
    other = BertForSequenceClassification(
        BertConfig(
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=100,
            num_labels=3,
        )
    )
    before = snapshot(other)
    with pytest.raises(
        TTShapeError,
        match=r"adapter tensor 'bert\.encoder\.layer\.0\.attention\.self\.query\.adapters\.A\.cores\.1' .* shape \(5, 2, 4, 1\), but the patched model's has \(5, 2, 6, 1\)",
    ):
        ttnn.load_adapter(other, folder)
    assert_same(before, other)


def test_load_onto_other_architecture(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    llama = build("llama")
    before = snapshot(llama)
    with pytest.raises(TTValueError, match="model_type 'bert', not 'llama'"):
        ttnn.load_adapter(llama, folder)
    assert_same(before, llama)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _saved(tmp_path)
    good = (folder / WEIGHTS_NAME).read_bytes()
    model = ttnn.patch(build("bert"), mode="rep", r=4)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("tensortrain_nn._files.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        ttnn.save_adapter(model, folder)
    assert (folder / WEIGHTS_NAME).read_bytes() == good
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


# ---------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_and_unload(arch: str) -> None:
    model, x = build(arch), inputs()
    ttnn.patch(model, mode="rep", init="paper")
    trained = logits(model, x)
    plain = ttnn.merge_and_unload(model)
    assert plain is model and no_tt(model)
    assert torch.allclose(logits(model, x), trained, atol=1e-5, rtol=1e-4)
    assert all(p.requires_grad for p in model.parameters())
    assert "tt_surgery" not in model.__dict__


@pytest.mark.parametrize("mode", ["rep", "adp"])
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_unpatch_restores_original(arch: str, mode: str) -> None:
    model, _x = build(arch), inputs()
    model.get_input_embeddings().weight.requires_grad_(False)  # a user's own flag survives
    before = snapshot(model)
    ttnn.patch(model, mode=mode, init="paper", **MODE_OPTS[mode])
    if mode == "rep":
        for m in model.modules():
            if isinstance(m, TTReparam):
                m.merge()
    assert ttnn.unpatch(model) is model
    state, flags, text = before
    assert (
        repr(model) == text and {k: p.requires_grad for k, p in model.named_parameters()} == flags
    )
    for k, v in model.state_dict().items():
        assert torch.allclose(v, state[k], atol=1e-6), k


def test_merge_refuses_active_adp() -> None:
    model = ttnn.patch(build("bert"), mode="adp", bottleneck=8)
    before = repr(model)
    with pytest.raises(TTValueError, match="nonlinear adapter"):
        ttnn.merge_and_unload(model)
    assert repr(model) == before


def test_disable_adapters_context() -> None:
    model, x = build("llama"), inputs()
    ref = logits(model, x)
    ttnn.patch(model, mode="rep", init="paper")
    patched = logits(model, x)
    assert not torch.allclose(patched, ref)
    with ttnn.disable_adapters(model):
        assert torch.equal(logits(model, x), ref)
    assert torch.equal(logits(model, x), patched)


def test_named_adapters_switch_save_and_load(tmp_path: Path) -> None:
    model, x = build("bert"), inputs()
    fresh = copy.deepcopy(model)
    ttnn.patch(model, mode="rep", init="paper", adapter_name="task1")
    out1 = logits(model, x)
    ttnn.patch(model, mode="rep", init="paper", adapter_name="task2", target_modules=["query"])
    out2 = logits(model, x)
    assert not torch.allclose(out1, out2)
    trainable = {k for k, p in model.named_parameters() if p.requires_grad and ".adapters." in k}
    assert trainable and all(".adapters.task2." in k for k in trainable)
    ttnn.save_adapter(model, tmp_path / "t2")
    ttnn.set_adapter(model, "task1")
    assert torch.equal(logits(model, x), out1)
    ttnn.save_adapter(model, tmp_path / "t1")
    ttnn.load_adapter(fresh, tmp_path / "t1")
    ttnn.load_adapter(fresh, tmp_path / "t2")
    assert torch.equal(logits(fresh, x), out2)
    ttnn.set_adapter(fresh, "task1")
    assert torch.equal(logits(fresh, x), out1)
    ttnn.delete_adapter(fresh, "task1")
    assert torch.equal(logits(fresh, x), out2)
    with pytest.raises(TTValueError, match="must be one of"):
        ttnn.set_adapter(fresh, "task1")


def test_linear_mode_compresses_and_merges() -> None:
    model, x = build("gpt2"), inputs()
    ref = logits(model, x)
    ttnn.patch(model, mode="linear", target_modules=["c_fc", "c_attn"])
    assert sum(isinstance(m, TTLinear) for m in model.modules()) == 4
    assert torch.allclose(logits(model, x), ref, atol=1e-4)
    with pytest.raises(TTValueError, match="mode='linear'"):
        ttnn.unpatch(model)
    ttnn.merge_and_unload(model)
    assert no_tt(model) and isinstance(model.transformer.h[0].mlp.c_fc, nn.Linear)
    assert torch.allclose(logits(model, x), ref, atol=1e-4)
    small = ttnn.patch(
        build("bert"), mode="linear", max_rank=2, target_modules=["intermediate.dense"]
    )
    layer = small.bert.encoder.layer[0].intermediate.dense
    assert isinstance(layer, TTLinear) and max(layer.ranks) <= 2


# ---------------------------------------------------------------- bad input, model untouched

BAD = {
    "unknown-mode": ({"mode": "lora"}, TTValueError, "mode must be one of"),
    "no-match": ({"target_modules": ["nope"]}, TTValueError, "matched no module"),
    "bad-regex": ({"target_modules": "(("}, TTValueError, "not a valid regex"),
    "targets-type": ({"target_modules": 3}, TTTypeError, "target_modules must be"),
    "r-zero": ({"r": 0}, TTValueError, "r must be an int >= 1"),
    "r-float": ({"r": 2.5}, TTTypeError, "r must be an int >= 1"),
    "r-bool": ({"r": True}, TTTypeError, "r must be an int >= 1"),
    "r-too-big": ({"r": 64}, TTShapeError, "r=64 exceeds min"),
    "tt-rank-too-big": ({"tt_rank": 100}, TTShapeError, "tt_rank=100 is larger than"),
    "bottleneck-too-big": (
        {"mode": "adp", "bottleneck": 64},
        TTShapeError,
        "bottleneck=64 exceeds",
    ),
    "max-rank-too-big": ({"mode": "linear", "max_rank": 10_000}, TTShapeError, "max_rank=10000"),
    "other-mode-option": ({"mode": "rep", "bottleneck": 8}, TTValueError, "belongs to mode 'adp'"),
    "unknown-option": ({"rnak": 3}, TTValueError, "unknown option 'rnak'"),
    "bad-activation": (
        {"mode": "adp", "bottleneck": 8, "activation": "swish"},
        TTValueError,
        "activation",
    ),
    "bad-dropout": ({"dropout": 1.0}, TTValueError, "dropout"),
    "conv-in-rep": (
        {"target_modules": ["embeddings.word_embeddings"]},
        TTTypeError,
        "needs nn.Linear",
    ),
    "bad-name": ({"adapter_name": "my adapter"}, TTValueError, "identifier"),
    "norms-not-bool": ({"trainable_norms": "yes"}, TTTypeError, "trainable_norms must be a bool"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_leaves_model_untouched(case: str) -> None:
    kwargs, exc, match = BAD[case]
    model = build("bert")
    before = snapshot(model)
    with pytest.raises(exc, match=match):
        ttnn.patch(model, **kwargs)
    assert_same(before, model)


def test_same_adapter_name_twice_leaves_model() -> None:
    model = ttnn.patch(build("bert"), mode="rep")
    before = snapshot(model)
    with pytest.raises(TTValueError, match="already has an adapter named 'default'"):
        ttnn.patch(model, mode="rep")
    _state, flags, text = before
    assert (
        repr(model) == text and {k: p.requires_grad for k, p in model.named_parameters()} == flags
    )


def test_stacking_other_mode_on_wrapper_is_refused() -> None:
    model = ttnn.patch(build("bert"), mode="rep")
    text = repr(model)
    with pytest.raises(TTValueError, match="cannot be stacked"):
        ttnn.patch(model, mode="adp", bottleneck=8, adapter_name="b", target_modules=["query"])
    assert repr(model) == text


def test_unknown_architecture_lists_what_it_saw() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    before = snapshot(model)
    with pytest.raises(TTValueError, match=r"model_type=None.*0 \(Linear\).*bert"):
        ttnn.patch(model)
    assert_same(before, model)
    ttnn.patch(model, target_modules=["0", "2"], r=4, tt_rank=2)
    assert isinstance(model[0], TTReparam)


def test_failed_install_rolls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model = build("bert")
    before = snapshot(model)
    calls = []
    real = TTReparam.__init__

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        real(self, *args, **kwargs)

    monkeypatch.setattr(TTReparam, "__init__", flaky)
    with pytest.raises(RuntimeError, match="out of memory"):
        ttnn.patch(model)
    assert_same(before, model)


def test_not_patched_errors() -> None:
    model = build("bert")
    for fn in (ttnn.unpatch, ttnn.merge_and_unload, lambda m: ttnn.set_adapter(m, "x")):
        with pytest.raises(TTValueError, match="not patched"):
            fn(model)
    with pytest.raises(TTTypeError, match=r"nn\.Module"):
        ttnn.patch("bert")  # type: ignore[arg-type]


def test_new_modules_follow_train_eval_mode() -> None:
    model = ttnn.patch(build("bert"), mode="rep")  # built in eval mode: dropout must be off
    assert not any(m.training for m in model.modules())
    model.train()
    ttnn.patch(model, mode="rep", adapter_name="b", target_modules=["query"])
    assert all(m.training for m in model.modules())
