"""PatchConfig: every choice :func:`tensortrain_nn.patch` makes, validated once, saved as JSON."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from tensortrain._checks import check_int, check_number
from tensortrain.errors import TTTypeError, TTValueError

#: Fields that only one mode reads (a registry: ``patch(mode="rep", bottleneck=8)`` is an error).
MODE_FIELDS: dict[str, tuple[str, ...]] = {
    "rep": ("r", "alpha", "tt_rank", "dropout", "form", "init", "layout"),
    "adp": (
        "bottleneck",
        "tt_rank",
        "activation",
        "scale",
        "dropout",
        "init",
        "layout",
        "placement",
    ),
    "linear": ("max_rank", "eps"),
}
#: Fields every mode reads.
COMMON_FIELDS = (
    "mode",
    "target_modules",
    "trainable_norms",
    "trainable_head",
    "trainable_biases",
)
#: Fields added after format version 1, with their defaults: written to ``adapter_config.json``
#: only when they differ, so a default config's file is byte-for-byte what the first release
#: wrote (and older readers, which refuse unknown keys, still read it).
LATER_FIELDS: dict[str, object] = {"layout": "matrix", "placement": "after"}
#: Default dropout per mode when ``dropout`` is None (the LoRETTA code's choices).
DEFAULT_DROPOUT = {"rep": 0.05, "adp": 0.0}


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TTValueError(f"{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class PatchConfig:
    """How a model is patched. Validated in ``__post_init__``; saved as ``adapter_config.json``.

    Attributes:
        mode: ``"rep"`` (LoRETTA_rep, :class:`~tensortrain_nn.TTReparam`), ``"adp"``
            (LoRETTA_adp, :class:`~tensortrain_nn.TTAdapter`) or ``"linear"`` (replace targets
            by TT-SVD compressed :class:`~tensortrain_nn.TTLinear`; no adapter).
        target_modules: peft's rules: a list matches a module name exactly or as a suffix after
            a dot (``"query"`` matches ``encoder.layer.0.attention.self.query``); a string is a
            regex that must match the whole name. None: the defaults for the model's
            ``config.model_type`` (see :data:`tensortrain_nn.surgery.targets.DEFAULT_TARGETS`).
        r, alpha, form: rep only: LoRA bottleneck ``r``, scale ``alpha / r``, ``"factors"``
            (LoRETTA's ``B @ A``) or ``"full"`` (one TT-matrix).
        bottleneck, activation, scale: adp only.
        tt_rank: TT rank of every adapter factor (rep and adp); bonds the mode sizes cannot
            support are clipped, a rank that no bond can reach is an error.
        dropout: rep and adp; None means 0.05 for rep, 0.0 for adp.
        init: ``"zero"`` (output exactly zero at step 0) or ``"paper"`` (all cores random);
            rep also ``"svd"``: the factors start from the TT-SVD of the frozen weight's top-``r``
            part, which is taken out of the frozen weight (output unchanged at step 0; see
            ``docs/layers.md``).
        layout: rep and adp: ``"matrix"`` (each factor a TT-matrix, any size, ranks clipped) or
            ``"paper"`` (each factor one TT tensor of the official LoRETTA code's shape table,
            ranks not clipped: reproduces its parameter counts; rep needs ``form="factors"``).
            See :func:`tensortrain_nn._wrapper.paper_shape`.
        placement: adp only: ``"after"`` the target (on its output, default), ``"before"`` it (on
            its input), or ``"paper"``: as the official code, before targets named in
            :data:`~tensortrain_nn.surgery.targets.BEFORE_NAMES` (LLaMA's ``gate_proj`` and
            ``up_proj``...), after the others.
        max_rank, eps: linear only: TT-SVD truncation (see ``TTLinear.from_linear``).
        trainable_norms: also train every normalisation layer (LayerNorm, RMSNorm...): the
            LoRETTA code trains parameters whose name contains ``Norm``.
        trainable_head: also train the task head: modules named in
            :data:`~tensortrain_nn.surgery.targets.HEAD_NAMES` (``classifier``, ``score``,
            DistilBERT's ``pre_classifier``). BERT's ``pooler`` is pretrained and stays frozen
            unless you unfreeze it (it is then saved and loaded with the adapter).
        trainable_biases: also train every bias outside the adapters.

    Raises:
        TTTypeError: A field of the wrong type (``r=2.5``, ``trainable_norms="yes"``).
        TTValueError: A value out of range or not finite (``alpha=nan``, ``dropout=1.0``).

    Example:
        >>> PatchConfig(mode="rep", r=16, tt_rank=8, target_modules=["q_proj", "v_proj"])
        PatchConfig(mode='rep', target_modules=['q_proj', 'v_proj'], r=16, ...)
        >>> PatchConfig(alpha=float("nan"))
        Traceback (most recent call last):
        ...
        tensortrain.errors.TTValueError: alpha must be a finite number, got nan
    """

    mode: str = "rep"
    target_modules: list[str] | str | None = None
    r: int = 8
    alpha: float = 16.0
    tt_rank: int = 5
    dropout: float | None = None
    form: str = "factors"
    init: str = "zero"
    layout: str = "matrix"
    placement: str = "after"
    bottleneck: int = 64
    activation: str = "relu"
    scale: float = 1.0
    max_rank: int | None = None
    eps: float | None = None
    trainable_norms: bool = False
    trainable_head: bool = True
    trainable_biases: bool = False

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, tuple(MODE_FIELDS))
        self._check_targets()
        for name in ("r", "tt_rank", "bottleneck"):
            check_int(name, getattr(self, name))
        if self.max_rank is not None:
            check_int("max_rank", self.max_rank)
        for name in ("alpha", "scale"):  # finite, any sign (a negative scale flips the update)
            check_number(name, getattr(self, name))
        if self.eps is not None:
            check_number("eps", self.eps, minimum=0.0)
        if self.dropout is not None:
            check_number("dropout", self.dropout, minimum=0.0, maximum=1.0, open_max=True)
        _check_choice("form", self.form, ("factors", "full"))
        _check_choice("init", self.init, ("zero", "paper", "svd"))
        if self.mode == "adp" and self.init == "svd":
            raise TTValueError(
                "init='svd' is for mode='rep' (it starts an update from the frozen weight's "
                "principal part); mode='adp' takes init 'zero' or 'paper'"
            )
        _check_choice("layout", self.layout, ("matrix", "paper"))
        _check_choice("placement", self.placement, ("after", "before", "paper"))
        if self.mode == "rep" and self.layout == "paper" and self.form != "factors":
            raise TTValueError(
                f"layout='paper' needs form='factors' (the official code has no full form), "
                f"got form={self.form!r}"
            )
        from tensortrain_nn.adapter import ACTIVATIONS

        _check_choice("activation", self.activation, tuple(sorted(ACTIVATIONS)))
        for name in ("trainable_norms", "trainable_head", "trainable_biases"):
            if not isinstance(getattr(self, name), bool):
                raise TTTypeError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def _check_targets(self) -> None:
        t = self.target_modules
        if t is None:
            return
        if isinstance(t, str):
            try:
                re.compile(t)
            except re.error as exc:
                raise TTValueError(f"target_modules {t!r} is not a valid regex: {exc}") from exc
            return
        if not isinstance(t, list | tuple) or not t or not all(isinstance(s, str) for s in t):
            raise TTTypeError(
                f"target_modules must be None, a regex string or a non-empty list of module "
                f"names, got {t!r}"
            )

    @classmethod
    def from_options(cls, mode: str, options: dict[str, Any]) -> PatchConfig:
        """Build from ``patch``'s keyword options, refusing options another mode would read.

        ``rank`` is accepted as the TT rank: ``tt_rank`` for rep/adp, ``max_rank`` for linear.

        Raises:
            TTValueError: Unknown mode, an unknown option, or an option of another mode.
        """
        _check_choice("mode", mode, tuple(MODE_FIELDS))
        options = dict(options)
        if "rank" in options:
            key = "max_rank" if mode == "linear" else "tt_rank"
            if key in options:
                raise TTValueError(f"pass rank or {key}, not both")
            options[key] = options.pop("rank")
        allowed = set(COMMON_FIELDS) | set(MODE_FIELDS[mode])
        known = {f.name for f in fields(cls)}
        for key in options:
            if key not in known:
                raise TTValueError(
                    f"unknown option {key!r} for patch(); mode={mode!r} takes: "
                    f"{', '.join(sorted(allowed - {'mode'}))}"
                )
            if key not in allowed:
                owner = [m for m, names in MODE_FIELDS.items() if key in names]
                raise TTValueError(
                    f"option {key!r} belongs to mode {' / '.join(map(repr, owner))}, not "
                    f"mode={mode!r} (which takes: {', '.join(sorted(allowed - {'mode'}))})"
                )
        return cls(mode=mode, **options)

    @property
    def resolved_dropout(self) -> float:
        """``dropout``, or the mode's default when it is None."""
        return DEFAULT_DROPOUT.get(self.mode, 0.0) if self.dropout is None else self.dropout

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the mode's layer (TTReparam / TTAdapter / from_linear)."""
        if self.mode == "linear":
            return {"max_rank": self.max_rank, "eps": self.eps}
        kw = {k: getattr(self, k) for k in MODE_FIELDS[self.mode] if k != "placement"}
        kw["dropout"] = self.resolved_dropout
        return kw

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``target_modules`` tuples become lists; fields of
        :data:`LATER_FIELDS` at their defaults are left out)."""
        data = asdict(self)
        for key, default in LATER_FIELDS.items():
            if data[key] == default:
                del data[key]
        if isinstance(data["target_modules"], tuple):
            data["target_modules"] = list(data["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TTValueError(f"adapter config has unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)
