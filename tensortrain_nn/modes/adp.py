"""``mode="adp"`` (LoRETTA_adp): a :class:`~tensortrain_nn.TTAdapter` after (or before) each
target, which may be any sublayer."""

from __future__ import annotations

from typing import cast

from torch import nn

from tensortrain.errors import TTShapeError, TTTypeError, TTValueError
from tensortrain_nn._wrapper import is_linear_like, linear_features
from tensortrain_nn.adapter import AdpOptions, Placement, TTAdapter, TTBottleneck
from tensortrain_nn.modes.base import Mode, Target, check_bond_ranks

#: Targets that ``placement="paper"`` adapts before (on their input): the official code's
#: ``mh_adapter`` modules (LLaMA's gate and up projections, the first MLP dense of BLOOM, GPT-J,
#: GPT-Neo, OPT, ChatGLM); every other target is adapted after.
BEFORE_NAMES = ("gate_proj", "up_proj", "dense_h_to_4h", "fc_in", "c_fc", "fc1")


def placement_of(name: str, placement: str) -> str:
    """``"before"`` or ``"after"`` for target ``name`` under a config's ``placement``.

    Example:
        >>> placement_of("model.layers.0.mlp.up_proj", "paper")
        'before'
        >>> placement_of("model.layers.0.mlp.down_proj", "paper")
        'after'
    """
    if placement != "paper":
        return placement
    return "before" if name.rsplit(".", 1)[-1] in BEFORE_NAMES else "after"


def adapter_features(model: nn.Module, module: nn.Module, name: str) -> int:
    """The output size of a sublayer that an adp adapter follows.

    Linear-like: its ``out_features``; otherwise the output size of its last linear-like
    submodule (LLaMA's MLP: ``down_proj``); otherwise ``model.config.hidden_size``.

    Example:
        >>> adapter_features(nn.Module(), nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)), "mlp")
        3
    """
    if is_linear_like(module):
        return linear_features(module)[1]
    last = [m for m in module.modules() if is_linear_like(m)]
    if last:
        return linear_features(last[-1])[1]
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(hidden, int):
        return hidden
    raise TTValueError(f"cannot tell the output size of {name!r} ({type(module).__name__})")


def _input_features(base: nn.Module, name: str) -> int:
    """The input size of a target an adapter goes before (a linear-like one)."""
    try:
        return linear_features(base)[0]
    except TTTypeError:
        raise TTTypeError(
            f"placement='before' needs an nn.Linear or Conv1D target (its input size), but "
            f"{name!r} is a {type(base).__name__}"
        ) from None


class AdpMode(Mode):
    """LoRETTA_adp: ``h + s * up(act(down(h)))`` on a sublayer's output (or input); options:
    :class:`~tensortrain_nn.adapter.AdpOptions`."""

    name = "adp"
    options_class = AdpOptions
    wrapper = TTAdapter
    target_family = "adp"
    linear_targets = False
    options: AdpOptions

    def plan(self, model: nn.Module, target: Target) -> None:
        """Placement and width of the adapter; ``down``/``up`` factors; sizes checked."""
        opts = self.options
        target.placement = placement_of(target.name, opts.placement)
        held = getattr(target.module, "features", None)  # a TTAdapter already there
        if held:
            target.features = held
        elif target.placement == "after":
            target.features = adapter_features(model, target.base, target.name)
        else:
            target.features = _input_features(target.base, target.name)
        width = target.features
        target.factors = [("down", width, opts.bottleneck), ("up", opts.bottleneck, width)]
        if opts.bottleneck > width:
            raise TTShapeError(
                f"bottleneck={opts.bottleneck} exceeds the {width} features of {target.name!r}"
            )
        if opts.layout != "paper":  # the paper layout does not clip ranks: any rank builds
            check_bond_ranks(target, opts.tt_rank, "tt_rank")

    def check_stack(self, target: Target, adapter_name: str) -> None:
        """Adapters on one sublayer share its placement."""
        wrapper = cast(TTAdapter, target.module)
        want = placement_of(target.name, self.options.placement)
        if wrapper.placement != want:
            raise TTValueError(
                f"{target.name!r} holds adapters placed {wrapper.placement!r} its sublayer; "
                f"placement={self.options.placement!r} would put this one {want!r} it"
            )

    def dry_build(self, target: Target) -> None:
        TTBottleneck(target.features, self.options, device="meta")

    def build(self, target: Target, adapter_name: str, from_weight: bool = True) -> nn.Module:
        return TTAdapter(
            target.module,
            self.options,
            features=target.features,
            placement=cast("Placement", target.placement),
            adapter_name=adapter_name,
        )
