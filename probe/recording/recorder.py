"""Recorder: scoped forward hooks feeding streaming accumulators.

Hooks exist only inside ``with Recorder(...)`` (attached all-or-none and removed by
:func:`probe.hooks.hooks_attached`, also when the model raises); the model is in eval mode inside
and every submodule gets its own mode back after it (:func:`probe.hooks.eval_mode`). Forward
passes run under ``torch.inference_mode()``: recording never builds an autograd graph.
"""
from __future__ import annotations

import functools
import warnings
from contextlib import ExitStack

import torch
from torch import Tensor, nn

from ..adapters import Site
from ..devices import autocast, model_device
from ..errors import ModelError, NumericalError, calling_model
from ..hooks import eval_mode, hooks_attached, site_attachers
from ..rundir.settings import RecordSettings
from ..rundir.state import new_layer_stats
from .context import BatchContext


class Recorder:
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
        self._hooks: ExitStack | None = None
        self._ctx: BatchContext | None = None

    def __enter__(self) -> "Recorder":
        hooks = ExitStack()
        try:
            hooks.enter_context(eval_mode(self.model))
            hooks.enter_context(hooks_attached(self.model, site_attachers(self.sites, lambda name: _Sink(self, name))))
        except BaseException:
            hooks.close()
            raise
        self._hooks = hooks
        return self

    def __exit__(self, *exc) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.close()

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None, labels: Tensor, group: Tensor,
                capture: int = 0) -> Tensor:
        """Run the model on one batch and accumulate; returns the output ``[B, 3, H, W]``."""
        if self._hooks is None:
            raise RuntimeError("Recorder.forward must be called inside `with Recorder(...)`")
        self._ctx = BatchContext(hole, sketch, labels, group, self.n_labels, self.border, image=image)
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
        if not torch.isfinite(out).all():
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


class _Sink:
    """What an adapter's hooks call: routes the tensors to the recorder under the layer's name."""

    def __init__(self, recorder: Recorder, name: str):
        self.recorder, self.name = recorder, name

    def gated(self, logits: Tensor, gates: Tensor) -> None:
        self.recorder._on_gated(self.name, logits, gates)

    def partial(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, out: Tensor | None = None) -> None:
        self.recorder._on_partial(self.name, valid_in, new_valid, coverage, out)


