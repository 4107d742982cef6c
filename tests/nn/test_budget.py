"""Rank budgets: fit_budget / fit_ranks against dense float64 references, and loading back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensortrain_nn as ttnn
from tensortrain import TTMatrix, TTTensor, round_cores
from tensortrain.errors import TTError, TTShapeError, TTTypeError, TTValueError
from tensortrain.testing import assert_close, tolerance, tt_matrices, tt_tensors
from tensortrain_nn.budget import (
    adapter_parameters,
    allocate_ranks,
    bond_spectra,
    fit_budget,
    fit_ranks,
    minimum_parameters,
    tt_layers,
)
from tensortrain_nn.linear import TTLinear, replace_cores
from tensortrain_nn.surgery.tensors import match_ranks

F64 = torch.float64


def _layer(tt: TTMatrix, bias: bool = False) -> TTLinear:
    """A float64 TTLinear holding ``tt``'s cores."""
    rows, cols = tt.row_modes, tt.col_modes
    layer = TTLinear(
        math.prod(cols),
        math.prod(rows),
        rank=1,
        in_modes=cols,
        out_modes=rows,
        bias=bias,
        dtype=F64,
    )
    replace_cores(layer, tt.cores)
    return layer


def _as_tensor(cores: list[torch.Tensor]) -> torch.Tensor:
    """The dense TT tensor of (TT-matrix) cores with merged modes ``m_k n_k``, in float64."""
    merged = [c.detach().to(F64).reshape(c.shape[0], -1, c.shape[-1]) for c in cores]
    return TTTensor(merged).full()


def _dense_spectra(x: torch.Tensor) -> list[torch.Tensor]:
    """Singular values of every unfolding of a dense tensor (the reference)."""
    return [
        torch.linalg.svdvals(x.reshape(math.prod(x.shape[: k + 1]), -1)) for k in range(x.ndim - 1)
    ]


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@st.composite
def tt_models(draw: st.DrawFn) -> nn.Sequential:
    """1..3 float64 TT layers of random modes and ranks, some with a bias."""
    n = draw(st.integers(1, 3))
    layers = [
        _layer(draw(tt_matrices(max_ndim=3, max_mode=4, max_rank=4)), draw(st.booleans()))
        for _ in range(n)
    ]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- spectra and allocation


@given(tt_tensors(min_ndim=2, max_ndim=4, max_mode=4, max_rank=4))
def test_bond_spectra_are_the_dense_unfoldings_singular_values(tt: TTTensor) -> None:
    spectra = bond_spectra(tt.cores)
    for k, (got, want) in enumerate(zip(spectra, _dense_spectra(tt.full()), strict=True)):
        n = min(len(got), len(want))
        assert_close(got[:n], want[:n], msg=f"bond {k}")
        assert_close(want[n:], torch.zeros_like(want[n:]), msg=f"bond {k} tail")  # rank-deficient


@given(st.data())
def test_allocation_keeps_the_largest_relative_singular_values(data: st.DataObject) -> None:
    n_layers = data.draw(st.integers(1, 3))
    spectra, ranks, sizes = [], [], []
    for _ in range(n_layers):
        d = data.draw(st.integers(2, 4))
        size = [data.draw(st.integers(1, 6)) for _ in range(d)]
        bonds = [data.draw(st.integers(1, 5)) for _ in range(d - 1)]
        values = [
            torch.tensor(
                sorted(data.draw(st.lists(st.floats(0, 10), min_size=r, max_size=r)))[::-1]
            )
            for r in bonds
        ]
        spectra.append(values)
        ranks.append((1, *bonds, 1))
        sizes.append(size)
    lowest = sum(sum(s) for s in sizes)
    current = sum(sum(r[k] * n * r[k + 1] for k, n in enumerate(s)) for r, s in zip(ranks, sizes))
    budget = data.draw(st.integers(lowest, max(lowest, current)))
    new = allocate_ranks(spectra, ranks, sizes, budget)
    assert sum(sum(r[k] * n * r[k + 1] for k, n in enumerate(s)) for r, s in zip(new, sizes)) <= (
        budget
    )
    dropped, kept = [], []
    for values, old, now in zip(spectra, ranks, new, strict=True):
        for k, s in enumerate(values, start=1):
            rel = s / s.norm() if s.norm() > 0 else torch.zeros_like(s)
            assert 1 <= now[k] <= old[k]
            dropped += rel[now[k] : old[k]].tolist()
            kept += rel[now[k] - 1 : now[k]].tolist() if now[k] > 1 else []
    if dropped and kept:
        assert max(dropped) <= min(kept)


