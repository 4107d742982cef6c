"""A LoRETTA adapter folder is not misread as a peft adapter, and old folders still load.

Folders are ``tt_adapter_config.json`` + ``tt_adapter_model.safetensors``; earlier versions used
peft's names, which made peft fail with ``KeyError: 'peft_type'``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from _llm_bases import batch, load, logits, randomize_adapters

import tensortrain_nn as ttnn
from tensortrain.errors import TTValueError
from tensortrain_nn.surgery.io import CONFIG_NAME, LEGACY_NAMES, WEIGHTS_NAME

pytest.importorskip("transformers")


@pytest.fixture
def saved(tiny_llama, tmp_path):
    model = ttnn.patch(load(tiny_llama), mode="rep", r=4, tt_rank=2)
    randomize_adapters(model)
    folder = ttnn.save_adapter(model, tmp_path / "adapter")
    return model, folder


def _to_legacy(folder):
    for new, old in zip((CONFIG_NAME, WEIGHTS_NAME), LEGACY_NAMES):
        (folder / new).rename(folder / old)


def test_peft_stops_at_a_clear_not_a_peft_adapter_error(tiny_llama, saved):
    peft = pytest.importorskip("peft")
    _, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    with pytest.raises(ValueError, match=r"Can't find 'adapter_config\.json'"):
        peft.PeftModel.from_pretrained(load(tiny_llama), str(folder))


def test_transformers_does_not_take_it_for_a_model_or_an_adapter(tiny_llama, saved):
    from transformers import AutoModelForCausalLM

    _, folder = saved
    with pytest.raises((OSError, ValueError), match=r"config\.json"):
        AutoModelForCausalLM.from_pretrained(str(folder))
    with pytest.raises(ValueError, match="adapter"):
        load(tiny_llama).load_adapter(str(folder))


def test_old_named_folder_still_loads_and_a_resave_renames_it(tiny_llama, saved):
    model, folder = saved
    _to_legacy(folder)
    fresh = ttnn.load_adapter(load(tiny_llama), folder)
    assert torch.equal(logits(fresh, batch()), logits(model, batch()))
    ttnn.save_adapter(fresh, folder)
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]


def test_a_peft_folder_given_to_load_adapter_points_to_from_lora(tiny_llama, saved, tmp_path):
    model, _ = saved
    lora = ttnn.export_lora(model, tmp_path / "lora")
    with pytest.raises(TTValueError, match=r"holds a peft adapter: use tensortrain_nn\.from_lora"):
        ttnn.load_adapter(load(tiny_llama), lora)


def test_saving_next_to_a_peft_lora_leaves_its_files(saved):
    model, folder = saved
    ttnn.export_lora(model, folder, overwrite=True)  # a peft LoRA beside our files
    ttnn.save_adapter(model, folder)
    assert {*LEGACY_NAMES, CONFIG_NAME, WEIGHTS_NAME} <= {p.name for p in folder.iterdir()}


#: Logs what bitsandbytes and ``kernels`` log on an offline machine with AVX512-BF16 (a CPU this
#: test machine may lack): the import of bitsandbytes' CPU backend asks the hub for a kernel.
_HUB_KERNEL_IMPORT = """
import importlib, logging, torch
import tensortrain_nn
import bitsandbytes, bitsandbytes.functional as F
F.has_avx512bf16 = lambda: True
import bitsandbytes.backends.cpu.ops as ops
importlib.reload(ops)  # the import-time kernel lookup, as on such a CPU
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another warning still shows")
layer = bitsandbytes.nn.Linear4bit(64, 32, compute_dtype=torch.float32)
layer.load_state_dict(torch.nn.Linear(64, 32).state_dict()); layer = layer.to("cpu")
print("ok", tuple(layer(torch.randn(2, 64)).shape))
"""


def test_hub_kernel_lines_are_silenced_and_4bit_still_runs():
    pytest.importorskip("bitsandbytes")
    pytest.importorskip("kernels", reason="bitsandbytes asks the kernels package for hub kernels")
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", _HUB_KERNEL_IMPORT], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "ok (2, 32)" in done.stdout
    assert "kernels-community" not in done.stderr and "gemm_4bit_forward" not in done.stderr
    assert "another warning still shows" in done.stderr
