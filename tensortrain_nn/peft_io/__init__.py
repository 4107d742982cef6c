"""peft interop by file format: LoRETTA_rep <-> standard peft LoRA folders, and a Trainer callback.

* :func:`export_lora` / :func:`export_lora_folder`: a rep adapter (a live model, or a saved
  folder plus its base model) as a peft LoRA folder (``PeftModel.from_pretrained`` reads it).
* :func:`from_lora`: a peft LoRA onto a model as a LoRETTA_rep adapter, by TT-SVD of ``A`` and
  ``B``, with a :class:`LoraImportReport` of errors and sizes.
* :func:`compress_lora`: a peft LoRA folder -> a compressed one (plus the TT adapter).
* :class:`AdapterCheckpointCallback`: ``transformers.Trainer`` writes adapter folders at each save.
"""

from typing import Any

from tensortrain_nn.peft_io._report import LoraImportReport, ModuleCompression
from tensortrain_nn.peft_io.compress import compress_lora, from_lora
from tensortrain_nn.peft_io.export import export_lora, export_lora_folder


def __getattr__(name: str) -> Any:
    """``AdapterCheckpointCallback`` imports transformers: only when it is asked for."""
    if name == "AdapterCheckpointCallback":
        from tensortrain_nn.peft_io.trainer import AdapterCheckpointCallback

        return AdapterCheckpointCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AdapterCheckpointCallback",
    "LoraImportReport",
    "ModuleCompression",
    "compress_lora",
    "export_lora",
    "export_lora_folder",
    "from_lora",
]
