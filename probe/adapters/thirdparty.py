"""Adapters for third-party gated and partial-convolution layers, and the recipe for adding one.

gateprobe records a foreign layer class once an adapter says where its gate or mask lives
(:mod:`probe.adapters`). The adapters below cover the layer designs found in public inpainting
code; each is a few lines, configured with attribute names rather than subclassed:

* :class:`SplitGateAdapter`: one convolution with ``2C`` outputs split into features and gate
  logits, ``torch.sigmoid`` called as a function (DeepFill v2 ports: nipponjo's ``GConv``,
  :class:`probe.models.ported.deepfillv2.GConv`);
* :class:`SigmoidModuleGateAdapter`: a separate gate convolution and an ``nn.Sigmoid`` submodule,
  the activation before or after the gating (e.g. ``conv2d`` / ``mask_conv2d`` / ``sigmoid``);
* :class:`NvidiaPartialConv2dAdapter`: NVIDIA's ``PartialConv2d``, ``return_mask`` on or off (the
  new mask is read from its cached ``update_mask`` attribute);
* :class:`TuplePartialAdapter`: a partial convolution returning ``(output, new_mask)``, valid or
  hole masks, coverage recomputed from the input mask; :class:`MaskConvPartialAdapter` when the
  layer holds its own all-ones ``mask_conv`` (naoto0804's ``PartialConv``).

Recipe for a new class (``MyGatedConv`` computing ``act(self.f(x)) * self.sig(self.g(x))``)::

    from probe.adapters import register_adapter
    from probe.adapters import SigmoidModuleGateAdapter

    register_adapter(MyGatedConv, SigmoidModuleGateAdapter(gate="g", sigmoid="sig"))
    # likewise, with NVIDIA's own class imported from its repository:
    register_adapter(partialconv2d.PartialConv2d, NvidiaPartialConv2dAdapter())

then ``find_sites(model)`` lists every ``MyGatedConv`` and ``gateprobe record`` records it. For a
design none of these covers, subclass :class:`probe.adapters.GatedAdapter` or
:class:`~probe.adapters.PartialAdapter`: ``geometry(module)`` returns ``channels, kernel, stride,
dilation, padding`` (plus ``window`` for partial layers, :func:`probe.adapters.conv_geometry`
does most of it) and ``attach(module, sink)`` registers forward hooks that call
``sink.gated(logits, gates)`` (both ``[B, C, h, w]``) or ``sink.partial(valid_in, new_valid,
coverage)`` (input valid mask ``[B, 1 or C_in, H, W]``; updated valid mask and ``count / window``
``[B, 1 or C, h, w]``) and returns the hook handles. Hooks must only read tensors, never change them in place, so that
the hooked model's output equals the unhooked model's (test it, as
``tests/test_public_models.py`` does). Convert masks to *valid* (1 = known) at the boundary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import GatedAdapter, PartialAdapter, conv_geometry


def _sub(module: nn.Module, name: str | None) -> nn.Module:
    """``module`` itself (``name`` None) or its child at the dotted path ``name``."""
    return module if name is None else module.get_submodule(name)


def _conv_of(module: nn.Module) -> nn.Conv2d:
    """``module`` if it is a convolution, else the first convolution inside it (a spectral-norm or
    weight-norm wrapper, a ``Sequential`` holding one)."""
    if isinstance(module, nn.Conv2d):
        return module
    for inner in module.modules():
        if isinstance(inner, nn.Conv2d):
            return inner
    raise ValueError(f"{type(module).__name__} holds no nn.Conv2d: name the gate convolution explicitly")


class _ConvOutputTap:
    """Calls ``fn(output)`` with the raw convolution output of a ``Conv2d`` subclass whose own
    ``forward`` post-processes it (a layer that gates its own output): the instance's
    ``_conv_forward`` is wrapped for as long as the tap lives; :meth:`remove` unwraps it."""

    def __init__(self, conv: nn.Conv2d, fn):
        self.conv = conv
        original = type(conv)._conv_forward.__get__(conv)

        def tapped(x, weight, bias):
            out = original(x, weight, bias)
            fn(out)
            return out

        conv._conv_forward = tapped

    def remove(self) -> None:
        self.conv.__dict__.pop("_conv_forward", None)


def _call_mask(args: tuple, kwargs: dict, index: int, keyword: str) -> Tensor | None:
    """The mask argument of a forward call, given positionally or by keyword."""
    return args[index] if len(args) > index else kwargs.get(keyword)


def window_count(valid: Tensor, conv: nn.Conv2d) -> Tensor:
    """Valid values under each window of ``conv`` (all mask channels summed): ``[B, 1, h, w]``."""
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=valid.dtype, device=valid.device)
    return F.conv2d(valid.sum(1, keepdim=True), ones, None, conv.stride, conv.padding, conv.dilation)


# ----------------------------------------------------------------------------- gated layers
class SplitGateAdapter(GatedAdapter):
    """One convolution (child ``conv``) with ``2C`` outputs: features ``[:C]``, gate logits ``[C:]``
    (``gate_half="second"``, DeepFill v2) or the reverse (``"first"``); the sigmoid is a function
    call, so the logits are read from the convolution's output and the gates are
    ``sigmoid(logits)``, the same operation on the same tensor as the layer's own.

    Ports that use one class for gated layers and for their ungated to-RGB layers (nipponjo's
    ``GConv`` with ``gated=False``, or ``cnum_out == 3`` / ``activation=None`` giving a conv of
    ``cnum_out`` outputs) are handled: :meth:`is_gated` is False for those instances, which get no
    hooks and so never appear in a run (``find_sites`` still lists them; prefer a separate class)."""

    def __init__(self, conv: str = "conv", gate_half: str = "second"):
        if gate_half not in ("first", "second"):
            raise ValueError(f"gate_half must be 'first' or 'second', not {gate_half!r}")
        self.conv, self.gate_half = conv, gate_half

    def is_gated(self, module: nn.Module) -> bool:
        conv = _sub(module, self.conv)
        half = getattr(module, "cnum_out", conv.out_channels // 2)
        return bool(getattr(module, "gated", True)) and conv.out_channels == 2 * half

    def geometry(self, module: nn.Module) -> dict:
        conv = _sub(module, self.conv)
        channels = conv.out_channels // 2 if self.is_gated(module) else conv.out_channels
        padding = getattr(module, "padding", None)  # the layer's own leading pad, when it pads itself
        return conv_geometry(conv, channels) | ({"padding": padding} if isinstance(padding, int) else {})

    def attach(self, module: nn.Module, sink) -> list:
        if not self.is_gated(module):
            return []
        conv = _sub(module, self.conv)
        half = conv.out_channels // 2

        def on_out(out):
            logits = out[:, half:] if self.gate_half == "second" else out[:, :half]
            sink.gated(logits, torch.sigmoid(logits))

        if conv is module and type(module).forward is not nn.Conv2d.forward:  # a conv that gates its own output
            return [_ConvOutputTap(conv, on_out)]
        return [conv.register_forward_hook(lambda _m, _inputs, out: on_out(out))]


class SigmoidModuleGateAdapter(GatedAdapter):
    """A separate gate convolution (child ``gate``) whose output goes through an ``nn.Sigmoid``
    submodule (child ``sigmoid``), whether the feature activation comes before or after the
    gating: the logits are the sigmoid module's input and the gates its output."""

    def __init__(self, gate: str = "mask_conv2d", sigmoid: str = "sigmoid"):
        self.gate, self.sigmoid = gate, sigmoid

    def geometry(self, module: nn.Module) -> dict:
        return conv_geometry(_conv_of(_sub(module, self.gate)))

    def attach(self, module: nn.Module, sink) -> list:
        def on_sigmoid(_m, inputs, gates):
            sink.gated(inputs[0], gates)

        return [_sub(module, self.sigmoid).register_forward_hook(on_sigmoid)]


