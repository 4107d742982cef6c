"""A ``transformers.Trainer`` callback that writes the adapter folder at every checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tensortrain.errors import TTTypeError

try:  # transformers is optional: without it the callback is a plain class nobody can use
    from transformers import TrainerCallback as _Base
except ImportError:  # pragma: no cover
    _Base = object  # type: ignore[assignment,misc]

#: Sub-folders of ``<output_dir>/checkpoint-N/`` the callback writes.
TT_SUBDIR, LORA_SUBDIR = "tt_adapter", "lora_adapter"


class AdapterCheckpointCallback(_Base):
    """At each Trainer save, write ``<output_dir>/checkpoint-N/tt_adapter/`` (and a LoRA).

    ``tt_adapter`` is :func:`tensortrain_nn.save_adapter`'s folder (the TT cores plus the head
    and norms, kilobytes); with ``export_lora=True`` also ``lora_adapter/``, the same adapter
    as a peft LoRA folder (:func:`~tensortrain_nn.peft_io.export_lora`; ``mode="rep"`` only).
    Only the main process writes. The model is unwrapped from DDP (``.module``) first.

    Args:
        adapter_name: which adapter (default: the active one).
        export_lora: also write the peft LoRA export.

    Example::

        trainer = Trainer(model=patched, args=args, train_dataset=ds,
                          callbacks=[AdapterCheckpointCallback(export_lora=True)])
    """

    def __init__(self, adapter_name: str | None = None, *, export_lora: bool = False) -> None:
        if not isinstance(export_lora, bool):
            raise TTTypeError(f"export_lora must be a bool, got {export_lora!r}")
        self.adapter_name = adapter_name
        self.export_lora = export_lora
        #: Folders written so far, in order.
        self.written: list[Path] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Write the adapter folder(s) of checkpoint ``state.global_step``."""
        from tensortrain_nn.peft_io.export import export_lora
        from tensortrain_nn.surgery import save_adapter

        model = kwargs.get("model")
        if model is None or not getattr(state, "is_world_process_zero", True):
            return control
        model = getattr(model, "module", model)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        self.written.append(save_adapter(model, folder / TT_SUBDIR, self.adapter_name))
        if self.export_lora:
            # The callback owns this sub-folder: a second save of the same step replaces it.
            lora = export_lora(model, folder / LORA_SUBDIR, self.adapter_name, overwrite=True)
            self.written.append(lora)
        return control
