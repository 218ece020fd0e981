"""Adapters: where the gate or the mask lives in a given layer class.

An adapter knows, for one layer class, its geometry and how to attach hooks that hand the
recorder what it needs:

* gated layers call ``sink.gated(logits, gates)`` with the pre-sigmoid logits and the gates,
  both ``[B, C, h, w]``;
* partial layers call ``sink.partial(valid_in, new_valid, coverage)`` with the input valid mask
  ``[B, 1 or C_in, H, W]``, the updated mask ``[B, 1 or C, h, w]`` and the window coverage
  ``count / window`` ``[B, 1 or C, h, w]``, and optionally ``out=`` the layer output ``[B, C, h, w]``
  (used to check that nothing leaks outside the updated mask, claim P1).

The lookup is a small table (:data:`ADAPTERS`, class -> adapter); :func:`register_adapter` adds
third-party classes. Adding one is a few lines: subclass :class:`GatedAdapter` or
:class:`PartialAdapter` and implement ``attach``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from functools import cache

from torch import nn

from ..errors import ModelError


def _pair(v) -> int:
    return v[0] if isinstance(v, tuple) else v


def conv_geometry(conv: nn.Conv2d, channels: int | None = None) -> dict:
    """Kernel, stride, dilation and padding (first spatial axis) of a convolution."""
    return {"channels": channels or conv.out_channels, "kernel": _pair(conv.kernel_size),
            "stride": _pair(conv.stride), "dilation": _pair(conv.dilation), "padding": _pair(conv.padding)}


class GatedAdapter:
    kind = "gated"

    def geometry(self, module: nn.Module) -> dict:
        raise NotImplementedError

    def attach(self, module: nn.Module, sink) -> list:
        """Register hooks on ``module`` that call ``sink.gated(logits, gates)``; return the handles."""
        raise NotImplementedError

    def ablate(self, module: nn.Module, channel: int, value: float) -> list:
        """Register hooks that force gate ``channel`` to ``value``; return the handles (optional:
        adapters without it cannot run ablations)."""
        raise NotImplementedError(f"{type(module).__name__}: this adapter cannot ablate gate channels")


class PartialAdapter:
    kind = "partial"

    def geometry(self, module: nn.Module) -> dict:
        """Geometry plus ``window``: the number of mask values under one window (k*k, times the
        input channels for multi-channel masks)."""
        raise NotImplementedError

    def attach(self, module: nn.Module, sink) -> list:
        """Register hooks that call ``sink.partial(valid_in, new_valid, coverage)``."""
        raise NotImplementedError


ADAPTERS: dict[type, GatedAdapter | PartialAdapter] = {}  # filled by probe.adapters.own, thirdparty and users


def register_adapter(layer_class: type, adapter: GatedAdapter | PartialAdapter) -> None:
    """Teach gateprobe a new layer class (exact class match wins over subclass match)."""
    ADAPTERS[layer_class] = adapter


def adapter_for(module: nn.Module):
    """The adapter for ``module``'s class: exact match, else the nearest base class, else a
    registered class of the same name whose instances' submodules ``module`` has too (a user's own
    copy of a layer, duck-typed); None if none."""
    for cls in type(module).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    for cls, adapter in ADAPTERS.items():
        if cls.__name__ == type(module).__name__ and _has_children_of(module, cls):
            return adapter
    return None


@cache
def _children_of(cls: type) -> frozenset:
    """The submodule names of a minimal ``cls(1, 1, 1)`` (empty if it cannot be built)."""
    try:
        reference = cls(1, 1, 1)
    except Exception:  # noqa: BLE001  (any class may refuse these arguments)
        return frozenset()
    return frozenset(name for name, _ in reference.named_children())


def _has_children_of(module: nn.Module, cls: type) -> bool:
    wanted = _children_of(cls)
    return bool(wanted) and wanted <= {name for name, _ in module.named_children()}


FOUND_BY = ("own layer", "adapter", "discovered")


@dataclass
class Site:
    """One recordable gate or mask update: its name (module path, plus ``:opN`` when a module
    holds several), kind, geometry and adapter; ``found_by`` (one of :data:`FOUND_BY`),
    ``pattern`` (what was matched, for discovered sites), the gate's ``activation`` and
    ``binned``: what the gate histograms are taken over, ``"logit"`` (the pre-sigmoid value; only
    for sigmoid gates) or ``"gate"`` (the gate value itself: any other activation)."""

    name: str
    kind: str
    module: nn.Module = field(repr=False)
    adapter: object = field(repr=False)
    channels: int = 0
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    window: float = 0.0
    found_by: str = "adapter"
    pattern: str = ""
    activation: str = ""

    @property
    def binned(self) -> str:
        return "logit" if self.kind == "gated" and self.activation == "sigmoid" else "gate"


@dataclass
class Survey:
    """:func:`survey`'s answer: the sites, and the multiplications that looked like gates but were
    not taken (each with where and why), and whether the probe pass failed (``probe_error``)."""

    sites: list[Site]
    not_taken: list = field(default_factory=list)
    probe_error: str = ""


def survey(model: nn.Module, pattern: str | None = None, *, gate_activations=(), probe=None,
           discover: bool = True, by_class: bool = True) -> Survey:
    """Every gate and partial-convolution mask update of ``model``, optionally filtered by a
    comma-separated list of shell patterns on the site name (``encoder.*,bottleneck.0``).

    Modules are looked up by class first (:func:`adapter_for`: gateprobe's own layers, then
    registered adapters); one probe pass (:func:`probe.adapters.discovery.discover`, on ``probe``
    = ``(image, hole)`` or a small default batch) finds the gates and mask updates of every other
    module. Class-found sites come in module order, then discovered ones in execution order.
    ``discover=False`` skips the probe pass; ``by_class=False`` the class lookup (everything is
    then discovered: for comparisons)."""
    from .discovery import discover as probe_pass

    patterns = [p.strip() for p in pattern.split(",")] if pattern else None
    sites = []
    for name, module in model.named_modules() if by_class else ():
        adapter = adapter_for(module)
        if adapter is not None:
            found_by = "own layer" if type(adapter).__module__.endswith(".own") else "adapter"
            sites.append(Site(name, adapter.kind, module, adapter, **adapter.geometry(module), found_by=found_by,
                              activation="sigmoid" if adapter.kind == "gated" else ""))
    result = Survey(sites)
    if discover:
        try:
            found = probe_pass(model, probe, gate_activations, known={id(s.module) for s in sites})
        except Exception as err:
            if not sites:
                raise ModelError(f"the discovery probe pass failed: {type(err).__name__}: {err}; pass a probe "
                                 "batch the model accepts, or register an adapter") from err
            result.probe_error = f"{type(err).__name__}: {err}"
        else:
            result.not_taken = found.candidates
            for name, module, adapter in found.sites:
                sites.append(Site(name, adapter.kind, module, adapter, **adapter.geometry(module),
                                  found_by="discovered", pattern=adapter.pattern, activation=adapter.activation))
    if patterns:
        result.sites = [s for s in sites if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    if not result.sites:
        hints = "".join(f"\n  {c.where or 'model'}: {c.reason}" for c in result.not_taken)
        raise ModelError("no gated or partial-convolution layers found"
                         + (f" matching --layers {pattern!r}" if pattern else
                            "; name the gate activation (--gate-activation NAME) or register an adapter for "
                            "the model's layer class (probe.adapters.register_adapter)") + hints)
    return result


def find_sites(model: nn.Module, pattern: str | None = None, **options) -> list[Site]:
    """The sites of :func:`survey` (same arguments)."""
    return survey(model, pattern, **options).sites
