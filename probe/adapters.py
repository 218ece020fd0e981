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

from .layers import GatedConv2d, PartialConv2d


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


class OwnGatedAdapter(GatedAdapter):
    """:class:`probe.layers.GatedConv2d`: logits from the ``gate`` conv, gates from ``hook_gate``."""

    def geometry(self, module: GatedConv2d) -> dict:
        return conv_geometry(module.gate)

    def attach(self, module: GatedConv2d, sink) -> list:
        seen = {}

        def on_logits(_m, _inputs, logits):
            seen["logits"] = logits

        def on_gate(_m, _inputs, gates):
            sink.gated(seen.pop("logits"), gates)

        return [module.gate.register_forward_hook(on_logits), module.hook_gate.register_forward_hook(on_gate)]

    def ablate(self, module: GatedConv2d, channel: int, value: float) -> list:
        def force(_m, _inputs, gates):
            gates = gates.clone()
            gates[:, channel] = value
            return gates

        return [module.hook_gate.register_forward_hook(force)]


class OwnPartialAdapter(PartialAdapter):
    """:class:`probe.layers.PartialConv2d`: input mask from the call, the rest from its hook points."""

    def geometry(self, module: PartialConv2d) -> dict:
        return conv_geometry(module) | {"window": module.window_size}

    def attach(self, module: PartialConv2d, sink) -> list:
        seen = {}

        def on_call(_m, args):
            seen["valid_in"] = args[1]

        def on_coverage(_m, _inputs, coverage):
            seen["coverage"] = coverage

        def on_valid(_m, _inputs, new_valid):
            seen["new_valid"] = new_valid

        def on_out(_m, _inputs, out):
            sink.partial(seen.pop("valid_in"), seen.pop("new_valid"), seen.pop("coverage"), out=out)

        return [module.register_forward_pre_hook(on_call), module.hook_coverage.register_forward_hook(on_coverage),
                module.hook_valid.register_forward_hook(on_valid), module.hook_out.register_forward_hook(on_out)]


ADAPTERS: dict[type, GatedAdapter | PartialAdapter] = {
    GatedConv2d: OwnGatedAdapter(),
    PartialConv2d: OwnPartialAdapter(),
}


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
        raise ValueError("no gated or partial-convolution layers found"
                         + (f" matching --layers {pattern!r}" if pattern else
                            "; register an adapter for the model's layer class (probe.adapters.register_adapter)"))
    return sites
