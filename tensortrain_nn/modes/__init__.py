"""Adapter modes: one class per mode behind a registry (peft's tuner/layer split).

Each mode is one file here: its options (a frozen dataclass, checked once), how it plans and
checks a target and how it builds its layer (:class:`~tensortrain_nn.modes.base.Mode`). Surgery
looks a mode up by name (:func:`get_mode`) and calls only its hooks. A new mode is one new file
(a :class:`Mode` subclass) plus one :func:`register_mode` line below.

Example:
    >>> list(MODES)
    ['rep', 'adp', 'linear']
    >>> get_mode("rep").option_names()
    ('r', 'alpha', 'tt_rank', 'dropout', 'form', 'init', 'layout', 'adapter_dtype')
"""

from tensortrain_nn.modes.adp import AdpMode
from tensortrain_nn.modes.base import MODES, Mode, Target, get_mode, register_mode
from tensortrain_nn.modes.linear import LinearMode, LinearOptions
from tensortrain_nn.modes.rep import RepMode

register_mode(RepMode)
register_mode(AdpMode)
register_mode(LinearMode)

__all__ = [
    "MODES",
    "AdpMode",
    "LinearMode",
    "LinearOptions",
    "Mode",
    "RepMode",
    "Target",
    "get_mode",
    "register_mode",
]
