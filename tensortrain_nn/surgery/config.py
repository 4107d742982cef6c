"""PatchConfig: every choice :func:`tensortrain_nn.patch` makes, validated once, saved as JSON."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from tensortrain.errors import TTTypeError, TTValueError
from tensortrain_nn.modes import MODES, Mode, get_mode

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
LATER_FIELDS: dict[str, object] = {
    "layout": "matrix",
    "placement": "after",
    "adapter_dtype": "auto",
    "mode_options": {},
}


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
            See :func:`tensortrain_nn._paper.paper_shape`.
        placement: adp only: ``"after"`` the target (on its output, default), ``"before"`` it (on
            its input), or ``"paper"``: as the official code, before targets named in
            :data:`~tensortrain_nn.modes.adp.BEFORE_NAMES` (LLaMA's ``gate_proj`` and
            ``up_proj``...), after the others.
        adapter_dtype: rep and adp: the dtype of the adapter's own tensors, one of
            :data:`~tensortrain_nn.bases.dtype.ADAPTER_DTYPES`: ``"auto"`` (float32 on a
            float16/bfloat16 or 4-/8-bit base, cast at the boundary as peft's
            ``autocast_adapter_dtype``; the base's dtype on a float32/float64 one), ``"base"``
            (the base's compute dtype, half precision included) or a dtype's name.
        max_rank, eps: linear only: TT-SVD truncation (see ``TTLinear.from_linear``).
        mode_options: options of a registered mode that are none of the fields above (a mode
            added after this class; see :mod:`tensortrain_nn.modes`).
        trainable_norms: also train every normalisation layer (LayerNorm, RMSNorm...): the
            LoRETTA code trains parameters whose name contains ``Norm``.
        trainable_head: also train the task head: modules named in
            :data:`~tensortrain_nn.surgery.targets.HEAD_NAMES` (``classifier``, ``score``,
            DistilBERT's ``pre_classifier``). BERT's ``pooler`` is pretrained and stays frozen
            unless you unfreeze it (it is then saved and loaded with the adapter).
        trainable_biases: also train every bias outside the adapters.

    The fields ``mode`` reads are checked once, by the mode's options object
    (:attr:`options`, built here); fields of other modes are not read.

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
    adapter_dtype: str = "auto"
    max_rank: int | None = None
    eps: float | None = None
    trainable_norms: bool = False
    trainable_head: bool = True
    trainable_biases: bool = False
    mode_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mode = get_mode(self.mode)
        self._check_targets()
        for name in ("trainable_norms", "trainable_head", "trainable_biases"):
            if not isinstance(getattr(self, name), bool):
                raise TTTypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.mode_options, dict):
            raise TTTypeError(f"mode_options must be a dict, got {self.mode_options!r}")
        own = set(mode.option_names())
        stray = sorted(set(self.mode_options) - (own - _FIELD_NAMES))
        if stray:
            raise TTValueError(
                f"mode_options has {stray[0]!r}, which is not an option of mode={self.mode!r} "
                f"outside PatchConfig's fields (mode options: {sorted(own)})"
            )
        values = {k: getattr(self, k) for k in own & _FIELD_NAMES} | self.mode_options
        self._mode = mode.from_values(values)

    @property
    def options(self) -> Any:
        """The mode's frozen options object (for example a
        :class:`~tensortrain_nn.update.RepOptions`), checked when this config was built."""
        return self._mode.options

    @property
    def mode_object(self) -> Mode:
        """The registered :class:`~tensortrain_nn.modes.base.Mode` with these options."""
        return self._mode

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

        ``rank`` is accepted as the mode's TT rank (``tt_rank`` for rep/adp, ``max_rank`` for
        linear). A registered mode's options that are not fields go to ``mode_options``.

        Raises:
            TTValueError: Unknown mode, an unknown option, or an option of another mode.
        """
        mode_cls = get_mode(mode)
        options = dict(options)
        if "rank" in options:
            key = mode_cls.rank_option
            if key in options:
                raise TTValueError(f"pass rank or {key}, not both")
            options[key] = options.pop("rank")
        allowed = set(COMMON_FIELDS) | set(mode_cls.option_names())
        takes = ", ".join(sorted(allowed - {"mode"}))
        for key in options:
            owner = [m for m, c in MODES.items() if key in c.option_names()]
            if key not in allowed and not owner:
                raise TTValueError(
                    f"unknown option {key!r} for patch(); mode={mode!r} takes: {takes}"
                )
            if key not in allowed:
                raise TTValueError(
                    f"option {key!r} belongs to mode {' / '.join(map(repr, owner))}, not "
                    f"mode={mode!r} (which takes: {takes})"
                )
        extra = {k: options.pop(k) for k in list(options) if k not in _FIELD_NAMES}
        return cls(mode=mode, **options, mode_options=extra)

    @property
    def resolved_dropout(self) -> float:
        """The dropout the mode uses (its default when ``dropout`` is None; 0 without one)."""
        return float(getattr(self.options, "dropout", 0.0))

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


_FIELD_NAMES = frozenset(f.name for f in fields(PatchConfig)) - {"mode_options"}
