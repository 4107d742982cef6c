"""Writing one ``## `` section of docs/benchmarks.md, shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(heading: str, text: str, path: Path = DOC) -> None:
    """Replace the section that starts with ``heading`` (append it if absent; create the file).

    ``text`` starts with the heading itself; the section ends where the next ``## `` heading starts.
    """
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if heading in old:
        head, rest = old.split(heading, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
    else:
        head, tail = old.rstrip("\n") + "\n\n", ""
    path.write_text(head + text.rstrip("\n") + "\n" + ("\n" + tail if tail else ""))
