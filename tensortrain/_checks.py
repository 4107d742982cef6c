"""The one place that checks plain-number arguments: ints and finite real numbers.

Every message names the argument, what was expected and what was given. ``bool`` is never taken
for a number (``True`` is an ``int`` to Python, not to a user).

Example:
    >>> check_int("tt_rank", 5)
    5
    >>> check_number("alpha", 16)
    16.0
    >>> check_number("lr", float("inf"), minimum=0.0)
    Traceback (most recent call last):
    ...
    tensortrain.errors.TTValueError: lr must be a finite number, got inf
"""

from __future__ import annotations

import math

from tensortrain.errors import TTTypeError, TTValueError


def check_int(name: str, value: object, minimum: int | None = 1) -> int:
    """Return ``value`` if it is an int (not a bool) ``>= minimum``; else raise naming ``name``.

    Args:
        name: The argument's name, for the message.
        value: What the caller passed.
        minimum: Smallest accepted value (None: no bound).

    Raises:
        TTTypeError: Not an int (a bool, a float, a string...).
        TTValueError: Below ``minimum``.
    """
    bound = "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TTTypeError(f"{name} must be an int{bound}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise TTValueError(f"{name} must be an int{bound}, got {value}")
    return value


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite real number in the given range.

    Args:
        name: The argument's name, for the message.
        value: What the caller passed (an int or a float; NaN and infinities are refused).
        minimum: Lower bound (None: none); excluded when ``open_min``.
        maximum: Upper bound (None: none); excluded when ``open_max``.

    Raises:
        TTTypeError: Not a real number.
        TTValueError: NaN, infinite, or out of range (the message states the range).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TTTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise TTValueError(f"{name} must be a finite number, got {value!r}")
    low = minimum is not None and (number <= minimum if open_min else number < minimum)
    high = maximum is not None and (number >= maximum if open_max else number > maximum)
    if low or high:
        left = "(" if open_min else "["
        right = ")" if open_max else "]"
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        raise TTValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value!r}")
    return number
