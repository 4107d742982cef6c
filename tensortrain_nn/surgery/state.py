"""SurgeryState: the one owner of a model's surgery.

One object per patched model, kept on it as ``model.tt_surgery``, does everything that changes
the surgery: install an adapter, switch, disable, merge, delete, unload, save and load. The
public functions (:mod:`tensortrain_nn.surgery.api`) are one-line verbs over it.

``patch(model)`` read top to bottom:

1. :func:`~tensortrain_nn.surgery.api.patch` validates its options into a :class:`PatchConfig`
   and calls ``SurgeryState.for_model(model).add(config, name)``.
2. :meth:`SurgeryState.add` checks the name, then :func:`~.plan.plan_targets` checks every target
   (matches, ranks, a dry build on the meta device): nothing has changed yet.
3. Inside :meth:`SurgeryState._transaction` (a snapshot of every ``requires_grad`` flag, every
   wrapper's active adapter and the bookkeeping), :meth:`SurgeryState._install` builds and puts
   in the new modules, :meth:`SurgeryState._attach` puts the state on the model (the only place
   that does) and :meth:`SurgeryState._switch` makes the adapter the one that runs and trains.
4. On any error the transaction takes the new modules out and restores the snapshot: the model
   is exactly as it was, flags included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch import nn

from tensortrain.errors import TTValueError
from tensortrain_nn._wrapper import AdapterWrapper, check_adapter_name
from tensortrain_nn.bases.offload import check_in_memory
from tensortrain_nn.linear import TTLinear
from tensortrain_nn.surgery.config import PatchConfig
from tensortrain_nn.surgery.flags import adapter_of, config_trainable
from tensortrain_nn.surgery.io import read_adapter, write_adapter
from tensortrain_nn.surgery.plan import Target, build, dense_linear, plan_targets, replace_module
from tensortrain_nn.surgery.targets import model_type, tt_modules
from tensortrain_nn.surgery.tensors import adapter_tensors, match_ranks, put_tensors

__all__ = ["STATE_ATTR", "SurgeryState", "adapter_of", "get_state"]

#: The attribute under which a patched model keeps its :class:`SurgeryState`.
STATE_ATTR = "tt_surgery"
Undo = list[Callable[[], object]]


@dataclass
class _Snapshot:
    """What a failed operation puts back: flags, wrapper switches and the bookkeeping."""

    flags: list[tuple[nn.Parameter, bool]]
    wrappers: list[tuple[AdapterWrapper, str | None, bool]]
    active: str | None
    configs: dict[str, PatchConfig]
    targets: dict[str, list[str]]
    attached: bool


class SurgeryState:
    """The surgery of one model: its adapters, the active one, and every change to them.

    Get it with :func:`get_state` (or ``SurgeryState.for_model`` to start one); the public verbs
    (``patch``, ``set_adapter``, ``save_adapter``...) are the usual way in.

    Attributes:
        model: the patched model.
        configs: adapter name -> the config it was patched with (in the order added).
        targets: adapter name -> the module names it patched.
        active: the adapter that runs and trains (None before the first install).
        model_type: ``model.config.model_type`` at patch time (None without a HF config).
        original_flags: every parameter's ``requires_grad`` before the first patch.

    Example:
        >>> from tensortrain_nn import patch
        >>> model = patch(nn.Sequential(nn.Linear(8, 8)), target_modules=["0"], r=2, tt_rank=2)
        >>> state = get_state(model)
        >>> state.active, state.targets
        ('default', {'default': ['0']})
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.configs: dict[str, PatchConfig] = {}
        self.targets: dict[str, list[str]] = {}
        self.active: str | None = None
        self.model_type = model_type(model)
        self.original_flags = [(p, p.requires_grad) for p in model.parameters()]

    @classmethod
    def for_model(cls, model: nn.Module) -> SurgeryState:
        """The model's state, or a new one (not attached until an adapter is installed)."""
        return get_state(model, required=False) or cls(model)

    # ------------------------------------------------------------------ install

    def add(self, config: PatchConfig, adapter_name: str, *, activate: bool = True) -> None:
        """Check, then install adapter ``adapter_name``; a failure leaves the model as it was.

        With ``activate`` (or on a model not yet patched) the new adapter becomes the active
        one; otherwise it is added frozen, next to the active one (peft's ``add_adapter``).
        """
        self._check_new_name(adapter_name)
        plans = plan_targets(self.model, config, adapter_name)
        with self._transaction() as undo:
            self._install(config, adapter_name, plans, undo, activate)

    def _check_new_name(self, adapter_name: str) -> None:
        if not isinstance(adapter_name, str) or not adapter_name.isidentifier():
            raise TTValueError(f"adapter_name must be a Python identifier, got {adapter_name!r}")
        if adapter_name in self.configs:
            raise TTValueError(
                f"the model already has an adapter named {adapter_name!r} "
                f"(adapters: {list(self.configs)}); pass another adapter_name"
            )

    def _install(
        self,
        config: PatchConfig,
        name: str,
        plans: list[Target],
        undo: Undo,
        activate: bool = True,
        svd_from_weight: bool = True,
    ) -> None:
        """Put the planned modules in (each step undoable), attach, and switch to ``name``.

        ``svd_from_weight=False`` (loading): ``init="svd"`` updates are not computed from the
        weights nor taken out of them; :meth:`load` does that from the saved initial cores.
        """
        first = not self.configs
        for plan in plans:
            if isinstance(plan.module, AdapterWrapper):
                config.mode_object.add_to(plan.module, name, svd_from_weight)
                plan.module.adapters[name].train(plan.module.training)
                undo.append(partial(plan.module.delete_adapter, name))
            else:
                new = build(config, plan, name, svd_from_weight)
                replace_module(self.model, plan.name, new)
                undo.append(partial(self._put_back, plan.name, new))
        self.configs[name] = config
        self.targets[name] = [p.name for p in plans]
        if first:  # everything outside the adapters starts frozen; _switch adds what trains
            for pname, param in self.model.named_parameters():
                if adapter_of(pname) is None:
                    param.requires_grad_(False)
        self._attach()
        self._switch(name if activate or first else self.active)

    def _put_back(self, path: str, wrapper: nn.Module) -> None:
        """Replace ``wrapper`` at ``path`` by the base layer it wraps, every change to it undone."""
        if isinstance(wrapper, AdapterWrapper):
            replace_module(self.model, path, wrapper.restore_base())

    def _attach(self) -> None:
        """The one place the state goes onto the model (no method of the model is touched)."""
        self.model.__dict__[STATE_ATTR] = self

    def _detach(self) -> None:
        """The one place the state leaves the model."""
        del self.model.__dict__[STATE_ATTR]

    @property
    def attached(self) -> bool:
        """Whether the model carries this state (it has at least one adapter)."""
        return self.model.__dict__.get(STATE_ATTR) is self

    @contextmanager
    def _transaction(self) -> Iterator[Undo]:
        """Run a change under ``no_grad``; on error run the undo steps and restore the snapshot."""
        snapshot = _Snapshot(
            flags=[(p, p.requires_grad) for p in self.model.parameters()],
            wrappers=[(w, w.active_adapter, w.adapters_disabled) for _, w in self.wrappers()],
            active=self.active,
            configs=dict(self.configs),
            targets=dict(self.targets),
            attached=self.attached,
        )
        undo: Undo = []
        with torch.no_grad():
            try:
                yield undo
            except BaseException:
                for step in reversed(undo):
                    step()
                self._restore(snapshot)
                raise

    def _restore(self, snapshot: _Snapshot) -> None:
        for wrapper, active, disabled in snapshot.wrappers:
            wrapper.active_adapter, wrapper.adapters_disabled = active, disabled
        for param, flag in snapshot.flags:
            param.requires_grad_(flag)
        self.active, self.configs, self.targets = (
            snapshot.active,
            snapshot.configs,
            snapshot.targets,
        )
        if self.attached and not snapshot.attached:
            self._detach()

    # ------------------------------------------------------------------ switch, disable

    def wrappers(self) -> list[tuple[str, AdapterWrapper]]:
        """Every adapter wrapper (TTReparam / TTAdapter) in the model, by module name."""
        return [(n, m) for n, m in tt_modules(self.model) if isinstance(m, AdapterWrapper)]

    def _switch(self, name: str | None) -> None:
        """Make ``name`` run and train: wrappers switch; its adapter and the base tensors its
        config trains get ``requires_grad``, other adapters and what the previous active config
        trained do not. Base tensors no config names (a pooler you unfroze) keep their flag."""
        for _, wrapper in self.wrappers():
            wrapper.active_adapter = name if name and name in wrapper.adapters else None
        before = config_trainable(self.model, self.configs.get(self.active or ""))
        after = config_trainable(self.model, self.configs.get(name or ""))
        for pname, param in self.model.named_parameters():
            owner = adapter_of(pname)
            if owner is not None:
                param.requires_grad_(owner == name)
            elif id(param) in after or id(param) in before:
                param.requires_grad_(id(param) in after)
        self.active = name

    def _check_name(self, name: str) -> None:
        check_adapter_name(name, self.configs, what="adapter name")

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` the one that runs and trains (see :meth:`_switch`)."""
        self._check_name(name)
        self._switch(name)

    @contextmanager
    def disabled(self) -> Iterator[nn.Module]:
        """A context in which every wrapper runs its base layer alone (merged updates too)."""
        wrappers = [w for _, w in self.wrappers()]
        before = [w.adapters_disabled for w in wrappers]
        for w in wrappers:
            w.adapters_disabled = True
        try:
            yield self.model
        finally:
            for w, flag in zip(wrappers, before, strict=True):
                w.adapters_disabled = flag

    def inactive_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters of adapters other than the active one, by name."""
        return [
            (n, p)
            for n, p in self.model.named_parameters()
            if p.requires_grad and adapter_of(n) not in (None, self.active)
        ]

    # ------------------------------------------------------------------ merge, delete, unload

    def _running(self) -> list[tuple[str, AdapterWrapper]]:
        """The wrappers whose active adapter runs (not disabled), by module name."""
        return [(p, w) for p, w in self.wrappers() if w.active_adapter and not w.adapters_disabled]

    def merge(self, safe_merge: bool = True) -> None:
        """Fold the active adapter into each base weight (wrappers stay); all or nothing.

        Raises:
            TTValueError: An active adapter that cannot be merged (adp: nonlinear), or with
                ``safe_merge`` a merge that would write non-finite values; nothing changed.
        """
        running = self._running()
        check_in_memory(self.model, [p for p, _ in running], "merge", meta_counts=True)
        for path, w in running:  # every layer checked before the first weight is written
            try:
                w.check_merge(safe=safe_merge)
            except TTValueError as exc:
                raise TTValueError(f"{path!r}: {exc}") from None
        with torch.no_grad():
            for _, w in running:
                w.merge(safe_merge=False)

    def unmerge(self) -> None:
        """Subtract every merged update from its base weight (exact up to round-off)."""
        with torch.no_grad():
            for _, w in self.wrappers():
                w.unmerge()

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name`` (unmerged first); wrappers left empty give their base back.

        Deleting the last adapter is :meth:`unpatch`.
        """
        self._check_name(name)
        if len(self.configs) == 1:
            self.unpatch()
            return
        successor = (
            self.active if self.active != name else next(n for n in self.configs if n != name)
        )
        self._switch(successor)
        with torch.no_grad():
            for path, wrapper in self.wrappers():
                if name not in wrapper.adapters:
                    continue
                wrapper.unmerge(name)
                wrapper.delete_adapter(name)
                if not wrapper.adapters:
                    replace_module(self.model, path, wrapper.base_layer)
        del self.configs[name], self.targets[name]
        self._switch(successor)  # deleting resets a wrapper's active adapter: set it again

    def _check_reversible(self, what: str) -> None:
        linear = [n for n, m in tt_modules(self.model) if isinstance(m, TTLinear)]
        if linear:
            raise TTValueError(
                f"cannot {what}: {linear[0]!r} (and {len(linear) - 1} more) were replaced by "
                "mode='linear' TTLinear layers, whose dense weights are gone; reload the base "
                "model, or use merge_and_unload to get plain nn.Linear layers back"
            )

    def unpatch(self) -> nn.Module:
        """Take every adapter out, merged updates subtracted; original modules and flags back."""
        self._check_reversible("unpatch")
        with torch.no_grad():
            for path, wrapper in self.wrappers():  # merged updates out, svd corrections back
                replace_module(self.model, path, wrapper.restore_base())
        return self._finish()

    def merge_and_unload(self, safe_merge: bool = True) -> nn.Module:
        """Merge the active updates (only those), then put plain modules back everywhere: every
        other change to a base weight (merged inactive updates, svd corrections) is undone."""
        self.merge(safe_merge)
        with torch.no_grad():
            for path, w in self.wrappers():
                keep = None if w.adapters_disabled else w.active_adapter
                replace_module(self.model, path, w.restore_base(keep=keep))
            for path, layer in tt_modules(self.model):
                if isinstance(layer, TTLinear):
                    replace_module(self.model, path, dense_linear(layer))
        return self._finish()

    def _finish(self) -> nn.Module:
        for param, flag in self.original_flags:
            param.requires_grad_(flag)
        self._detach()
        return self.model

    # ------------------------------------------------------------------ save, load

    def save(self, folder: str | os.PathLike[str], adapter_name: str | None = None) -> Path:
        """Write adapter ``adapter_name`` (default: the active one) into ``folder``."""
        name = adapter_name or self.active or ""
        self._check_name(name)
        meta = {
            "adapter_name": name,
            "model_type": self.model_type,
            "target_names": self.targets[name],
        }
        return write_adapter(folder, self.configs[name], meta, adapter_tensors(self.model, name))

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs: Any) -> Path | None:
        """peft's ``PeftModel.save_pretrained`` for a patched model: writes the active adapter
        only. Trainer's options (``state_dict``, ``safe_serialization``...) are ignored;
        ``is_main_process=False`` writes nothing. The model's own ``save_pretrained`` is left
        alone (it writes the whole model); see also :func:`~tensortrain_nn.save_adapter`.

        Example:
            >>> import tempfile
            >>> from tensortrain_nn import patch
            >>> model = patch(nn.Sequential(nn.Linear(8, 8)), target_modules=["0"], r=2, tt_rank=2)
            >>> get_state(model).save_pretrained(tempfile.mkdtemp()).name != ""
            True
        """
        if not kwargs.get("is_main_process", True):
            return None
        return self.save(save_directory)

    @classmethod
    def load(
        cls, model: nn.Module, folder: str | os.PathLike[str], adapter_name: str | None = None
    ) -> SurgeryState:
        """Install a saved adapter and its tensors; see :func:`~tensortrain_nn.load_adapter`."""
        config, meta, tensors = read_adapter(folder)
        saved_type, here = meta["model_type"], model_type(model)
        if saved_type and here and saved_type != here:
            raise TTValueError(
                f"adapter in {folder!s} was trained on model_type {saved_type!r}, not {here!r}"
            )
        name = adapter_name or meta["adapter_name"] or "default"
        state = cls.for_model(model)
        state._check_new_name(name)
        plans = plan_targets(model, config, name, verb="load_adapter")
        with state._transaction() as undo:
            state._install(config, name, plans, undo, svd_from_weight=False)
            match_ranks(model, tensors, name)  # a rank budget: the ranks come from the file
            put_tensors(model, name, tensors, str(folder), undo)
            for _, wrapper in state.wrappers():  # init="svd": the saved initial part comes out
                undo.extend(wrapper.after_load(name))
        return state


@overload
def get_state(model: nn.Module, required: Literal[True] = True) -> SurgeryState: ...
@overload
def get_state(model: nn.Module, required: bool) -> SurgeryState | None: ...
def get_state(model: nn.Module, required: bool = True) -> SurgeryState | None:
    """The model's :class:`SurgeryState`; with ``required`` (default) an error if not patched.

    Raises:
        TTValueError: ``required`` and the model was never patched (or was unpatched).

    Example:
        >>> get_state(nn.Linear(2, 2), required=False) is None
        True
    """
    state = model.__dict__.get(STATE_ATTR)
    if isinstance(state, SurgeryState):
        return state
    if required:
        raise TTValueError("the model is not patched: call tensortrain_nn.patch(model, ...) first")
    return None
