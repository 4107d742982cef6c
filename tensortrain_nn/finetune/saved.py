"""Using a saved run: label texts (:func:`predict`), score held-out data (:func:`evaluate`) and
continue prompts (:func:`generate_text`), each on the run's base form unless ``base`` overrides it.

Example (a run folder written by ``tensortrain finetune``, not run here)::

    predict("runs/rep", ["a gorgeous film"])              # ['fresh']
    evaluate("runs/rep")["accuracy"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain_nn.bases.load import is_quantized
from tensortrain_nn.finetune import runs
from tensortrain_nn.tasks import AdapterError, Split, generate, make_task
from tensortrain_nn.tasks.build import read_held_out
from tensortrain_nn.tasks.chat_task import chat_replies


def predict(
    folder: str | Path,
    texts: Sequence[str],
    *,
    model: str | None = None,
    batch_size: int = 64,
    base: dict[str, str | None] | None = None,
) -> list[str]:
    """Label ``texts`` with a saved run; returns label names (``base``: see
    :func:`~tensortrain_nn.finetune.runs.load_run`).

    Raises:
        AdapterError: The run has no labels (an lm run on prompts or text: use :func:`generate`).
    """
    loaded, tokenizer, info = runs.load_run(folder, model=model, base=base)
    kind, options = runs.saved_task(info)
    if not kind.labelled or not info["labels"]:
        raise AdapterError(f"{folder} is an lm run without labels: use tensortrain generate")
    task = make_task(kind, tokenizer, Split([], [], [], [], info["labels"]), options)
    return [info["labels"][i] for i in task.predict(loaded, list(texts), batch_size)]


def evaluate(
    folder: str | Path,
    data: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    model: str | None = None,
    base: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """Held-out metrics of a saved run on ``data`` (default: the run's own held-out split), on
    the run's base form unless ``base`` overrides it (see :func:`runs.load_run`).

    ``data`` has the run's form: labelled texts, or for an lm run on prompt/completion or plain
    text, examples with the run's columns (:func:`tensortrain_nn.tasks.build.read_held_out`).

    Returns:
        Accuracy and macro-F1 (and, for lm runs, loss and perplexity; on prompt/completion
        data also ``exact_match``), with ``examples``.

    Raises:
        DataError: A label in ``data`` was not seen in training (the message names it), or
            ``data`` lacks a column the run reads.
    """
    loaded, tokenizer, info = runs.load_run(folder, model=model, base=base)
    kind, options = runs.saved_task(info)
    held = read_held_out(
        options, kind, info["labels"], data, text_column=text_column, label_column=label_column
    )
    with torch.no_grad():
        scores = make_task(kind, tokenizer, held, options).evaluate(loaded.eval(), 64)
    return {k: v for k, v in scores.items() if k != "samples"}


def generate_text(
    folder: str | Path,
    prompts: Sequence[str],
    *,
    model: str | None = None,
    merge: bool = True,
    chat: bool = False,
    system: str | None = None,
    base: dict[str, str | None] | None = None,
    **options: Any,
) -> list[str]:
    """Continue ``prompts`` with a saved lm run's model and adapter (greedy by default).

    The adapter is merged into the base weights first when it can be (rep, LoRA): generation then
    costs what the base model costs, with the same greedy output as the unmerged model. On a
    quantized base (``--quantize``) it stays unmerged: packed weights cannot take it exactly.

    Args:
        folder: A run written by ``finetune --task lm``.
        prompts: Texts to continue.
        model: Another base model of the same architecture.
        merge: Fold the adapter into the weights (rep and LoRA on an unquantized base).
        chat: The prompts are the user turns of one conversation, rendered by the chat template
            (the run's ``--template`` when it was a chat template, else the tokenizer's).
        system: With ``chat``: a system message opening the conversation.
        base: ``dtype`` / ``quantize`` / ``quant_type`` / ``adapter_dtype`` overrides of the
            run's (see :func:`runs.load_run`).
        **options: ``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``batch_size`` of
            :func:`tensortrain_nn.tasks.generate`.

    Returns:
        The new text of each prompt.

    Raises:
        AdapterError: Not an lm run, or an adapter made for another base model.
    """
    loaded, tokenizer, info = runs.load_run(folder, model=model, base=base)
    if info.get("task") != "lm":
        raise AdapterError(
            f"{folder} is a {info.get('task', 'classify')} run; generate needs an lm run"
        )
    if merge and not is_quantized(loaded):
        loaded = merged_model(loaded, info["config"]["method"])
    if chat:
        template = info["config"].get("template")
        return chat_replies(loaded, tokenizer, prompts, template=template, system=system, **options)
    return generate(loaded, tokenizer, list(prompts), **options)


def merged_model(model: nn.Module, method: str) -> nn.Module:
    """The model with its adapter folded into the weights where ``method`` allows it (rep and
    LoRA, as a plain model); other methods' models as they are."""
    if method == "lora":
        return model.merge_and_unload()  # type: ignore[operator]
    if method == "rep":
        import tensortrain_nn

        return tensortrain_nn.merge_and_unload(model)
    return model
