"""TRL's SFTTrainer trains a patched causal LM as is (the recipe of docs/peft.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _helpers import tiny_llama, tiny_tokenizer

import tensortrain_nn as ttnn

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
warnings.filterwarnings("ignore", module="transformers|trl")

WORDS = ["good", "bad", "warm", "cold"]


def _config(out: Path, steps: int) -> object:
    return trl.SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_length=32,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=0,
        bf16=False,  # SFTConfig's default; accelerate then leaves forward autocast to bf16
    )


def test_sft_trainer_trains_only_the_adapter_on_completions(tmp_path: Path) -> None:
    tokenizer = tiny_tokenizer(True)
    model = tiny_llama(tokenizer)
    ttnn.patch(model, mode="rep", dropout=0.0)
    rows = [{"prompt": f"is it {w}?", "completion": f" {w} film"} for w in WORDS * 4]
    data = datasets.Dataset.from_list(rows)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = trl.SFTTrainer(
        model=model, args=_config(tmp_path, 8), train_dataset=data, processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[0]])
    prompt_tokens = len(tokenizer(rows[0]["prompt"])["input_ids"])
    assert bool((batch["labels"][0, :prompt_tokens] == -100).all())  # loss on the completion
    losses = []

    def record(step_model: torch.nn.Module) -> None:
        step_model.eval()
        with torch.no_grad():
            losses.append(float(step_model(**{k: v for k, v in batch.items()}).loss))

    record(model)
    trainer.train()
    record(model)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], t) for n, t in frozen.items())
    assert all(not torch.equal(after[n], t) for n, t in trained.items())
    assert set(trained) and all(".adapters." in n for n in trained)
    assert losses[1] < losses[0]

    folder = tmp_path / "adapter"
    ttnn.save_adapter(model, folder)
    fresh = ttnn.load_adapter(tiny_llama(tokenizer), folder)
    ids = batch["input_ids"]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, model.eval()(ids).logits)


def test_a_patch_config_is_not_a_peft_config(tmp_path: Path) -> None:
    """TRL takes an already patched model, not a PatchConfig; its own check names the class."""
    tokenizer = tiny_tokenizer(True)
    data = datasets.Dataset.from_list([{"prompt": "is it?", "completion": " good"}] * 4)
    with pytest.raises(TypeError, match="PatchConfig"):
        trl.SFTTrainer(
            model=tiny_llama(tokenizer),
            args=_config(tmp_path, 1),
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=ttnn.PatchConfig(mode="rep"),
        )
