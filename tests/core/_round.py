"""The reference for rounding's Gram path: ``round_cores`` through the QR and SVD sweeps alone."""

from unittest import mock

import torch

from tensortrain import ops, round_cores


def sweeps_round(cores, **kw) -> list[torch.Tensor]:
    """``round_cores(cores, **kw)`` with the Gram path switched off."""
    with mock.patch.object(ops, "_gram_round_applies", return_value=False):
        return round_cores(cores, **kw)
