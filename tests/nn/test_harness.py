"""lm-evaluation-harness on LoRETTA adapters: the ``tensortrain`` model type, its command line,
and the bad model arguments that must fail in one line.

Everything runs on a tiny random LLaMA saved to a folder and a multiple-choice task over a local
JSONL file (tests/nn/_harness_helpers.py); nothing touches the network.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

import lm_eval
from _harness_helpers import ROWS, TASK, tiny_llama, tiny_tokenizer, write_task
from lm_eval.tasks import TaskManager

import tensortrain_nn as ttnn
from tensortrain_nn.finetune import FinetuneConfig
from tensortrain_nn.finetune import run as finetune
from tensortrain_nn.harness import ModelArgsError, TensorTrainLM, adapter_kind, load_adapted

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
LL_ATOL = 1e-4  # float32 sums of a few token log-probabilities


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaMA folder; rep and adp adapter folders on it with random (nonzero) cores; the rep
    adapter exported as a peft LoRA; the task folder."""
    folder = tmp_path_factory.mktemp("harness")
    tokenizer = tiny_tokenizer()
    base = tiny_llama(tokenizer)
    base.save_pretrained(folder / "llama")
    tokenizer.save_pretrained(folder / "llama")
    torch.manual_seed(1)
    rep = ttnn.patch(copy.deepcopy(base), mode="rep", init="paper")
    ttnn.save_adapter(rep, folder / "rep")
    ttnn.export_lora(rep, folder / "lora")
    adp = ttnn.patch(copy.deepcopy(base), mode="adp", init="paper", bottleneck=8, tt_rank=3)
    ttnn.save_adapter(adp, folder / "adp")
    write_task(folder / "tasks")
    return folder


