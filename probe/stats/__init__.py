"""Streaming, mergeable statistics and their read-outs (torch and numpy only: no ``torch.nn``
modules, no pandas, nothing else of gateprobe but :mod:`probe.errors`)."""
from .histograms import ConditionedHistogram
from .readouts import auc_from_histograms, iou_above, mass_above, top_quantile_threshold

__all__ = ["ConditionedHistogram", "auc_from_histograms", "iou_above", "mass_above", "top_quantile_threshold"]
