"""Core TT operations timed against tensorly, tensorly-torch, tntorch, torchTT and quimb.

Run in the benchmark environment (see ``benchmarks/README.md``)::

    .venv-bench/bin/python benchmarks/core_bench.py            # writes docs/benchmarks.md
    .venv-bench/bin/python benchmarks/core_bench.py --quick    # fewer repeats, prints only

Every library gets the same inputs (made once, from seed 0), the same torch thread count, a warm-up,
and repeats interleaved round-robin across libraries (so a burst of load on a shared machine hits
all of them alike); the table shows medians. Each result's relative error is measured against a
float64 reference. A library that lacks an operation, or fails to import, is listed as such.

The table replaces only the ``## Core operations`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import sys

_THREADS = "1"  # the OpenMP pool's start size; each table sets torch's thread count itself
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from _doc import record_target, replace_section  # noqa: E402

from tensortrain import TTMatrix, plan, round_cores, tt_linear, tt_svd  # noqa: E402
from tensortrain import ops as tt_ops  # noqa: E402

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Core operations"
DENSE = "dense matmul"
GEMM_FLOPS = 2 * 256 * 4096 * 4096  # one dense forward of the TT-matrix cases


@dataclass
class Entry:
    """One library's callable for a case; ``error`` maps its result to a relative error."""

    run: Callable[[], Any]
    error: Callable[[Any], float]
    times: list[float] = field(default_factory=list)
    err: float = float("nan")
    note: str = ""


@dataclass
class Case:
    name: str
    entries: dict[str, Entry]
    flops: float | None = None  # nominal FLOPs, for GFLOP/s (TT-matrix cases)
    skipped: dict[str, str] = field(default_factory=dict)
    target: str = ""  # the name its issue-16 ratios are recorded under (record_targets)

    def medians_ms(self) -> dict[str, float]:
        return {n: statistics.median(e.times) * 1e3 for n, e in self.entries.items()}

    def best_peer_ms(self) -> float:
        peers = [v for n, v in self.medians_ms().items() if n not in ("tensortrain", DENSE)]
        return min(peers) if peers else float("nan")


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    return float(torch.linalg.norm(a - ref) / torch.linalg.norm(ref))


