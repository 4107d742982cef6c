"""The bases a LoRETTA layer wraps: quantized, half-precision, offloaded.

* :mod:`~tensortrain_nn.bases.quantized`: bitsandbytes 4-bit / 8-bit layers (a registry of
  kinds); what cannot run on their packed weights is refused (:func:`check_plain`).
* :mod:`~tensortrain_nn.bases.dtype`: the ``adapter_dtype`` option (float32 adapters on
  half-precision and quantized bases by default, as peft's ``autocast_adapter_dtype``).
* :mod:`~tensortrain_nn.bases.offload`: accelerate-offloaded layers, refused by name.
* :mod:`~tensortrain_nn.bases.load`: :class:`BaseForm`, the dtype and quantization a base is
  loaded in (``--dtype``, ``--quantize``), and what a loaded base is and takes.
* :func:`prepare_kbit_training`: float32 norms, gradient checkpointing with input grads.
* :mod:`~tensortrain_nn.bases.quiet`: the hub-kernel log lines of bitsandbytes, silenced when
  this package is imported (``import tensortrain_nn`` imports it before anything can import
  bitsandbytes).
"""

from tensortrain_nn.bases.dtype import ADAPTER_DTYPES, adapter_dtype, check_adapter_dtype
from tensortrain_nn.bases.load import (
    BASE_DTYPES,
    QUANT_TYPES,
    QUANTIZE,
    BaseForm,
    base_memory_bytes,
    describe_base,
    is_quantized,
)
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
    "BASE_DTYPES",
    "QUANTIZE",
    "QUANT_KINDS",
    "QUANT_TYPES",
    "BaseForm",
    "QuantKind",
    "adapter_dtype",
    "base_memory_bytes",
    "check_adapter_dtype",
    "check_in_memory",
    "check_plain",
    "compute_dtype",
    "describe",
    "describe_base",
    "is_offloaded",
    "is_quantized",
    "prepare_kbit_training",
    "quant_kind",
    "quiet_hub_kernel_logs",
    "register_quant_kind",
]
