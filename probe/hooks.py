"""Hook lifetime: the one place where gateprobe attaches hooks to a model and removes them.

Every part that hooks a model (the recorder, calibration, interventions, ablation, attribution,
the dashboard's live page) goes through :func:`hooks_attached`, so that

* hooks are attached all-or-none: if attaching the k-th fails, the ones before it are removed;
* hooks are removed in a ``finally``, also when the model (or a hook) raises;
* a hook an adapter registered without returning its handle is removed too (every module's hook
  dictionaries are compared with a snapshot taken before attaching).

:func:`eval_mode` puts a model in eval mode for a block and gives every submodule back its own
mode afterwards.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterable

from torch import nn

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