def _tt_rel(cores: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """``||a - ref|| / ||ref||`` for TT tensors, without densifying (via orthogonalisation)."""
    cores = [c.detach().double() for c in cores]
    diff = tt_ops.add(cores, tt_ops.scale(ref, -1.0))
    return float(tt_ops.norm(diff) / tt_ops.norm(ref))


def _random_tt(shape: list[int], rank: int, gen: torch.Generator) -> list[torch.Tensor]:
    d = len(shape)
    ranks = [1] + [rank] * (d - 1) + [1]
    return [
        torch.randn(ranks[k], shape[k], ranks[k + 1], generator=gen, dtype=torch.float64)
        / (shape[k] * ranks[k]) ** 0.5
        for k in range(d)
    ]


def _low_rank_plus_noise(shape: list[int], rank: int, noise: float, gen: torch.Generator):
    x = tt_ops.full(_random_tt(shape, rank, gen))
    e = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return x + noise * e * (torch.linalg.norm(x) / torch.linalg.norm(e))


# ----------------------------------------------------------------------------------- peers


def _peers() -> dict[str, Any]:
    mods: dict[str, Any] = {}
    for name, imp in [
        ("tensorly", "tensorly"),
        ("tensorly-torch", "tltorch"),
        ("tntorch", "tntorch"),
        ("torchTT", "torchtt"),
        ("quimb", "quimb.tensor"),
    ]:
        try:
            mods[name] = __import__(imp, fromlist=["_"])
        except Exception as exc:  # report any import failure in the table
            mods[name] = exc
    if not isinstance(mods["tensorly"], Exception):
        mods["tensorly"].set_backend("pytorch")
    return mods


def _version(dist: str, mod: Any) -> str:
    if isinstance(mod, Exception):
        return f"unavailable ({type(mod).__name__})"
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _quimb_cores(mps: Any) -> list[torch.Tensor]:
    """quimb MPS -> our ``(r_{k-1}, n_k, r_k)`` cores, whatever its index order."""
    d = mps.L
    out = []
    for k in range(d):
        inds = ([mps.bond(k - 1, k)] if k > 0 else []) + [mps.site_ind(k)]
        inds += [mps.bond(k, k + 1)] if k < d - 1 else []
        data = torch.as_tensor(mps[k].transpose(*inds).data)
        out.append(data.reshape(data.shape[0] if k > 0 else 1, mps.phys_dim(k), -1))
    return out


def _quimb_mps(cores: list[torch.Tensor], qtn: Any) -> Any:
    arrays = [cores[0][0].T] + [c.permute(0, 2, 1) for c in cores[1:-1]] + [cores[-1][..., 0]]
    return qtn.MatrixProductState(arrays, shape="lrp")


# ----------------------------------------------------------------------------------- cases


def case_svd_rank(mods: dict[str, Any]) -> Case:
    gen = torch.Generator().manual_seed(0)
    x = _low_rank_plus_noise([32] * 4, 16, 1e-3, gen)

    def err_cores(cores: list[torch.Tensor]) -> float:
        return _rel(tt_ops.full([c.double() for c in cores]), x)

    e: dict[str, Entry] = {
        "tensortrain": Entry(lambda: tt_svd(x, max_rank=16).cores, err_cores),
    }
    skipped = {}
    if not isinstance(tl := mods["tensorly"], Exception):
        from tensorly.decomposition import tensor_train

        e["tensorly"] = Entry(lambda: list(tensor_train(x, rank=[1, 16, 16, 16, 1])), err_cores)
    if not isinstance(tn := mods["tntorch"], Exception):
        e["tntorch"] = Entry(lambda: tn.Tensor(x, ranks_tt=16), lambda t: _rel(t.torch(), x))
    if not isinstance(ttt := mods["torchTT"], Exception):
        e["torchTT"] = Entry(lambda: ttt.TT(x, eps=1e-14, rmax=16), lambda t: _rel(t.full(), x))
    if not isinstance(qtn := mods["quimb"], Exception):
        e["quimb"] = Entry(
            lambda: qtn.MatrixProductState.from_dense(x, dims=[32] * 4, max_bond=16, cutoff=0.0),
            lambda m: err_cores(_quimb_cores(m)),
        )
    del tl
    return Case("TT-SVD 32^4 float64, max rank 16", e, skipped=skipped)


def case_svd_eps(mods: dict[str, Any]) -> Case:
    gen = torch.Generator().manual_seed(1)
    x = _low_rank_plus_noise([4] * 10, 8, 0.02, gen)
    eps = 0.05

    def err_cores(cores: list[torch.Tensor]) -> float:
        return _rel(tt_ops.full([c.double() for c in cores]), x)

    e: dict[str, Entry] = {"tensortrain": Entry(lambda: tt_svd(x, eps=eps).cores, err_cores)}
    skipped = {"tensorly": "no eps-truncated TT-SVD", "tensorly-torch": "no TT-SVD"}
    if not isinstance(tn := mods["tntorch"], Exception):
        e["tntorch"] = Entry(lambda: tn.Tensor(x, eps=eps), lambda t: _rel(t.torch(), x))
    if not isinstance(ttt := mods["torchTT"], Exception):
        e["torchTT"] = Entry(lambda: ttt.TT(x, eps=eps), lambda t: _rel(t.full(), x))
    if not isinstance(qtn := mods["quimb"], Exception):
        # rsum2: the discarded squared tail relative to the whole, per bond, as in Oseledets
        e["quimb"] = Entry(
            lambda: qtn.MatrixProductState.from_dense(
                x, dims=[4] * 10, cutoff=eps**2 / 9, cutoff_mode="rsum2"
            ),
            lambda m: err_cores(_quimb_cores(m)),
        )
    return Case("TT-SVD 4^10 float64, eps 0.05", e, skipped=skipped)


def _round(mods: dict[str, Any], dtype: torch.dtype) -> Case:
    """Rounding a rank-64 TT dominated by a rank-16 part to rank 16, every library in ``dtype``."""
    gen = torch.Generator().manual_seed(2)
    main = _random_tt([16] * 8, 16, gen)
    small = tt_ops.scale(_random_tt([16] * 8, 48, gen), 1e-2)
    ref = tt_ops.add(main, small)  # rank 64, float64: errors are measured against it
    a = [c.to(dtype) for c in ref]

    e: dict[str, Entry] = {
        "tensortrain": Entry(lambda: round_cores(a, max_rank=16), lambda c: _tt_rel(c, ref)),
    }
    skipped = {"tensorly": "no TT rounding", "tensorly-torch": "no TT rounding"}
    if not isinstance(tn := mods["tntorch"], Exception):
        t0 = tn.Tensor([c.clone() for c in a])

        def tn_round() -> Any:
            t = t0.clone()
            t.round_tt(eps=1e-14, rmax=16)
            return t

        e["tntorch"] = Entry(tn_round, lambda t: _tt_rel(list(t.cores), ref))
    if not isinstance(ttt := mods["torchTT"], Exception):
        t1 = ttt.TT([c.clone() for c in a])
        e["torchTT"] = Entry(lambda: t1.round(eps=1e-14, rmax=16), lambda t: _tt_rel(t.cores, ref))
    if not isinstance(qtn := mods["quimb"], Exception):
        m0 = _quimb_mps(a, qtn)

        def q_round() -> Any:
            m = m0.copy()
            m.compress(max_bond=16, cutoff=0.0)
            return m

        e["quimb"] = Entry(q_round, lambda m: _tt_rel(_quimb_cores(m), ref))
    name = str(dtype).removeprefix("torch.")
    case = Case(f"rounding a 16^8 TT {name}, rank 64 -> 16", e, skipped=skipped)
    case.target = f"rounding {name}"
    return case


def case_round(mods: dict[str, Any]) -> Case:
    return _round(mods, torch.float64)


def case_round_f32(mods: dict[str, Any]) -> Case:
    return _round(mods, torch.float32)


def _ttm_inputs() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    modes, r, batch = (8, 8, 8, 8), 8, 256
    ranks = [1, r, r, r, 1]
    cores64 = [
        torch.randn(ranks[k], modes[k], modes[k], ranks[k + 1], generator=gen, dtype=torch.float64)
        / (modes[k] * ranks[k]) ** 0.5
        for k in range(4)
    ]
    w64 = TTMatrix(cores64).full()
    x64 = torch.randn(batch, 4096, generator=gen, dtype=torch.float64)
    return cores64, w64, x64, torch.randn(batch, 4096, generator=gen, dtype=torch.float64)


def _ttm_peers(mods: dict[str, Any], cores: list[torch.Tensor]) -> dict[str, Callable]:
    """Each peer's ``x -> x @ W.T`` with ``W`` the TT-matrix of ``cores`` (float32)."""
    fns: dict[str, Callable] = {"tensortrain": lambda x: tt_linear(x, cores)}
    if not isinstance(tlt := mods["tensorly-torch"], Exception):
        from tltorch.functional import factorized_linear

        bt = tlt.BlockTT(cores, tensorized_shape=((8,) * 4, (8,) * 4), rank=[1, 8, 8, 8, 1])
        fns["tensorly-torch"] = lambda x: factorized_linear(x, bt)
    if not isinstance(ttt := mods["torchTT"], Exception):
        tw = ttt.TT(cores)
        fns["torchTT"] = lambda x: (tw @ x.reshape(-1, 8, 8, 8, 8)).reshape(-1, 4096)
    if not isinstance(tn := mods["tntorch"], Exception):
        from tntorch.matrix import tt_multiply

        tm = tn.TTMatrix([c.transpose(1, 2) for c in cores], [8, 8, 8], [8] * 4, [8] * 4)
        fns["tntorch"] = lambda x: tt_multiply(tm, x)
    if not isinstance(qtn := mods["quimb"], Exception):
        ts = [
            qtn.Tensor(c.squeeze(0) if k == 0 else c.squeeze(-1) if k == 3 else c, inds)
            for k, (c, inds) in enumerate(
                zip(
                    cores,
                    [
                        ("m0", "n0", "r1"),
                        ("r1", "m1", "n1", "r2"),
                        ("r2", "m2", "n2", "r3"),
                        ("r3", "m3", "n3"),
                    ],
                    strict=True,
                )
            )
        ]
        out = ("b", "m0", "m1", "m2", "m3")

        def q_apply(x: torch.Tensor) -> torch.Tensor:
            xt = qtn.Tensor(x.reshape(-1, 8, 8, 8, 8), ("b", "n0", "n1", "n2", "n3"))
            net = qtn.TensorNetwork([xt, *ts])
            return net.contract(output_inds=out, optimize="auto-hq").data.reshape(-1, 4096)

        fns["quimb"] = q_apply
    return fns


def _ttm_flops(batch: int) -> int:
    p = plan(batch, (8,) * 4, (8,) * 4, (1, 8, 8, 8, 1))
    return min(p.tt_flops, p.dense_flops)


def case_ttm_forward(mods: dict[str, Any]) -> Case:
    cores64, w64, x64, _ = _ttm_inputs()
    cores = [c.float() for c in cores64]
    x, w = x64.float(), w64.float()
    ref = x64 @ w64.T
    e = {
        name: Entry(lambda f=f: f(x), lambda y: _rel(y, ref))
        for name, f in _ttm_peers(mods, cores).items()
    }
    e["dense matmul"] = Entry(lambda: x @ w.T, lambda y: _rel(y, ref))
    return Case(
        "TT-matrix 4096x4096 (8^4 x 8^4, rank 8) @ float32 batch 256, forward",
        e,
        flops=_ttm_flops(256),
        target="TT-matrix forward",
    )


def case_ttm_backward(mods: dict[str, Any]) -> Case:
    cores64, w64, x64, g64 = _ttm_inputs()
    leaves64 = [c.clone().requires_grad_() for c in cores64]
    xr = x64.clone().requires_grad_()
    y64 = torch.einsum(  # an independent float64 reference through the dense matrix
        "bn,mn->bm",
        xr,
        torch.einsum("aeib,bfjc,cgkd,dhle->efghijkl", *leaves64).reshape(4096, 4096),
    )
    y64.backward(g64)
    refs = [xr.grad, *(c.grad for c in leaves64)]
    g = g64.float()

    def make(f: Callable) -> Entry:
        cores = [c.float().requires_grad_() for c in cores64]
        x = x64.float().requires_grad_()
        fn = f(cores)

        def run() -> list[torch.Tensor]:
            x.grad = None
            for c in cores:
                c.grad = None
            fn(x).backward(g)
            return [x.grad, *(c.grad for c in cores)]

        return Entry(run, lambda grads: max(_rel(a, b) for a, b in zip(grads, refs, strict=True)))

    e = {}
    for name in _ttm_peers(mods, [c.float() for c in cores64]):
        e[name] = make(lambda cs, name=name: _ttm_peers(mods, cs)[name])
    w = w64.float().requires_grad_()
    x = x64.float().requires_grad_()

    def dense_run() -> list[torch.Tensor]:
        x.grad = w.grad = None
        (x @ w.T).backward(g)
        return [x.grad]

    e["dense matmul"] = Entry(dense_run, lambda grads: _rel(grads[0], refs[0]))
    return Case(
        "the same, forward + backward (error: worst of dx, dcores)",
        e,
        flops=3 * _ttm_flops(256),
        target="TT-matrix forward + backward",
    )


def case_ttm_dense(mods: dict[str, Any]) -> Case:
    cores64, w64, _, _ = _ttm_inputs()
    cores = [c.float() for c in cores64]
    ttm = TTMatrix(cores)
    e = {"tensortrain": Entry(ttm.full, lambda w: _rel(w, w64))}
    if not isinstance(tlt := mods["tensorly-torch"], Exception):
        bt = tlt.BlockTT(cores, tensorized_shape=((8,) * 4, (8,) * 4), rank=[1, 8, 8, 8, 1])
        e["tensorly-torch"] = Entry(bt.to_matrix, lambda w: _rel(w, w64))
    if not isinstance(tl := mods["tensorly"], Exception):
        from tensorly.tt_matrix import tt_matrix_to_matrix

        e["tensorly"] = Entry(lambda: tt_matrix_to_matrix(cores), lambda w: _rel(w, w64))
        del tl
    if not isinstance(ttt := mods["torchTT"], Exception):
        tw = ttt.TT(cores)
        e["torchTT"] = Entry(lambda: tw.full().reshape(4096, 4096), lambda w: _rel(w, w64))
    if not isinstance(tn := mods["tntorch"], Exception):
        tm = tn.TTMatrix([c.transpose(1, 2) for c in cores], [8, 8, 8], [8] * 4, [8] * 4)
        e["tntorch"] = Entry(lambda: tm.torch().T, lambda w: _rel(w, w64))
    flops = sum(2 * 64**k * 8 * 64 * 8 for k in range(1, 4))
    return Case("TT-matrix 4096x4096 (rank 8, float32) to dense", e, flops=flops)


# ----------------------------------------------------------------------------------- driver


def run_case(case: Case, warmup: int, repeats: int) -> None:
    for name, entry in list(case.entries.items()):
        try:
            for _ in range(warmup):
                result = entry.run()
            entry.err = entry.error(result)
        except Exception as exc:  # a failing peer is reported, not fatal
            case.skipped[name] = f"failed: {type(exc).__name__}: {str(exc)[:80]}"
            del case.entries[name]
    for _ in range(repeats):
        for entry in case.entries.values():
            t0 = time.perf_counter()
            entry.run()
            entry.times.append(time.perf_counter() - t0)


def table(cases: list[Case], mods: dict[str, Any]) -> str:
    lines = [
        "| case | library | median ms | ratio to fastest peer | relative error | GFLOP/s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for case in cases:
        med, best = case.medians_ms(), case.best_peer_ms()
        first = True
        for name in sorted(med, key=med.__getitem__):
            gf = f"{case.flops / med[name] / 1e6:.1f}" if case.flops else ""
            if name == DENSE and case.flops:
                passes = 3 if "backward" in case.name else 1  # y; then dx and dW
                gf = f"{passes * GEMM_FLOPS / med[name] / 1e6:.1f}"
            ratio = med[name] / best
            label = f"**{name}**" if name == "tensortrain" else name
            lines.append(
                f"| {case.name if first else ''} | {label}"
                f" | {med[name]:.2f} | {ratio:.2f}x | {case.entries[name].err:.1e} | {gf} |"
            )
            first = False
        for name, why in case.skipped.items():
            lines.append(f"| | {name} | n/a | | {why} | |")
    return "\n".join(lines)


def record_targets(cases: list[Case], threads: int) -> None:
    """Issue 16's ratios of this run for the ``## Targets`` summary (benchmarks/targets.py)."""
    by = {c.target: c for c in cases if c.target and "tensortrain" in c.entries}
    at = f"{threads} thread{'s' if threads > 1 else ''}"
    items = {"rounding float64": 1, "rounding float32": 1, "TT-matrix forward + backward": 2}
    for label, item in items.items():
        if label in by:
            case = by[label]
            ratio = case.medians_ms()["tensortrain"] / case.best_peer_ms()
            record_target(f"{item}. {label}: tensortrain / fastest peer, {at}", ratio, 0.5)
    both, fwd = by.get("TT-matrix forward + backward"), by.get("TT-matrix forward")
    if both is not None and fwd is not None and both.flops and DENSE in fwd.entries:
        rate = both.flops / both.medians_ms()["tensortrain"]
        gemm = GEMM_FLOPS / fwd.medians_ms()[DENSE]
        note = f"{rate / 1e6:.1f} against {gemm / 1e6:.1f} GFLOP/s"
        if DENSE in both.entries:
            note += f"; {rate / (3 * GEMM_FLOPS / both.medians_ms()[DENSE]):.2f}x the dense fwd+bwd"
        record_target(
            f"2. TT-matrix forward + backward GFLOP/s / dense forward GEMM's, {at}",
            rate / gemm,
            0.7,
            lower=False,
            note=note,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="torch thread counts, one table each")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 repeats, print only")
    ap.add_argument("--only", default="", help="comma-separated case indices (0-6)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    mods = _peers()
    makers = [
        case_svd_rank,
        case_svd_eps,
        case_round,
        case_ttm_forward,
        case_ttm_backward,
        case_ttm_dense,
        case_round_f32,
    ]
    if args.only:
        makers = [makers[int(i)] for i in args.only.split(",")]
    tables = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        cases = []
        for make in makers:
            case = make(mods)
            run_case(case, args.warmup, repeats)
            cases.append(case)
            print(f"[{threads} thread(s)]", table([case], mods).split("\n", 2)[2], flush=True)
        if not args.quick:
            record_targets(cases, threads)
        plural = "" if threads == 1 else "s"
        tables.append(
            f"### {threads} thread{plural}\n\n`torch.set_num_threads({threads})`; 1-minute load "
            f"average at the end: {os.getloadavg()[0]:.2f}.\n\n{table(cases, mods)}\n"
        )
    versions = ", ".join(f"{n} {_version(n, m)}" for n, m in mods.items())
    text = f"""{SECTION}

Produced by `benchmarks/core_bench.py` (`make bench-core`); one run, {repeats} repeats per
library after {args.warmup} warm-up calls, interleaved round-robin, median wall time; one table
per torch thread count, every library under the same count. torch {torch.__version__} on
{platform.processor() or platform.machine()}. Peers: {versions}.

"Ratio" is this library's median over the fastest peer's (tensortrain and the dense matmul are not
peers). "Relative error" is `||result - reference|| / ||reference||` against a float64 reference:
the dense input for TT-SVD; the input TT for rounding (computed in TT format, never densified); for
the TT-matrix cases, `x @ W.T` in float64, or the worst of the gradients with respect to `x` and
each core (backward), or the dense float64 matrix. GFLOP/s for the TT-matrix cases counts a
nominal {_ttm_flops(256) / 1e9:.2f} GFLOP per forward (the cheapest contraction order), three times
that for forward + backward, and the core-by-core reconstruction for to-dense; the dense matmul row
counts its own `2 B M N` (three times that with backward: `y`, `dx` and `dW`): the dense rows show
how many FLOP/s one large GEMM reaches on this machine in the same run.

{chr(10).join(tables)}"""
    if args.quick:
        print(text)
        return
    replace_section(SECTION, text, args.out)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
