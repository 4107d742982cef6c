"""Evaluate LoRETTA adapters with lm-evaluation-harness (needs the ``eval`` extra: ``lm-eval``).

Importing this package registers the ``tensortrain`` model type with lm-eval: a base model with a
rep or adp adapter loaded from a run folder of ``tensortrain finetune`` or from an adapter folder
of :func:`tensortrain_nn.save_adapter`; any harness task then runs on it. lm-eval finds model
types only among its own modules and those already imported, so the command line goes through
this package::

    python -m tensortrain_nn.harness --model tensortrain \\
        --model_args adapter=runs/rep --tasks arc_easy --device cpu

(the arguments are lm-eval's). In Python, import the package first, then pass the name or an
instance::

    import lm_eval
    import tensortrain_nn.harness

    lm_eval.simple_evaluate(
        model="tensortrain", model_args="adapter=runs/rep", tasks=["arc_easy"], device="cpu"
    )
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tensortrain.errors import TTError
from tensortrain_nn.harness.model import ModelArgsError, TensorTrainLM, adapter_kind, load_adapted

__all__ = ["ModelArgsError", "TensorTrainLM", "adapter_kind", "load_adapted", "main"]

PROG = "python -m tensortrain_nn.harness"


def main(argv: Sequence[str] | None = None) -> int:
    """lm-eval's command line with the ``tensortrain`` model type registered.

    Takes exactly lm-eval's arguments (``run`` is implied, as with ``lm_eval``). A wrong
    ``--model_args`` value of the ``tensortrain`` model type prints one line and exits with 2.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.

    Example::

        main(["--model", "tensortrain", "--model_args", "adapter=runs/rep",
              "--tasks", "arc_easy", "--device", "cpu"])
    """
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = [PROG, *(saved[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except TTError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse's own errors and --help
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0
