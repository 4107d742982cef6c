"""The planner of :func:`tensortrain.tt_linear`: its plan cache, its mode and its measured picks.

One :class:`Planner` owns all the state planning keeps: the cache of modelled plans, the mode
(``"model"`` or ``"measure"``) and, in the ``"measure"`` mode, the path timed fastest for each
signature. The mode changes only through :meth:`Planner.set_mode` or :meth:`Planner.using`, and
every change clears the measured picks.

The ``"measure"`` mode times, on the first call for each signature (batch, modes, ranks, dtype,
device, torch threads), the plan's alternatives (the paths of least modelled cost) on that call's
own input and keeps the fastest, as ``torch.backends.cudnn.benchmark`` does. A warm-up call of each
path sizes its repeats so that one timing spans :data:`MEASURE_SECONDS`; then
:data:`MEASURE_ROUNDS` rounds time every path in turn, so that a change of machine load hits them
alike, and each path keeps its least time.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch

from tensortrain._checks import check_int
from tensortrain._cores import check_modes
from tensortrain._planning import ALTERNATIVES, Path, Plan, Signature, make_plan
from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain.shapes import check_ranks

PlanMode = Literal["model", "measure"]
#: Paths that the ``"measure"`` mode times per signature: the plan's alternatives.
MEASURE_PATHS = ALTERNATIVES
#: Timed rounds of the ``"measure"`` mode, and the least time of one timing (calls are repeated).
MEASURE_ROUNDS, MEASURE_SECONDS = 5, 2e-3
#: Plans the cache keeps (least recently used dropped first).
CACHE_SIZE = 512

Runner = Callable[[torch.Tensor, Sequence[torch.Tensor], Path], torch.Tensor]
MeasureKey = tuple[Signature, torch.dtype, torch.device, int]


def check_signature(
    batch: int, row_modes: Sequence[int], col_modes: Sequence[int], ranks: Sequence[int]
) -> Signature:
    """The :class:`Signature` of checked arguments (each error names its argument)."""
    check_int("batch", batch)
    rows, cols = check_modes("row_modes", row_modes), check_modes("col_modes", col_modes)
    if len(rows) != len(cols):
        raise TTShapeError(f"row_modes and col_modes must have one length, got {rows} and {cols}")
    if isinstance(ranks, torch.Tensor) or not isinstance(ranks, Sequence):
        raise TTTypeError(f"ranks must be a sequence of ints, got {ranks!r}")
    return Signature(batch, rows, cols, check_ranks(ranks, len(rows)))


class Planner:
    """Plans for :func:`tensortrain.tt_linear`, cached, by the cost model or by measurement.

    :data:`tensortrain.plan` is the instance ``tt_linear`` uses; calling it returns the modelled
    :class:`~tensortrain.Plan` of a signature.

    Args:
        run: runs a path, ``run(x, cores, path) -> x @ W.T``; the ``"measure"`` mode times it.
        clock: seconds, monotonic; the ``"measure"`` mode reads it around timed calls.
    """

    def __init__(self, run: Runner, clock: Callable[[], float] = time.perf_counter) -> None:
        self._run = run
        self._clock = clock
        self._mode: PlanMode = "model"
        self._measured: dict[MeasureKey, Path] = {}
        self._cached = functools.lru_cache(maxsize=CACHE_SIZE)(make_plan)

    def __call__(
        self, batch: int, row_modes: Sequence[int], col_modes: Sequence[int], ranks: Sequence[int]
    ) -> Plan:
        """The cached contraction plan for a batch of ``batch`` rows (:mod:`tensortrain._planning`).

        Args:
            batch: rows of the dense input, ``>= 1``.
            row_modes: ``(m_1, ..., m_d)``, ints ``>= 1``.
            col_modes: ``(n_1, ..., n_d)``, same length.
            ranks: the full ranks ``(1, r_1, ..., r_{d-1}, 1)``.

        Returns:
            The :class:`~tensortrain.Plan`; ``print`` it for the table of its paths.

        Raises:
            TTTypeError, TTValueError, TTShapeError: an argument of the wrong type, value or
                length (the message names it).

        Example:
            >>> from tensortrain import plan
            >>> p = plan(256, (8, 8, 8, 8), (8, 8, 8, 8), (1, 8, 8, 8, 1))
            >>> p.kind, p.groups
            ('tt', ((0, 2), (2, 4)))
            >>> plan.cache_info().currsize >= 1
            True
        """
        return self.cached(check_signature(batch, row_modes, col_modes, ranks))

    def cached(self, sig: Signature) -> Plan:
        """The plan of a checked signature, from the cache when it is there."""
        return self._cached(sig)

    def cache_info(self) -> functools._CacheInfo:
        """Hits, misses and size of the plan cache, as ``functools.lru_cache`` reports them."""
        return self._cached.cache_info()

    def cache_clear(self) -> None:
        """Drop every cached plan (the measured picks stay)."""
        self._cached.cache_clear()

    @property
    def mode(self) -> PlanMode:
        """``"model"`` (plans from shapes alone) or ``"measure"`` (the fastest path, timed)."""
        return self._mode

    @property
    def measured(self) -> Mapping[MeasureKey, Path]:
        """The measured picks, by signature, dtype, device and thread count (read-only)."""
        return types.MappingProxyType(self._measured)

    def set_mode(self, mode: PlanMode) -> PlanMode:
        """Switch to ``mode``, clear the measured picks; returns the mode that was in force.

        Raises:
            TTValueError: ``mode`` is neither ``"model"`` nor ``"measure"``.
        """
        if mode not in ("model", "measure"):
            raise TTValueError(f"mode must be 'model' or 'measure', got {mode!r}")
        before, self._mode = self._mode, mode
        self._measured.clear()
        return before

    @contextlib.contextmanager
    def using(self, mode: PlanMode) -> Iterator[PlanMode]:
        """``mode`` inside the block (yields the mode before); the mode before restored after,
        on an exception too. Entering and leaving clear the measured picks, as :meth:`set_mode`."""
        before = self.set_mode(mode)
        try:
            yield before
        finally:
            self.set_mode(before)

    def measure(self, x: torch.Tensor, cores: Sequence[torch.Tensor], sig: Signature) -> Path:
        """The fastest of the plan's alternatives on ``x (B, N)``, timed once per signature."""
        key = (sig, x.dtype, x.device, torch.get_num_threads())
        if (hit := self._measured.get(key)) is not None:
            return hit
        paths = [alt.path for alt in self.cached(sig).alternatives]
        timer = _Timer(self._run, self._clock, x, cores)
        with torch.no_grad():
            calls = {p: min(100, math.ceil(MEASURE_SECONDS / timer.seconds(p, 1))) for p in paths}
            best = dict.fromkeys(paths, math.inf)
            for _ in range(MEASURE_ROUNDS):  # interleaved: a change of load hits every path alike
                for path in paths:
                    best[path] = min(best[path], timer.seconds(path, calls[path]))
        self._measured[key] = pick = min(paths, key=best.__getitem__)
        return pick


class _Timer:
    """Seconds per call of a path on one input (detached), synchronising a GPU around them."""

    def __init__(
        self, run: Runner, clock: Callable[[], float], x: torch.Tensor, cores: Sequence[Any]
    ) -> None:
        self._run, self._clock = run, clock
        self._x, self._cores = x.detach(), [c.detach() for c in cores]
        is_cuda = x.device.type == "cuda"
        self._sync: Callable[[], None] = torch.cuda.synchronize if is_cuda else lambda: None

    def seconds(self, path: Path, calls: int) -> float:
        """Mean seconds of ``calls`` calls of ``path``."""
        self._sync()
        start = self._clock()
        for _ in range(calls):
            self._run(self._x, self._cores, path)
        self._sync()
        return max(self._clock() - start, 1e-9) / calls
