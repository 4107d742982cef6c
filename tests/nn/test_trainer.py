"""A patched model trains under ``transformers.Trainer`` as is; the callback writes its adapters."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
from _surgery_models import build
from torch import nn

import tensortrain_nn as ttnn
from tensortrain.errors import TTTypeError
from tensortrain_nn.peft_io import AdapterCheckpointCallback

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
warnings.filterwarnings("ignore", module="transformers")


class _Toy(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """16 examples of 8 tokens; the label is whether token 3 appears."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(4, 100, (16, 8), generator=gen)
        self.ids[::2, 2] = 3
        self.labels = (self.ids == 3).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def _args(out: Path) -> object:
    return transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )


def _train(model: nn.Module, out: Path, callback: AdapterCheckpointCallback) -> None:
    trainer = transformers.Trainer(
        model=model, args=_args(out), train_dataset=_Toy(), callbacks=[callback]
    )
    trainer.train()


class _StopAfterFirstSave(transformers.TrainerCallback):  # type: ignore[misc]
    """An interruption: training ends right after the checkpoint of step 2 is written."""

    def on_save(self, args: object, state: object, control: object, **kwargs: object) -> None:
        if state.global_step == 2:  # type: ignore[attr-defined]
            control.should_training_stop = True  # type: ignore[attr-defined]


def test_trainer_resumes_a_patched_model_to_the_same_tensors(tmp_path: Path) -> None:
    def patched() -> nn.Module:
        model = build("bert").train()
        ttnn.patch(model, r=4, tt_rank=3, dropout=0.0)
        return model

    whole = patched()
    transformers.Trainer(model=whole, args=_args(tmp_path / "a"), train_dataset=_Toy()).train()
    cut = patched()
    callbacks = [_StopAfterFirstSave()]
    trainer = transformers.Trainer(
        model=cut, args=_args(tmp_path / "b"), train_dataset=_Toy(), callbacks=callbacks
    )
    trainer.train()
    assert trainer.state.global_step == 2
    resumed = patched()
    trainer = transformers.Trainer(model=resumed, args=_args(tmp_path / "b"), train_dataset=_Toy())
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert trainer.state.global_step == 4
    expected = {n: p for n, p in whole.named_parameters() if p.requires_grad}
    got = {n: p for n, p in resumed.named_parameters() if p.requires_grad}
    assert expected.keys() == got.keys() and any(".cores." in n for n in got)
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert not all(torch.equal(got[n], p) for n, p in patched().named_parameters() if n in got)


def _logits(model: nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=_Toy().ids[:4]).logits


def test_patched_model_trains_under_trainer(tmp_path: Path) -> None:
    model = build("bert").train()  # the surgery tests' tiny BERT
    fresh = copy.deepcopy(model)
    ttnn.patch(model, r=4, tt_rank=3, trainable_norms=True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    callback = AdapterCheckpointCallback(export_lora=True)
    _train(model, tmp_path, callback)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], value) for n, value in frozen.items())
    moved = [n for n, value in trained.items() if not torch.equal(after[n], value)]
    assert any(".cores." in n for n in moved) and any("classifier" in n for n in moved)
    for step in (2, 4):
        for sub, config in (
            ("tt_adapter", "tt_adapter_config.json"),
            ("lora_adapter", "adapter_config.json"),
        ):
            assert (tmp_path / f"checkpoint-{step}" / sub / config).is_file()
    assert len(callback.written) == 4

    reloaded = ttnn.load_adapter(copy.deepcopy(fresh), tmp_path / "checkpoint-4" / "tt_adapter")
    assert torch.equal(_logits(reloaded), _logits(model))
    served = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "checkpoint-4" / "lora_adapter"))
    ours = _logits(model)
    assert float((_logits(served) - ours).norm() / ours.norm()) <= 1e-5


def test_callback_checks_its_options() -> None:
    with pytest.raises(TTTypeError, match="export_lora must be a bool"):
        AdapterCheckpointCallback(export_lora="yes")  # type: ignore[arg-type]