# ---------------------------------------------------------------- fit_budget


@given(tt_models(), st.data())
def test_budget_is_never_exceeded(model: nn.Sequential, data: st.DataObject) -> None:
    lowest, current = minimum_parameters(model), adapter_parameters(model)
    budget = data.draw(st.integers(lowest, current + 5))
    ranks = fit_budget(model, budget)
    assert adapter_parameters(model) <= budget
    assert ranks == {name: layer.ranks for name, layer in tt_layers(model).items()}


@given(tt_models(), st.data())
def test_rounded_weights_match_tt_rounding_and_the_dense_bound(
    model: nn.Sequential, data: st.DataObject
) -> None:
    before = [[c.detach().clone() for c in layer.cores] for layer in model]
    budget = data.draw(st.integers(minimum_parameters(model), adapter_parameters(model)))
    fit_budget(model, budget)
    for k, (old, layer) in enumerate(zip(before, model, strict=True)):
        assert isinstance(layer, TTLinear)
        merged = [c.reshape(c.shape[0], -1, c.shape[-1]) for c in old]
        reference = TTTensor(round_cores(merged, max_rank=layer.ranks)).full()
        new = _as_tensor(list(layer.cores))
        assert_close(new, reference, msg=f"layer {k}")
        # TT-SVD's bound, from the dense unfoldings of the weight before rounding
        dense = _as_tensor(old)
        tails = [s[r:] for s, r in zip(_dense_spectra(dense), layer.ranks[1:-1], strict=True)]
        bound = math.sqrt(sum(float((t**2).sum()) for t in tails))
        err = float(torch.linalg.vector_norm(new - dense))
        assert err <= bound + tolerance(F64) * max(1.0, float(dense.norm())), f"layer {k}"
        assert_close(layer.weight, TTMatrix(list(layer.cores)).full())


@given(tt_models())
def test_budget_at_or_above_the_count_changes_nothing(model: nn.Sequential) -> None:
    params = list(model.parameters())
    ranks = fit_budget(model, adapter_parameters(model))
    assert list(model.parameters()) == params and all(
        a is b for a, b in zip(model.parameters(), params, strict=True)
    )
    assert ranks == {name: layer.ranks for name, layer in tt_layers(model).items()}


@given(tt_models())
def test_budget_below_the_minimum_is_an_error_before_any_change(model: nn.Sequential) -> None:
    lowest = minimum_parameters(model)
    params = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TTValueError, match=f"budget must be at least {lowest}.*got {lowest - 1}"):
        fit_budget(model, lowest - 1)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), params, strict=True))


def test_bad_budget_arguments_are_named() -> None:
    model = nn.Sequential(TTLinear(16, 16, rank=2))
    with pytest.raises(TTTypeError, match="budget must be an int"):
        fit_budget(model, 10.5)  # type: ignore[arg-type]
    with pytest.raises(TTValueError, match="has no TT layers"):
        fit_budget(nn.Sequential(nn.Linear(4, 4)), 10)
    assert isinstance(TTValueError("x"), TTError)


