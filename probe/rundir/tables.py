"""Tidy tables from the recorder's accumulators: ``layers``, ``channels``, ``labels``, ``evolution``.

Column meanings (gate statistics are over pixels at the layer's own resolution; see
:mod:`probe.recording.context` for how holes, sketches and labels are brought there):

channels: ``mean``, ``std``; ``mean_hole``, ``mean_valid``, ``mean_border``, ``mean_far``,
``mean_sketch`` (hole cells on a sketch stroke), ``mean_hole_plain`` (hole cells off it);
``auc_hole`` (gate separates hole from valid; 0.5 = not at all, 1 = higher in the hole),
``auc_sketch`` (inside the hole, sketch vs no sketch); ``soft_fraction`` (share of pixels whose gate
is not within 5% of either end of the gate's own range ``[lo, hi]``: in ``(lo + 0.05 (hi - lo),
hi - 0.05 (hi - lo))``, which is (0.05, 0.95) for a sigmoid. The range is (0, 1) for sigmoid and
hard-sigmoid gates, and for any other activation the smallest and largest gate value of the layer
over the run; NaN for runs recorded before state version 7); ``threshold`` (gate value exceeded by the top
``quantile`` of all pixels); ``p_hole``/``q_hole``, ``p_sketch``/``q_sketch`` (image-group t-tests,
BH across all channels of the run); ``is_hole``, ``is_valid``, ``is_sketch``, ``semantic_label``
and the display string ``role`` (:mod:`probe.rundir.roles`).

labels: ``auc`` (label vs the rest), ``iou`` (Network Dissection: gate above ``threshold`` vs the
label, over the labelled pixels), ``iou_exact`` (the ``iou`` is exact for ``value > threshold``, the
value being the logit of a sigmoid gate and the threshold its logit: counted by the IoU pass of
:mod:`probe.recording.iou_pass`; false: read from the label statistics, which spread each fine bin's
pixels, or each cell's, evenly, as in runs recorded without the pass or merged from shards recorded
apart), ``threshold``, ``mean_in``, ``mean_out``, ``pixels`` (label pixels at that resolution),
``p_value``, ``q_value`` (BH across all (layer, channel, label) tests). The controls of a semantic
role, at the layer's resolution: ``trivial_auc`` and ``trivial_feature`` (the best single trivial
input feature, ``max(AUC, 1 - AUC)``); ``joint_trivial_auc`` (the six trivial features together:
the cross-fitted histogram classifier of :mod:`probe.stats.joint`); ``joint_difference`` (``auc -
joint_trivial_auc``) and its 95% interval over image groups ``joint_difference_low`` /
``joint_difference_high`` (cluster-robust, from the per-group rank sums of the gate and of the
joint score; NaN with fewer than 3 groups or without the controls).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats.diversity import gate_covariance, participation_ratio
from ..stats.joint import joint_control
from ..stats.layer_stats import TRIVIAL_FEATURES, GatedLayerStats, PartialLayerStats, controls_of
from ..stats.readouts import (auc_error_bound, auc_from_cells, auc_from_histograms, iou_from_cells, iou_from_counts,
                              mass_above, sigmoid, top_quantile_threshold)
from ..stats.regions import BORDER, FAR, HOLE, HOLE_PLAIN, HOLE_SKETCH, VALID
from ..stats.significance import (bh_qvalues, difference_effects, difference_interval, group_t_test, label_effects,
                                  rank_influence)
from .roles import assign_roles


def _ratio(a, b):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(a, dtype=np.float64) / np.asarray(b, dtype=np.float64)


def layer_table(stats: dict, order: list[str], image_size: tuple[int, int]) -> pd.DataFrame:
    """One row per recorded layer, in execution order, with geometry and receptive field.

    The receptive field follows the execution order as a chain: each layer adds
    ``(kernel - 1) * dilation`` input steps of its input's pixel spacing in image pixels."""
    rows, rf = [], 1.0
    for depth, name in enumerate(order):
        s = stats[name]
        site = s.site
        h, w = s.size_
        in_h = s.input_size_[0] if isinstance(s, PartialLayerStats) else h * site.stride
        rf += (site.kernel - 1) * site.dilation * image_size[0] / in_h
        rows.append({"layer": name, "kind": site.kind, "depth": depth, "channels": site.channels,
                     "height": h, "width": w, "kernel": site.kernel, "stride": site.stride,
                     "dilation": site.dilation, "receptive_field": int(round(rf)),
                     "found_by": getattr(site, "found_by", "adapter"),
                     "activation": getattr(site, "activation", "") if site.kind == "gated" else "",
                     "binned": getattr(site, "binned", "logit") if site.kind == "gated" else "",
                     "effective_channels": _effective_channels(s)})
    return pd.DataFrame(rows)


