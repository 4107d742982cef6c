"""What every mode's options object shares: a frozen dataclass, checked once, built from fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from tensortrain.errors import TTValueError

OptionsT = TypeVar("OptionsT", bound="Options")


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a TTValueError naming ``name`` and them.

    Example:
        >>> check_choice("form", "full", ("factors", "full"))
        'full'
    """
    if value not in choices:
        raise TTValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def option_value(text: str) -> Any:
    """An option's value as typed on the command line: JSON where it parses, else the string.

    Example:
        >>> option_value("8"), option_value("[2, 4]"), option_value("true"), option_value("gelu")
        (8, [2, 4], True, 'gelu')
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass(frozen=True)
class Options:
    """Base of a mode's options: a frozen dataclass whose ``__post_init__`` checks every field.

    A mode's option list is its fields, written once; the checks run once, when it is built.
    Subclasses set values they normalise (``alpha`` to float) with ``object.__setattr__``.
    """

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in field order.

        Example:
            >>> from tensortrain_nn.reparam import RepOptions
            >>> RepOptions.names()
            ('r', 'alpha', 'tt_rank', 'dropout', 'form', 'init', 'layout', 'adapter_dtype')
        """
        return tuple(f.name for f in fields(cls))

    @classmethod
    def build(
        cls: type[OptionsT], values: Mapping[str, Any] | None = None, /, **kwargs: Any
    ) -> OptionsT:
        """An options object from ``values`` and ``kwargs`` (a ``None`` value means the default).

        Raises:
            TTValueError: A name that is not an option (the message lists the valid ones), or
                a value the options' checks refuse.
        """
        given = {**(values or {}), **kwargs}
        unknown = sorted(set(given) - set(cls.names()))
        if unknown:
            raise TTValueError(
                f"unknown option {unknown[0]!r} for {cls.__name__}; valid: {list(cls.names())}"
            )
        return cls(**{k: v for k, v in given.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The options as a plain dict, in field order."""
        return {name: getattr(self, name) for name in self.names()}
