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


def cell_index(bounds: np.ndarray, bins: int, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``bounds`` ``[cells + 1]`` (shared by the channels) or ``[C, cells + 1]`` (per channel): the
    first fine bin of each cell, and ``bins``. Returns ``starts`` ``[C * cells]``, the cells' first
    bins in the flattened ``[C * bins]`` axis (for ``np.*.reduceat``), ``cell`` ``[C, bins]`` each
    fine bin's cell and ``offset`` ``[C, bins]`` its offset ``0 .. w - 1`` inside it."""
    bounds = np.broadcast_to(np.asarray(bounds, dtype=np.int64), (channels, np.shape(bounds)[-1]))
    fine = np.arange(bins)
    cell = np.stack([np.searchsorted(row[:-1], fine, side="right") - 1 for row in bounds]) if channels else \
        np.zeros((0, bins), np.int64)
    offset = fine[None] - np.take_along_axis(bounds, cell, 1)
    starts = (np.arange(channels)[:, None] * bins + bounds[:, :-1]).ravel()
    return starts, cell, offset


def cell_fit(total: np.ndarray, phi: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (channel, cell) the linear fit ``phi_b ~ a + beta * o_b`` over the fine bins ``b`` of the
    cell (``o_b`` = offset 0..w-1 in the cell), weighted by ``total`` ``[C, bins]``, and the largest
    |residual| over the bins the cell's pixels can occupy (``total_b > 0``). ``phi`` ``[C, bins]``;
    ``bounds`` the first fine bin of each cell (and ``bins``): ``[cells + 1]`` shared by the channels
    or ``[C, cells + 1]`` per channel (:func:`cell_index`).
    Returns ``a``, ``beta``, ``max_residual``, each ``[C, cells]``."""
    channels, bins = total.shape
    starts, cell, o = cell_index(bounds, bins, channels)
    o = o.astype(np.float64)
    t = total.astype(np.float64)
    f = np.broadcast_to(phi, total.shape).astype(np.float64)
    shape = (channels, -1)

    def per_cell(values):
        return np.add.reduceat(values.reshape(-1), starts).reshape(shape)

    def spread(values):  # [C, cells] -> [C, bins], each bin its cell's value
        return np.take_along_axis(values, cell, 1)

    n = per_cell(t)
    with np.errstate(invalid="ignore", divide="ignore"):
        o_mean = np.where(n > 0, per_cell(t * o) / n, 0.0)
        f_mean = np.where(n > 0, per_cell(t * f) / n, 0.0)
        do, df = o - spread(o_mean), f - spread(f_mean)
        var = np.where(n > 0, per_cell(t * do ** 2) / n, 0.0)
        cov = np.where(n > 0, per_cell(t * do * df) / n, 0.0)
        beta = np.where(var > 1e-12, cov / np.where(var > 1e-12, var, 1.0), 0.0)
    a = f_mean - beta * o_mean
    residual = np.where(t > 0, np.abs(f - spread(a) - spread(beta) * o), 0.0)
    return a, beta, np.maximum.reduceat(residual.reshape(-1), starts).reshape(shape)


def cell_functional(counts: np.ndarray, moments: np.ndarray, fit) -> tuple[np.ndarray, np.ndarray]:
    """``sum_b pos_b * phi_b`` for each (label, channel) from the label's cell counts and offset
    sums ``[L, C, cells]`` and :func:`cell_fit` of ``phi``: ``(estimate, bound)`` ``[L, C]``. The
    estimate is exact when ``phi`` is linear inside every cell the label occupies (e.g. a cell of
    one occupied fine bin); in general ``|exact - estimate| <= bound`` = sum over cells of
    count * max |fit residual| (the label's count and mean inside a cell are exact)."""
    a, beta, residual = fit
    counts, moments = counts.astype(np.float64), moments.astype(np.float64)
    estimate = (counts * a[None]).sum(-1) + (moments * beta[None]).sum(-1)
    return estimate, (counts * residual[None]).sum(-1)


def midranks(total: np.ndarray) -> np.ndarray:
    """Mid-rank of each fine bin among all pixels, ``[C, bins]``: pixels below plus half the bin."""
    total = total.astype(np.float64)
    return np.cumsum(total, -1) - 0.5 * total


def capacity_bound(counts: np.ndarray, total: np.ndarray, weight: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``max sum_b pos_b * weight_b`` over the label's fine counts ``0 <= pos_b <= total_b`` with its
    cell counts ``counts`` ``[L, C, cells]`` (``weight`` ``[C, bins]`` >= 0, ``total`` ``[C, bins]``,
    cells ``bounds`` as :func:`cell_fit`), summed over the cells ``[L, C]``: per cell, the label's
    pixels fill the bins of largest weight first, each up to the total's pixels there (the label
    cannot hold more pixels of a bin than all labelled pixels do). Never above ``counts * max weight``."""
    channels, bins = total.shape
    _, cell, _ = cell_index(bounds, bins, channels)
    cells = counts.shape[-1]
    group = np.arange(channels)[:, None] * cells + cell  # [C, bins]: the (channel, cell) of each bin
    t, w = total.astype(np.float64).ravel(), np.broadcast_to(weight, total.shape).astype(np.float64).ravel()
    order = np.lexsort((-w, group.ravel()))  # by (channel, cell), then largest weight first
    t, w, g = t[order], w[order], group.ravel()[order]
    first = np.searchsorted(g, np.arange(channels * cells))  # the first sorted bin of each (channel, cell)
    cum_t, cum_v = np.cumsum(t), np.cumsum(t * w)
    base_t = np.where(first > 0, cum_t[first - 1], 0.0)[g]  # pixels of the (channel, cell) before each bin
    base_v = np.where(first > 0, cum_v[first - 1], 0.0)[g]
    span = float(t.sum()) + 1.0  # (channel, cell) k's capacities lie in [k * span, (k + 1) * span)
    xp = np.concatenate([np.arange(channels * cells) * span, g * span + cum_t - base_t])
    fp = np.concatenate([np.zeros(channels * cells), cum_v - base_v])
    key = np.lexsort((xp, np.concatenate([np.arange(channels * cells), g])))
    xp, fp = xp[key], fp[key]
    n = np.minimum(counts.astype(np.float64), total.astype(np.float64).sum(-1, keepdims=True))  # [L, C, cells]
    query = (np.arange(channels * cells).reshape(channels, cells) * span)[None] + n
    # beyond a cell's capacity (impossible for recorded counts) interp stops at the cell's full value
    return np.interp(query, xp, fp).sum(-1)


def auc_from_cells(counts: np.ndarray, moments: np.ndarray, total: np.ndarray,
                   bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label-vs-rest AUC ``[L, C]`` from cell statistics (:class:`~probe.stats.histograms.LabelCellHistogram`)
    and the fine ``total`` ``[C, bins]`` of the same pixels (cells ``bounds``, see :func:`cell_fit`), with
    its error bound against the exact pixel AUC. The fine-binned AUC is ``(sum_b pos_b M_b - N_pos^2 / 2)
    / (N_pos N_neg)`` (``M_b`` the bin's mid-rank; :func:`auc_from_histograms` rewritten), whose rank sum
    is linear in the label's fine counts: :func:`cell_functional`.

    Bound: (1) the cells' error in the rank sum, ``sum_b pos_b r_b`` (``r_b`` the fit's residual),
    at most the largest ``sum_b pos_b |r_b|`` any fine counts ``pos_b <= T_b`` with the cell's count
    allow (:func:`capacity_bound`), plus (2) the fine bins' ties: pairs in one bin count one half and
    may all be ordered one way, ``sum_b pos_b neg_b / 2 = sum_b pos_b T_b / 2 - sum_b pos_b^2 / 2``,
    at most the capacity bound of ``T_b / 2`` less ``n_c^2 / (2 k_c)`` per cell (``k_c`` the cell's
    occupied bins; Cauchy-Schwarz). Where the cells are single fine bins (8 labels or fewer) both
    parts are exact: (1) is zero and (2) is ``sum_b pos_b neg_b / 2``, which an ordering of each
    bin's pixels (the label's above the rest, or below) attains unless the bin's values are real
    ties, so the bound is tight there. Coarser cells also know each label's offset sum, which these
    bounds do not use: they may exceed the worst case that the recorded counts allow. The AUC is
    clipped to [0, 1]."""
    n_pos = counts.astype(np.float64).sum(-1)
    n_neg = total.astype(np.float64).sum(-1)[None] - n_pos
    a, beta, _ = fit = cell_fit(total, midranks(total), bounds)
    rank, _ = cell_functional(counts, moments, fit)
    channels, bins = total.shape
    _, cell, offset = cell_index(bounds, bins, channels)
    residual = np.abs(midranks(total) - np.take_along_axis(a, cell, 1) - np.take_along_axis(beta, cell, 1) * offset)
    residual = np.where(total > 0, residual, 0.0)
    rank_bound = capacity_bound(counts, total, residual, bounds)
    occupied = np.add.reduceat((total > 0).reshape(-1).astype(np.float64),
                               cell_index(bounds, bins, channels)[0]).reshape(channels, -1)  # [C, cells]
    c64 = counts.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        squares = np.where(occupied[None] > 0, c64 ** 2 / occupied[None], 0.0).sum(-1)
        ties = capacity_bound(counts, total, total.astype(np.float64) / 2, bounds) - squares / 2
        # the cells' linear fit can put a label of one or two pixels beyond [0, 1]; the exact AUC is
        # inside, so clipping only brings the estimate closer and the bound still holds
        auc = np.clip((rank - n_pos ** 2 / 2) / (n_pos * n_neg), 0.0, 1.0)
        bound = (rank_bound + np.clip(ties, 0, n_pos * n_neg / 2)) / (n_pos * n_neg)
    return auc, bound


def iou_from_cells(counts: np.ndarray, moments: np.ndarray, total: np.ndarray, bounds: np.ndarray,
                   edges: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Network Dissection IoU ``[L, C]`` of ``value > threshold`` ``[C]`` with each label, from cell
    statistics and the fine ``total`` ``[C, bins]`` over ``edges`` ``[C, bins + 1]``: the label's
    pixels above the threshold (the crossing bin contributing its uniform share, as
    :func:`iou_above`) are :func:`cell_functional` of that share; exact when the crossing cell
    holds the label in one fine bin or the label follows the total's shape tilted linearly."""
    lo, hi = edges[..., :-1], edges[..., 1:]
    share = np.clip((hi - threshold[:, None]) / (hi - lo), 0, 1)  # [C, bins]
    inter, _ = cell_functional(counts, moments, cell_fit(total, share, bounds))
    size = counts.astype(np.float64).sum(-1)
    inter = np.clip(inter, 0, size)
    active = (total * share).sum(-1)[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (active + size - inter)


def iou_from_counts(inter: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Network Dissection IoU ``[L, C]`` from exact counts: ``inter`` ``[L, C]`` each label's pixels
    above the channel's threshold (:class:`~probe.stats.layer_stats.IouCounts`) and ``size`` ``[L, C]``
    (or ``[L, 1]``) the label's pixels. The pixels above the threshold of a channel are the sum of
    ``inter`` over the labels (every labelled pixel has one label), as :func:`iou_from_cells`'s
    ``active`` counts the labelled pixels."""
    inter, size = inter.astype(np.float64), size.astype(np.float64)
    active = inter.sum(0, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (active + size - inter)
