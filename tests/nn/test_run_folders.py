"""Run folders and output folders: nothing overwritten without ``--overwrite``, damaged ``run.json``
named in one line, lossy exports refused, resume refused on changed data, and the messages of the
LoRA commands (tiny BERT)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("peft")

from _helpers import fails_in_one_line, make_tiny_bert, make_tiny_csv, minilm_folder

from tensortrain_nn import cli

#: Each method's run in the fixture, with its extra flags.
RUNS = {
    "rep": [],
    "lora": [],
    "head": [],
    "full-form": ["--method", "rep", "--opt", "form=full"],
}


def _argv(root: Path, out: Path, data: Path | None = None) -> list[str]:
    argv = ["finetune", "--model", str(root / "bert"), "--data", str(data or root / "tiny.csv")]
    argv += ["--text-column", "review", "--label-column", "sentiment", "--test-size", "16"]
    argv += ["--epochs", "1", "--batch-size", "8", "--max-length", "16", "--no-progress"]
    return [*argv, "--output-dir", str(out)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT, the tiny CSV, and a run of each of :data:`RUNS`."""
    if minilm_folder() is None:
        pytest.skip("the packaged MiniLM (its tokenizer) is not installed")
    folder = tmp_path_factory.mktemp("run_folders")
    make_tiny_bert(folder / "bert", dropout=0.0)
    make_tiny_csv(folder / "tiny.csv")
    for name, extra in RUNS.items():
        method = [] if "--method" in extra else ["--method", name]
        assert cli.main([*_argv(folder, folder / name), *method, *extra]) == 0
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- export-lora / compress-lora never write into a non-empty folder unasked ------------------