def test_requires_grad_dtype_and_device_are_kept() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(TTLinear(64, 64, rank=8), TTLinear(64, 64, rank=8))
    for p in model[1].parameters():
        p.requires_grad_(False)
    fit_budget(model, 1000)
    assert all(p.requires_grad for p in model[0].cores)
    assert not any(p.requires_grad for p in model[1].cores)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert adapter_parameters(model) <= 1000
    model(torch.randn(3, 64)).sum().backward()
    assert all(p.grad is not None for p in model[0].cores)


def test_equal_layers_get_equal_ranks_and_the_rule_prefers_large_values() -> None:
    # two layers whose weights differ only by scale: the relative rule treats them alike
    torch.manual_seed(0)
    a = TTLinear(64, 64, rank=8, bias=False, dtype=F64)
    b = TTLinear(64, 64, rank=8, bias=False, dtype=F64)
    replace_cores(b, [c * (1000.0 if k == 0 else 1.0) for k, c in enumerate(a.cores)])
    model = nn.Sequential(a, b)
    ranks = fit_budget(model, adapter_parameters(model) // 2)
    assert ranks["0"] == ranks["1"]


# ---------------------------------------------------------------- patched models


def _patched(mode: str, **options: object) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    ttnn.patch(model, mode=mode, target_modules=["0", "2"], tt_rank=6, init="paper", **options)
    return model


@pytest.mark.parametrize(("mode", "options"), [("rep", {"r": 16}), ("adp", {"bottleneck": 16})])
def test_patched_adapter_fits_and_still_runs(mode: str, options: dict) -> None:
    model = _patched(mode, **options)
    x = torch.randn(4, 256)
    total = adapter_parameters(model)
    ranks = fit_budget(model, total // 2)
    layers = tt_layers(model)
    assert set(ranks) == set(layers) and all(".adapters.default." in n for n in ranks)
    assert len(layers) == 4 and adapter_parameters(model) <= total // 2
    counted = sum(p.numel() for n, p in model.named_parameters() if ".adapters." in n)
    assert counted == adapter_parameters(model)  # the job's adapter count is what is budgeted
    model(x).sum().backward()
    assert all(p.grad is not None for layer in layers.values() for p in layer.cores)


def test_only_the_chosen_adapter_is_rounded() -> None:
    model = _patched("rep")
    ttnn.add_adapter(model, "second", mode="rep", target_modules=["0", "2"], tt_rank=6)
    other = {n: p for n, p in model.named_parameters() if ".adapters.second." in n}
    fit_budget(model, minimum_parameters(model, "default"), adapter_name="default")
    assert all(p is other[n] for n, p in model.named_parameters() if ".adapters.second." in n)
    assert adapter_parameters(model, "default") == minimum_parameters(model, "default")


def test_merged_update_is_refused() -> None:
    model = _patched("rep")
    ttnn.merge_adapter(model)
    weights = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TTValueError, match="is merged"):
        fit_budget(model, minimum_parameters(model))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), weights, strict=True))


def test_fit_ranks_by_name_and_by_function() -> None:
    model = _patched("rep", r=16)
    names = list(tt_layers(model))
    ranks = fit_ranks(model, {names[0]: 2, names[1]: (3, 100)})
    assert ranks[names[0]] == (1, 2, 2, 1) and ranks[names[1]] == (1, 3, 6, 1)
    assert ranks[names[2]] == tt_layers(model)[names[2]].ranks
    ranks = fit_ranks(model, lambda name, layer: 1 if name.endswith(".B") else None)
    assert all(max(r) == 1 for n, r in ranks.items() if n.endswith(".B"))
    with pytest.raises(TTValueError, match="no TT layer of the adapter; valid names"):
        fit_ranks(model, {"nope": 2})
    with pytest.raises(TTValueError, match=r"ranks\['0.adapters.default.A'\]: max_rank must be"):
        fit_ranks(model, {names[0]: 0})


# ---------------------------------------------------------------- save and load


