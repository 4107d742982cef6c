"""Tasks: what an example is, how it is batched, scored and generated; the job runs any of them.

``classify`` puts a head on the pooled output; ``lm`` trains a causal LM on completions, plain
text, or labels as text (a verbalizer, scored by option likelihood). :func:`decide_kind` is the
one place that picks the task of a job. Tasks take :class:`TaskOptions`, never the job's config.

Example (a real model, not run here)::

    from tensortrain_nn.tasks import TaskOptions, decide_kind, make_task, read_data
    options = TaskOptions(data="reviews.csv")
    kind = decide_kind(options, decoder_only=False, model="minilm")
    task = make_task(kind, tokenizer, read_data(options, kind), options)
    task.predict(model, ["a gorgeous film"], batch_size=8)       # [label id]
"""

from tensortrain_nn.tasks.base import (
    BUILTIN,
    Task,
    TaskKind,
    TaskOptions,
    check_max_length,
    decide_kind,
    metrics,
)
from tensortrain_nn.tasks.build import make_task, read_data, read_split
from tensortrain_nn.tasks.classify import ClassifyTask
from tensortrain_nn.tasks.data import LMExample, Split, load_table, split_items
from tensortrain_nn.tasks.errors import AdapterError, DataError, FinetuneError, ModelError
from tensortrain_nn.tasks.generation import generate
from tensortrain_nn.tasks.lm import LMTask, classification_task

__all__ = [
    "BUILTIN",
    "AdapterError",
    "ClassifyTask",
    "DataError",
    "FinetuneError",
    "LMExample",
    "LMTask",
    "ModelError",
    "Split",
    "Task",
    "TaskKind",
    "TaskOptions",
    "check_max_length",
    "classification_task",
    "decide_kind",
    "generate",
    "load_table",
    "make_task",
    "metrics",
    "read_data",
    "read_split",
    "split_items",
]
