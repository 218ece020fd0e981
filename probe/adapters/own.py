"""Adapters for gateprobe's own layers, observable by design through their hook points."""
from __future__ import annotations

from ..layers import GatedConv2d, PartialConv2d
from .base import GatedAdapter, PartialAdapter, conv_geometry, register_adapter


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


register_adapter(GatedConv2d, OwnGatedAdapter())
register_adapter(PartialConv2d, OwnPartialAdapter())
