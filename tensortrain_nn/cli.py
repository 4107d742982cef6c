"""The ``tensortrain`` command line: ``finetune`` (the default), ``predict`` and ``evaluate``.

Every known failure (missing file, bad data, bad model, foreign adapter) prints one line and exits
with status 2; nothing here prints a traceback for them.

Example:
    $ tensortrain                                   # MiniLM on Rotten Tomatoes, LoRETTA_rep
    $ tensortrain finetune --method lora --epochs 1
    $ tensortrain finetune --compare rep,adp,lora,head --seeds 0,1,2
    $ torchrun --nproc_per_node 2 -m tensortrain_nn.cli finetune --checkpoint-every 50 \\
          --output-dir runs/ddp            # data-parallel; rerun with --resume after a crash
    $ echo "a gorgeous film" | tensortrain predict --adapter runs/lora-20250101-120000
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensortrain.errors import TTError

COMMANDS = ("finetune", "predict", "evaluate")


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_options(items: Sequence[str], method: str) -> tuple[dict[str, Any], dict[str, dict]]:
    """Parse ``--opt KEY=VALUE`` items (values as JSON when they parse, else strings).

    ``KEY`` may be ``method.key`` to address one method of a comparison; a plain ``key`` applies to
    ``method``. Returns ``(options of method, options by method)``.
    """
    by_method: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt expects KEY=VALUE, got {item!r}")
        owner, dot, name = key.rpartition(".")
        by_method.setdefault(owner if dot else method, {})[name] = _value(raw)
    return by_method.get(method, {}), by_method


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _test_size(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tensortrain",
        description="Fine-tune transformers with LoRETTA (tensor-train adapters), LoRA, or a head.",
    )
    sub = parser.add_subparsers(dest="command")
    ft = sub.add_parser("finetune", help="fine-tune and report (the default command)")
    ft.add_argument("--method", default="rep", help="rep, adp, lora, head or full (default rep)")
    ft.add_argument("--compare", help="comma-separated methods to run side by side")
    ft.add_argument("--seeds", type=_ints, help="comma-separated training seeds (e.g. 0,1,2)")
    ft.add_argument(
        "--jobs", type=int, default=1, help="runs of --compare/--seeds at a time (processes)"
    )
    ft.add_argument("--model", default="minilm", help="minilm, smollm2, a model folder or .gguf")
    ft.add_argument("--data", help="CSV or JSONL file (default: built-in Rotten Tomatoes)")
    ft.add_argument("--text-column", default="text")
    ft.add_argument("--label-column", default="label")
    ft.add_argument("--test-data", help="held-out file (default: hold out part of --data)")
    ft.add_argument("--test-size", type=_test_size, help="held-out count or fraction")
    ft.add_argument("--split-seed", type=int, default=0)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--epochs", type=int, default=3)
    ft.add_argument("--batch-size", type=int, default=16)
    ft.add_argument("--max-length", type=int, default=64)
    ft.add_argument("--lr", type=float, help="learning rate (default: per method)")
    ft.add_argument("--weight-decay", type=float, default=0.01)
    ft.add_argument("--tt-weight-decay", type=float, default=0.0)
    ft.add_argument("--warmup-ratio", type=float, default=0.06)
    ft.add_argument("--max-grad-norm", type=float, default=1.0)
    ft.add_argument("--max-train", type=int, help="train on the first N shuffled examples")
    ft.add_argument("--max-test", type=int, help="evaluate on the first N held-out examples")
    ft.add_argument(
        "--opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. rank=5 or rep.rank=5 (repeatable)",
    )
    ft.add_argument("--output-dir", help="default runs/<method>-<timestamp>")
    ft.add_argument("--device", default="auto")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="K",
        help="write a resumable checkpoint every K steps and at the end (default 0: none)",
    )
    ft.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest valid checkpoint in --output-dir",
    )
    for name, text in (("predict", "label new text"), ("evaluate", "score a saved run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--adapter", required=True, help="a run folder written by finetune")
        p.add_argument("--model", help="base model to use instead of the one the run names")
        p.add_argument("--text-column", help="text column when the input is CSV / JSONL")
    pred = sub.choices["predict"]
    pred.add_argument("--input", help="text file, one text a line, or CSV/JSONL (default stdin)")
    ev = sub.choices["evaluate"]
    ev.add_argument("--data", help="labelled CSV/JSONL (default: the run's held-out split)")
    ev.add_argument("--label-column")
    return parser


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _finetune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tensortrain_nn.finetune import FinetuneConfig, compare, format_report, run

    options, by_method = parse_options(args.opt, args.method)
    config = FinetuneConfig(
        method=args.method,
        model=args.model,
        data=args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        test_data=args.test_data,
        test_size=args.test_size,
        split_seed=args.split_seed,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        lr=args.lr,
        weight_decay=args.weight_decay,
        tt_weight_decay=args.tt_weight_decay,
        warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm,
        max_train=args.max_train,
        max_test=args.max_test,
        method_options=options,
        output_dir=args.output_dir,
        device=args.device,
        progress=not args.no_progress,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if args.compare or args.seeds:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--compare and --seeds run in one process; under torchrun run one job")
        methods = args.compare.split(",") if args.compare else [args.method]
        command = "tensortrain " + shlex.join(argv)
        results, _ = compare(
            config,
            [m.strip() for m in methods if m.strip()],
            seeds=args.seeds or [args.seed],
            method_options=by_method,
            command=command,
            jobs=args.jobs,
        )
        folder = Path(results[0].output_dir or ".").parent
        print((folder / "compare.md").read_text())
        print(f"written to {folder}/compare.md, compare.json, compare.png")
        return 0
    result = run(config)
    if main_rank:
        print(format_report(result))
    return 0


def _read_inputs(path: str | None, text_column: str | None) -> list[str]:
    from tensortrain_nn.finetune.data import load_table

    if path is None:
        lines = sys.stdin.read().splitlines()
    elif Path(path).suffix in (".csv", ".jsonl", ".json"):
        # Any column works as a label column here: only the texts are used.
        column = text_column or "text"
        return load_table(path, text_column=column, label_column=column)[0]
    else:
        if not Path(path).is_file():
            raise FileNotFoundError(f"input file not found: {path}")
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip()]


def _predict(args: argparse.Namespace) -> int:
    from tensortrain_nn.finetune import predict
    from tensortrain_nn.finetune.job import read_run

    read_run(Path(args.adapter))  # a bad --adapter fails before stdin is read
    texts = _read_inputs(args.input, args.text_column)
    if not texts:
        raise ValueError("no input text (give --input FILE or lines on stdin)")
    for label in predict(args.adapter, texts, model=args.model):
        print(label)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tensortrain_nn.finetune import evaluate

    scores = evaluate(
        args.adapter,
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        model=args.model,
    )
    print(f"accuracy  {100 * scores['accuracy']:.2f} %  ({int(scores['examples'])} examples)")
    print(f"macro-F1  {100 * scores['macro_f1']:.2f} %")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensortrain`` console script; returns the exit status.

    With no arguments (or options without a command) it runs ``finetune``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "finetune")
    args = build_parser().parse_args(args_list)
    try:
        _quiet_transformers()
        if args.command == "predict":
            return _predict(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _finetune(args, args_list)
    except (TTError, OSError, ValueError, ImportError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"tensortrain: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tensortrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