@pytest.fixture(scope="module")
def run_dir(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder of a one-epoch rep fine-tuning of the tiny LLaMA (``--task lm``)."""
    data = root / "labelled.csv"
    rows = [f"{a} film {b},pos" for a in ("good", "warm", "superb") for b in ("good", "warm")]
    rows += [f"{a} film {b},neg" for a in ("bad", "dull", "cold") for b in ("bad", "dull")]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = root / "run-rep"
    finetune(
        FinetuneConfig(
            model=str(root / "llama"), data=str(data), task="lm", method="rep",
            template="Review: {text}\nSentiment:", verbalizer='pos=" good",neg=" bad"',
            test_size=4, epochs=1, batch_size=4, max_length=24, lr=1e-2,
            progress=False, device="cpu", output_dir=str(out),
        )
    )  # fmt: skip
    return out


@functools.cache
def task_manager(folder: Path) -> TaskManager:
    """The local task alone (lm-eval's own thousands of tasks left unindexed: seconds saved)."""
    return TaskManager(include_path=str(folder), include_defaults=False)


def evaluate(root: Path, model: Any, model_args: str | None = None) -> dict[str, Any]:
    """``simple_evaluate`` on the local task; returns its results, samples included."""
    results = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=task_manager(root / "tasks"),
        device="cpu",
        batch_size=4,
        log_samples=True,
    )
    assert results is not None
    return results


def loglikelihoods(results: dict[str, Any]) -> list[list[float]]:
    """Per sample (by doc id), the log-likelihood of each choice."""
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    return [[ll for ll, _ in s["filtered_resps"]] for s in samples]


def accuracy(results: dict[str, Any]) -> float:
    return float(results["results"][TASK]["acc,none"])


# ---- equal scores: rep through our model type and as a LoRA through lm-eval's own peft path ----


def test_rep_adapter_scores_equal_its_lora_export_through_hf_peft(root: Path) -> None:
    ours = evaluate(root, "tensortrain", f"pretrained={root / 'llama'},adapter={root / 'rep'}")
    peft = evaluate(root, "hf", f"pretrained={root / 'llama'},peft={root / 'lora'}")
    base = evaluate(root, "hf", f"pretrained={root / 'llama'}")
    assert len(ours["samples"][TASK]) == len(ROWS)
    assert accuracy(ours) == accuracy(peft)
    ours_ll, peft_ll = loglikelihoods(ours), loglikelihoods(peft)
    assert [len(c) for c in ours_ll] == [len(r["choices"]) for r in ROWS]
    for mine, theirs in zip(ours_ll, peft_ll):
        assert mine == pytest.approx(theirs, abs=LL_ATOL)
    # the adapter is applied: the scores move away from the base model's
    moved = max(abs(a - b) for x, y in zip(ours_ll, loglikelihoods(base)) for a, b in zip(x, y))
    assert moved > 1e-2


def test_rep_unmerged_gives_the_merged_scores(root: Path) -> None:
    merged = TensorTrainLM(pretrained=str(root / "llama"), adapter=str(root / "rep"), device="cpu")
    unmerged = TensorTrainLM(
        pretrained=str(root / "llama"), adapter=str(root / "rep"), merge=False, device="cpu"
    )
    assert merged.adapter_info["merged"] is True and unmerged.adapter_info["merged"] is False
    assert not any("adapters" in name for name, _ in merged.model.named_parameters())
    assert any("adapters" in name for name, _ in unmerged.model.named_parameters())
    for mine, theirs in zip(
        loglikelihoods(evaluate(root, merged)), loglikelihoods(evaluate(root, unmerged))
    ):
        assert mine == pytest.approx(theirs, abs=LL_ATOL)


# ---- adp: it runs, and it is really applied ----


def test_adp_adapter_runs_and_moves_the_scores_off_the_base(root: Path) -> None:
    ours = evaluate(root, "tensortrain", f"pretrained={root / 'llama'},adapter={root / 'adp'}")
    base = evaluate(root, "hf", f"pretrained={root / 'llama'}")
    assert 0.0 <= accuracy(ours) <= 1.0
    assert ours["config"]["tensortrain_method"] == "adp"
    assert ours["config"]["tensortrain_merged"] is False
    moved = max(
        abs(a - b) for x, y in zip(loglikelihoods(ours), loglikelihoods(base)) for a, b in zip(x, y)
    )
    assert moved > 1e-2


# ---- run folders of tensortrain finetune ----


def test_run_folder_needs_no_pretrained_and_equals_its_adapter_subfolder(
    root: Path, run_dir: Path
) -> None:
    assert adapter_kind(run_dir) == "run" and adapter_kind(run_dir / "adapter") == "run"
    model, tokenizer, info = load_adapted(run_dir)
    assert info == {"adapter": str(run_dir), "method": "rep", "merged": True}
    assert not model.training and not any("adapters" in n for n, _ in model.named_parameters())
    assert tokenizer("a good film")["input_ids"][0] == tokenizer.bos_token_id
    whole = evaluate(root, "tensortrain", f"adapter={run_dir}")
    sub = evaluate(root, TensorTrainLM(adapter=str(run_dir / "adapter"), device="cpu"))
    for mine, theirs in zip(loglikelihoods(whole), loglikelihoods(sub)):
        assert mine == pytest.approx(theirs, abs=LL_ATOL)
    assert whole["config"]["tensortrain_method"] == "rep"


def test_run_folder_on_an_explicit_base_equals_the_saved_base(root: Path, run_dir: Path) -> None:
    named = evaluate(root, "tensortrain", f"pretrained={root / 'llama'},adapter={run_dir}")
    saved = evaluate(root, "tensortrain", f"adapter={run_dir}")
    assert loglikelihoods(named) == loglikelihoods(saved)


def test_dtype_casts_the_loaded_model(root: Path) -> None:
    lm = TensorTrainLM(
        pretrained=str(root / "llama"), adapter=str(root / "rep"), device="cpu", dtype="bfloat16"
    )
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.get_model_info()["model_dtype"] == "torch.bfloat16"


# ---- bad model arguments: one line, naming the argument ----


def one_line_error(match: str, **kwargs: Any) -> str:
    with pytest.raises(ModelArgsError) as info:
        TensorTrainLM(device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message and match in message, message
    return message


def test_missing_adapter_folder(root: Path) -> None:
    message = one_line_error("adapter=", pretrained=str(root / "llama"), adapter="no/such/dir")
    assert "does not exist" in message


def test_no_adapter_at_all(root: Path) -> None:
    one_line_error("adapter= is required", pretrained=str(root / "llama"))


def test_foreign_folder_lists_what_it_holds(root: Path) -> None:
    message = one_line_error(
        "adapter=", pretrained=str(root / "llama"), adapter=str(root / "tasks")
    )
    assert "not a LoRETTA adapter" in message and "reviews.jsonl" in message


def test_peft_lora_folder_points_to_the_hf_model_type(root: Path) -> None:
    message = one_line_error("adapter=", pretrained=str(root / "llama"), adapter=str(root / "lora"))
    assert "peft LORA folder" in message and "--model hf" in message


def test_adapter_folder_without_pretrained(root: Path) -> None:
    one_line_error("pretrained= must name its base model", adapter=str(root / "rep"))


def test_pretrained_that_is_not_a_model(root: Path) -> None:
    one_line_error(
        f"pretrained={str(root / 'tasks')!r}",
        pretrained=str(root / "tasks"),
        adapter=str(root / "rep"),
    )


def test_adapter_of_another_architecture(root: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    wider = LlamaForCausalLM(
        LlamaConfig(vocab_size=320, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    )  # fmt: skip
    ttnn.save_adapter(ttnn.patch(wider, mode="rep"), tmp_path / "wide")
    message = one_line_error(
        "adapter=", pretrained=str(root / "llama"), adapter=str(tmp_path / "wide")
    )
    assert "pretrained=" in message


def test_merge_true_on_an_adp_adapter(root: Path) -> None:
    one_line_error(
        "merge=True", pretrained=str(root / "llama"), adapter=str(root / "adp"), merge=True
    )


def test_peft_option_is_refused(root: Path) -> None:
    one_line_error(
        "peft=", pretrained=str(root / "llama"), adapter=str(root / "rep"), peft=str(root / "lora")
    )


def test_cuda_device_without_cuda(root: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelArgsError, match=r"device='cuda:0' .*--device cpu"):
        TensorTrainLM(pretrained=str(root / "llama"), adapter=str(root / "rep"), device="cuda:0")


# ---- the command line: python -m tensortrain_nn.harness ----


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, **OFFLINE, "PYTHONPATH": os.pathsep.join([str(repo), *sys.path])}
    return subprocess.run(
        [sys.executable, "-m", "tensortrain_nn.harness", *args],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_command_line_prints_the_results_table(root: Path) -> None:
    done = cli(
        "--model", "tensortrain",
        "--model_args", f"pretrained={root / 'llama'},adapter={root / 'rep'}",
        "--tasks", TASK, "--include_path", str(root / "tasks"),
        "--device", "cpu", "--batch_size", "4",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line for line in done.stdout.splitlines() if line.startswith(f"|{TASK}")]
    assert len(table) == 1 and "|acc" in table[0], done.stdout


@pytest.mark.slow
def test_command_line_bad_model_args_is_one_line_exit_2(root: Path) -> None:
    done = cli(
        "--model", "tensortrain", "--model_args", f"pretrained={root / 'llama'},adapter=nowhere",
        "--tasks", TASK, "--include_path", str(root / "tasks"), "--device", "cpu",
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("python -m tensortrain_nn.harness: error: adapter='nowhere'"), last
    assert "Traceback" not in done.stderr