def test_rounded_adapter_saves_and_loads_back(tmp_path: Path) -> None:
    model = _patched("rep").eval()
    fit_budget(model, adapter_parameters(model) // 3)
    ttnn.save_adapter(model, str(tmp_path / "a"))
    fresh = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in _base(model).items()})
    ttnn.load_adapter(fresh, str(tmp_path / "a"))
    x = torch.randn(5, 256)
    assert torch.equal(fresh.eval()(x), model(x))
    assert {n: m.ranks for n, m in tt_layers(fresh).items()} == {
        n: m.ranks for n, m in tt_layers(model).items()
    }


def _base(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if ".adapters." not in k}


def test_failed_load_leaves_the_model_as_it_was(tmp_path: Path) -> None:
    model = _patched("rep")
    fit_budget(model, adapter_parameters(model) // 3)
    ttnn.save_adapter(model, str(tmp_path / "a"))
    other = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))  # other out size
    flags = [p.requires_grad for p in other.parameters()]
    with pytest.raises(TTShapeError):
        ttnn.load_adapter(other, str(tmp_path / "a"))
    assert not any(".adapters." in n for n, _ in other.named_modules())
    assert [p.requires_grad for p in other.parameters()] == flags


def test_match_ranks_refuses_saved_ranks_that_do_not_chain() -> None:
    model = nn.Sequential(TTLinear(64, 64, rank=8, bias=False))
    saved = {"0.cores.0": torch.zeros(1, 8, 8, 3), "0.cores.1": torch.zeros(2, 8, 8, 1)}
    with pytest.raises(TTShapeError, match="left rank 2"):
        match_ranks(model, saved, None)
    assert model[0].ranks == (1, 8, 1)


