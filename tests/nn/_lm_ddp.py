"""One process of a 2-process causal-LM job (the test sets torchrun's variables).

python _lm_ddp.py CONFIG_JSON OUT_DIR      # writes OUT_DIR/lm<RANK>.pt
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
from _helpers import trainable

from tensortrain_nn.finetune import FinetuneConfig, run

if __name__ == "__main__":
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    config_file, out = sys.argv[1], Path(sys.argv[2])
    final: dict[str, torch.Tensor] = {}
    config = FinetuneConfig(**json.loads(Path(config_file).read_text()))
    result = run(config, on_step=lambda step, model: final.update(trainable(model)))
    saved = {"tensors": final, "train_loss": result.history[-1]["train_loss"]}
    torch.save(saved, out / f"lm{os.environ['RANK']}.pt")
