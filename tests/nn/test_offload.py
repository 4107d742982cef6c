"""Offloaded (accelerate cpu/disk) and meta layers: the same logits as in memory, or a refusal
naming the offloaded modules before anything changes."""

from __future__ import annotations

import pytest
import torch
from _llm_bases import batch, load, logits, randomize_adapters

import tensortrain_nn as ttnn
from tensortrain.errors import TTValueError

pytest.importorskip("accelerate")
pytest.importorskip("transformers")
#: Layer 1 on disk, everything else on the cpu.
DEVICE_MAP = {
    "model.embed_tokens": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.norm": "cpu",
    "model.rotary_emb": "cpu",
    "lm_head": "cpu",
}
LAYER0 = r"model\.layers\.0\.self_attn\.(q|v)_proj"


def _on_disk(folder, tmp_path):
    return load(folder, device_map=DEVICE_MAP, offload_folder=str(tmp_path / "offload"))


def _snapshot(model):
    return repr(model), [p.requires_grad for p in model.parameters()], logits(model, batch())


def _same(a, b):
    return a[:2] == b[:2] and torch.equal(a[2], b[2])


def test_patch_refuses_disk_offloaded_targets_naming_them(tiny_llama, tmp_path):
    model = _on_disk(tiny_llama, tmp_path)
    before = _snapshot(model)
    with pytest.raises(TTValueError) as info:
        ttnn.patch(model, mode="rep")
    message = str(info.value)
    assert "'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj'" in message
    assert "offloaded" in message and "\n" not in message and "layers.0" not in message
    assert _same(_snapshot(model), before)


def test_in_memory_targets_of_an_offloaded_model_match_the_model_in_memory(tiny_llama, tmp_path):
    model = _on_disk(tiny_llama, tmp_path)
    ttnn.patch(model, mode="rep", r=4, tt_rank=2, target_modules=LAYER0)
    randomize_adapters(model)
    ttnn.save_adapter(model, tmp_path / "adapter")
    memory = ttnn.load_adapter(load(tiny_llama), tmp_path / "adapter")
    assert torch.allclose(logits(model, batch()), logits(memory, batch()), atol=1e-6)
    offloaded = ttnn.load_adapter(_on_disk(tiny_llama, tmp_path / "b"), tmp_path / "adapter")
    assert torch.equal(logits(offloaded, batch()), logits(model, batch()))


def test_load_adapter_refuses_offloaded_targets_before_any_change(tiny_llama, tmp_path):
    trained = ttnn.patch(load(tiny_llama), mode="rep", r=4, tt_rank=2)
    randomize_adapters(trained)
    ttnn.save_adapter(trained, tmp_path / "adapter")
    model = _on_disk(tiny_llama, tmp_path)
    before = _snapshot(model)
    with pytest.raises(TTValueError, match=r"cannot load_adapter: 'model\.layers\.1\.self_attn"):
        ttnn.load_adapter(model, tmp_path / "adapter")
    assert _same(_snapshot(model), before)


def test_cpu_offload_is_refused_too(tiny_llama):
    from accelerate import cpu_offload

    model = cpu_offload(load(tiny_llama), execution_device=torch.device("cpu"))
    with pytest.raises(TTValueError, match="are offloaded"):
        ttnn.patch(model, mode="adp", bottleneck=8, tt_rank=2)


def test_merge_refuses_layers_offloaded_after_patching(tiny_llama):
    from accelerate import cpu_offload

    model = ttnn.patch(load(tiny_llama), mode="rep", r=4, tt_rank=2)
    randomize_adapters(model)
    cpu_offload(model, execution_device=torch.device("cpu"))
    before = repr(model)
    with pytest.raises(TTValueError, match=r"cannot merge: 'model\.layers\.0\.self_attn\.q_proj'"):
        ttnn.merge_and_unload(model)
    wrappers = [m for m in model.modules() if isinstance(m, ttnn.TTReparam)]
    assert repr(model) == before and len(wrappers) == 4
    assert all(w.merged_adapters == [] for w in wrappers)


def test_meta_model_patches_for_counting_but_refuses_load(tiny_llama, tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM

    trained = ttnn.patch(load(tiny_llama), mode="rep", r=4, tt_rank=2)
    ttnn.save_adapter(trained, tmp_path)
    with torch.device("meta"):
        counted = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_llama))
        blank = LlamaForCausalLM(AutoConfig.from_pretrained(tiny_llama))
    ttnn.patch(counted, mode="rep", r=4, tt_rank=2)
    assert ttnn.trainable_report(counted).trainable == ttnn.trainable_report(trained).trainable
    with pytest.raises(TTValueError, match=r"cannot load_adapter: .* are offloaded"):
        ttnn.load_adapter(blank, tmp_path)
