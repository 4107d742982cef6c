"""The ``## Targets`` section of docs/benchmarks.md, from the ratios the benchmark scripts kept.

Each script of ``make bench`` records its headline ratios with ``_doc.record_target`` into
``docs/results/targets.json``; this script writes them as one table (run last by ``make bench``):

    python benchmarks/targets.py
"""

from __future__ import annotations

import json

from _doc import TARGETS, replace_section

HEADING = "## Targets"
#: The row order: by the script that measured a ratio, in the order ``make bench`` runs them.
SCRIPTS = ["core_bench.py", "layer_bench.py", "llm_bench.py", "plan_bench.py", "modes_bench.py"]


def render(store: dict[str, dict]) -> str:
    """The section: one row per recorded ratio, ordered by :data:`SCRIPTS`, then by name."""
    lines = [
        HEADING,
        "",
        "Written by `benchmarks/targets.py` from the ratios each script above recorded in its own",
        "run (`docs/results/targets.json`); a row says which script measured it.",
        "",
        "| target | goal | measured | met | measured by | note |",
        "| --- | ---: | ---: | :---: | --- | --- |",
    ]
    for name, t in sorted(store.items(), key=lambda kv: (SCRIPTS.index(kv[1]["by"]), kv[0])):
        goal, value = t["goal"], t["measured"]
        if goal is None:
            goal_text, met = "", ""
        else:
            goal_text = ("<= " if t["lower"] else ">= ") + f"{goal:g}"
            met = "yes" if (value <= goal if t["lower"] else value >= goal) else "**no**"
        lines.append(f"| {name} | {goal_text} | {value:.2f} | {met} | {t['by']} | {t['note']} |")
    lines += [
        "",
        "Rows without a goal are reported, not targeted. The CUDA table (`make bench-gpu`) is not",
        "part of this run: see `## GPU`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    store = json.loads(TARGETS.read_text()) if TARGETS.exists() else {}
    text = render(store)
    print(text)
    replace_section(HEADING, text)


if __name__ == "__main__":
    main()
