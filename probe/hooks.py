"""Hook lifetime: the one place where gateprobe attaches hooks to a model and removes them.

Every part that hooks a model (the recorder, calibration, interventions, ablation, attribution,
the dashboard's live page) goes through :func:`hooks_attached`, so that

* hooks are attached all-or-none: if attaching the k-th fails, the ones before it are removed;
* hooks are removed in a ``finally``, also when the model (or a hook) raises;
* a hook an adapter registered without returning its handle is removed too (every module's hook
  dictionaries are compared with a snapshot taken before attaching).

:func:`eval_mode` puts a model in eval mode for a block and gives every submodule back its own
mode afterwards; :class:`UserState` puts back, after every forward pass, the state a model changed
in it (discovery's probe pass, calibration and recording all run inside one).
"""
from __future__ import annotations

import functools
import warnings
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_EXTRA_DICTS = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _hook_keys(model: nn.Module) -> dict[int, dict[str, set]]:
    return {id(m): {d: set(getattr(m, d, {})) for d in _HOOK_DICTS} for m in model.modules()}


def _remove_new_hooks(model: nn.Module, before: dict[int, dict[str, set]]) -> None:
    for module in model.modules():
        snapshot = before.get(id(module), {})
        for name in _HOOK_DICTS:
            hooks = getattr(module, name, None)
            if not hooks:
                continue
            for key in [k for k in hooks if k not in snapshot.get(name, ())]:
                del hooks[key]
                for extra in _EXTRA_DICTS:
                    getattr(module, extra, {}).pop(key, None)


@contextmanager
def hooks_attached(model: nn.Module, attachers: Iterable[Callable[[], list]]):
    """Call each of ``attachers`` (a function that registers hooks on modules of ``model`` and
    returns their handles) and yield the handles; every hook is gone after the block, and none is
    left if an attacher raises."""
    before = _hook_keys(model)
    handles: list = []
    try:
        for attach in attachers:
            handles += list(attach() or [])
        yield handles
    finally:
        try:
            for handle in handles:
                handle.remove()
        finally:
            _remove_new_hooks(model, before)


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore every submodule's own mode after it
    (``model.train(was_training)`` would reset submodules a user had deliberately set)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def site_attachers(sites, sink_for: Callable[[str], object]) -> list[Callable[[], list]]:
    """One attacher per site: ``site.adapter.attach(site.module, sink_for(site.name))``."""
    return [lambda site=site: site.adapter.attach(site.module, sink_for(site.name)) for site in sites]


class SiteHooks:
    """Base of a ``with`` block that has ``self.model`` in eval mode and the adapters' hooks of
    ``self.sites`` attached (all or none, removed on exit, also when the model raises), each site's
    tensors routed to ``self.sink(name)``. ``self.attached`` says whether the block is open."""

    model: nn.Module
    sites: list
    _hooks: ExitStack | None = None

    def sink(self, name: str):
        raise NotImplementedError

    @property
    def attached(self) -> bool:
        return self._hooks is not None

    def __enter__(self):
        hooks = ExitStack()
        try:
            hooks.enter_context(eval_mode(self.model))
            hooks.enter_context(hooks_attached(self.model, site_attachers(self.sites, self.sink)))
        except BaseException:
            hooks.close()
            raise
        self._hooks = hooks
        return self

    def __exit__(self, *exc) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.close()


class UserState:
    """The state a user handed over (every tensor of ``model.state_dict()``, one copy kept), put
    back after every forward pass while the ``with`` block lasts.

    The copy is taken when it is built, before any forward. A forward hook on the model (called
    also when the forward raises) copies back every tensor the forward changed, so a model that
    changes itself in forward (a spectral norm whose power iteration runs in eval mode too) is
    probed, calibrated and recorded with the user's state in every batch, and between forwards its
    state, and so the run's weights hash, is the one handed over; the first change is reported in
    one warning. Leaving the block puts back what still differs and leaves
    no inference tensor in the model (``.data`` set inside ``torch.inference_mode`` would be one,
    and training it afterwards would fail). A tensor whose shape or dtype changed (a lazy module)
    cannot be put back and is named in the warning."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.saved = {name: t.detach().clone() for name, t in model.state_dict(keep_vars=True).items()}
        self.warned, self._handle = False, None

    def __enter__(self) -> "UserState":
        self._handle = self.model.register_forward_hook(lambda *_: self.put_back(), always_call=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self.put_back()
        with torch.inference_mode(False):
            for name, t in self.model.state_dict(keep_vars=True).items():
                if t.is_inference() and name in self.saved:
                    t.data = self.saved[name].to(t.device).clone()

    def put_back(self) -> None:
        """Copy back every tensor that differs from the saved state; warn the first time."""
        changed, lost = [], []
        for name, t in self.model.state_dict(keep_vars=True).items():
            saved = self.saved.get(name)
            if saved is None or (saved.shape, saved.dtype) != (t.shape, t.dtype):
                lost.append(name)
                continue
            if saved.device != t.device:  # the model was moved after the state was kept
                saved = self.saved[name] = saved.to(t.device)
            if not _same_bits(t.detach(), saved):
                changed.append(name)
                with torch.no_grad():
                    t.copy_(saved)
        if (changed or lost) and not self.warned:
            self.warned = True
            names = ", ".join((changed + lost)[:4]) + (", ..." if len(changed) + len(lost) > 4 else "")
            warnings.warn(f"{type(self.model).__name__} changed its own state in a forward pass "
                          f"({len(changed) + len(lost)} tensors: {names}; e.g. a spectral norm whose power iteration "
                          f"runs in eval mode too); gateprobe puts the state you handed over back after every forward, "
                          f"so every batch is recorded with it" + (f" (except {', '.join(lost)}: their shape changed)"
                                                                   if lost else ""), stacklevel=2)


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors of one shape and dtype hold the same bytes (NaN weights equal themselves)."""
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def with_user_state(record):
    """Decorate ``record(model, ...)``: the call runs inside :class:`UserState` ``(model)``."""

    @functools.wraps(record)
    def wrapped(model: nn.Module, *args, **kwargs):
        with UserState(model):
            return record(model, *args, **kwargs)

    return wrapped
