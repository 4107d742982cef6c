"""Exceptions raised by the tasks and the fine-tuning job.

Each subclasses :class:`tensortrain.errors.TTError` and :class:`ValueError`, so a caller can
catch the project's base class or the builtin. The command line turns every one of them into a
one-line message and exit code 2.
"""

from __future__ import annotations

from tensortrain.errors import TTError


class FinetuneError(TTError, ValueError):
    """Base class of the fine-tuning errors (bad config, data, model or adapter)."""


class DataError(FinetuneError):
    """A data file is unusable: missing columns, no rows, a single class, an unseen label."""


class ModelError(FinetuneError):
    """A model spec names no model, or a folder that is not a Hugging Face model."""


class AdapterError(FinetuneError):
    """A saved run or adapter is missing, incomplete, or was trained on another base model."""
