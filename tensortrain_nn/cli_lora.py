"""The ``tensortrain export-lora`` and ``compress-lora`` commands (parsed in ``cli.py``).

Both check everything before they load a model or write a byte: the run folder and its method,
and an output folder that must be new or empty unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def export_lora(args: argparse.Namespace) -> int:
    """A rep run's adapter as a peft LoRA folder; prints the largest relative update error.

    A lossy export (``form="full"``, above :data:`~tensortrain_nn.peft_io.export.
    LOSSY_EXPORT_THRESHOLD`) is refused unless ``--allow-lossy`` or an explicit ``--rank``.
    """
    import tensortrain_nn
    from tensortrain_nn._files import check_output_folder
    from tensortrain_nn.finetune import load_run, read_run
    from tensortrain_nn.finetune.runs import check_method
    from tensortrain_nn.peft_io.export import LOSSY_EXPORT_THRESHOLD as LIMIT
    from tensortrain_nn.peft_io.export import LossyExportError

    root, info = read_run(Path(args.adapter))
    check_method(root, info, "export-lora", "rep")
    check_output_folder(Path(args.out), overwrite=args.overwrite, name="OUT")
    model, _, _ = load_run(root, model=args.model)
    limit = None if args.allow_lossy or args.rank is not None else LIMIT
    try:
        out = tensortrain_nn.export_lora(
            model, args.out, rank=args.rank, overwrite=args.overwrite, max_error=limit
        )
    except LossyExportError as exc:
        raise ValueError(
            f"export-lora: form={exc.form!r} updates truncated to rank {exc.rank} have relative "
            f"error up to {exc.error:.3g} (on {exc.path!r}), above the {LIMIT:g} limit; pass "
            "--rank K (higher is closer, min(out, in) exact) or --allow-lossy; nothing was written"
        ) from None
    error = json.loads((out / "tt_export.json").read_text())["max_relative_error"]
    print(f"peft LoRA adapter written to {out} (load it with PeftModel.from_pretrained)")
    print(f"max relative update error {error:.3g} (per module: {out / 'tt_export.json'})")
    return 0


def compress_lora(args: argparse.Namespace) -> int:
    """A lora run's adapter (or a bare peft folder with ``--model``) through TT and back."""
    import tensortrain_nn
    from tensortrain_nn._files import check_output_folder
    from tensortrain_nn.finetune import ADAPTER_DIR, load_base
    from tensortrain_nn.finetune.runs import RUN_FILE, check_method, read_run
    from tensortrain_nn.models import load_model, resolve_model

    folder = Path(args.adapter)
    check_output_folder(Path(args.out), overwrite=args.overwrite, name="OUT")
    if args.model is not None:  # a bare peft folder: the base model is named here
        base, _ = load_model(resolve_model(args.model), args.num_labels)
    else:  # a lora run (its folder or its adapter/ sub-folder) names its base model
        if folder.is_dir() and not any((p / RUN_FILE).is_file() for p in (folder, folder.parent)):
            raise ValueError(
                f"{folder} is not a saved run (no {RUN_FILE}): for a bare peft LoRA folder pass "
                "--model, the base model it was trained on"
            )
        check_method(*read_run(folder), "compress-lora", "lora")
        root, base, _, _ = load_base(folder)
        folder = root / ADAPTER_DIR
    report = tensortrain_nn.compress_lora(
        folder, args.out, base, eps=args.eps, tt_rank=args.tt_rank, overwrite=args.overwrite
    )
    print(report)
    return 0


#: Command name -> its implementation; each returns the exit status.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "export-lora": export_lora,
    "compress-lora": compress_lora,
}
