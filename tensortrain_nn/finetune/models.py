"""Where :mod:`tensortrain_nn.models` lived before; kept so that existing imports work."""

from tensortrain_nn.models import (
    PACKAGED,
    ModelSpec,
    check_fingerprint,
    fingerprint,
    is_decoder_only,
    load_model,
    resolve_model,
)

__all__ = [
    "PACKAGED",
    "ModelSpec",
    "check_fingerprint",
    "fingerprint",
    "is_decoder_only",
    "load_model",
    "resolve_model",
]
