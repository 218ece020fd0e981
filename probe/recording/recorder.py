"""Recorder: scoped forward hooks feeding streaming accumulators.

Hooks exist only inside ``with Recorder(...)`` (attached all-or-none and removed by
:func:`probe.hooks.hooks_attached`, also when the model raises); the model is in eval mode inside
and every submodule gets its own mode back after it (:func:`probe.hooks.eval_mode`). Forward
passes run under ``torch.inference_mode()``: recording never builds an autograd graph.
"""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ..adapters import Site
from ..devices import autocast, model_device
from ..errors import ModelError, NumericalError, calling_model
from ..hooks import SiteHooks
from ..rundir.settings import RecordSettings
from ..rundir.state import new_layer_stats
from .context import BatchContext


class Recorder(SiteHooks):
    """Attach the adapters' hooks of ``sites`` to ``model`` for the duration of a ``with`` block.

    Each forward pass through :meth:`forward` feeds every layer's accumulator (``self.stats``,
    layer name -> :class:`GatedLayerStats` / :class:`PartialLayerStats`) and, while
    ``self.capture`` is set, copies the maps of the first ``capture`` images into ``self.captured``.
    """

    def __init__(self, model: nn.Module, sites: list[Site], n_labels: int, settings: RecordSettings | None = None,
                 binnings: dict | None = None, device: torch.device | None = None):
        settings = settings or RecordSettings()
        self.model, self.sites, self.n_labels, self.border = model, sites, n_labels, settings.border
        self.device = model_device(model) if device is None else torch.device(device)
        self.dtype = settings.dtype
        self.stats = new_layer_stats(sites, n_labels, settings, binnings, device=self.device)
        self.order: list[str] = []  # layer names in execution order (filled by the first batch)
        self.capture = 0
        self.captured: dict[str, dict[str, Tensor]] = {}
        self._ctx: BatchContext | None = None

    def sink(self, name: str) -> "_Sink":
        return _Sink(self, name)

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None, labels: Tensor, group: Tensor,
                capture: int = 0) -> Tensor:
        """Run the model on one batch and accumulate; returns the output ``[B, 3, H, W]``."""
        if not self.attached:
            raise RuntimeError("Recorder.forward must be called inside `with Recorder(...)`")
        self._ctx = ctx = BatchContext(hole, sketch, labels, group, self.n_labels, self.border, image=image)
        self.capture = capture
        self.captured = {}
        first = not self.order
        self._first_batch = first
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype), calling_model(self.model):
                out = self.model(image, hole, sketch)
        finally:
            self._ctx = None
        check_output(self.model, out, image)
        bad = ~torch.isfinite(out).all()
        if ctx.nonfinite is not None:  # off the CPU: the layers' NaN flag, read with the output's in one sync
            bad = torch.stack([bad, ctx.nonfinite]).cpu()
            if bool(bad[1]):
                raise NumericalError("NaN gate values in this batch; check the model's weights and inputs")
            bad = bad[0]
        if bool(bad):
            raise NumericalError("the model produced NaN or inf outputs; check its weights and inputs")
        return out

    def _on_gated(self, name: str, logits: Tensor, gates: Tensor) -> None:
        self._note(name)
        try:
            self.stats[name].add(logits.float(), gates.float(), self._ctx)  # (autocast may give bfloat16)
        except RuntimeError as err:  # NaN logits make bincount indices negative; say which layer
            if not torch.isfinite(logits).all():
                raise NumericalError(f"layer {name}: NaN or inf gate values; check the model's weights "
                                     "and inputs") from None
            raise err
        if self.capture:
            self.captured[name] = {"gate": gates[: self.capture].to(torch.float16)}

    def _on_partial(self, name: str, valid_in: Tensor, new_valid: Tensor, coverage: Tensor,
                    out: Tensor | None = None) -> None:
        self._note(name)
        self.stats[name].add(valid_in, new_valid, coverage, self._ctx, out)
        if self.capture:
            self.captured[name] = {"valid": new_valid[: self.capture, :1].to(torch.float16),
                                   "coverage": coverage[: self.capture, :1].to(torch.float16)}

    def _note(self, name: str) -> None:
        if self._first_batch and name not in self.order:
            self.order.append(name)


def check_output(model: nn.Module, out, image: Tensor, what: str = "forward pass") -> None:
    """Refuse (:class:`ModelError`) an output that is not the inpainted batch ``[B, 3, H, W]`` of
    ``image``: a tuple, None, or a tensor of another shape would be recorded as if it were."""
    name = getattr(model, "source_info", {}).get("name") or type(model).__name__
    want = f"[{image.shape[0]}, 3, {image.shape[-2]}, {image.shape[-1]}]"
    fix = ("gateprobe calls model(image, hole, sketch) and needs the inpainted image [B, 3, H, W] back; wrap "
           "the model so that its forward returns only that")
    if not isinstance(out, Tensor):
        kind = "None" if out is None else type(out).__name__
        if isinstance(out, (tuple, list)):
            kind += f" of {len(out)}"
        raise ModelError(f"{name} returned {kind} from its {what}, not a tensor {want}; {fix}")
    if out.dim() != 4 or out.shape[0] != image.shape[0] or out.shape[1] != 3 or tuple(out.shape[-2:]) != tuple(
            image.shape[-2:]):
        raise ModelError(f"{name} returned a tensor of shape {list(out.shape)} from its {what}, expected {want} "
                         f"(3 colour channels at the input's size); {fix}")
    if not out.is_floating_point():
        raise ModelError(f"{name} returned a {out.dtype} tensor from its {what}, expected floating-point colours "
                         f"{want}; {fix}")


class _Sink:
    """What an adapter's hooks call: routes the tensors to the recorder under the layer's name."""

    def __init__(self, recorder: Recorder, name: str):
        self.recorder, self.name = recorder, name

    def gated(self, logits: Tensor, gates: Tensor) -> None:
        self.recorder._on_gated(self.name, logits, gates)

    def partial(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, out: Tensor | None = None) -> None:
        self.recorder._on_partial(self.name, valid_in, new_valid, coverage, out)


