"""Token-level losses under gradient accumulation and data parallelism: micro-batches and
processes are weighted by their target tokens, so completions of 1 to 10 tokens get the same
update at k = 1, 2, 4 micro-batches, and on 2 gloo processes as on one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from _helpers import pairs_values, tiny_llama, tiny_tokenizer, trainable

import tensortrain_nn
from tensortrain_nn.finetune import FinetuneConfig, run
from tensortrain_nn.finetune.train import _step
from tensortrain_nn.tasks import LMExample, LMTask

HERE = Path(__file__).parent
WORDS = ["good", "bad", "film", "plot", "warm", "dull", "actor", "scene", "story", "superb"]


def completions(n: int) -> list[LMExample]:
    """``n`` prompt/completion pairs whose completions take 1 to 10 tokens (with the EOS)."""
    return [
        LMExample(f"Q: {WORDS[i % 10]}?", "".join(f" {w}" for w in WORDS[: i % 7]))
        for i in range(n)
    ]


class _OneProcess:
    """What ``_step`` uses of an ``Accelerator``, on one CPU process."""

    process_index, num_processes, device = 0, 1, torch.device("cpu")

    def no_sync(self, model: Any) -> Any:
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def test_accumulated_gradient_is_the_token_mean_gradient_at_k_1_2_4(one_thread: None) -> None:
    tok = tiny_tokenizer(True)
    task = LMTask(tok, completions(8), completions(2), max_length=24)
    lengths = {len(e.target) for e in task.train_encoded}
    assert min(lengths) == 1 and max(lengths) <= 10 and len(lengths) >= 6
    model = tiny_llama(tok)
    tensortrain_nn.patch(model, mode="rep", dropout=0.0, init="paper")
    grads, seen = [], []
    for k in (1, 2, 4):
        config = FinetuneConfig(gradient_accumulation=k, batch_size=8, progress=False)
        model.zero_grad(set_to_none=True)
        stats = _step(_OneProcess(), model, task, list(range(8)), config)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        seen.append(float(stats[1]))
    assert grads[0] and all(g.keys() == grads[0].keys() for g in grads)
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    # The epoch's training loss is a token mean too: the loop counts target tokens.
    assert seen == [sum(len(e.target) for e in task.train_encoded)] * 3


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder and a prompt/completion JSONL with completions of 1-10 tokens."""
    folder = tmp_path_factory.mktemp("accum")
    tok = tiny_tokenizer(True)
    tiny_llama(tok).save_pretrained(folder / "llama")
    tok.save_pretrained(folder / "llama")
    rows = [{"q": e.prompt, "a": e.reference} for e in completions(20)]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _values(root: Path, out: Path, **extra: Any) -> dict[str, Any]:
    options = {"dropout": 0.0, "init": "paper"}
    fixed = {"epochs": 2, "batch_size": 8, "lr": 1e-2, "save": False, "method_options": options}
    return pairs_values(root, out, **{**fixed, **extra})


def _final(config: FinetuneConfig) -> tuple[dict[str, torch.Tensor], float]:
    final: dict[str, torch.Tensor] = {}
    result = run(config, on_step=lambda step, model: final.update(trainable(model)))
    return final, result.history[-1]["train_loss"]


def test_accumulation_gives_the_same_run_for_variable_length_completions(
    root: Path, tmp_path: Path, one_thread: None
) -> None:
    base, loss = _final(FinetuneConfig(**_values(root, tmp_path / "a")))
    for k in (2, 4):
        other, other_loss = _final(
            FinetuneConfig(**_values(root, tmp_path / f"k{k}", gradient_accumulation=k))
        )
        for name, tensor in base.items():
            torch.testing.assert_close(other[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
        assert other_loss == pytest.approx(loss, rel=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_match_one_for_variable_length_completions(
    root: Path, tmp_path: Path, one_thread: None
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(_values(root, tmp_path / "ddp")))
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env.update(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", PYTHONWARNINGS="ignore")
    worker = [sys.executable, str(HERE / "_lm_ddp.py"), str(config_file), str(tmp_path)]
    procs = [
        subprocess.Popen(
            worker,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text[-3000:]
    ranks = [torch.load(tmp_path / f"lm{r}.pt", weights_only=False) for r in range(2)]
    single, loss = _final(FinetuneConfig(**_values(root, tmp_path / "one")))
    assert single.keys() == ranks[0]["tensors"].keys()
    for name, tensor in single.items():
        for rank in ranks:
            torch.testing.assert_close(rank["tensors"][name], tensor, rtol=1e-3, atol=1e-4)
    assert ranks[0]["train_loss"] == pytest.approx(loss, rel=1e-5)
