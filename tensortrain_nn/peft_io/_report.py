"""What :func:`~tensortrain_nn.from_lora` reports: per-module compression and the totals."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleCompression:
    """How one module's LoRA factors compressed.

    Attributes:
        name: module path. shape: ``(out, in)`` of its update.
        ranks_a, ranks_b: TT ranks reached by ``A (r, in)`` and ``B (out, r)``.
        error_a, error_b: relative Frobenius errors of each factor (as stored, in its dtype).
        bound: the Oseledets bound each factor's error is guaranteed under (``eps``, or the
            LoRA dtype's round-off when ``eps`` is None), None when ``tt_rank`` caps the ranks
            (the cap wins over ``eps``).
        update_error: ``||B A - B' A'||_F / ||B A||_F``, the error of the update itself.
        update_bound: the bound on ``update_error`` that the factor bounds give,
            ``eps (||B||_F ||A||_2 + (||B||_2 + eps ||B||_F) ||A||_F) / ||B A||_F``.
        lora_params: ``r (in + out)``. tt_params: the cores at the reached ranks.
    """

    name: str
    shape: tuple[int, int]
    ranks_a: tuple[int, ...]
    ranks_b: tuple[int, ...]
    error_a: float
    error_b: float
    bound: float | None
    update_error: float
    update_bound: float | None
    lora_params: int
    tt_params: int


@dataclass(frozen=True)
class LoraImportReport:
    """What :func:`from_lora` did: per-module errors and the sizes before and after.

    Attributes:
        adapter_name: the LoRETTA_rep adapter created. r, alpha: its ``r`` and ``alpha``
            (``alpha / r`` is the LoRA's scale, rsLoRA included).
        eps, tt_rank: what was asked. patched_tt_rank: the one TT rank the adapter was patched
            with (the largest reached; smaller bonds are zero-padded, exactly).
        modules: one :class:`ModuleCompression` per LoRA module.
        stored_params: TT core entries as patched and saved (padding included).
        head_params: entries of ``modules_to_save`` carried over (head, norms).
    """

    adapter_name: str
    r: int
    alpha: float
    eps: float | None
    tt_rank: int | None
    patched_tt_rank: int
    modules: tuple[ModuleCompression, ...]
    stored_params: int
    head_params: int

    @property
    def lora_params(self) -> int:
        """LoRA factor entries, ``sum r (in + out)``."""
        return sum(m.lora_params for m in self.modules)

    @property
    def tt_params(self) -> int:
        """TT core entries at the reached ranks (no padding)."""
        return sum(m.tt_params for m in self.modules)

    @property
    def compression(self) -> float:
        """``lora_params / stored_params``: how many times smaller the stored adapter is."""
        return self.lora_params / max(self.stored_params, 1)

    @property
    def max_update_error(self) -> float:
        """The largest relative error of any module's update ``B A``."""
        return max(m.update_error for m in self.modules)

    def __str__(self) -> str:
        width = max(len("module"), *(len(m.name) for m in self.modules))
        lines = [
            f"LoRA -> LoRETTA_rep adapter {self.adapter_name!r}: r={self.r}, alpha={self.alpha:g}, "
            f"eps={self.eps}, tt_rank cap={self.tt_rank}, patched TT rank {self.patched_tt_rank}",
            f"{'module':<{width}}  {'A ranks':<14} {'B ranks':<14} "
            f"{'err A':>8} {'err B':>8} {'err BA':>8} {'bound BA':>9}",
        ]
        for m in self.modules:
            bound = "-" if m.update_bound is None else f"{m.update_bound:.2e}"
            lines.append(
                f"{m.name:<{width}}  {_ranks(m.ranks_a):<14} {_ranks(m.ranks_b):<14} "
                f"{m.error_a:8.2e} {m.error_b:8.2e} {m.update_error:8.2e} {bound:>9}"
            )
        lines.append(
            f"LoRA {self.lora_params:,} -> TT {self.stored_params:,} stored "
            f"({self.tt_params:,} at the reached ranks): {self.compression:.2f}x smaller; "
            f"max update error {self.max_update_error:.3g}; head/norms {self.head_params:,}"
        )
        return "\n".join(lines)


def _ranks(ranks: tuple[int, ...]) -> str:
    return "-".join(map(str, ranks[1:-1])) or "-"