def test_export_lora_into_the_runs_own_adapter_is_refused(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(root / "rep")
    argv = ["export-lora", str(root / "rep"), str(root / "rep" / "adapter")]
    fails_in_one_line(capsys, argv, "is not empty")
    fails_in_one_line(capsys, argv, "--overwrite")
    assert _snapshot(root / "rep") == before


def test_compress_lora_into_the_runs_own_adapter_is_refused(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(root / "lora")
    argv = ["compress-lora", str(root / "lora"), str(root / "lora" / "adapter")]
    fails_in_one_line(capsys, argv, "is not empty")
    assert _snapshot(root / "lora") == before


def test_overwrite_writes_into_a_non_empty_out(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command, run in (("export-lora", "rep"), ("compress-lora", "lora")):
        out = tmp_path / command
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        fails_in_one_line(capsys, [command, str(root / run), str(out)], "notes.txt")
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
        assert cli.main([command, str(root / run), str(out), "--overwrite"]) == 0
        assert (out / "adapter_config.json").is_file() and (out / "notes.txt").read_text() == "mine"


def test_python_exports_refuse_a_non_empty_folder(root: Path, tmp_path: Path) -> None:
    import tensortrain_nn
    from tensortrain.errors import TTValueError
    from tensortrain_nn.finetune import load_base, load_run

    (tmp_path / "keep.txt").write_text("mine")
    model, _, _ = load_run(root / "rep")
    with pytest.raises(TTValueError, match=r"is not empty .*keep\.txt.*overwrite=True"):
        tensortrain_nn.export_lora(model, tmp_path)
    _, base, _, _ = load_base(root / "lora")
    with pytest.raises(TTValueError, match="is not empty"):
        tensortrain_nn.compress_lora(root / "lora" / "adapter", tmp_path, base)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    tensortrain_nn.export_lora(model, tmp_path, overwrite=True)
    assert (tmp_path / "adapter_config.json").is_file()


# --- finetune --output-dir of a finished run ---------------------------------------------------


def test_finetune_refuses_a_finished_run_unless_overwrite(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(root / "rep", out)
    (out / "checkpoints" / "step-00000001").mkdir(parents=True)  # a stray file of the old run
    before = _snapshot(out)
    fails_in_one_line(capsys, [*_argv(root, out), "--method", "lora"], "already holds a run")
    assert _snapshot(out) == before
    assert cli.main([*_argv(root, out), "--method", "lora", "--overwrite"]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["method"] == "lora"
    assert not (out / "checkpoints").exists()


def test_overwrite_never_deletes_files_a_run_does_not_write(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(root / "rep", out)
    (out / "my-notes.md").write_text("mine")
    before = _snapshot(out)
    fails_in_one_line(capsys, [*_argv(root, out), "--overwrite"], "my-notes.md")
    assert _snapshot(out) == before


# --- a damaged run.json: one line naming the file and the field --------------------------------

DAMAGES: dict[str, tuple[Any, str]] = {
    "empty object": ({}, "field 'format' is missing"),
    "a list": ([], "must hold a JSON object"),
    "no model": ("drop:model", "field 'model' is missing"),
    "no labels": ("drop:labels", "field 'labels' is missing"),
    "labels a number": ("set:labels=3", "field 'labels' must be a list of strings"),
    "config a string": ('set:config="x"', "field 'config' must be an object"),
    "model name a number": ('set:model={"name": 1, "folder": "x"}', "field 'model.name'"),
    "no method": ("set:config={}", "field 'config.method'"),
}
COMMANDS = {
    "generate": lambda run: ["generate", "--adapter", run, "hi"],
    "evaluate": lambda run: ["evaluate", "--adapter", run],
    "predict": lambda run: ["predict", "--adapter", run],
    "export-lora": lambda run: ["export-lora", run, run + "-out"],
    "compress-lora": lambda run: ["compress-lora", run, run + "-out"],
}


def _damage(info: dict[str, Any], how: Any) -> Any:
    if not isinstance(how, str):
        return how
    verb, _, rest = how.partition(":")
    key, _, value = rest.partition("=")
    damaged = {k: v for k, v in info.items() if k != key}
    if verb == "set":
        damaged[key] = json.loads(value)
    return damaged


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_damaged_run_json_is_named_in_one_line(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, command: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(root / "lora", run)
    info = json.loads((run / "run.json").read_text())
    how, message = DAMAGES[damage]
    (run / "run.json").write_text(json.dumps(_damage(info, how)))
    err = fails_in_one_line(capsys, COMMANDS[command](str(run)), message)
    assert str(run / "run.json") in err


# --- export-lora of a form="full" run ----------------------------------------------------------


def test_a_lossy_export_is_refused_and_its_error_printed_when_allowed(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = str(root / "full-form")
    fails_in_one_line(capsys, ["export-lora", run, str(tmp_path / "a")], "--allow-lossy")
    assert not (tmp_path / "a").exists()
    assert cli.main(["export-lora", run, str(tmp_path / "b"), "--allow-lossy"]) == 0
    printed = capsys.readouterr().out
    error = json.loads((tmp_path / "b" / "tt_export.json").read_text())["max_relative_error"]
    assert error > 0.01 and f"max relative update error {error:.3g}" in printed
    assert cli.main(["export-lora", run, str(tmp_path / "c"), "--rank", "32"]) == 0
    assert "max relative update error" in capsys.readouterr().out


def test_an_exact_export_prints_its_error(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["export-lora", str(root / "rep"), str(tmp_path / "x")]) == 0
    assert "max relative update error 0 " in capsys.readouterr().out


# --- messages of the LoRA commands --------------------------------------------------------------


@pytest.mark.parametrize(
    ("run", "message"),
    [
        ("lora", "export-lora needs a rep run; {} is a lora run (peft LoRA"),
        ("head", "export-lora needs a rep run; {} is a head run (head only"),
    ],
)
def test_export_lora_names_the_runs_method(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], run: str, message: str
) -> None:
    argv = ["export-lora", str(root / run), str(tmp_path / "x")]
    fails_in_one_line(capsys, argv, message.format(root / run))


def test_export_of_a_merged_model_says_there_is_no_adapter(root: Path, tmp_path: Path) -> None:
    import tensortrain_nn
    from tensortrain.errors import TTValueError
    from tensortrain_nn.finetune import load_run

    model, _, _ = load_run(root / "rep")
    merged = tensortrain_nn.merge_and_unload(model)
    with pytest.raises(TTValueError, match=r"no LoRETTA adapter .*merged and unloaded"):
        tensortrain_nn.export_lora(merged, tmp_path / "x")


def test_compress_lora_messages(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x")
    fails_in_one_line(
        capsys, ["compress-lora", str(root / "rep"), out], "needs a lora run; " + str(root / "rep")
    )
    bare = tmp_path / "bare"
    shutil.copytree(root / "lora" / "adapter", bare)
    fails_in_one_line(capsys, ["compress-lora", str(bare), out], "pass --model")
    argv = ["compress-lora", str(bare), out, "--model", str(root / "bert"), "--num-labels", "-1"]
    fails_in_one_line(capsys, argv, "--num-labels: expected a positive integer, got '-1'")
    assert not (tmp_path / "x").exists()


def test_compress_lora_keeps_a_float16_loras_dtype(root: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(root / "lora", run)
    weights = run / "adapter" / "adapter_model.safetensors"
    save_file({k: v.half() for k, v in load_file(str(weights)).items()}, str(weights))
    assert cli.main(["compress-lora", str(run), str(tmp_path / "out"), "--eps", "0.1"]) == 0
    written = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert {t.dtype for t in written.values()} == {torch.float16}


# --- resume on changed data ---------------------------------------------------------------------


def test_resume_refuses_a_changed_data_file(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data.csv"
    shutil.copy(root / "tiny.csv", data)
    argv = [*_argv(root, tmp_path / "run", data), "--method", "head", "--checkpoint-every", "2"]
    assert cli.main(argv) == 0
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["data_fingerprint"]["data"]["size"] == data.stat().st_size
    with data.open("a") as handle:
        handle.write("good great film plot,pos\n")
    fails_in_one_line(capsys, [*argv, "--resume"], "--data " + str(data) + " changed since")


def test_compare_checks_every_runs_folder_before_the_first_run(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "cmp"
    shutil.copytree(root / "lora", base / "lora-seed0")
    argv = [*_argv(root, base), "--compare", "head,lora"]
    fails_in_one_line(capsys, argv, "already holds a run")
    assert sorted(p.name for p in base.iterdir()) == ["lora-seed0"]  # head-seed0 never started
