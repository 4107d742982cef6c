"""``torch.compile`` of patched models: forward and backward run, and match eager.

The ``aot_eager`` backend traces forward and backward through Dynamo and AOTAutograd (where graph
breaks and errors in our modules would show) without inductor's code generation, which takes
minutes on a small CPU; the inductor run of the same models is in ``benchmarks/modes_bench.py``.
"""

import copy
from typing import cast

import pytest
import torch
from _helpers import tiny_bert
from torch import nn

import tensortrain_nn

pytest.importorskip("transformers")

RTOL = 1e-5  # float32: the compiled graph runs the same kernels, in the same order


def step(model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the trainable tensors' gradients (by name, without compile's prefix)."""
    model.zero_grad(set_to_none=True)
    logits = model(input_ids=ids).logits
    logits.pow(2).sum().backward()
    grads = {
        n.removeprefix("_orig_mod."): p.grad.clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    assert len(grads) == sum(p.requires_grad for p in model.parameters())
    return logits.detach(), grads


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "mode, kwargs",
    [("rep", {"dropout": 0.0}), ("adp", {"bottleneck": 16, "dropout": 0.0})],
    ids=["rep", "adp"],
)
def test_compiled_patched_model_matches_eager(mode: str, kwargs: dict) -> None:
    torch._dynamo.reset()
    model = tensortrain_nn.patch(tiny_bert(hidden=64), mode=mode, init="paper", **kwargs).train()
    compiled = cast(nn.Module, torch.compile(copy.deepcopy(model), backend="aot_eager"))
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):  # the second call reuses the compiled graphs
        out_c, grads_c = step(compiled, ids)
        out_e, grads_e = step(model, ids)
        assert rel(out_c, out_e) <= RTOL
        assert grads_c.keys() == grads_e.keys() and len(grads_e) > 0
        for name, g in grads_e.items():
            assert g.norm() > 0, name  # paper init: every core has a gradient
            assert rel(grads_c[name], g) <= RTOL, name


def test_compiled_rep_with_dropout_trains() -> None:
    """The dropout mask is drawn inside the compiled graph; the update still gets gradients."""
    torch._dynamo.reset()
    model = tensortrain_nn.patch(
        tiny_bert(hidden=64), mode="rep", init="paper", dropout=0.1
    ).train()
    compiled = cast(nn.Module, torch.compile(model, backend="aot_eager"))
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    out, grads = step(compiled, ids)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(g).all() and g.norm() > 0 for g in grads.values())


def test_compiled_merged_rep_matches_plain_model() -> None:
    """Eval after ``merge``: the compiled patched model computes the merged linears' output."""
    torch._dynamo.reset()
    model = tensortrain_nn.patch(tiny_bert(hidden=64), mode="rep", init="paper").eval()
    tensortrain_nn.merge_adapter(model)
    ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = torch.compile(model, backend="aot_eager")(input_ids=ids).logits
    assert rel(got, expected) <= RTOL
