"""Writing one ``## `` section of docs/benchmarks.md, shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def replace_section(heading: str, text: str, path: Path = DOC) -> None:
    """Replace the section that starts with ``heading`` (append it if absent; create the file).

    ``text`` starts with the heading itself; the section ends where the next ``## `` heading starts.
    Only a line that is the heading counts: prose may name a section (`` `## Targets` ``).
    """
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    line = f"\n{heading}\n"  # the heading as a line of its own, not a mention in prose
    if line in old:
        head, rest = old.split(line, 1)
        head += "\n"
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
    else:
        head, tail = old.rstrip("\n") + "\n\n", ""
    path.write_text(head + text.rstrip("\n") + "\n" + ("\n" + tail if tail else ""))


TARGETS = DOC.parent / "results" / "targets.json"


def record_target(
    name: str, measured: float, goal: float | None, *, lower: bool = True, note: str = ""
) -> None:
    """Keep one measured ratio for the ``## Targets`` summary (``benchmarks/targets.py``).

    ``goal`` is the target (None: reported, no target); ``lower`` says a value at or below it meets
    it (else at or above). The record is keyed by ``name`` and names the script that wrote it.
    """
    import inspect
    import json

    store = json.loads(TARGETS.read_text()) if TARGETS.exists() else {}
    script = Path(inspect.stack()[1].filename).name
    store[name] = {"measured": measured, "goal": goal, "lower": lower, "note": note, "by": script}
    TARGETS.parent.mkdir(parents=True, exist_ok=True)
    TARGETS.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