# ----------------------------------------------------------------------------- partial layers
class TuplePartialAdapter(PartialAdapter):
    """A partial convolution called ``layer(x, mask)`` that returns ``(output, new_mask)``.

    ``conv`` names the child holding the geometry (None: the layer is itself a ``Conv2d``);
    ``mask_arg``/``mask_keyword`` where the mask is passed; ``hole_masks`` for layers whose masks
    are 1 on holes (converted to valid masks here). ``multi_channel`` says whether the mask has one
    channel per input channel (window ``C_in * k * k``) or one channel (``k * k``); None reads the
    layer's ``multi_channel`` attribute. The coverage is recomputed from the input mask
    (:func:`window_count`); the new mask is the layer's own."""

    def __init__(self, conv: str | None = None, mask_arg: int = 1, mask_keyword: str = "mask",
                 hole_masks: bool = False, multi_channel: bool | None = None):
        self.conv, self.mask_arg, self.mask_keyword = conv, mask_arg, mask_keyword
        self.hole_masks, self.multi_channel = hole_masks, multi_channel

    def _multi(self, module: nn.Module) -> bool:
        return bool(getattr(module, "multi_channel", False)) if self.multi_channel is None else self.multi_channel

    def geometry(self, module: nn.Module) -> dict:
        conv = _sub(module, self.conv)
        mask_channels = conv.in_channels if self._multi(module) else 1
        return conv_geometry(conv) | {"window": float(mask_channels * conv.kernel_size[0] * conv.kernel_size[1])}

    def _valid(self, mask: Tensor) -> Tensor:
        return 1 - mask if self.hole_masks else mask

    def coverage_hooks(self, module: nn.Module, seen: dict) -> list:
        """Hooks that leave ``seen["coverage"]`` before the forward hook runs (none here)."""
        return []

    def attach(self, module: nn.Module, sink) -> list:
        conv, window = _sub(module, self.conv), self.geometry(module)["window"]
        seen: dict = {}

        def on_call(_m, args, kwargs):
            mask = _call_mask(args, kwargs, self.mask_arg, self.mask_keyword)
            # called without a mask: the layer treats every input as valid
            seen["valid_in"] = self._valid(mask) if mask is not None else torch.ones_like(args[0][:, :1])

        def on_out(_m, _args, output):
            valid_in = seen.pop("valid_in")
            coverage = seen.pop("coverage", None)
            if coverage is None:
                coverage = window_count(valid_in, conv) / window
            sink.partial(valid_in, self._valid(output[1]), coverage)

        return [module.register_forward_pre_hook(on_call, with_kwargs=True), *self.coverage_hooks(module, seen),
                module.register_forward_hook(on_out)]