# ---------------------------------------------------------------- the fine-tuning job


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny random BERT and a 48-row CSV (the fine-tuning tests' helpers)."""
    pytest.importorskip("transformers")
    from _helpers import tiny_assets

    return tiny_assets(tmp_path_factory, "budget", dropout=0.1)


def _bounds(model_folder: str, mode: str, options: dict) -> tuple[int, int]:
    """(minimum, starting) adapter parameters of ``mode`` with ``options`` on the tiny BERT."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_folder, num_labels=2)
    ttnn.patch(model, mode=mode, **options)
    return minimum_parameters(model), adapter_parameters(model)


@pytest.mark.parametrize("method", ["rep", "adp"])
def test_budget_run_reports_the_final_adapter_and_reloads(
    tiny: dict[str, str], tmp_path: Path, method: str
) -> None:
    from _helpers import tiny_values

    from tensortrain_nn.finetune import FinetuneConfig, evaluate, run

    shape = {"tt_rank": 8} if method == "rep" else {"tt_rank": 8, "bottleneck": 16}
    lowest, start = _bounds(tiny["model"], method, shape)
    budget = (lowest + start) // 2
    options = {**shape, "budget": budget, "budget_at": 0.5}
    cores: dict[int, dict[str, torch.Tensor]] = {}

    def record(step: int, model: nn.Module) -> None:
        cores[step] = {n: p.detach().clone() for n, p in model.named_parameters() if ".cores." in n}

    result = run(
        FinetuneConfig(
            **tiny_values(
                tiny["model"], tiny["data"], tmp_path, method=method, method_options=options
            )
        ),
        on_step=record,
    )
    total = 2 * math.ceil(result.num_train / 8)  # 2 epochs of batches of 8
    assert result.budget["step"] == math.floor(0.5 * total)
    # after the rounding the new cores keep their shapes and the rebuilt optimizer moves them
    rounded, last = cores[result.budget["step"]], cores[total]
    assert {n: t.shape for n, t in rounded.items()} == {n: t.shape for n, t in last.items()}
    assert all(not torch.equal(rounded[n], last[n]) for n in rounded)
    before = cores[result.budget["step"] - 1]
    assert any(before[n].shape != rounded[n].shape for n in rounded)
    assert result.budget["adapter_params_before"] == start
    assert result.adapter_params == result.budget["adapter_params_after"] <= budget
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["adapter_params"] == result.adapter_params
    assert evaluate(tmp_path)["accuracy"] == pytest.approx(result.accuracy)


def test_budget_on_the_command_line_and_evaluate(
    tiny: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensortrain_nn import cli

    lowest, start = _bounds(tiny["model"], "rep", {"tt_rank": 8, "trainable_norms": True})
    budget = lowest + (start - lowest) // 3
    out = tmp_path / "run"
    argv = [
        "finetune",
        "--model",
        tiny["model"],
        "--data",
        tiny["data"],
        "--text-column",
        "review",
        "--label-column",
        "sentiment",
        "--test-size",
        "16",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--device",
        "cpu",
        "--no-progress",
        "--opt",
        "tt_rank=8",
        "--opt",
        f"budget={budget}",
        "--output-dir",
        str(out),
    ]
    assert cli.main(argv) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["adapter_params"] <= budget < report["budget"]["adapter_params_before"]
    assert cli.main(["evaluate", "--adapter", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"accuracy    {100 * report['accuracy']:.2f} %" in shown


def test_budget_option_errors(tiny: dict[str, str], tmp_path: Path) -> None:
    from _helpers import tiny_values

    from tensortrain_nn.finetune import FinetuneConfig, FinetuneError, run

    def config(**extra: object) -> FinetuneConfig:
        return FinetuneConfig(**tiny_values(tiny["model"], tiny["data"], tmp_path, **extra))

    with pytest.raises(FinetuneError, match=r"budget needs method rep or adp.*'lora'"):
        config(method="lora", method_options={"budget": 100})
    with pytest.raises(FinetuneError, match=r"budget_at must be .*got 1\.5"):
        config(method_options={"budget": 100, "budget_at": 1.5})
    with pytest.raises(FinetuneError, match="budget_at needs budget"):
        config(method_options={"budget_at": 0.5})
    with pytest.raises(FinetuneError, match="budget must be an int"):
        config(method_options={"budget": "many"})
    with pytest.raises(FinetuneError, match="cannot be combined with checkpoint_every"):
        config(method_options={"budget": 100}, checkpoint_every=2)
    lowest, _ = _bounds(tiny["model"], "rep", {"trainable_norms": True})
    with pytest.raises(TTValueError, match=f"budget must be at least {lowest}"):
        run(config(method_options={"budget": lowest - 1}))
    assert not (tmp_path / "report.json").exists()  # refused before training


def test_budget_is_refused_under_several_processes(
    tiny: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _helpers import tiny_values

    from tensortrain_nn.finetune import FinetuneConfig, FinetuneError
    from tensortrain_nn.finetune.train import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    config = FinetuneConfig(
        **tiny_values(tiny["model"], tiny["data"], tmp_path, method_options={"budget": 10**6})
    )
    with pytest.raises(FinetuneError, match="budget needs a single process"):
        train(nn.Linear(2, 2), None, config, evaluate=lambda m: {})  # type: ignore[arg-type]


@pytest.mark.parametrize("step", [1, 3, 7])
def test_rebuilt_schedule_continues_where_it_was(step: int) -> None:
    from tensortrain_nn.finetune import FinetuneConfig
    from tensortrain_nn.finetune.train import Position, _Loop, linear_schedule

    config = FinetuneConfig(lr=0.01, warmup_ratio=0.2)
    loop = _Loop.__new__(_Loop)
    loop.config, loop.pos = config, Position(global_step=step)
    loop.schedule = linear_schedule(10, config.warmup_ratio)
    model = nn.Linear(3, 3)
    # the reference: one optimizer and scheduler stepped `step` times, then more
    reference = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(reference, loop.schedule)
    for _ in range(step):
        reference.step()
        ref_sched.step()
    optimizer, scheduler = loop._optimizer(model)
    for _ in range(10 - step):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"])
        for opt, sched in ((optimizer, scheduler), (reference, ref_sched)):
            opt.step()
            sched.step()
