"""Shared test settings: a hypothesis profile sized for a 2-core machine, deterministic torch."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("TT_MAX_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("default")
torch.set_num_threads(min(2, torch.get_num_threads()))
