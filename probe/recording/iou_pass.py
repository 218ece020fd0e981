"""The IoU pass: a second, light pass over a run's images that makes Network Dissection's IoU exact.

With more than 8 labels a gated layer keeps each label's statistics in cells coarser than its fine
bins (:class:`~probe.stats.histograms.LabelCellHistogram`), and the IoU of ``value > threshold``
(each channel's top-``quantile`` threshold, known only once every image has been seen) read from
them is approximate: about 0.09 relative error (p90) at 150 labels. After the recording pass,
:func:`iou_thresholds` computes the thresholds exactly as the tables do
(:func:`probe.rundir.tables.channel_thresholds`), and a second pass over the same images, in the
same batches, counts in each layer the labelled pixels above them by (label, channel)
(:class:`~probe.stats.layer_stats.IouCounts`, kept in the layer's state beside its threshold).
The labels are taken at each layer's resolution by the recording pass's rule
(:meth:`~probe.recording.context.BatchContext.labels_at`). The hooks compare and scatter on the device and read
no value back, so the pass costs about one bare forward per image.

``RecordSettings.iou_pass``: ``auto`` counts the gated layers whose label cells are coarser than
their bins (none: no pass), ``on`` every gated layer, ``off`` none (:func:`pass_layers`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..adapters import Site
from ..devices import autocast
from ..errors import calling_model
from ..hooks import SiteHooks
from ..rundir.settings import RecordSettings
from ..rundir.tables import channel_thresholds
from ..stats.layer_stats import GatedLayerStats, IouCounts
from .context import BatchContext


def pass_layers(stats: dict, setting: str) -> list[str]:
    """The gated layers of ``stats`` (layer name -> accumulators) that the IoU pass counts under
    ``setting`` (``RecordSettings.iou_pass``), in their order; empty: no pass."""
    gated = [name for name, s in stats.items() if isinstance(s, GatedLayerStats)]
    if setting == "on":
        return gated
    if setting == "auto":
        return [name for name in gated if stats[name].labels.cells < stats[name].labels.bins]
    return []


def iou_thresholds(stats: dict, layers: list[str], quantile: float) -> dict[str, Tensor]:
    """Layer name -> float64 ``[C]`` CPU tensor: the thresholds the tables will use
    (:func:`probe.rundir.tables.channel_thresholds`) of the recorded ``stats`` of ``layers``."""
    return {name: torch.from_numpy(channel_thresholds(stats[name], quantile)) for name in layers}


def holds_counts(stats: dict, thresholds: dict[str, Tensor]) -> bool:
    """Whether every layer of ``thresholds`` holds IoU counts for exactly its thresholds (restored
    from a checkpoint of its IoU pass)."""
    return all(stats[name].iou is not None and torch.equal(stats[name].iou.threshold.cpu(), t)
               for name, t in thresholds.items())


def new_counts(stats: dict, thresholds: dict[str, Tensor], n_labels: int) -> None:
    """Give every layer of ``thresholds`` zero IoU counts for its thresholds, on its device."""
    for name, t in thresholds.items():
        stats[name].iou = IouCounts(t.to(stats[name].regions.counts_.device), n_labels)


class IouPass(SiteHooks):
    """Attach the IoU pass's hooks to the gated layers of ``counts`` (layer name ->
    :class:`~probe.stats.layer_stats.IouCounts`) for a ``with`` block; each batch through
    :meth:`forward` is added to every layer's counts. Like the :class:`~probe.recording.recorder.Recorder`,
    hooks exist only inside the block (:func:`probe.hooks.hooks_attached`), the model is in eval
    mode there (:func:`probe.hooks.eval_mode`) and runs under ``torch.inference_mode()`` in
    ``settings.dtype``."""

    def __init__(self, model: nn.Module, sites: list[Site], counts: dict[str, IouCounts], n_labels: int,
                 settings: RecordSettings, device: torch.device):
        self.model, self.counts, self.n_labels, self.device = model, counts, n_labels, device
        self.sites = [site for site in sites if site.name in counts]
        self.border, self.dtype = settings.border, settings.dtype
        self._ctx: BatchContext | None = None

    def sink(self, name: str) -> "_Sink":
        return _Sink(self, name)

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None, labels: Tensor, group: Tensor) -> None:
        """Run the model on one batch (``image`` ``[B, 3, H, W]``, ``hole`` ``[B, 1, H, W]``, ``labels``
        ``[B, H, W]``, ``group`` ``[B]``, as :meth:`Recorder.forward` takes them) and count it."""
        if not self.attached:
            raise RuntimeError("IouPass.forward must be called inside `with IouPass(...)`")
        self._ctx = BatchContext(hole, sketch, labels, group, self.n_labels, self.border)
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype), calling_model(self.model):
                self.model(image, hole, sketch)
        finally:
            self._ctx = None


class _Sink:
    """What an adapter's hooks call during the IoU pass: the layer's binned values into its counts."""

    def __init__(self, iou_pass: IouPass, name: str):
        self.iou_pass, self.name = iou_pass, name

    def gated(self, logits: Tensor, gates: Tensor) -> None:
        self.iou_pass.counts[self.name].add(logits, self.iou_pass._ctx)