def _effective_channels(s) -> float:
    """Participation ratio of the channel maps: the gates of a gated layer; every channel of the
    updated mask of a partial layer (a single-channel mask is one map shared by all channels: 1)."""
    moments = s.moments if isinstance(s, GatedLayerStats) else s.mask_moments
    if moments is None or moments.n_ == 0:  # a run of state version 2: the mask moments were not kept
        return float("nan")
    return participation_ratio(gate_covariance(moments.comoment_.numpy(), moments.n_))


def channel_and_label_tables(stats: dict, order: list[str], classes: list[str], quantile: float,
                             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``channels`` and ``labels`` tables of every gated layer (see the module docstring)."""
    channel_frames, label_frames = [], []
    controls, joint = controls_of(stats), {}
    for name in order:
        s = stats[name]
        if not isinstance(s, GatedLayerStats):
            continue
        channel_frames.append(_channels_of_layer(name, s, quantile))
        owner = controls[name]
        if id(owner) not in joint:  # one read-out per resolution
            joint[id(owner)] = joint_control(owner.joint) if len(owner.joint) else None
        label_frames.append(_labels_of_layer(name, s, classes, channel_frames[-1].threshold_logit.to_numpy(),
                                             owner.trivial, joint[id(owner)]))
    if not channel_frames:  # no gated layer: empty tables that still carry their columns
        return _empty(CHANNEL_COLUMNS), _empty(LABEL_COLUMNS)
    channels = pd.concat(channel_frames, ignore_index=True)
    labels = pd.concat(label_frames, ignore_index=True)
    channels["q_hole"] = bh_qvalues(channels.p_hole.to_numpy())
    channels["q_sketch"] = bh_qvalues(channels.p_sketch.to_numpy())
    labels["q_value"] = bh_qvalues(labels.p_value.to_numpy())
    channels = pd.concat([channels, assign_roles(channels, labels)], axis=1)
    return channels.drop(columns="threshold_logit"), labels


def channel_thresholds(s: GatedLayerStats, quantile: float) -> np.ndarray:
    """float64 ``[C]``: each channel's value exceeded by the top ``quantile`` of all the layer's
    pixels, on the axis its histograms are over (the logit of sigmoid gates, else the gate value;
    :func:`binned_by_logit`), from its region histograms summed over the regions. The tables'
    ``threshold`` and the thresholds the IoU pass counts against (:mod:`probe.recording.iou_pass`),
    computed on the CPU either way so that both are the same numbers."""
    r = s.regions
    return top_quantile_threshold(r.counts_.cpu().numpy().sum(0), r.binning.to("cpu").edges().numpy(), quantile)


def _channels_of_layer(name: str, s: GatedLayerStats, quantile: float) -> pd.DataFrame:
    r = s.regions
    counts = r.counts_.numpy()
    sums, pixels = r.sums_.sum(0).numpy(), r.pixels_.sum(0).numpy()
    n = pixels.sum()
    mean = sums.sum(0) / n
    hole, valid = HOLE, VALID
    edges = r.bin_edges().numpy()
    threshold_logit = channel_thresholds(s, quantile)
    by_logit = binned_by_logit(s)
    group_sums, group_pixels = r.sums_.numpy(), r.pixels_.numpy().astype(np.float64)
    frame = pd.DataFrame({
        "layer": name, "channel": np.arange(r.channels),
        # the variance comes from the Chan-merged co-moment (each batch centred on its own mean):
        # E[g^2] - E[g]^2 from float32 sums cancels catastrophically for nearly constant gates
        "mean": mean, "std": np.sqrt(np.clip(np.diag(gate_covariance(s.moments.comoment_.numpy(), s.moments.n_)), 0, None)),
        "mean_hole": _ratio(sums[hole].sum(0), pixels[hole].sum()),
        "mean_valid": _ratio(sums[valid].sum(0), pixels[valid].sum()),
        "mean_border": _ratio(sums[BORDER], pixels[BORDER]),
        "mean_far": _ratio(sums[FAR], pixels[FAR]),
        "mean_sketch": _ratio(sums[HOLE_SKETCH], pixels[HOLE_SKETCH]),
        "mean_hole_plain": _ratio(sums[HOLE_PLAIN], pixels[HOLE_PLAIN]),
        "auc_hole": auc_from_histograms(counts[hole].sum(0), counts[valid].sum(0)),
        "auc_sketch": auc_from_histograms(counts[HOLE_SKETCH], counts[HOLE_PLAIN]),
        "auc_hole_error": auc_error_bound(counts[hole].sum(0), counts[valid].sum(0)),
        "soft_fraction": _soft_fraction(counts.sum(0), edges, *soft_band(s)),
        "threshold": sigmoid(threshold_logit) if by_logit else threshold_logit,
        "threshold_logit": threshold_logit,
        "p_hole": group_t_test(difference_effects(group_sums, group_pixels, hole, valid)),
        "p_sketch": group_t_test(difference_effects(group_sums, group_pixels, [HOLE_SKETCH], [HOLE_PLAIN])),
    })
    return frame


SOFT_MARGIN = 0.05  # gates within this share of the range of either end count as saturated
KNOWN_RANGES = {"sigmoid": (0.0, 1.0), "hardsigmoid": (0.0, 1.0)}  # activation -> (lo, hi) of its output


def soft_band(s: GatedLayerStats) -> tuple[float, float]:
    """``(low, high)``: the band of soft gates of the layer on the axis its histograms are over (the
    logit of sigmoid gates, else the gate value), see ``soft_fraction`` in the module docstring;
    NaN where the layer's range is unknown (no gate value kept, or a constant gate)."""
    by_logit = binned_by_logit(s)  # sigmoid gates (gateprobe's own layers may not name their activation)
    known = KNOWN_RANGES.get("sigmoid" if by_logit else getattr(s.site, "activation", ""))
    lo, hi = known if known else (float(v) for v in s.gate_range_.cpu())
    if not hi > lo:
        return np.nan, np.nan
    low, high = lo + SOFT_MARGIN * (hi - lo), hi - SOFT_MARGIN * (hi - lo)
    return (float(np.log(low / (1 - low))), float(np.log(high / (1 - high)))) if by_logit else (low, high)


def binned_by_logit(s: GatedLayerStats) -> bool:
    """Whether the layer's histograms are over the pre-sigmoid logit (sigmoid gates) rather than
    over the gate value itself (any other activation, ``site.binned == "gate"``)."""
    return getattr(s.site, "binned", "logit") == "logit"


def _soft_fraction(counts: np.ndarray, edges: np.ndarray, low: float, high: float) -> np.ndarray:
    """Share of pixels whose binned value lies in ``(low, high)`` (see :func:`soft_band`), per
    channel, from ``counts`` ``[C, bins]`` over ``edges`` ``[C, bins + 1]``."""
    if np.isnan(low):
        return np.full(counts.shape[0], np.nan)
    inside = mass_above(counts, edges, np.full(counts.shape[0], low)) - \
        mass_above(counts, edges, np.full(counts.shape[0], high))
    return inside / counts.sum(-1)


LABEL_CHUNK = 128  # labels read out together: the [groups, labels, channels] arrays of one chunk at a time


def _labels_of_layer(name: str, s: GatedLayerStats, classes: list[str], threshold_logit: np.ndarray, trivial,
                     joint) -> pd.DataFrame:
    lab = s.labels
    counts, moments = lab.counts_.cpu().numpy(), lab.moments_.cpu().numpy()  # [L, C, cells]
    total = lab.total_.cpu().numpy()  # [C, bins], every labelled pixel
    edges = lab.bin_edges().cpu().numpy()
    n_labels, n_channels = counts.shape[:2]
    bounds = lab.bounds.cpu().numpy()
    auc, auc_error = auc_from_cells(counts, moments, total, bounds)
    flag = auc_error > AUC_ERROR_FLAG
    trivial_auc, trivial_feature = _trivial_control(trivial)
    iou, iou_exact = _iou(s, counts, moments, total, bounds, edges, threshold_logit)
    # the per-(group, label) sums, LABEL_CHUNK labels at a time: dense [G, L, C] arrays of every label
    # at once were the peak of a run's memory at 1,200 labels (benchmarks/labels_scaling.py)
    all_sums, all_pixels = (t.cpu().numpy() for t in lab.group_totals())  # [G, C], [G]
    all_ranks = lab.group_totals(ranks=True)[0].cpu().numpy() if joint is not None else None
    mean_in, mean_out, p = (np.empty((n_labels, n_channels)) for _ in range(3))
    difference, low, high = (np.full((n_labels, n_channels), np.nan) for _ in range(3))
    for start in range(0, n_labels, LABEL_CHUNK):
        stop = min(n_labels, start + LABEL_CHUNK)
        group_sums, group_pixels = (t.cpu().numpy() for t in lab.dense_sums(labels=(start, stop)))  # [G, l, C], [G, l]
        sums, pixels = group_sums.sum(0), group_pixels.sum(0)  # [l, C], [l]
        mean_in[start:stop] = _ratio(sums, pixels[:, None])
        mean_out[start:stop] = _ratio(all_sums.sum(0)[None] - sums, (all_pixels.sum() - pixels)[:, None])
        # the rest of the labels as one more column, so that label_effects' totals are every label's
        rest_sums = (all_sums - group_sums.sum(1))[:, None]
        rest_pixels = (all_pixels - group_pixels.sum(1))[:, None]
        effects = label_effects(np.concatenate([group_sums, rest_sums], 1),
                                np.concatenate([group_pixels, rest_pixels], 1).astype(np.float64))
        p[start:stop] = group_t_test(effects[:-1])
        if joint is not None:
            difference[start:stop], low[start:stop], high[start:stop] = _joint_difference(
                lab, auc[start:stop], joint, (start, stop), all_ranks, all_pixels)
    joint_auc = joint.auc if joint is not None else np.full(n_labels, np.nan)
    grid_label, grid_channel = np.meshgrid(np.arange(n_labels), np.arange(n_channels), indexing="ij")
    return pd.DataFrame({
        "layer": name, "channel": grid_channel.ravel(), "label_id": grid_label.ravel(),
        "label": np.asarray(classes, dtype=object)[grid_label.ravel()],
        "auc": auc.ravel(), "auc_error": auc_error.ravel(), "auc_error_flag": flag.ravel(),
        "trivial_auc": np.repeat(trivial_auc[:, None], n_channels, 1).ravel(),
        "trivial_feature": np.repeat(trivial_feature[:, None], n_channels, 1).ravel(),
        "joint_trivial_auc": np.repeat(joint_auc[:, None], n_channels, 1).ravel(),
        "joint_difference": difference.ravel(), "joint_difference_low": low.ravel(),
        "joint_difference_high": high.ravel(),
        "iou": iou.ravel(), "iou_exact": np.repeat(iou_exact[None], n_labels, 0).ravel(),
        "threshold": np.repeat((sigmoid(threshold_logit) if binned_by_logit(s) else threshold_logit)[None], n_labels,
                               0).ravel(),
        "mean_in": mean_in.ravel(), "mean_out": mean_out.ravel(),
        "pixels": np.repeat(_label_pixels(lab)[:, None], n_channels, 1).ravel(), "p_value": p.ravel(),
    })


def _iou(s: GatedLayerStats, counts: np.ndarray, moments: np.ndarray, total: np.ndarray, bounds: np.ndarray,
         edges: np.ndarray, threshold_logit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``iou`` ``[L, C]`` of a layer and, per channel ``[C]``, whether it is exact: from the IoU
    pass's counts (``s.iou``) in the channels whose counted threshold is this run's threshold
    (``threshold_logit`` ``[C]``), else from the label cells (``counts``, ``moments`` ``[L, C, cells]``,
    ``total`` ``[C, bins]``; :func:`~probe.stats.readouts.iou_from_cells`)."""
    exact = np.zeros(len(threshold_logit), dtype=bool) if s.iou is None else \
        s.iou.threshold.cpu().numpy() == threshold_logit
    if not exact.all():  # the cells' estimate, where no count is (read only then: at many labels it is not cheap)
        cells = iou_from_cells(counts, moments, total, bounds, edges, threshold_logit)
        if not exact.any():
            return cells, exact
    counted = iou_from_counts(s.iou.inter.cpu().numpy(), counts.astype(np.int64).sum(-1))
    return (counted if exact.all() else np.where(exact[None], counted, cells)), exact


def _label_pixels(lab) -> np.ndarray:
    """``[L]`` int64: each label's pixels over all groups (from the slots)."""
    pixels = np.zeros(lab.labels, dtype=np.int64)
    keys = lab.slot_keys_.cpu().numpy()
    if len(keys):
        np.add.at(pixels, keys[:, 1], lab.slot_pixels_.cpu().numpy())
    return pixels


# labels.auc_error_flag: auc_error above this. auc_error is the bound of auc_from_cells: with the cells
# single fine bins (8 labels or fewer) it is sum_b pos_b neg_b / (2 N_pos N_neg), the error that an
# ordering of the pixels inside each bin attains (tight: the flag says the AUC really can be off by
# more, unless the bin's values are exact ties); with coarser cells the worst case of fine counts no
# larger than the total's in each bin (the labels' offset sums unused, so it can exceed what they allow).
# The bound before it, sum_b pos_b T_b / 2 with the whole count at the worst residual, was set on
# every row of a saturated gate whose AUC is exact to 2e-4 (tests/test_label_accuracy.py).
AUC_ERROR_FLAG = 0.005


def _joint_difference(lab, auc: np.ndarray, joint, labels: tuple[int, int], all_ranks: np.ndarray,
                      all_pixels: np.ndarray) -> tuple[np.ndarray, ...]:
    """``auc - joint`` ``[l, C]`` of the labels ``labels`` ``(start, stop)`` of one layer, with its
    95% image-group interval (low, high). The gate's per-group influence comes from its bin ranks
    (:meth:`~probe.stats.binning.Binning.rank_table`; ``all_ranks`` ``[G, C]`` and ``all_pixels``
    ``[G]`` their sums over every label), the joint score's from its pooled mid-ranks; both are the
    linearisations of ``0.5 + mean rank in - mean rank out``."""
    start, stop = labels
    ranks, pixels = (t.cpu().numpy() for t in lab.dense_sums(ranks=True, labels=labels))  # [G, l, C], [G, l]
    pixels = pixels.astype(np.float64)
    gate = rank_influence(ranks, pixels[..., None], all_ranks[:, None], all_pixels.astype(np.float64)[:, None, None])
    control = rank_influence(joint.ranks[:, start:stop], joint.pixels[:, start:stop], joint.total_ranks[:, start:stop],
                             joint.total_pixels[:, None])
    difference = auc - joint.auc[start:stop, None]
    groups = int((joint.total_pixels > 0).sum())
    low, high = difference_interval(difference, gate - control[..., None], groups)
    return difference, low, high


def _trivial_control(trivial) -> tuple[np.ndarray, np.ndarray]:
    """Per label ``[L]``: the best separation by one trivial input feature, ``max(auc, 1 - auc)``
    over :data:`~probe.stats.layer_stats.TRIVIAL_FEATURES` (a feature lower on the label is as
    trivial as one higher), and that feature's name. NaN / "" when the run kept no trivial features."""
    auc, _ = auc_from_cells(trivial.counts_.cpu().numpy(), trivial.moments_.cpu().numpy(),
                            trivial.total_.cpu().numpy(), trivial.bounds.cpu().numpy())  # [L, F]
    separation = np.fmax(auc, 1 - auc)
    ok = np.isfinite(separation).any(1)
    best = np.where(ok, np.nanargmax(np.where(np.isfinite(separation), separation, -1), axis=1), 0)
    names = np.asarray(TRIVIAL_FEATURES, dtype=object)[best]
    value = np.where(ok, np.take_along_axis(np.nan_to_num(separation, nan=-1), best[:, None], 1)[:, 0], np.nan)
    return value, np.where(ok, names, "")


def evolution_table(stats: dict, order: list[str]) -> pd.DataFrame:
    """One row per partial layer in execution order: measured and predicted valid fractions,
    images whose mask is all valid, and the coverage histogram of flipped locations (claim P2)."""
    rows = []
    for depth, name in enumerate(order):
        s = stats[name]
        if not isinstance(s, PartialLayerStats):
            continue
        n = max(s.images_, 1)
        mean = s.valid_sum_ / n
        cov = s.coverage_hist_.numpy() if s.coverage_hist_ is not None else np.zeros(0, np.int64)
        rows.append({
            "layer": name, "depth": depth, "height": s.size_[0], "width": s.size_[1],
            "images": s.images_,
            "valid_fraction": mean,
            "valid_fraction_std": float(np.sqrt(max(s.valid_sumsq_ / n - mean ** 2, 0.0))),
            "valid_fraction_predicted": s.predicted_sum_ / n,
            "all_valid_images": s.all_valid_ / n,
            "all_valid_images_predicted": s.predicted_all_valid_ / n,
            "valid_fraction_hist": s.valid_hist_.numpy().tolist(),
            "group_valid_fraction": _ratio(s.group_valid_.numpy(), s.group_images_.numpy()).tolist(),
            "group_images": s.group_images_.numpy().tolist(),
            "flipped": int(cov.sum()),
            "coverage_hist": cov.tolist(),
            "coverage_edges": np.linspace(0, 1, len(cov) + 1).tolist(),
            "window": s.window,
            "leak": s.leak_,
        })
    return pd.DataFrame(rows) if rows else _empty(EVOLUTION_COLUMNS)


# Columns of the tables, for empty tables (a run without gated or without partial layers): a
# table with no rows still has its documented columns, so ``run.channels.role`` never KeyErrors.
CHANNEL_COLUMNS = {"layer": object, "channel": np.int64, **{c: np.float64 for c in (
    "mean", "std", "mean_hole", "mean_valid", "mean_border", "mean_far", "mean_sketch", "mean_hole_plain",
    "auc_hole", "auc_sketch", "auc_hole_error", "soft_fraction", "threshold", "p_hole", "p_sketch", "q_hole", "q_sketch")},
    "is_hole": bool, "is_valid": bool, "is_sketch": bool, "semantic_label": object, "role": object}
LABEL_COLUMNS = {"layer": object, "channel": np.int64, "label_id": np.int64, "label": object,
                 **{c: np.float64 for c in ("auc", "auc_error")}, "auc_error_flag": bool, "trivial_auc": np.float64,
                 "trivial_feature": object,
                 **{c: np.float64 for c in ("joint_trivial_auc", "joint_difference", "joint_difference_low",
                                            "joint_difference_high", "iou")}, "iou_exact": bool,
                 **{c: np.float64 for c in ("threshold", "mean_in", "mean_out")},
                 "pixels": np.int64, "p_value": np.float64, "q_value": np.float64}
EVOLUTION_COLUMNS = {"layer": object, "depth": np.int64, "height": np.int64, "width": np.int64, "images": np.int64,
                     **{c: np.float64 for c in ("valid_fraction", "valid_fraction_std", "valid_fraction_predicted",
                                                "all_valid_images", "all_valid_images_predicted")},
                     "valid_fraction_hist": object, "group_valid_fraction": object, "group_images": object,
                     "flipped": np.int64, "coverage_hist": object, "coverage_edges": object,
                     "window": np.float64, "leak": np.float64}


def _empty(columns: dict) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in columns.items()})