class MaskConvPartialAdapter(TuplePartialAdapter):
    """naoto0804's ``PartialConv``: ``input_conv`` and an all-ones ``mask_conv`` (``C_in -> C_out``,
    no bias) whose output is the valid count; the layer fills its zeros in place afterwards, so the
    hook keeps a copy. Masks have one channel per input channel (window ``C_in * k * k``)."""

    def __init__(self, conv: str = "input_conv", mask_conv: str = "mask_conv"):
        super().__init__(conv=conv, multi_channel=True, mask_keyword="mask")
        self.mask_conv = mask_conv

    def coverage_hooks(self, module: nn.Module, seen: dict) -> list:
        window = self.geometry(module)["window"]

        def on_count(_m, _inputs, count):
            seen["coverage"] = count / window  # a new tensor: the layer's masked_fill_ cannot reach it

        return [_sub(module, self.mask_conv).register_forward_hook(on_count)]


class NvidiaPartialConv2dAdapter(PartialAdapter):
    """NVIDIA's ``PartialConv2d`` (``models/partialconv2d.py``): an ``nn.Conv2d`` subclass called
    ``layer(x, mask_in=None)`` that caches ``update_mask`` and ``mask_ratio`` between calls and
    returns ``(out, update_mask)`` only with ``return_mask=True``. The new valid mask is read from
    the cached ``update_mask`` attribute (so both settings work); the coverage is the count under
    the layer's ``weight_maskUpdater`` divided by its ``slide_winsize``. A call without a mask
    reuses the mask of the previous call at that size, as the layer does (an all-valid mask the
    first time); a single-image mask is broadcast to the batch."""

    def geometry(self, module: nn.Module) -> dict:
        return conv_geometry(module) | {"window": float(module.slide_winsize)}

    def attach(self, module: nn.Module, sink) -> list:
        seen: dict = {}

        def on_call(m, args, kwargs):
            x, mask = args[0], _call_mask(args, kwargs, 1, "mask_in")
            if mask is None:
                mask = kwargs.get("mask")
            size = tuple(x.shape[2:])
            if mask is None and m.last_size == size:
                if "cached" not in seen:
                    raise RuntimeError("PartialConv2d reused a mask cached before the recorder attached; "
                                       "pass the mask explicitly while recording")
                mask = seen["cached"]
            elif mask is None:
                shape = (x.shape[0], x.shape[1]) if m.multi_channel else (1, 1)
                mask = torch.ones(*shape, *size, dtype=x.dtype, device=x.device)
            seen["cached"] = mask
            seen["valid_in"] = mask

        def on_out(m, args, _output):
            valid_in, batch = seen.pop("valid_in"), args[0].shape[0]
            count = F.conv2d(valid_in, m.weight_maskUpdater.to(valid_in), None, m.stride, m.padding, m.dilation)
            new_valid = m.update_mask
            sink.partial(valid_in.expand(batch, *valid_in.shape[1:]), new_valid.expand(batch, *new_valid.shape[1:]),
                         (count / m.slide_winsize).expand(batch, *count.shape[1:]))

        return [module.register_forward_pre_hook(on_call, with_kwargs=True), module.register_forward_hook(on_out)]


__all__ = ["MaskConvPartialAdapter", "NvidiaPartialConv2dAdapter", "SigmoidModuleGateAdapter", "SplitGateAdapter",
           "TuplePartialAdapter", "window_count"]
