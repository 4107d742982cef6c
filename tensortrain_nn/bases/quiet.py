"""Silence, narrowly, what bitsandbytes logs on import when it cannot fetch a hub kernel.

On a CPU with AVX512-BF16, ``import bitsandbytes`` (and so ``import peft`` and transformers'
quantizer) asks the ``kernels`` package for a faster 4-bit CPU kernel from the model hub. On an
offline machine that fails, and two loggers say so: ``kernels`` ("Skipping publisher trust check
for 'kernels-community/...'") and bitsandbytes ("Failed to load CPU gemm_4bit_forward from
kernels-community ..."). bitsandbytes then uses its own CPU kernel: nothing is lost. The filters
here drop exactly those records, on exactly those two loggers, and are installed when
:mod:`tensortrain_nn.bases` is imported (``import tensortrain_nn`` does, before anything can
import bitsandbytes). Every other record of those loggers passes.

Example:
    >>> import logging
    >>> quiet_hub_kernel_logs()
    >>> logging.getLogger("bitsandbytes.backends.cpu.ops").filters[0].prefix
    'Failed to load CPU gemm_4bit_forward from kernels-community'
"""

from __future__ import annotations

import logging

#: ``(logger name, message prefix)`` of each record dropped.
SILENCED = (
    (
        "bitsandbytes.backends.cpu.ops",
        "Failed to load CPU gemm_4bit_forward from kernels-community",
    ),
    ("kernels._internals.hf_hub", "Skipping publisher trust check for 'kernels-community/"),
)


class _DropPrefix(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_hub_kernel_logs() -> None:
    """Install the filters of :data:`SILENCED` (once; calling again adds nothing)."""
    for name, prefix in SILENCED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
