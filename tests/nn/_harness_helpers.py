"""A tiny LLaMA, its tokenizer and a local multiple-choice task for the lm-eval tests.

The tokenizer is a byte-level BPE trained here on a few sentences (well under a second); the model
is a random 2-layer, 32-wide LLaMA. The task is a lm-eval YAML over a local JSONL file, so the
harness runs with no network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SENTENCES = [
    "a good film with a warm story",
    "a bad movie, dull plot and cold actors",
    "Review: great scene\nSentiment: good",
    "the plot is boring but the actor is superb",
    "Question: is the film good or bad?\nAnswer: a very bad film",
]
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
    """A byte-level BPE tokenizer (320 ids) with ``<eos>`` and a ``<bos>`` it prepends."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<eos>", "<bos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", bos_token="<bos>")


def tiny_llama(tokenizer: Any, seed: int = 0) -> Any:
    """A random 2-layer LLaMA (hidden 32, 4 heads, 2 KV heads) in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


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
