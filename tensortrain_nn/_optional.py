"""Optional dependencies: which extra installs each one, and the error when one is missing.

The core (``tensortrain``, the layers, ``patch``) needs only torch, opt_einsum and numpy. Reading
and writing adapter files, loading models and the fine-tuning job need the ``hf`` extra
(``pip install "tensortrain[hf]"``); a missing package is a :class:`MissingDependencyError` that
names the extra, never a bare ``ModuleNotFoundError``.

Example:
    >>> require("json", "reading configs").__name__
    'json'
    >>> require("no_such_package_xyz", "this example")
    Traceback (most recent call last):
    ...
    tensortrain_nn._optional.MissingDependencyError: this example needs no_such_package_xyz, ...
"""

from __future__ import annotations

import importlib
from types import ModuleType

from tensortrain.errors import TTError

#: The extra of ``pyproject.toml`` that installs each optional top-level package.
EXTRAS: dict[str, str] = {
    name: "hf"
    for name in (
        "transformers",
        "peft",
        "safetensors",
        "accelerate",
        "gguf",
        "tqdm",
        "matplotlib",
        "tokenizers",
        "huggingface_hub",
    )
}


class MissingDependencyError(TTError, ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def install_hint(package: str) -> str:
    """The ``pip install`` command that installs ``package`` (its extra, else the package)."""
    extra = EXTRAS.get(package)
    return f'pip install "tensortrain[{extra}]"' if extra else f"pip install {package}"


def missing(exc: ModuleNotFoundError, what: str) -> MissingDependencyError:
    """The :class:`MissingDependencyError` for ``exc`` raised while doing ``what``."""
    package = (exc.name or str(exc)).split(".")[0]
    return MissingDependencyError(
        f"{what} needs {package}, which is not installed: {install_hint(package)}"
    )


def require(module: str, what: str) -> ModuleType:
    """Import ``module``; a missing package raises :class:`MissingDependencyError`.

    Args:
        module: Dotted module name, e.g. ``"safetensors.torch"``.
        what: What needs it, for the message (``"save_adapter"``).

    Raises:
        MissingDependencyError: The package (or one it imports) is not installed.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise missing(exc, what) from exc
