"""Size limits that keep the packages readable in one sitting (docs/architecture.md).

A module holds at most :data:`MAX_FILE_LINES` lines and a function (decorators aside, docstring
included) at most :data:`MAX_FUNCTION_LINES`.
"""

import ast
from pathlib import Path

import pytest

import tensortrain

ROOT = Path(tensortrain.__file__).parent.parent
PACKAGES = ("tensortrain", "tensortrain_nn")
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(p for name in PACKAGES for p in (ROOT / name).rglob("*.py"))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """``(name, lines)`` of every function or method in ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append((node.name, length))
    return found


def test_long_functions_finds_what_is_long() -> None:
    top = "\n".join(f"    x{i} = {i}" for i in range(5))
    nested = top.replace("    ", "        ")
    source = f"def short():\n{top}\n\nclass A:\n    def method(self):\n{nested}\n{nested}\n"
    assert long_functions(source, 6) == [("method", 11)]
    assert long_functions(source, 11) == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_size(path: Path) -> None:
    assert _lines(path) <= MAX_FILE_LINES, f"{path.name} has {_lines(path)} lines"
    assert long_functions(path.read_text(), MAX_FUNCTION_LINES) == []
