"""Which modules a patch targets: per-architecture defaults (a registry) and peft-style matching."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

from tensortrain.errors import TTTypeError, TTValueError
from tensortrain_nn._wrapper import AdapterWrapper, is_linear_like
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.modes import get_mode

#: What surgery puts into a model: adapter wrappers (TTReparam, TTAdapter) and TTLinear.
TT_MODULES = (AdapterWrapper, TTLinear)


@dataclass(frozen=True)
class ArchTargets:
    """Default targets of one architecture family, per mode (peft list rules)."""

    rep: tuple[str, ...]
    adp: tuple[str, ...]


_BERT = ArchTargets(rep=("query", "value"), adp=("attention.output.dense", "output.dense"))
_DEBERTA = ArchTargets(
    rep=("query_proj", "value_proj"), adp=("attention.output.dense", "output.dense")
)
_LLAMA = ArchTargets(rep=("q_proj", "v_proj"), adp=("mlp",))

#: Default targets keyed by ``model.config.model_type``; a mode takes the list its
#: ``target_family`` names (``linear`` mode uses the ``rep`` list).
#: For adp: after the attention-output and FFN-output dense of BERT-style blocks, around the
#: MLP of LLaMA-style blocks (as in the LoRETTA code), after GPT-2's two ``c_proj``.
DEFAULT_TARGETS: dict[str, ArchTargets] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "deberta": ArchTargets(rep=("in_proj",), adp=_BERT.adp),
    "deberta-v2": _DEBERTA,
    "distilbert": ArchTargets(rep=("q_lin", "v_lin"), adp=("attention.out_lin", "ffn.lin2")),
    "gpt2": ArchTargets(rep=("c_attn",), adp=("attn.c_proj", "mlp.c_proj")),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "mixtral": ArchTargets(rep=("q_proj", "v_proj"), adp=()),
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": ArchTargets(rep=("qkv_proj",), adp=("mlp",)),
    "opt": ArchTargets(rep=("q_proj", "v_proj"), adp=("self_attn.out_proj", "fc2")),
}
#: Module names of a task head, the one list for ``patch(trainable_head=True)`` and the job's
#: ``head`` method: peft's ``SEQ_CLS`` modules_to_save (``classifier``, ``score``) plus DistilBERT's
#: freshly initialised ``pre_classifier``.
HEAD_NAMES = ("classifier", "score", "pre_classifier")


def is_head_parameter(name: str) -> bool:
    """Whether a parameter (or module) name lies inside a task head (a path part in HEAD_NAMES).

    Example:
        >>> is_head_parameter("classifier.out_proj.weight")
        True
        >>> is_head_parameter("bert.pooler.dense.bias")
        False
    """
    return any(part in HEAD_NAMES for part in name.split("."))


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's (LayerNorm, GroupNorm...) or a class named *Norm."""
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
    return isinstance(module, norms) or type(module).__name__.lower().endswith("norm")


def model_type(model: nn.Module) -> str | None:
    """``model.config.model_type`` when the model has a Hugging Face config, else None."""
    config = getattr(model, "config", None)
    value = getattr(config, "model_type", None)
    return value if isinstance(value, str) else None


def walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every ``(name, module)`` below the root, each once, never looking inside a TT module.

    The one walker of surgery: targets are matched on it, and TT modules are found with it
    (:func:`tt_modules`). A TT module itself is yielded; its ``base_layer`` and adapters are not.

    Example:
        >>> from tensortrain_nn import TTReparam
        >>> model = nn.Sequential(TTReparam(nn.Linear(4, 4), r=2, tt_rank=1), nn.ReLU())
        >>> [name for name, _ in walk(model)]
        ['0', '1']
    """
    seen: set[int] = set()

    def visit(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
        for leaf, child in module.named_children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            name = f"{prefix}.{leaf}" if prefix else leaf
            yield name, child
            if not isinstance(child, TT_MODULES):
                yield from visit(child, name)

    return visit(model, "")


def tt_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every TT wrapper (TTReparam / TTAdapter) and TTLinear in ``model``, in model order."""
    return [(name, module) for name, module in walk(model) if isinstance(module, TT_MODULES)]


def matches(name: str, target: Sequence[str] | str) -> bool:
    """peft's rule: a string is a full regex match; a list entry is the name or a ``.suffix``.

    Example:
        >>> matches("encoder.layer.0.attention.output.dense", ["output.dense"])
        True
        >>> matches("encoder.layer.0.attention.self.query", r".*\\.(query|value)")
        True
    """
    if isinstance(target, str):
        return re.fullmatch(target, name) is not None
    return any(name == t or name.endswith("." + t) for t in target)


def default_targets(model: nn.Module, mode: str) -> tuple[str, ...]:
    """The registry's targets for ``model``'s architecture and ``mode``.

    Raises:
        TTValueError: The architecture is not registered (the message lists what the model
            contains, abridged, and the registered architectures).
    """
    mtype = model_type(model)
    arch = DEFAULT_TARGETS.get(mtype) if mtype else None
    family = get_mode(mode).target_family
    targets = None if arch is None else tuple(getattr(arch, family))
    if not targets:
        seen = describe_modules(model)
        raise TTValueError(
            f"no default target_modules for model_type={mtype!r} and mode={mode!r}; pass "
            f"target_modules=[...] (module names or suffixes) or a regex. Linear-like modules "
            f"seen: {seen}. Architectures with defaults: {', '.join(sorted(DEFAULT_TARGETS))}"
        )
    return targets


def describe_modules(model: nn.Module, limit: int = 8) -> str:
    """An abridged list of distinct module-name suffixes and types, for error messages."""
    found: dict[str, str] = {}
    for name, module in walk(model):
        if is_linear_like(module) or not list(module.children()):
            found.setdefault(name.rsplit(".", 1)[-1], type(module).__name__)
    items = [f"{k} ({v})" for k, v in found.items()]
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return (", ".join(items[:limit]) + more) or "none"


def resolve_targets(
    model: nn.Module, target: Sequence[str] | str | None, mode: str
) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs to patch, in model order, each once.

    Raises:
        TTValueError: Nothing matches (the message lists what the model contains).
        TTTypeError: A target that is not linear-like for a mode that needs one (rep, linear).
    """
    pattern = default_targets(model, mode) if target is None else target
    found = [(n, m) for n, m in walk(model) if matches(n, pattern)]
    if not found:
        raise TTValueError(
            f"target_modules={pattern!r} matched no module (names are matched exactly or as a "
            f"'.suffix' for a list, as a full regex for a string). Modules seen: "
            f"{describe_modules(model)}"
        )
    if get_mode(mode).linear_targets:
        for name, module in found:
            if not is_linear_like(module) and not isinstance(module, AdapterWrapper):
                raise TTTypeError(
                    f"mode={mode!r} needs nn.Linear or Conv1D targets, but {name!r} is a "
                    f"{type(module).__name__}"
                )
    return found
