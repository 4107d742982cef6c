"""Exceptions raised by tensortrain.

Every exception subclasses both :class:`TTError` and the builtin it refines, so callers can catch
either ``TTError`` or the usual ``ValueError`` / ``TypeError``.
"""

from __future__ import annotations


class TTError(Exception):
    """Base class of every error raised by tensortrain and tensortrain_nn."""


class TTShapeError(TTError, ValueError):
    """A shape, mode or rank does not fit (core shapes, rank chaining, mode products)."""


class TTValueError(TTError, ValueError):
    """An argument has an invalid value (negative eps, rank < 1, unknown name)."""


class TTTypeError(TTError, TypeError):
    """An argument has the wrong type, dtype or device."""
