"""LoRETTA on bitsandbytes 4-bit (nf4 / fp4, with and without double quant) and 8-bit bases.

The frozen quantized layer computes; the TT update runs in float32 and is added. Training moves
only adapter tensors; save/load and export_lora (read by peft onto the same 4-bit base) give the
same logits; what would write into a packed weight is refused in one line, before any change.
"""

from __future__ import annotations

import copy

import pytest
import torch
from _llm_bases import FOUR_BIT, batch, load, logits, randomize_adapters, train_steps

import tensortrain_nn as ttnn
from tensortrain.errors import TTTypeError
from tensortrain_nn import TTAdapter, TTReparam
from tensortrain_nn.bases import describe, quant_kind

pytest.importorskip("bitsandbytes")
pytest.importorskip("transformers")
FORMS = [*FOUR_BIT, "8bit"]


def _wrappers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TTReparam | TTAdapter)]


@pytest.mark.parametrize("form", FORMS)
def test_rep_output_is_quantized_base_plus_float32_update(tiny_llama, form):
    model = load(tiny_llama, form)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2, dropout=0.0)
    randomize_adapters(model)
    wrappers = _wrappers(model)
    assert len(wrappers) == 4 and all(quant_kind(w.base_layer) for _, w in wrappers)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(1))
    for _, layer in wrappers:
        update = layer.adapters["default"]
        assert {p.dtype for p in update.parameters()} == {torch.float32}
        with torch.no_grad():
            base = layer.base_layer(x)
            expected = base.double() + x.double() @ update.delta_weight(torch.float64).T
            got = layer(x)
        assert got.dtype == base.dtype
        assert (got.double() - expected).abs().max() < 1e-4
        assert (got - base).abs().max() > 1e-2  # the update is really there


@pytest.mark.parametrize("form", ["nf4", "8bit"])
def test_adp_on_quantized_mlp_adds_its_output(tiny_llama, form):
    model = load(tiny_llama, form)
    ids = batch()
    before = logits(model, ids)
    ttnn.patch(model, mode="adp", bottleneck=8, tt_rank=2)
    assert torch.equal(logits(model, ids), before)  # zero output at init
    randomize_adapters(model)
    _, layer = _wrappers(model)[0]
    assert {p.dtype for p in layer.adapters.parameters()} == {torch.float32}
    h = torch.randn(2, 3, 64)
    with torch.no_grad():
        base = layer.base_layer(h)
        assert torch.allclose(layer(h), base + layer.adapters["default"](base), atol=1e-6)


@pytest.mark.parametrize("form", ["nf4", "fp4-dq", "8bit"])
def test_training_on_quantized_base_moves_only_adapters(tiny_llama, form):
    model = load(tiny_llama, form)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2)
    frozen = {n: t.detach().clone() for n, t in model.state_dict().items() if ".adapters." not in n}
    losses = train_steps(model, 8)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    after = model.state_dict()
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if ".adapters." in n
    ]


@pytest.mark.parametrize("form", ["nf4-dq", "8bit"])
def test_save_load_round_trip_on_quantized_base(tiny_llama, form, tmp_path):
    model = load(tiny_llama, form)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2)
    randomize_adapters(model)
    ttnn.save_adapter(model, tmp_path)
    fresh = ttnn.load_adapter(load(tiny_llama, form), tmp_path)
    ids = batch()
    assert torch.equal(logits(fresh, ids), logits(model, ids))


@pytest.mark.parametrize("form", ["nf4", "fp4-dq"])
def test_exported_lora_loads_in_peft_on_the_same_4bit_base(tiny_llama, form, tmp_path):
    peft = pytest.importorskip("peft")
    model = load(tiny_llama, form)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2, dropout=0.0)
    randomize_adapters(model)
    ttnn.export_lora(model, tmp_path)
    served = peft.PeftModel.from_pretrained(load(tiny_llama, form), str(tmp_path)).eval()
    ids = batch()
    ours, theirs = logits(model, ids), logits(served, ids)
    assert (ours - logits(load(tiny_llama, form), ids)).abs().max() > 1e-2
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("form", ["nf4", "8bit"])
@pytest.mark.parametrize("verb", ["merge_and_unload", "merge_adapter"])
def test_merge_into_quantized_weight_is_refused_before_any_change(tiny_llama, form, verb):
    model = load(tiny_llama, form)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2)
    randomize_adapters(model)
    ids = batch()
    before, shape = logits(model, ids), repr(model)
    weights = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(TTTypeError) as info:
        getattr(ttnn, verb)(model)
    message = str(info.value)
    assert "\n" not in message and "bitsandbytes Linear" in message and "load_adapter" in message
    assert repr(model) == shape and torch.equal(logits(model, ids), before)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in weights.items())


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mode": "rep", "init": "svd"}, "init='svd'"),
        ({"mode": "linear"}, "mode='linear'"),
    ],
)
def test_weight_writing_options_refused_on_quantized_base(tiny_llama, options, words):
    model = load(tiny_llama, "nf4")
    before = repr(model), [p.requires_grad for p in model.parameters()]
    with pytest.raises(TTTypeError, match="Linear4bit") as info:
        ttnn.patch(model, **options)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert (repr(model), [p.requires_grad for p in model.parameters()]) == before


def test_describe_names_the_quantization(tiny_llama):
    model = load(tiny_llama, "fp4-dq")
    layer = model.model.layers[0].self_attn.q_proj
    assert describe(layer) == "bitsandbytes Linear4bit (fp4 double quant)"
    assert describe(load(tiny_llama, "8bit").model.layers[0].mlp.up_proj).endswith("(int8)")


def test_prepare_kbit_training_upcasts_and_checkpointing_trains(tiny_llama):
    model = load(tiny_llama, "nf4", dtype=torch.bfloat16)
    packed = model.model.layers[0].self_attn.q_proj.weight
    assert model.model.norm.weight.dtype == torch.bfloat16
    ttnn.prepare_kbit_training(model, gradient_checkpointing=True)
    plain = [p for n, p in model.named_parameters() if not n.endswith("proj.weight")]
    assert {p.dtype for p in plain} == {torch.float32}  # norms, embeddings, head
    assert model.model.layers[0].self_attn.q_proj.weight is packed  # quantized layers untouched
    assert model.is_activation_checkpointing
    ttnn.patch(model, mode="rep", r=4, tt_rank=2)
    reference = copy.deepcopy([p.detach() for p in model.parameters() if p.requires_grad])
    losses = train_steps(model, 6)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    moved = [p for p in model.parameters() if p.requires_grad]
    assert all(not torch.equal(a, b) for a, b in zip(moved, reference))


def test_prepare_kbit_training_refuses_checkpointing_without_a_switch():
    model = torch.nn.Sequential(torch.nn.LayerNorm(4).to(torch.float16))
    with pytest.raises(TTTypeError, match="gradient_checkpointing=True needs a transformers"):
        ttnn.prepare_kbit_training(model, gradient_checkpointing=True)
    assert model[0].weight.dtype == torch.float16  # nothing changed
