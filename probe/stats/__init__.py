"""Streaming, mergeable statistics and their read-outs."""
from .histograms import ConditionedHistogram
from .readouts import auc_from_histograms, iou_above, mass_above, top_quantile_threshold

__all__ = ["ConditionedHistogram", "auc_from_histograms", "iou_above", "mass_above", "top_quantile_threshold"]
