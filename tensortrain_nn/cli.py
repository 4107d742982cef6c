"""The ``tensortrain`` command line: ``finetune`` (the default), ``predict`` and ``evaluate``.

Every known failure (missing file, bad data, bad model, foreign adapter) prints one line and exits
with status 2; nothing here prints a traceback for them.

Example:
    $ tensortrain                                   # MiniLM on Rotten Tomatoes, LoRETTA_rep
    $ tensortrain finetune --method lora --epochs 1
    $ tensortrain finetune --compare rep,adp,lora,head --seeds 0,1,2
    $ tensortrain finetune --compare rep,lora --tune lr=1e-3,3e-3 --val-size 200   # picked on val
    $ torchrun --nproc_per_node 2 -m tensortrain_nn.cli finetune --checkpoint-every 50 \\
          --output-dir runs/ddp            # data-parallel; rerun with --resume after a crash
    $ echo "a gorgeous film" | tensortrain predict --adapter runs/lora-20250101-120000
    $ tensortrain finetune --model smollm2 --compare none,rep,adp,lora   # causal LM, verbalizer
    $ tensortrain generate --adapter runs/rep-20250101-120000 "Review: a gem\\nSentiment:"
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tensortrain.errors import TTError
from tensortrain_nn._options import option_value

COMMANDS = ("finetune", "predict", "evaluate", "generate", "export-lora", "compress-lora")


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
        by_method.setdefault(owner if dot else method, {})[name] = option_value(raw)
    return by_method.get(method, {}), by_method


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _test_size(text: str) -> int | float:
    try:
        return float(text) if "." in text or "e" in text.lower() else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


#: How a config field's annotation is parsed on the command line.
_PARSERS: dict[str, Any] = {
    "int": int,
    "int | None": int,
    "float": _finite,
    "float | None": _finite,
    "str": str,
    "str | None": str,
    "int | float | None": _test_size,
}


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`FinetuneConfig` field: its name, type, default and help text."""
    from tensortrain_nn.finetune.config import FinetuneConfig

    for spec in dataclasses.fields(FinetuneConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = spec.default if spec.default is not dataclasses.MISSING else None
        text = spec.metadata["help"]
        if spec.name == "method_options":
            parser.add_argument(
                "--opt",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="method option, e.g. rank=5 or rep.rank=5 (repeatable)",
            )
        elif spec.type == "bool":
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
        else:
            shown = "" if default is None else f" (default {default})"
            parser.add_argument(
                flag, type=_PARSERS[str(spec.type)], default=default, help=text + shown
            )


class UsageError(ValueError):
    """A command line argparse refuses (printed as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (and a hint), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _generate_flags(gen: argparse.ArgumentParser) -> None:
    """The flags of ``generate``."""
    gen.add_argument(
        "prompts",
        nargs="*",
        help=r"prompts (default: stdin, one a line); \n, \t, \\ are read as a line break, "
        "a tab, a backslash",
    )
    gen.add_argument(
        "--prompt-file",
        metavar="FILE",
        help="prompts that may span lines, separated by a line holding only --- (- : stdin)",
    )
    gen.add_argument("--adapter", required=True, help="a run folder written by finetune --task lm")
    gen.add_argument("--model", help="base model to use instead of the one the run names")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="most tokens generated per prompt (default 32; at most 4096, and prompt + new "
        "tokens within the model's positions)",
    )
    gen.add_argument("--temperature", type=_finite, default=0.0, help="0: greedy (default)")
    gen.add_argument("--top-p", type=_finite, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--no-merge", action="store_true", help="keep the adapter unmerged (always: on --quantize)"
    )
    gen.add_argument("--chat", action="store_true", help="prompts are user turns of one chat")
    gen.add_argument("--system", help="with --chat: a system message opening the chat")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="tensortrain",
        description="Fine-tune transformers with LoRETTA (tensor-train adapters), LoRA, or a head.",
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    ft = sub.add_parser("finetune", help="fine-tune and report (the default command)")
    ft.add_argument("--compare", help="comma-separated methods to run side by side")
    ft.add_argument("--seeds", type=_ints, help="comma-separated training seeds (e.g. 0,1,2)")
    ft.add_argument("--jobs", type=int, default=1, help="runs of --compare/--seeds at a time")
    ft.add_argument(
        "--tune",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a grid to pick from on a validation split, e.g. lr=1e-4,1e-3 or rep.rank=4,8 "
        "(repeatable: the product); the test split is scored only at the pick",
    )
    ft.add_argument("--tune-seeds", type=_ints, help="seeds each grid point trains at")
    ft.add_argument("--tune-widen", type=int, default=0, help="points added past a picked end")
    _config_flags(ft)
    for name, text in (("predict", "label new text"), ("evaluate", "score a saved run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--adapter", required=True, help="a run folder written by finetune")
        p.add_argument("--model", help="base model to use instead of the one the run names")
        p.add_argument("--text-column", help="text column when the input is CSV / JSONL")
    _generate_flags(
        sub.add_parser("generate", help="continue prompts with an lm run (adapter merged)")
    )
    exp = sub.add_parser("export-lora", help="write a LoRETTA_rep run's adapter as a peft LoRA")
    exp.add_argument("adapter", help="a rep run folder (or its adapter/ sub-folder)")
    exp.add_argument("out", help="the peft LoRA folder to write")
    exp.add_argument("--rank", type=int, help="rank of a form='full' update's truncated SVD")
    exp.add_argument("--model", help="base model to use instead of the one the run names")
    exp.add_argument("--allow-lossy", action="store_true", help="write a lossy (form='full') LoRA")
    com = sub.add_parser("compress-lora", help="compress a peft LoRA into TT (and back to LoRA)")
    com.add_argument("adapter", help="a peft LoRA folder, or a lora run folder")
    com.add_argument("out", help="folder for the compressed LoRA (TT adapter in OUT/tt_adapter)")
    com.add_argument("--eps", type=_finite, help="relative error per factor (TT-SVD bound)")
    com.add_argument("--tt-rank", type=int, help="largest TT rank")
    com.add_argument("--model", help="base model (default: the run's; needed for a bare folder)")
    com.add_argument(
        "--num-labels", type=_positive, help="classes of the base's head (bare folder)"
    )
    for cmd in (exp, com):
        cmd.add_argument("--overwrite", action="store_true", help="write into a non-empty OUT")
    pred = sub.choices["predict"]
    pred.add_argument("--input", help="text file, one text a line, or CSV/JSONL (default stdin)")
    ev = sub.choices["evaluate"]
    ev.add_argument(
        "--data",
        help="CSV/JSONL in the run's form: labelled texts, or prompt/completion or plain text "
        "in the run's columns (default: the run's held-out split)",
    )
    ev.add_argument("--label-column")
    for name in ("predict", "evaluate", "generate"):
        _base_flags(sub.choices[name])
    return parser


#: The base-form flags of predict / evaluate / generate (FinetuneConfig fields of finetune).
_BASE_FLAGS = ("dtype", "quantize", "quant_type", "adapter_dtype")


def _base_flags(parser: argparse.ArgumentParser) -> None:
    """``--dtype``, ``--quantize``, ``--quant-type``, ``--adapter-dtype``: the run's by default."""
    from tensortrain_nn.finetune.config import FinetuneConfig

    fields = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
    for name in _BASE_FLAGS:
        text = fields[name].metadata["help"]
        parser.add_argument("--" + name.replace("_", "-"), help=f"{text} (default: the run's)")


def _base(args: argparse.Namespace) -> dict[str, str | None]:
    return {name: getattr(args, name) for name in _BASE_FLAGS}


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _finetune(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from tensortrain_nn.finetune import FinetuneConfig, compare, format_report, run

    options, by_method = parse_options(args.opt, args.method)
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"method_options"}
    config = FinetuneConfig(**{n: getattr(args, n) for n in names}, method_options=options)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    for flag in ("tune_seeds", "tune_widen"):
        if getattr(args, flag) and not args.tune:
            raise ValueError(f"--{flag.replace('_', '-')} has no effect without --tune")
    if args.compare or args.seeds or args.tune:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(
                "--compare, --seeds and --tune run in one process; under torchrun run one job"
            )
        methods = args.compare.split(",") if args.compare else [args.method]
        command = "tensortrain " + shlex.join(argv)
        methods = [m.strip() for m in methods if m.strip()]
        seeds = args.seeds or [args.seed]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = Path(config.output_dir or f"runs/{'tune' if args.tune else 'compare'}-{stamp}")
        config = dataclasses.replace(config, output_dir=str(folder))
        common: dict[str, Any] = {"seeds": seeds, "method_options": by_method, "command": command}
        if args.tune:
            from tensortrain_nn.finetune.tune import parse_grid, tune

            grid = parse_grid(args.tune, methods)
            widen = {"tune_seeds": args.tune_seeds, "widen": args.tune_widen}
            tune(config, methods, grid, jobs=args.jobs, **widen, **common)
        else:
            compare(config, methods, jobs=args.jobs, **common)
        print((folder / "compare.md").read_text())
        print(f"written to {folder}/compare.md, compare.json, compare.png")
        return 0
    result = run(config)
    if main_rank:
        print(format_report(result))
    return 0


def _read_inputs(path: str | None, text_column: str | None) -> list[str]:
    from tensortrain_nn.tasks import load_table

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
    from tensortrain_nn.finetune import predict, read_run

    read_run(Path(args.adapter))  # a bad --adapter fails before stdin is read
    texts = _read_inputs(args.input, args.text_column)
    if not texts:
        raise ValueError("no input text (give --input FILE or lines on stdin)")
    for label in predict(args.adapter, texts, model=args.model, base=_base(args)):
        print(one_line(label))
    return 0


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (``\\n``...): one output, one line.

    Example:
        >>> print(one_line("yes\\nreally"))
        yes\\nreally
    """
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _read_prompts(given: Sequence[str], prompt_file: str | None) -> list[str]:
    """generate's prompts: arguments, a ``--prompt-file`` (``-``: stdin), or stdin lines; with
    escape sequences read by :func:`~tensortrain_nn.tasks.text.unescape`."""
    from tensortrain_nn.tasks.text import split_prompts, unescape

    if prompt_file is not None:
        if given:
            raise ValueError("--prompt-file: give prompts as arguments or in the file, not both")
        if prompt_file != "-" and not Path(prompt_file).is_file():
            raise FileNotFoundError(f"--prompt-file: file not found: {prompt_file}")
        text = sys.stdin.read() if prompt_file == "-" else Path(prompt_file).read_text("utf-8")
        prompts = split_prompts(text)
    else:
        prompts = list(given) or [line for line in sys.stdin.read().splitlines() if line.strip()]
    return [unescape(p) for p in prompts]


def _generate(args: argparse.Namespace) -> int:
    from tensortrain_nn.finetune import generate_text, read_run

    read_run(Path(args.adapter))  # a bad --adapter fails before stdin is read
    prompts = _read_prompts(args.prompts, args.prompt_file)
    if not prompts:
        raise ValueError("no prompt (give prompts as arguments, --prompt-file or lines on stdin)")
    options = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    if args.system is not None and not args.chat:
        raise ValueError("--system needs --chat")
    chat = {"chat": True, "system": args.system} if args.chat else {}
    texts = generate_text(
        args.adapter,
        prompts,
        model=args.model,
        merge=not args.no_merge,
        base=_base(args),
        **options,
        **chat,
    )
    for text in texts:
        print(one_line(text))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from tensortrain_nn.finetune import evaluate

    scores = evaluate(
        args.adapter,
        args.data,
        text_column=args.text_column,
        label_column=args.label_column,
        model=args.model,
        base=_base(args),
    )
    if "accuracy" in scores:
        print(f"accuracy    {100 * scores['accuracy']:.2f} %  ({int(scores['examples'])} examples)")
        print(f"macro-F1    {100 * scores['macro_f1']:.2f} %")
    if "perplexity" in scores:
        print(f"loss        {scores['loss']:.4f} per token  ({int(scores['examples'])} examples)")
        print(f"perplexity  {scores['perplexity']:.3f}")
    if "exact_match" in scores:
        print(f"exact match {100 * scores['exact_match']:.2f} %  (greedy, as --metric exact_match)")
    return 0


def _fail(exc: BaseException) -> int:
    """Print ``exc`` as one line on stderr; returns the exit status 2."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"tensortrain: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tensortrain`` console script; returns the exit status.

    With no arguments (or options without a command) it runs ``finetune``.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or (args_list[0].startswith("-") and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, "finetune")
    try:
        args = build_parser().parse_args(args_list)
        _quiet_transformers()
        if args.command == "predict":
            return _predict(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "generate":
            return _generate(args)
        if args.command in ("export-lora", "compress-lora"):
            from tensortrain_nn import cli_lora

            return cli_lora.COMMANDS[args.command](args)
        return _finetune(args, args_list)
    except ModuleNotFoundError as exc:  # an optional dependency: name the extra
        from tensortrain_nn._optional import missing

        return _fail(missing(exc, f"tensortrain {args_list[0]}"))
    except (TTError, OSError, ValueError, ImportError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print("tensortrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
