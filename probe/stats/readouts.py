"""Read-outs of binned distributions: AUC, top-quantile thresholds, IoU, means.

All functions work on whole arrays: histograms ``[..., bins]`` over the same bin edges, with
the leading dimensions (channels, labels) broadcast, so there are no per-channel Python loops.
Within a bin, values are treated as uniformly spread; that is the only approximation.
"""
from __future__ import annotations

import numpy as np


def auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of "value separates positive from negative", ``[...]``.

    ``positive``/``negative`` ``[..., bins]`` counts. Pairs in the same bin count one half (uniform
    spread within a bin gives exactly one half in expectation). NaN where either side is empty.
    """
    pos = positive.astype(np.float64)
    neg = negative.astype(np.float64)
    neg_below = np.cumsum(neg, axis=-1) - neg
    n_pos, n_neg = pos.sum(-1), neg.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (neg_below + 0.5 * neg)).sum(-1) / (n_pos * n_neg)


def auc_error_bound(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Largest error of :func:`auc_from_histograms` from the binning, ``[...]``: pairs that share a
    bin count one half, and at most half of them are ordered the other way, so the exact AUC lies
    within ``sum_b pos_b * neg_b / (2 * N_pos * N_neg)`` of the binned one."""
    pos, neg = positive.astype(np.float64), negative.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * neg).sum(-1) / (2 * pos.sum(-1) * neg.sum(-1))


def top_quantile_threshold(counts: np.ndarray, edges: np.ndarray, quantile: float) -> np.ndarray:
    """The value above which a fraction ``quantile`` of the mass lies, ``[...]``, interpolated
    linearly inside its bin. ``counts`` ``[..., bins]``, ``edges`` ``[..., bins + 1]`` (finite;
    broadcast against ``counts``' leading dimensions)."""
    counts = counts.astype(np.float64)
    total = counts.sum(-1, keepdims=True)
    above = np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1]  # mass at or above each bin
    target = quantile * total
    # the bin holding the threshold: the last bin whose mass-at-or-above reaches the target
    idx = np.clip((above >= target).sum(-1, keepdims=True) - 1, 0, counts.shape[-1] - 1)
    in_bin = np.take_along_axis(counts, idx, -1)
    above_bin = np.take_along_axis(above, idx, -1) - in_bin
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(in_bin > 0, (target - above_bin) / in_bin, 0.0)
    edges = np.broadcast_to(edges, counts.shape[:-1] + (counts.shape[-1] + 1,))
    lo, hi = np.take_along_axis(edges, idx, -1), np.take_along_axis(edges, idx + 1, -1)
    return (hi - np.clip(frac, 0, 1) * (hi - lo))[..., 0]


def mass_above(counts: np.ndarray, edges: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Counts above ``threshold`` ``[...]`` in ``counts`` ``[..., bins]`` over ``edges``
    ``[..., bins + 1]``, the bin that holds the threshold contributing its uniform share."""
    counts = counts.astype(np.float64)
    lo, hi = edges[..., :-1], edges[..., 1:]
    share = np.clip((hi - threshold[..., None]) / (hi - lo), 0, 1)
    return (counts * share).sum(-1)


def iou_above(label_counts: np.ndarray, all_counts: np.ndarray, edges: np.ndarray,
              threshold: np.ndarray) -> np.ndarray:
    """Network Dissection IoU of ``value > threshold`` with each label.

    ``label_counts`` ``[L, C, bins]`` (pixels of label l), ``all_counts`` ``[C, bins]`` (all
    pixels), ``edges`` ``[C, bins + 1]``, ``threshold`` ``[C]``. Returns ``[L, C]``.
    """
    inter = mass_above(label_counts, edges, threshold[None])
    active = mass_above(all_counts, edges, threshold)[None]
    size = label_counts.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (active + size - inter)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
