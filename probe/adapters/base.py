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
    """The adapter for ``module``'s class (exact match, else the nearest base class), or None."""
    for cls in type(module).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    return None


@dataclass
class Site:
    """One recordable layer: its module path, kind, geometry and adapter."""

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


def find_sites(model: nn.Module, pattern: str | None = None) -> list[Site]:
    """Every gated or partial layer of ``model`` in module order, optionally filtered by a
    comma-separated list of shell patterns on the layer name (``encoder.*,bottleneck.0``)."""
    patterns = [p.strip() for p in pattern.split(",")] if pattern else None
    sites = []
    for name, module in model.named_modules():
        adapter = adapter_for(module)
        if adapter is None or (patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns)):
            continue
        sites.append(Site(name, adapter.kind, module, adapter, **adapter.geometry(module)))
    if not sites:
        raise ModelError("no gated or partial-convolution layers found"
                         + (f" matching --layers {pattern!r}" if pattern else
                            "; register an adapter for the model's layer class (probe.adapters.register_adapter)"))
    return sites
