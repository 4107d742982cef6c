"""Data sources read through ``datasets``: each format gives the same rows; bad ones fail in a line."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tensortrain_nn.tasks import DataError, TaskOptions, decide_kind, read_data
from tensortrain_nn.tasks.data import load_lm_examples, load_table
from tensortrain_nn.tasks.sources import as_text, read_source

datasets = pytest.importorskip("datasets")

ROWS = [
    {"text": "a gorgeous film", "label": "fresh"},
    {"text": "dull, and long", "label": "rotten"},
    {"text": 'a "quoted" gem', "label": "fresh"},
]


def _write(folder: Path, kind: str) -> Any:
    """The three rows of :data:`ROWS` as a source of ``kind``."""
    data = datasets.Dataset.from_list(ROWS)
    if kind == "csv":
        data.to_csv(folder / "d.csv", index=False)
        return folder / "d.csv"
    if kind == "csv.gz":
        data.to_csv(folder / "plain.csv", index=False)
        (folder / "d.csv.gz").write_bytes(gzip.compress((folder / "plain.csv").read_bytes()))
        return folder / "d.csv.gz"
    if kind == "jsonl.bz2":
        lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
        (folder / "d.jsonl.bz2").write_bytes(bz2.compress(lines))
        return folder / "d.jsonl.bz2"
    if kind == "jsonl":
        data.to_json(folder / "d.jsonl")
        return folder / "d.jsonl"
    if kind == "json":
        (folder / "d.json").write_text(json.dumps(ROWS))
        return folder / "d.json"
    if kind == "parquet":
        data.to_parquet(folder / "d.parquet")
        return folder / "d.parquet"
    if kind == "folder":
        data.save_to_disk(str(folder / "saved"))
        return folder / "saved"
    if kind == "dataset":
        return data
    return [dict(r) for r in ROWS]


@pytest.mark.parametrize(
    "kind", ["csv", "csv.gz", "jsonl", "jsonl.bz2", "json", "parquet", "folder", "dataset", "list"]
)
def test_every_source_gives_the_same_rows(tmp_path: Path, kind: str) -> None:
    rows, columns = read_source(_write(tmp_path, kind))
    assert columns == ["text", "label"]
    assert rows == ROWS
    assert load_table(_write(tmp_path, kind)) == (
        [r["text"] for r in ROWS],
        [r["label"] for r in ROWS],
    )


def test_dataset_dict_folder_and_split(tmp_path: Path) -> None:
    parts = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS), test=datasets.Dataset.from_list(ROWS[:1])
    )
    parts.save_to_disk(str(tmp_path / "dd"))
    assert read_source(tmp_path / "dd", split="test")[0] == ROWS[:1]
    assert read_source(parts, split="train")[0] == ROWS
    with pytest.raises(DataError, match="is a DatasetDict: give --split; its splits: train, test"):
        read_source(tmp_path / "dd")
    with pytest.raises(DataError, match="has no split 'dev'; its splits: train, test"):
        read_source(tmp_path / "dd", split="dev")
    with pytest.raises(DataError, match="--split 'train' names a part of a DatasetDict"):
        read_source(_write(tmp_path, "csv"), split="train")


def test_split_reaches_the_task(tmp_path: Path) -> None:
    parts = datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS * 4))
    parts.save_to_disk(str(tmp_path / "dd"))
    options = TaskOptions(task="classify", data=str(tmp_path / "dd"), split="train", test_size=2)
    split = read_data(options, decide_kind(options, decoder_only=False, model="m"))
    assert len(split.train_texts) == 10 and split.labels == ["fresh", "rotten"]


def test_csv_cells_stay_text(tmp_path: Path) -> None:
    path = tmp_path / "n.csv"
    path.write_text("text,label\n007,01\n,2\n")
    assert read_source(path)[0] == [{"text": "007", "label": "01"}, {"text": "", "label": "2"}]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"text,label\n", "has no rows"),
        ("zero.jsonl", b"", "has no rows"),
        ("bad.jsonl", b'{"text": "a"}\n{oops\n', "cannot be read: not valid JSON"),
        ("bad.parquet", b"PAR1 not really", "cannot be read: not a valid parquet file"),
        ("latin.csv", "text,label\ncaf\xe9,a\n".encode("latin-1"), "is not UTF-8 text"),
        ("broken.csv.gz", b"not gzip at all", "cannot be read"),
    ],
)
def test_damaged_and_empty_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_source(path)
    assert "\n" not in str(info.value) and name in str(info.value)


def test_bad_sources(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="is a folder but not one written by datasets"):
        read_source(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        read_source(tmp_path / "none.csv")
    with pytest.raises(DataError, match="item 2 of the list is a str, not a dict"):
        read_source([{"text": "a"}, "b"])
    with pytest.raises(DataError, match="the list of rows is empty"):
        read_source([])
    with pytest.raises(DataError, match="has no rows"):
        read_source(datasets.Dataset.from_list([]))


def test_list_column_as_text_is_refused(tmp_path: Path) -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rows = [{"text": chat, "label": "a"}, {"text": "fine", "label": "b"}]
    with pytest.raises(DataError, match=r"row 1 holds a list, not text.*--messages-column text"):
        load_table(rows)
    with pytest.raises(
        DataError, match="--prompt-column 'q': a list of 1 dicts row 1 holds a dict"
    ):
        load_lm_examples([{"q": {"a": 1}, "c": "x"}], prompt_column="q", completion_column="c")
    assert as_text(2.5, flag="--text-column", column="t", where="d", number=1) == "2.5"


def test_reading_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = _write(tmp_path, "csv")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    read_source(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
