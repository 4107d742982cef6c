"""The bases a LoRETTA layer wraps: quantized, half-precision, offloaded.

* :mod:`~tensortrain_nn.bases.quantized`: bitsandbytes 4-bit / 8-bit layers (a registry of
  kinds); what cannot run on their packed weights is refused (:func:`check_plain`).
* :mod:`~tensortrain_nn.bases.dtype`: the ``adapter_dtype`` option (float32 adapters on
  half-precision and quantized bases by default, as peft's ``autocast_adapter_dtype``).
* :mod:`~tensortrain_nn.bases.offload`: accelerate-offloaded layers, refused by name.
* :func:`prepare_kbit_training`: float32 norms, gradient checkpointing with input grads.
* :mod:`~tensortrain_nn.bases.quiet`: the hub-kernel log lines of bitsandbytes, silenced when
  this package is imported (``import tensortrain_nn`` imports it before anything can import
  bitsandbytes).
"""

from tensortrain_nn.bases.dtype import ADAPTER_DTYPES, adapter_dtype, check_adapter_dtype
from tensortrain_nn.bases.offload import check_in_memory, is_offloaded
from tensortrain_nn.bases.prepare import prepare_kbit_training
from tensortrain_nn.bases.quantized import (
    QUANT_KINDS,
    QuantKind,
    check_plain,
    compute_dtype,
    describe,
    quant_kind,
    register_quant_kind,
)
from tensortrain_nn.bases.quiet import quiet_hub_kernel_logs

quiet_hub_kernel_logs()

__all__ = [
    "ADAPTER_DTYPES",
    "QUANT_KINDS",
    "QuantKind",
    "adapter_dtype",
    "check_adapter_dtype",
    "check_in_memory",
    "check_plain",
    "compute_dtype",
    "describe",
    "is_offloaded",
    "prepare_kbit_training",
    "quant_kind",
    "quiet_hub_kernel_logs",
    "register_quant_kind",
]
