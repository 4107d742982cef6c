"""A tiny LLaMA, its tokenizer and a local multiple-choice task for the lm-eval tests.

The tokenizer and the random 2-layer, 32-wide LLaMA are the tests' shared ones (``_helpers``).
The task is a lm-eval YAML over a local JSONL file, so the harness runs with no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import _helpers

tiny_llama = _helpers.tiny_llama

#: Multiple-choice rows: a review, its choices and the index of the right one.
ROWS = [
    {"review": "a warm story and a superb actor", "choices": ["good", "bad"], "label": 0},
    {"review": "a dull plot and cold actors", "choices": ["good", "bad"], "label": 1},
    {"review": "a great scene", "choices": ["good", "bad", "boring"], "label": 0},
    {"review": "the plot is boring", "choices": ["superb", "boring"], "label": 1},
    {"review": "a bad movie", "choices": ["good", "bad"], "label": 1},
    {"review": "a good film", "choices": ["good", "bad"], "label": 0},
]
TASK = "tt_reviews"


def tiny_tokenizer() -> Any:
    """The tests' byte-level BPE tokenizer, with the ``<bos>`` it prepends."""
    return _helpers.tiny_tokenizer(True)


def write_task(folder: Path) -> Path:
    """A multiple-choice task ``tt_reviews`` (YAML + JSONL test split) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "reviews.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Review: {{review}}\\nSentiment:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        'target_delimiter: " "\n'
        "metric_list:\n"
        "  - metric: acc\n"
        "    aggregation: mean\n"
        "    higher_is_better: true\n"
    )
    return folder
