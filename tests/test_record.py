"""Known-answer tests of ``record``: every number in a run is checked against an independent oracle.

* Exactness: all gate logits and gates are captured here with our own forward hooks, the regions and
  labels are brought to each layer's resolution with numpy (a re-implementation of the rules
  documented in :mod:`probe.recording.context`), and the exact statistics (sklearn / rank AUC, exact
  quantile IoU, float64 means) are compared with the streamed tables.
* Shards merge into the unsharded run; a planted gated model and a partial-convolution stack have
  analytically known answers; hooks, weights and modes survive a record and a crash; the
  accumulators do not grow with the data; the CLI and the stored samples behave as documented.

Tolerances (why):

* Gate histogram counts, pixel counts, integer table columns: exact.
* Means (``mean``, ``mean_hole``, ... ``mean_in``, ``mean_out``) and ``std``: 1e-5 absolute. Gates
  lie in (0, 1); the recorder sums one image's ``h*w`` gates in float32 (relative rounding about
  ``sqrt(h*w) * 6e-8``, about 2e-6 at 32x32) and adds images in float64.
* AUC: the histogram AUC is *defined* by binning the logits (DEFAULT_BINS bins over each channel's
  calibrated range, cut into segments at calibrated quantiles and uniform inside each, open ends;
  the knots are checked here against the documented calibration rule, recomputed with numpy) and
  counting pairs in one bin as one half; the table must equal that definition, computed
  here independently with sklearn on our own bin indices, to 1e-9. Its distance to the exact
  (pixel-level) AUC is then bounded, channel by channel, by half the share of (positive, negative)
  pairs that fall into one bin (the only pairs the histogram cannot order): we check
  ``|auc_table - auc_exact| <= ties / 2``. No global tolerance is assumed; the observed error
  distribution is printed by ``test_exactness_error_distribution`` (run pytest with ``-s``).
* IoU: values above the exact top-quantile threshold differ from the histogram's only inside the
  bin holding the threshold; the table IoU must equal the uniform-within-that-bin reading to 1e-9
  and, like the exact IoU, lie in the interval that bin's counts allow.
* Merged shards: integer columns exact, every other number within 1e-6 relative.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score
from torch import nn

import probe
from probe.adapters import find_sites
from probe.cli import main
from probe.data import Scenes, collate
from probe.errors import RunError
from probe.layers import GatedConv2d, PartialConv2d
from probe.models import create_model
from probe.recording.calibration import TailQuantiles
from probe.recording.loop import record
from probe.recording.recorder import Recorder
from probe.rundir.merge import merge_runs
from probe.rundir.state import load_stats
from probe.stats.histograms import DEFAULT_BINS

BINS, QUANTILE, BORDER = DEFAULT_BINS, 0.005, 2  # record()'s documented defaults
CALIBRATION, TAIL, MARGIN, MIN_SPAN = 32, 5e-4, 0.25, 1e-3  # the documented calibration rule
# ... and its segments: 16 equal-mass ones up to the threshold band (1 - 2q, 1 - 0.4q), then the top
SAMPLE, LEVELS = 8192, tuple(j / 16 for j in range(1, 16)) + (1 - 2 * QUANTILE, 1 - 0.4 * QUANTILE)
SEGMENT_BINS = (18,) * 16 + (192, 32)  # of the 512 bins: 3/8 for the band, 1/16 for the top
SIZE, N_IMAGES, BATCH, K_SAMPLES = 32, 24, 8, 10
SKETCH, PLAIN, NEAR, FAR = range(4)  # region ids of the oracle (hole on a sketch stroke, hole off it, ...)

# Column names documented in DESIGN.md and the probe/tables.py docstring.
LAYER_COLUMNS = ["layer", "kind", "depth", "channels", "height", "width", "kernel", "stride", "dilation",
                 "receptive_field"]
CHANNEL_COLUMNS = ["layer", "channel", "mean", "std", "mean_hole", "mean_valid", "mean_border", "mean_far",
                   "mean_sketch", "mean_hole_plain", "auc_hole", "auc_sketch", "soft_fraction", "threshold",
                   "p_hole", "q_hole", "p_sketch", "q_sketch", "role"]
LABEL_COLUMNS = ["layer", "channel", "label", "auc", "iou", "threshold", "mean_in", "mean_out", "pixels",
                 "p_value", "q_value"]
EVOLUTION_COLUMNS = ["layer", "valid_fraction", "valid_fraction_predicted", "all_valid_images", "coverage_hist"]


# ============================================================================ models and data
def gated_test_model(seed: int = 0, gate_scale: float = 16.0) -> nn.Module:
    """gated-scenes at width 8 for 32x32 images, random weights. Freshly initialised gate logits
    stay within about +-0.2 (one or two histogram bins, which would make every AUC a tie); the gate
    convolutions are scaled by ``gate_scale`` so that logits spread over several units, as a
    trained model's do. The feature path is untouched."""
    torch.manual_seed(seed)
    model = create_model("gated-scenes", width=8, image_size=SIZE).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GatedConv2d):
                module.gate.weight.mul_(gate_scale)
                module.gate.bias.mul_(gate_scale)
    return model


class TinyMixed(nn.Module):
    """A partial layer, two gated layers (one of stride 2) and an RGB head: both table kinds."""

    accepts_sketch = True

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.pconv = PartialConv2d(3, 4, 3, padding=1)
        self.g1 = GatedConv2d(6, 6, 3)
        self.g2 = GatedConv2d(6, 6, 3, stride=2)
        self.head = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            for g in (self.g1, self.g2):
                g.gate.weight.mul_(8)

    def forward(self, image, hole, sketch=None):
        sketch = torch.zeros_like(hole) if sketch is None else sketch
        x, _ = self.pconv(image * (1 - hole), 1 - hole)
        x = self.g2(self.g1(torch.cat([x, hole, sketch * hole], 1)))
        return self.head(F.interpolate(x, scale_factor=2, mode="nearest"))


def scenes(n: int = N_IMAGES, seed: int = 1) -> Scenes:
    return Scenes(size=SIZE, n=n, seed=seed)


# ============================================================================ the oracle
def capture(model: nn.Module, data, n: int, batch_size: int, sketch: bool = True):
    """Run ``model`` over the first ``n`` items with our own hooks on every GatedConv2d: returns
    logits and gates (layer -> ``[N, C, h, w]`` numpy) and the hole, sketch (bool) and labels
    ``[N, H, W]`` of the items."""
    logits, gates, handles = {}, {}, []
    for name, module in model.named_modules():
        if isinstance(module, GatedConv2d):
            handles.append(module.gate.register_forward_hook(
                lambda m, i, o, name=name: logits.setdefault(name, []).append(o.detach().clone())))
            handles.append(module.hook_gate.register_forward_hook(
                lambda m, i, o, name=name: gates.setdefault(name, []).append(o.detach().clone())))
    items = {"hole": [], "sketch": [], "labels": []}
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = collate([data[i] for i in range(start, min(start + batch_size, n))])
                model(batch["image"], batch["hole"], batch["sketch"] if sketch else None)
                for key in items:
                    items[key].append(batch[key])
    finally:
        for handle in handles:
            handle.remove()
    cat = {k: torch.cat(v).numpy() for k, v in items.items()}
    return ({k: torch.cat(v).numpy() for k, v in logits.items()}, {k: torch.cat(v).numpy() for k, v in gates.items()},
            cat["hole"][:, 0] > 0.5, cat["sketch"][:, 0] > 0.5, cat["labels"])


def cells(hole: np.ndarray, sketch: np.ndarray, labels: np.ndarray, h: int, w: int, border: int = BORDER):
    """The documented downsampling to ``h x w`` (integer factors only), in numpy: hole cell = area
    average >= 0.5; sketch = any sketch pixel in a hole cell; border = valid cells within ``border``
    cells (Chebyshev) of a hole cell; label = the centre pixel of each cell.
    Returns region ids (SKETCH/PLAIN/NEAR/FAR) and labels, both ``[N, h, w]``."""
    n, H, W = hole.shape
    assert H % h == 0 and W % w == 0, "the oracle handles integer downsampling factors only"
    sy, sx = H // h, W // w
    hole_cell = hole.reshape(n, h, sy, w, sx).mean((2, 4)) >= 0.5
    sketch_cell = sketch.reshape(n, h, sy, w, sx).max((2, 4)) & hole_cell
    padded = np.pad(hole_cell, ((0, 0), (border, border), (border, border)))
    near = np.zeros_like(hole_cell)
    for dy in range(2 * border + 1):
        for dx in range(2 * border + 1):
            near |= padded[:, dy:dy + h, dx:dx + w]
    region = np.full(hole_cell.shape, FAR)
    region[near & ~hole_cell] = NEAR
    region[hole_cell] = PLAIN
    region[sketch_cell] = SKETCH
    return region, labels[:, sy // 2::sy, sx // 2::sx]  # centre pixel: floor((i + 0.5) * s)


def calibrated_knots(first_logits: np.ndarray) -> np.ndarray:
    """The documented calibration: per channel, the TAIL and 1 - TAIL quantiles of the first
    images' logits ``[C, P]``, widened by MARGIN of their span (+ MIN_SPAN), no rounding; inside,
    the LEVELS quantiles of every ceil(P / SAMPLE)-th logit. ``[C, 19]`` knots."""
    x = first_logits.astype(np.float64)
    q_lo, q_hi = np.quantile(x, [TAIL, 1 - TAIL], axis=1)
    pad = MARGIN * (q_hi - q_lo) + MIN_SPAN
    inner = np.quantile(x[:, ::-(-x.shape[1] // SAMPLE)], LEVELS, axis=1).T
    return np.concatenate([(q_lo - pad)[:, None], inner, (q_hi + pad)[:, None]], 1)


def bin_index(logits: np.ndarray, knots: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The documented binning of ``logits`` ``[C, P]`` by ``knots``/``starts`` ``[C, K + 1]``: the
    segment is the number of inner knots <= the logit; then (logit - knot) * scale + start, each
    step rounded to float32, clamped to the end bins, truncated."""
    k32 = knots.astype(np.float32)
    x = logits.astype(np.float32)
    segment = (x[:, :, None] >= k32[:, None, 1:-1]).sum(-1)  # [C, P]
    scale = ((starts[:, 1:] - starts[:, :-1]) / (knots[:, 1:] - knots[:, :-1])).astype(np.float32)
    v = x - np.take_along_axis(k32[:, :-1], segment, 1)
    v = v * np.take_along_axis(scale, segment, 1)
    v = v + np.take_along_axis(starts[:, :-1].astype(np.float32), segment, 1)
    return np.clip(v, 0, BINS - 1).astype(np.int64)


def bin_edges(knots: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``[C, BINS + 1]``: bin edges, uniform inside each segment."""
    return np.stack([np.interp(np.arange(BINS + 1), s, k) for k, s in zip(knots, starts)])


def rank_auc(ranks: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of every column of ``onehot`` ``[P, K]`` vs the rest, from average ranks
    ``[C, P]`` (ties count one half); ``[C, K]``, NaN where a side is empty."""
    pos = onehot.sum(0)
    neg = onehot.shape[0] - pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks @ onehot - pos * (pos + 1) / 2) / (pos * neg)


def tie_share(bins: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """Share of (positive, negative) pairs in one bin, ``[C, K]``."""
    C = bins.shape[0]
    per_bin = np.stack([np.stack([np.bincount(bins[c][onehot[:, k]], minlength=BINS) for k in range(onehot.shape[1])])
                        for c in range(C)])  # [C, K, BINS]
    total = np.stack([np.bincount(bins[c], minlength=BINS) for c in range(C)])[:, None]  # [C, 1, BINS]
    pos, neg = per_bin.sum(-1), (total - per_bin).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (per_bin * (total - per_bin)).sum(-1) / (pos * neg)


def quantile_readout(counts: np.ndarray, total: np.ndarray, edges: np.ndarray, q: float):
    """Top-``q`` threshold and label IoU read from bin counts, values spread uniformly inside the
    bin that holds the threshold, written out per channel. ``counts`` ``[L, BINS]`` of one channel,
    ``total`` ``[BINS]``. Returns (crossing bin, threshold logit, iou ``[L]``, iou interval lo, hi)."""
    target = q * total.sum()
    k = BINS - 1
    while total[k:].sum() < target:  # the highest bin whose mass at or above reaches the target
        k -= 1
    above_all, in_all = total[k + 1:].sum(), total[k]
    f = (target - above_all) / in_all
    threshold = edges[k + 1] - f * (edges[k + 1] - edges[k])
    above_l, in_l, size = counts[:, k + 1:].sum(1), counts[:, k], counts.sum(1)
    inter, active = above_l + f * in_l, above_all + f * in_all
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (active + size - inter)
        lo = above_l / (above_all - above_l + in_all - in_l + size)
        hi = (above_l + in_l) / (above_all - above_l + size)
    return k, threshold, iou, lo, hi


class Oracle:
    """Exact statistics of one captured run, layer by layer, plus our own bin counts."""

    def __init__(self, logits, gates, hole, sketch, labels, n_labels: int, binnings: dict):
        self.channels, self.labels, self.counts, self.calibration = [], [], {}, {}
        for layer, L in logits.items():
            first = L[:CALIBRATION].transpose(1, 0, 2, 3).reshape(L.shape[1], -1)
            self.calibration[layer] = calibrated_knots(first)
            self._layer(layer, L, gates[layer], hole, sketch, labels, n_labels, *binnings[layer])
        self.channels = pd.DataFrame(self.channels)
        self.labels = pd.DataFrame(self.labels)

    def _layer(self, layer, L, G, hole, sketch, labels, n_labels, knots, starts):
        """``knots``/``starts``: the run's calibrated binning (its knots are checked against ours in
        a test) so that the counts can be compared exactly even where a 1-ulp logit difference
        moves a knot."""
        N, C, h, w = L.shape
        edges = bin_edges(knots, starts)
        region, lab = cells(hole, sketch, labels, h, w)
        region, lab = region.reshape(-1), lab.reshape(-1)
        x = L.transpose(1, 0, 2, 3).reshape(C, -1).astype(np.float64)  # [C, P]
        g = G.transpose(1, 0, 2, 3).reshape(C, -1).astype(np.float64)
        b = bin_index(L.transpose(1, 0, 2, 3).reshape(C, -1), knots, starts)
        exact_bins = bin_index(np.quantile(x, 1 - QUANTILE, axis=1)[:, None], knots, starts)[:, 0]
        # the m-th largest logit (m = ceil(q * pixels)) lies in the bin where the mass at or above reaches q
        mth = np.sort(x, axis=1)[:, -int(np.ceil(QUANTILE * x.shape[1]))]
        order_bins = bin_index(mth[:, None], knots, starts)[:, 0]
        self.counts[layer] = {
            "regions": np.stack([np.stack([np.bincount(b[c][region == r], minlength=BINS) for c in range(C)])
                                 for r in range(4)]),
            "labels": np.stack([np.stack([np.bincount(b[c][lab == l], minlength=BINS) for c in range(C)])
                                for l in range(n_labels)])}
        is_hole = region <= PLAIN
        onehot_hole = np.stack([is_hole], 1)
        onehot_lab = np.stack([lab == l for l in range(n_labels)], 1)
        in_hole = np.flatnonzero(is_hole)
        onehot_sk = np.stack([region[in_hole] == SKETCH], 1)
        ranks_x, ranks_b = rankdata(x, axis=1), rankdata(b, axis=1)
        ranks_xh, ranks_bh = rankdata(x[:, in_hole], axis=1), rankdata(b[:, in_hole], axis=1)

        def mean(mask):
            return g[:, mask].mean(1) if mask.any() else np.full(C, np.nan)

        means = {"mean_hole": mean(is_hole), "mean_valid": mean(~is_hole), "mean_border": mean(region == NEAR),
                 "mean_far": mean(region == FAR), "mean_sketch": mean(region == SKETCH),
                 "mean_hole_plain": mean(region == PLAIN)}
        mean_in = np.stack([mean(onehot_lab[:, l]) for l in range(n_labels)], 1)  # [C, L]
        mean_out = np.stack([mean(~onehot_lab[:, l]) for l in range(n_labels)], 1)

        threshold = np.quantile(x, 1 - QUANTILE, axis=1)  # exact top-quantile value of each channel
        active = x > threshold[:, None]
        inter = active.astype(np.float64) @ onehot_lab
        size = onehot_lab.sum(0)
        top = x >= mth[:, None]  # the m largest (and their ties): a set between the bins above and the crossing bin
        inter_top = top.astype(np.float64) @ onehot_lab
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = inter / (active.sum(1)[:, None] + size[None] - inter)
            iou_top = inter_top / (top.sum(1)[:, None] + size[None] - inter_top)
        auc_lab, auc_lab_bins = rank_auc(ranks_x, onehot_lab), rank_auc(ranks_b, onehot_lab)
        ties_lab = tie_share(b, onehot_lab)
        for c in range(C):
            read = quantile_readout(self.counts[layer]["labels"][:, c], np.bincount(b[c], minlength=BINS), edges[c],
                                    QUANTILE)
            exact_bin = int(exact_bins[c])
            self.channels.append({
                "layer": layer, "channel": c, "mean": g[c].mean(), "std": g[c].std(),
                **{name: value[c] for name, value in means.items()},
                "auc_hole": rank_auc(ranks_x[c:c + 1], onehot_hole)[0, 0],
                "auc_hole_bins": rank_auc(ranks_b[c:c + 1], onehot_hole)[0, 0],
                "ties_hole": tie_share(b[c:c + 1], onehot_hole)[0, 0],
                "auc_sketch": rank_auc(ranks_xh[c:c + 1], onehot_sk)[0, 0] if len(in_hole) else np.nan,
                "auc_sketch_bins": rank_auc(ranks_bh[c:c + 1], onehot_sk)[0, 0] if len(in_hole) else np.nan,
                "ties_sketch": tie_share(b[c:c + 1, in_hole], onehot_sk)[0, 0] if len(in_hole) else np.nan,
                "threshold_logit": threshold[c], "crossing_bin": read[0], "exact_bin": exact_bin,
                "order_bin": int(order_bins[c]),
                "bin_width": edges[c, read[0] + 1] - edges[c, read[0]],
                "threshold_readout": read[1]})
            for l in range(n_labels):
                self.labels.append({
                    "layer": layer, "channel": c, "label_id": l, "auc": auc_lab[c, l], "auc_bins": auc_lab_bins[c, l],
                    "ties": ties_lab[c, l], "iou": iou[c, l], "iou_top": iou_top[c, l], "iou_readout": read[2][l], "iou_lo": read[3][l],
                    "iou_hi": read[4][l], "pixels": int(size[l]), "mean_in": mean_in[c, l], "mean_out": mean_out[c, l]})
        # sklearn is the reference for the rank formula: spot-check channel 0 of every layer
        for y, score_x, score_b, got, got_b in [
                (is_hole, x[0], b[0], self.channels[-C]["auc_hole"], self.channels[-C]["auc_hole_bins"]),
                (region[in_hole] == SKETCH, x[0, in_hole], b[0, in_hole], self.channels[-C]["auc_sketch"],
                 self.channels[-C]["auc_sketch_bins"])] + [
                (lab == l, x[0], b[0], auc_lab[0, l], auc_lab_bins[0, l]) for l in range(n_labels)]:
            if 0 < y.sum() < len(y):
                assert got == pytest.approx(roc_auc_score(y, score_x), abs=1e-12)
                assert got_b == pytest.approx(roc_auc_score(y, score_b), abs=1e-12)


# ============================================================================ fixtures
@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    """A 24-image run of the gated test model (3 batches, 10 samples) and its oracle."""
    model, data = gated_test_model(), scenes()
    run = record(model, data, tmp_path_factory.mktemp("exact") / "run", n=N_IMAGES, batch_size=BATCH,
                 samples=K_SAMPLES, progress=False)
    logits, gates, hole, sketch, labels = capture(model, data, N_IMAGES, BATCH)
    binnings = {name: (s.regions.binning.knots.numpy(), s.regions.binning.starts.numpy())
                for name, s in load_stats(run).items() if hasattr(s, "regions")}
    oracle = Oracle(logits, gates, hole, sketch, labels, len(data.classes), binnings)
    return run, oracle, gates, hole


@pytest.mark.parametrize("n, chunk, q", [(5000, 700, 5e-4), (5000, 3, 5e-4), (9, 4, 0.3), (1, 1, 5e-4), (4096, 4096, 0.1)])
def test_tail_quantiles_equal_numpy_over_all_chunks(n, chunk, q):
    """Streamed in chunks, keeping k values per side, the quantiles equal numpy's on all values
    (ties included: values are rounded to a coarse grid)."""
    values = np.round(np.random.default_rng(n + chunk).standard_cauchy((6, n)) * 4) / 4
    tails = TailQuantiles(n, q)
    for start in range(0, n, chunk):
        tails.add(torch.from_numpy(values[:, start:start + chunk]).float())
    lo, hi = tails.quantiles()
    expected = np.quantile(values.astype(np.float32).astype(np.float64), [q, 1 - q], axis=1)
    np.testing.assert_allclose(lo.numpy(), expected[0], rtol=0, atol=1e-9)
    np.testing.assert_allclose(hi.numpy(), expected[1], rtol=0, atol=1e-9)
    assert tails.low.shape[1] <= int(q * (n - 1)) + 2  # bounded memory


def test_bins_are_calibrated_by_the_documented_rule(exact):
    run, oracle, _, _ = exact
    stats = load_stats(run)
    for layer, knots in oracle.calibration.items():
        binning = stats[layer].regions.binning
        # equal up to float32 rounding of the logits (which depends on the batch size)
        got = binning.knots.numpy()
        assert np.abs(got - knots).max() <= 1e-4 * (1 + np.abs(knots).max()), layer
        np.testing.assert_array_equal(binning.starts.numpy(), np.cumsum((0,) + SEGMENT_BINS)[None].repeat(len(got), 0))
        assert stats[layer].labels.binning == binning


def joined(table: pd.DataFrame, oracle: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    both = table.merge(oracle, on=keys, suffixes=("", "_x"), how="outer", indicator=True)
    assert (both["_merge"] == "both").all(), "the table and the oracle disagree on which rows exist"
    return both


def assert_close_nan(a, b, atol, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.array_equal(np.isnan(a), np.isnan(b)), f"{what}: NaN pattern differs"
    ok = ~np.isnan(a)
    worst = np.max(np.abs(a[ok] - b[ok]), initial=0.0)
    assert worst <= atol, f"{what}: max abs error {worst:.3g} > {atol}"


# ============================================================================ 1. exactness
def test_histogram_counts_equal_our_own_binning(exact):
    run, oracle, _, _ = exact
    stats = load_stats(run)
    assert set(stats) == set(oracle.counts)
    for layer, counts in oracle.counts.items():
        np.testing.assert_array_equal(stats[layer].regions.counts_.numpy(), counts["regions"], err_msg=layer)
        np.testing.assert_array_equal(stats[layer].labels.counts_.numpy(), counts["labels"], err_msg=layer)


def test_means_and_std_are_exact(exact):
    run, oracle, _, _ = exact
    ch = joined(run.channels, oracle.channels, ["layer", "channel"])
    for col in ["mean", "std", "mean_hole", "mean_valid", "mean_border", "mean_far", "mean_sketch", "mean_hole_plain"]:
        assert_close_nan(ch[col], ch[col + "_x"], 1e-5, col)
    lab = joined(run.labels, oracle.labels, ["layer", "channel", "label_id"])
    for col in ["mean_in", "mean_out"]:
        assert_close_nan(lab[col], lab[col + "_x"], 1e-5, col)
    np.testing.assert_array_equal(lab.pixels.to_numpy(), lab.pixels_x.to_numpy())
    assert (lab.label == np.asarray(scenes().classes, dtype=object)[lab.label_id]).all()


def test_auc_equals_its_histogram_definition_and_is_within_the_tie_bound(exact):
    run, oracle, _, _ = exact
    ch = joined(run.channels, oracle.channels, ["layer", "channel"])
    lab = joined(run.labels, oracle.labels, ["layer", "channel", "label_id"])
    for frame, col, bins, ties in [(ch, "auc_hole", "auc_hole_bins", "ties_hole"),
                                   (ch, "auc_sketch", "auc_sketch_bins", "ties_sketch"),
                                   (lab, "auc", "auc_bins", "ties")]:
        assert_close_nan(frame[col], frame[bins], 1e-9, f"{col} vs the binned definition")
        ok = frame[col].notna()
        error = (frame[col] - frame[col + "_x"]).abs()[ok]
        assert (error <= frame[ties][ok] / 2 + 1e-9).all(), f"{col}: error beyond half the tie share"
        assert frame[col + "_x"].isna().equals(frame[col].isna())
    assert ch.auc_hole.notna().all() and ch.auc_sketch.notna().all()  # the data has holes and sketches


def test_threshold_and_iou_match_the_exact_quantile_within_one_bin(exact):
    run, oracle, _, _ = exact
    ch = joined(run.channels, oracle.channels, ["layer", "channel"])
    lab = joined(run.labels, oracle.labels, ["layer", "channel", "label_id"])
    # the table's threshold is the uniform-within-bin reading of the exact top-0.5% value...
    assert_close_nan(ch.threshold, 1 / (1 + np.exp(-ch.threshold_readout)), 1e-9, "threshold")
    assert_close_nan(lab.iou, lab.iou_readout, 1e-9, "iou vs uniform-within-bin reading")
    # ...of the bin holding the m-th largest logit (m = ceil(q * pixels)), in every channel
    assert (ch.crossing_bin == ch.order_bin).all(), "the crossing bin must hold the m-th largest logit"
    # the IoU of the m largest lies in the interval the crossing bin's counts allow, in every channel
    top = lab.iou_top.notna()
    assert ((lab.iou_top[top] >= lab.iou_lo[top] - 1e-9) & (lab.iou_top[top] <= lab.iou_hi[top] + 1e-9)).all()
    # np.quantile interpolates between two order statistics (only ~8 pixels above the quantile per
    # layer here), so it can sit a few narrow bins away; where it shares the bin, the same holds
    same = ch.crossing_bin == ch.exact_bin
    assert same.mean() >= 0.1
    logit = np.log(ch.threshold / (1 - ch.threshold))
    inner = same & (ch.crossing_bin > 0) & (ch.crossing_bin < BINS - 1)
    assert ((logit - ch.threshold_logit).abs()[inner] <= ch.bin_width[inner] + 1e-6).all()
    checked = lab.merge(ch.loc[same, ["layer", "channel"]], on=["layer", "channel"])
    checked = checked[checked.iou_x.notna()]
    assert len(checked) > 0.1 * len(lab)
    for col in ["iou", "iou_x"]:
        assert ((checked[col] >= checked.iou_lo - 1e-9) & (checked[col] <= checked.iou_hi + 1e-9)).all(), col


def test_roles_follow_the_documented_rule(exact):
    # the documented defaults, written out here (not read from the code under test)
    MIN_EFFECT, ALPHA, TRIVIAL_MARGIN = 0.2, 0.05, 0.05
    run, _, _, _ = exact
    ch, lab = run.channels, run.labels
    for row in ch.itertuples():
        parts = row.role.split("+")
        assert row.is_hole == ("hole" in parts) and row.is_valid == ("valid" in parts)
        assert row.is_sketch == ("sketch" in parts)
        assert (row.semantic_label != "") == any(p.startswith("semantic:") for p in parts)
        assert ("hole" in parts) == bool(row.auc_hole >= 0.5 + MIN_EFFECT and row.q_hole < ALPHA)
        assert ("valid" in parts) == bool(row.auc_hole <= 0.5 - MIN_EFFECT and row.q_hole < ALPHA)
        assert ("sketch" in parts) == bool(row.auc_sketch >= 0.5 + MIN_EFFECT and row.q_sketch < ALPHA)
        mine = lab[(lab.layer == row.layer) & (lab.channel == row.channel)]
        strong = mine[(mine.auc >= 0.5 + MIN_EFFECT) & (mine.q_value < ALPHA)
                      & (mine.auc >= mine.trivial_auc + TRIVIAL_MARGIN)
                      & (mine.auc >= mine.joint_trivial_auc + TRIVIAL_MARGIN) & (mine.joint_difference_low > 0)]
        semantic = [p for p in parts if p.startswith("semantic:")]
        assert len(semantic) == (1 if len(strong) else 0)
        if len(strong):
            assert semantic[0] == "semantic:" + strong.sort_values("auc").label.iloc[-1]
        assert (row.role == "none") == (parts == ["none"])


def test_exactness_error_distribution(exact):
    """Prints the error distribution of the streamed read-outs against the exact values (these are
    the figures quoted in the documentation); asserts only that it was measured on enough values."""
    run, oracle, _, _ = exact
    ch = joined(run.channels, oracle.channels, ["layer", "channel"])
    lab = joined(run.labels, oracle.labels, ["layer", "channel", "label_id"])
    auc_err = np.concatenate([(ch.auc_hole - ch.auc_hole_x).abs(), (ch.auc_sketch - ch.auc_sketch_x).abs(),
                              (lab.auc - lab.auc_x).abs().dropna()])
    iou_ok = lab.iou_x > 0
    iou_rel = ((lab.iou - lab.iou_x).abs() / lab.iou_x)[iou_ok]
    iou_abs = (lab.iou - lab.iou_x).abs().dropna()
    means = np.concatenate([(ch[c] - ch[c + "_x"]).abs().dropna() for c in ["mean", "mean_hole", "mean_valid",
                                                                             "mean_border"]])
    pct = lambda a, ps: ", ".join(f"p{p} {np.percentile(a, p):.2g}" for p in ps)  # noqa: E731
    print(f"\n{len(ch)} channels, {len(auc_err)} AUCs, {len(iou_rel)} IoUs > 0")
    print("AUC abs error:", pct(auc_err, [50, 90, 99]), f"max {auc_err.max():.2g}")
    print("IoU rel error:", pct(iou_rel, [50, 90]), "| IoU abs error:", pct(iou_abs, [50, 90, 99]))
    print("mean abs error:", f"max {means.max():.2g}")
    assert len(auc_err) > 1000 and len(iou_rel) > 100


# ============================================================================ 8. samples
def test_samples_are_float16_memory_maps_of_the_first_images(exact):
    run, _, gates, hole = exact
    assert run.n_samples == K_SAMPLES
    np.testing.assert_array_equal(run.sample_input("index"), np.arange(K_SAMPLES))
    np.testing.assert_array_equal(run.sample_input("hole")[:, 0] > 0.5, hole[:K_SAMPLES])
    for layer, mine in gates.items():
        stored = run.sample_map(layer, "gate")
        assert isinstance(stored, np.memmap) and stored.dtype == np.float16
        assert stored.shape == (K_SAMPLES,) + mine.shape[1:]
        np.testing.assert_array_equal(np.asarray(stored), mine[:K_SAMPLES].astype(np.float16), err_msg=layer)
    with pytest.raises(RunError):
        run.sample_map(next(iter(gates)), "valid")


# ============================================================================ 2. merge
def assert_tables_equal(a: probe.Run, b: probe.Run, rtol: float = 1e-6, skip: tuple = ()) -> None:
    """Integer, string and list-of-integer columns equal exactly; float columns within ``rtol``."""
    for name in ("layers", "channels", "labels", "evolution"):
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for col in x.columns:
            if col in skip:
                continue
            u, v = x[col], y[col]
            if pd.api.types.is_float_dtype(u):
                np.testing.assert_allclose(u.to_numpy(np.float64), v.to_numpy(np.float64), rtol=rtol, atol=1e-300,
                                           err_msg=f"{name}.{col}")
            elif len(u) and isinstance(u.iloc[0], (list, np.ndarray)) and np.asarray(u.iloc[0]).dtype.kind == "f":
                np.testing.assert_allclose(np.stack(u.to_numpy()), np.stack(v.to_numpy()), rtol=rtol, atol=1e-300,
                                           err_msg=f"{name}.{col}")
            else:
                assert [np.asarray(t).tolist() for t in u] == [np.asarray(t).tolist() for t in v], f"{name}.{col}"


def assert_states_equal(a: probe.Run, b: probe.Run, rtol: float) -> None:
    """Accumulators: integer tensors exactly, float tensors within ``rtol`` of their largest entry
    (an off-diagonal co-moment near 0 has no meaningful relative error)."""
    x, y = load_stats(a), load_stats(b)
    assert list(x) == list(y)
    for layer in x:
        other = y[layer].state_dict()
        for key, value in x[layer].state_dict().items():
            if value.dtype.is_floating_point:
                scale = float(value.abs().nan_to_num().max()) if value.numel() else 0.0
                torch.testing.assert_close(value, other[key], rtol=rtol, atol=rtol * scale, equal_nan=True,
                                           msg=lambda m: f"{layer}/{key}: {m}")
            else:
                assert torch.equal(value, other[key]), (layer, key)


@contextlib.contextmanager
def batch_invariant_convolutions():
    """oneDNN convolutions round differently for a batch of one than inside a larger batch (one
    float32 ulp; measured in ``test_sharded_runs_with_the_default_backend``); the native kernels
    compute each image alone. With them, a shard sees bit-identical gates, so the merge alone is
    under test. One thread, too: with two, a kernel's split of the work (and its float rounding)
    depends on the batch size, which differs between a shard's last batch and the whole run's."""
    old, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = old
        torch.set_num_threads(threads)


SHARD_KW = dict(n=10, batch_size=4, samples=3, progress=False)  # 3 batches, the last of 2 images


@pytest.fixture(scope="module")
def shard_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    model, data = TinyMixed(), scenes(n=10)
    with batch_invariant_convolutions():
        whole = record(model, data, root / "whole", **SHARD_KW)
    return root, model, data, whole


@pytest.mark.parametrize("count", [1, 2, 3, 5])  # 5 shards of 2 images: more shards than batches
def test_merged_shards_equal_the_unsharded_run(shard_setup, count):
    root, model, data, whole = shard_setup
    with batch_invariant_convolutions():
        parts = [record(model, data, root / f"s{count}_{i}", shard=(i, count), **SHARD_KW).path
                 for i in range(count)]
    merged = merge_runs(parts[::-1], root / f"merged{count}")  # the order of the arguments does not matter
    assert merged.manifest["n_images"] == whole.manifest["n_images"] == 10
    assert [s["shard"] for s in merged.manifest["shards"]] == [[i, count] for i in range(count)]
    assert_tables_equal(merged, whole, rtol=1e-6)
    # float32 batch means of the channel moments are Chan-merged per batch: rounding follows the batches
    assert_states_equal(merged, whole, rtol=1e-6)
    for layer, kind in [("pconv", "valid"), ("pconv", "coverage"), ("g1", "gate"), ("g2", "gate")]:
        np.testing.assert_array_equal(merged.sample_map(layer, kind), whole.sample_map(layer, kind))
    np.testing.assert_array_equal(merged.sample_input("index"), whole.sample_input("index"))


def test_sharded_runs_with_the_default_backend(shard_setup, tmp_path):
    """With oneDNN (the default) a batch of one rounds differently (1 ulp), so the shards' float
    sums differ from the unsharded run's at float32 rounding, and a logit within 1 ulp of a bin
    edge may fall in the neighbouring bin (bins are as narrow as a channel's calibrated range
    allows): every statistic stays within 1e-6 relative except the p- and q-values, whose relative
    error the t-test amplifies, and the binned AUCs, where one pixel may move one bin (within the
    AUC error bounds)."""
    _, model, data, _ = shard_setup
    whole = record(model, data, tmp_path / "whole", **SHARD_KW)
    parts = [record(model, data, tmp_path / f"s{i}", shard=(i, 2), **SHARD_KW).path for i in range(2)]
    merged = merge_runs(parts, tmp_path / "merged")
    assert_tables_equal(merged, whole, rtol=1e-6, skip=("p_hole", "q_hole", "p_sketch", "q_sketch", "p_value",
                                                         "q_value", "auc_hole", "auc_sketch", "auc", "auc_hole_error",
                                                         "auc_error"))
    for col in ("p_hole", "p_sketch"):
        np.testing.assert_allclose(merged.channels[col], whole.channels[col], rtol=1e-4)
    # both binned AUCs lie within their stated error bounds of the (practically equal) exact AUC
    for table, col, bound in (("channels", "auc_hole", "auc_hole_error"), ("labels", "auc", "auc_error")):
        x, y = getattr(merged, table), getattr(whole, table)
        gap = (x[col] - y[col]).abs().fillna(0)
        assert (gap <= x[bound].fillna(0) + y[bound].fillna(0) + 1e-9).all(), col
    np.testing.assert_allclose(merged.channels.auc_sketch, whole.channels.auc_sketch, rtol=1e-4)


def test_merge_refuses_other_models_settings_data_and_overlaps(shard_setup):
    root, model, data, _ = shard_setup
    kwargs = SHARD_KW
    first = record(model, data, root / "ref0", shard=(0, 2), **kwargs).path
    second = record(model, data, root / "ref1", shard=(1, 2), **kwargs).path
    others = {
        "weights": record(TinyMixed(seed=1), data, root / "w1", shard=(1, 2), **kwargs).path,
        "settings": record(model, data, root / "q1", shard=(1, 2), **kwargs | {"samples": 2}).path,
        "data": record(model, scenes(n=10, seed=2), root / "d1", shard=(1, 2), **kwargs).path,
        "overlap": first,
    }
    for what, path in others.items():
        with pytest.raises(RunError):
            merge_runs([first, path], root / f"bad_{what}")
    merge_runs([first, second], root / "good")  # the matching pair merges


def test_empty_shard_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="shard"):
        record(TinyMixed(), scenes(n=2), tmp_path / "run", n=2, shard=(0, 3), progress=False)
    assert not (tmp_path / "run" / "manifest.json").exists()


# ============================================================================ 3. planted gated model
class Planted(nn.Module):
    """One 1x1 GatedConv2d on ``cat([image * (1 - hole), hole, sketch])`` with hand-set gates:
    0 = hole detector, 1 = sketch detector, 2 = blue-minus-red (sky) detector, 3 = constant,
    4 = a faint one (logit 0.01 * blue: gates within 0.0025 of 0.5, a test of the std read-out)."""

    accepts_sketch = True

    def __init__(self):
        super().__init__()
        self.probe = GatedConv2d(5, 5, 1, activation=None)
        self.head = nn.Conv2d(5, 3, 1)
        with torch.no_grad():
            w, b = self.probe.gate.weight, self.probe.gate.bias
            w.zero_()
            b.zero_()
            w[0, 3], b[0] = 20.0, -10.0  # logit +10 on hole pixels, -10 elsewhere
            w[1, 4], b[1] = 20.0, -10.0  # logit +10 on sketch pixels, -10 elsewhere
            w[2, 2], w[2, 0] = 10.0, -10.0  # 10 * (blue - red)
            # channel 3: weights and bias 0, logit 0 everywhere
            w[4, 2] = 0.01

    def forward(self, image, hole, sketch=None):
        sketch = torch.zeros_like(hole) if sketch is None else sketch
        return self.head(self.probe(torch.cat([image * (1 - hole), hole, sketch * hole], 1)))


def test_planted_gates_are_found(tmp_path):
    data = scenes(n=16)
    run = record(Planted(), data, tmp_path / "run", n=16, batch_size=8, progress=False)
    ch = run.channels.set_index("channel")
    lab = run.labels
    sig = lambda v: float(torch.sigmoid(torch.tensor(v, dtype=torch.float32)))  # noqa: E731
    # channel 0: gate sigmoid(10) on every hole pixel, sigmoid(-10) on every known pixel
    assert ch.auc_hole[0] == pytest.approx(1.0, abs=1e-12)
    assert ch.mean_hole[0] == pytest.approx(sig(10), abs=1e-6)
    assert ch.mean_valid[0] == pytest.approx(sig(-10), abs=1e-6)
    assert "hole" in ch.role[0].split("+")
    # channel 1: inside the hole, exactly the sketch pixels are high
    assert ch.auc_sketch[1] == pytest.approx(1.0, abs=1e-12)
    assert ch.mean_sketch[1] == pytest.approx(sig(10), abs=1e-6)
    assert ch.mean_hole_plain[1] == pytest.approx(sig(-10), abs=1e-6)
    assert "sketch" in ch.role[1].split("+")
    # channel 2: the sky detector; the exact AUC of 10 * (blue - red) is the reference
    c2 = lab[lab.channel == 2].set_index("label")
    batch = collate([data[i] for i in range(16)])
    score = (batch["image"][:, 2] - batch["image"][:, 0]) * (1 - batch["hole"][:, 0])
    exact_sky = roc_auc_score((batch["labels"] == 0).numpy().ravel(), score.numpy().ravel())
    assert exact_sky > 0.85
    assert c2.auc["sky"] == pytest.approx(exact_sky, abs=0.01)
    assert c2.auc.idxmax() == "sky"
    # the control: the best trivial feature at this resolution (the image's own), computed exactly here
    image = batch["image"]
    lum = image.mean(1, keepdim=True)
    pool = lambda x: torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # noqa: E731
    h, w = image.shape[-2:]
    features = {"mean_red": image[:, 0], "mean_green": image[:, 1], "mean_blue": image[:, 2],
                "local_variance": (pool(lum ** 2) - pool(lum) ** 2).clamp_min(0)[:, 0],
                "row": ((torch.arange(h) + 0.5) / h).view(1, h, 1).expand(len(image), h, w),
                "column": ((torch.arange(w) + 0.5) / w).view(1, 1, w).expand(len(image), h, w)}
    sky = (batch["labels"] == 0).numpy().ravel()
    separation = {name: max(a, 1 - a) for name, f in features.items()
                  for a in [roc_auc_score(sky, f.numpy().ravel())]}
    best = max(separation, key=separation.get)
    assert c2.trivial_auc["sky"] == pytest.approx(separation[best], abs=0.01)
    assert c2.trivial_feature["sky"] == best
    assert ("semantic:sky" in ch.role[2].split("+")) == bool(c2.auc["sky"] >= separation[best] + 0.05)
    # channel 3: constant 0.5, no preference anywhere
    assert ch.auc_hole[3] == 0.5 and ch.auc_sketch[3] == 0.5
    assert (lab[lab.channel == 3].auc.dropna() == 0.5).all() and lab[lab.channel == 3].auc.notna().any()
    assert ch["mean"][3] == pytest.approx(0.5, abs=1e-7) and ch["std"][3] == pytest.approx(0.0, abs=1e-6)
    assert ch.role[3] == "none"
    # channel 4: the std of nearly constant gates (E[g^2] - E[g]^2 would cancel catastrophically)
    faint = torch.sigmoid(0.01 * batch["image"][:, 2] * (1 - batch["hole"][:, 0])).double()
    assert ch["std"][4] == pytest.approx(float(faint.std(unbiased=False)), rel=1e-3)
    assert ch["mean"][4] == pytest.approx(float(faint.mean()), abs=1e-7)


# ============================================================================ 4. partial-conv oracle
class SquareHoles(torch.utils.data.Dataset):
    """Items with a centred square hole of a chosen side (0 = no hole), one label."""

    classes = ("background",)

    def __init__(self, sides, size=32):
        self.sides, self.size = list(sides), size

    def __len__(self):
        return len(self.sides)

    def __getitem__(self, i):
        s, side = self.size, self.sides[i]
        hole = torch.zeros(1, s, s)
        start = (s - side) // 2
        hole[:, start:start + side, start:start + side] = 1
        image = torch.rand(3, s, s, generator=torch.Generator().manual_seed(i))
        return {"image": image, "hole": hole, "sketch": torch.zeros(1, s, s),
                "labels": torch.zeros(s, s, dtype=torch.int64), "index": i}

    def spec(self):
        return {"kind": "squares", "sides": self.sides, "size": self.size, "n": len(self), "classes": list(self.classes)}


class PartialStack(nn.Module):
    accepts_sketch = False

    def __init__(self, depth=5):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(PartialConv2d(3 if i == 0 else 4, 4, 3, padding=1) for i in range(depth))

    def forward(self, image, hole, sketch=None):
        x, valid = image * (1 - hole), 1 - hole
        for layer in self.layers:
            x, valid = layer(x, valid)
        return x[:, :3]


def coverages_of_flipped(side: int) -> list[float]:
    """Window coverage of the hole pixels that a 3x3 window makes valid when the square hole has
    ``side``: its outer ring. An edge pixel of the ring sees the 3 known pixels of the row outside
    (3/9), a corner sees an L of 3 + 2 = 5 (5/9); a 2x2 hole is four corners (5/9 each); a 1x1
    hole sees its 8 known neighbours (8/9)."""
    if side <= 0:
        return []
    if side == 1:
        return [8 / 9]
    if side == 2:
        return [5 / 9] * 4
    return [5 / 9] * 4 + [3 / 9] * (4 * (side - 2))


def test_partial_evolution_is_the_analytic_erosion(tmp_path):
    sides, size, depth = [12, 7, 4, 1, 0, 9], 32, 5
    run = record(PartialStack(depth), SquareHoles(sides, size), tmp_path / "run", batch_size=4, progress=False)
    ev = run.evolution.set_index("layer")
    assert list(ev.index) == [f"layers.{k}" for k in range(depth)]
    edges = np.linspace(0, 1, 10)
    for k in range(1, depth + 1):
        row = ev.loc[f"layers.{k - 1}"]
        remaining = np.array([max(s - 2 * k, 0) for s in sides])
        fraction = 1 - remaining ** 2 / size ** 2
        assert row.valid_fraction == pytest.approx(fraction.mean(), abs=1e-12)
        assert row.valid_fraction_predicted == pytest.approx(fraction.mean(), abs=1e-12)
        assert row.all_valid_images == pytest.approx((remaining == 0).mean(), abs=1e-12)
        assert row.all_valid_images_predicted == pytest.approx((remaining == 0).mean(), abs=1e-12)
        values = [v for s in sides for v in coverages_of_flipped(max(s - 2 * (k - 1), 0))]
        expected = np.zeros(9, np.int64)
        for v in values:  # the bin (edges[i], edges[i + 1]] holding v
            expected[np.searchsorted(edges, v - 1e-9) - 1] += 1
        assert list(row.coverage_hist) == expected.tolist(), f"layer {k}"
        assert row.flipped == len(values)
        assert row.window == 9 and row.images == len(sides) and (row.height, row.width) == (size, size)
        assert row.leak == 0.0


# ============================================================================ 5. hook hygiene
def hooks_left(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules()
            if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_forward_hooks_with_kwargs", None)]


def state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model, before_state, before_modes):
    assert hooks_left(model) == []
    after = model.state_dict()
    assert set(after) == set(before_state)
    assert all(torch.equal(after[k], v) for k, v in before_state.items())
    assert {n: m.training for n, m in model.named_modules()} == before_modes


def test_record_leaves_no_hooks_restores_modes_and_runs_without_autograd(tmp_path):
    model = TinyMixed()
    model.train()
    model.g2.eval()  # a mixed state must come back as it was, module by module
    before, modes = state_copy(model), {n: m.training for n, m in model.named_modules()}
    seen = []

    def spy(_m, _i, out):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), out.requires_grad))

    handle = model.g1.hook_gate.register_forward_hook(spy)
    record(model, scenes(n=6), tmp_path / "run", batch_size=4, progress=False)
    handle.remove()
    assert seen and all(s == (True, False, False) for s in seen)
    assert_untouched(model, before, modes)


class Exploding(GatedConv2d):
    """Raises after its gate fired, from its ``after``-th call on (the probe pass and the
    calibration batches come first)."""

    def __init__(self, *args, after: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.after, self.calls = after, 0

    def forward(self, x):
        out = super().forward(x)
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom in layer 2")
        return out


@pytest.mark.parametrize("after", [0, 3])  # 0: in the discovery/calibration passes; 3: while recording
def test_a_model_that_raises_leaves_no_hooks_and_no_usable_run(tmp_path, after):
    model = TinyMixed()
    model.g2 = Exploding(6, 6, 3, stride=2, after=after)  # the second gated layer raises after its gate fired
    model.train()
    before, modes = state_copy(model), {n: m.training for n, m in model.named_modules()}
    with pytest.raises(probe.UserModelError, match="module 'g2' \\(Exploding\\).*boom") as info:
        record(model, scenes(n=12), tmp_path / "run", batch_size=4, progress=False, calibration=4)
    assert isinstance(info.value.original, RuntimeError) and info.value.module == "g2"
    assert_untouched(model, before, modes)
    if after == 0:  # refused before anything was written
        assert not (tmp_path / "run").exists()
        return
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["complete"] is False
    with pytest.raises(RunError, match="--resume"):
        probe.load_run(tmp_path / "run")


class StrayLabel(SquareHoles):
    """:class:`SquareHoles` with two classes, whose item ``at`` carries the label id ``value`` in one pixel."""

    classes = ("background", "square")

    def __init__(self, n, at, value):
        super().__init__([8] * n)
        self.at, self.value = at, value

    def __getitem__(self, i):
        item = super().__getitem__(i)
        if i == self.at:
            item["labels"][3, 5] = self.value
        return item


@pytest.mark.parametrize("at, value", [(1, 2), (9, 7), (9, -2)])  # 1: calibration; 9: while recording
def test_a_label_id_that_is_no_class_is_one_clear_error(tmp_path, at, value):
    data = StrayLabel(12, at, value)
    with pytest.raises(probe.DataError, match=f"item {at}: label id {value} is not one of the dataset's 2 classes"):
        record(TinyMixed(), data, tmp_path / "run", batch_size=4, progress=False, calibration=4)
    if at < 4:  # refused before anything was written
        assert not (tmp_path / "run").exists()
    else:
        with pytest.raises(RunError, match="--resume"):
            probe.load_run(tmp_path / "run")
    # over a complete run with overwrite=True, the refused recording leaves that run as it was
    kept = record(TinyMixed(), StrayLabel(8, -1, 0), tmp_path / "kept", batch_size=4, progress=False, calibration=4)
    before = {p.name: p.read_bytes() for p in kept.path.iterdir() if p.is_file()}
    with pytest.raises(probe.DataError, match=f"item {at}: label id {value}"):
        record(TinyMixed(), data, tmp_path / "kept", batch_size=4, progress=False, calibration=4, overwrite=True)
    assert {p.name: p.read_bytes() for p in probe.load_run(tmp_path / "kept").path.iterdir() if p.is_file()} == before


class TypedLabels(StrayLabel):
    """:class:`StrayLabel` without a stray id, its labels (0 outside the square, 1 inside) of ``dtype``."""

    def __init__(self, n, dtype):
        super().__init__(n, at=-1, value=0)
        self.dtype = dtype

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["labels"] = item["hole"][0].to(self.dtype)
        return item


def test_labels_of_any_integer_type_record_as_int64_and_float_labels_are_refused(tmp_path):
    model, states = TinyMixed(), {}
    for dtype in (torch.int64, torch.uint8, torch.int32):
        states[dtype] = load_stats(record(model, TypedLabels(8, dtype), tmp_path / str(dtype), batch_size=4,
                                          progress=False, calibration=4))
    reference = states[torch.int64]
    for dtype in (torch.uint8, torch.int32):
        for name, stats in states[dtype].items():
            mine, theirs = stats.state_dict(), reference[name].state_dict()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine), (dtype, name)
    with pytest.raises(probe.DataError, match="labels of torch.float32; a dataset's labels must be integer"):
        record(model, TypedLabels(8, torch.float32), tmp_path / "float", batch_size=4, progress=False, calibration=4)
    assert not (tmp_path / "float").exists()


def test_recorder_forward_outside_its_context_is_refused():
    model = TinyMixed()
    recorder = Recorder(model, find_sites(model), n_labels=8)
    batch = collate([scenes(n=1)[0]])
    with pytest.raises(RuntimeError, match="inside"):
        recorder.forward(batch["image"], batch["hole"], None, batch["labels"], torch.zeros(1, dtype=torch.int64))
    assert hooks_left(model) == []


# ============================================================================ 6. memory
def reachable_bytes(obj, seen=None) -> int:
    """Bytes of every tensor storage reachable from ``obj`` through probe's own objects."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        ptr = obj.untyped_storage().data_ptr()
        if ("storage", ptr) in seen:
            return 0
        seen.add(("storage", ptr))
        return obj.untyped_storage().nbytes()
    if isinstance(obj, nn.Module):
        return 0  # the model itself is not the recorder's state
    if isinstance(obj, dict):
        return sum(reachable_bytes(k, seen) + reachable_bytes(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set)):
        return sum(reachable_bytes(v, seen) for v in obj)
    if type(obj).__module__.startswith("probe"):
        return reachable_bytes(vars(obj), seen)
    return 0


def test_accumulators_do_not_grow_with_images():
    """Every accumulator keeps its shape, except the joint trivial-feature counts, which are sparse
    by design (one key per (group, cell, label) that occurred) and stay within their bound."""
    from probe.stats.joint import CELLS

    model, data = TinyMixed(), scenes(n=12)
    recorder = Recorder(model, find_sites(model), n_labels=len(data.classes))
    joints = [s.joint for s in recorder.stats.values() if hasattr(s, "joint")]

    def shapes():
        return {layer: {k: (tuple(v.shape), v.dtype) for k, v in s.state_dict().items() if not k.startswith("joint.")}
                for layer, s in recorder.stats.items()}

    def fixed_bytes():  # everything reachable but the joint counts (walked first, so counted as seen)
        seen = set()
        for joint in joints:
            reachable_bytes(joint, seen)
        return reachable_bytes(recorder, seen)

    with recorder:
        sizes = []
        for start in range(0, 12, 4):
            batch = collate([data[i] for i in range(start, start + 4)])
            recorder.forward(batch["image"], batch["hole"], batch["sketch"], batch["labels"],
                             torch.arange(start, start + 4) % 32)
            sizes.append((shapes(), fixed_bytes()))
    assert sizes[0] == sizes[2]
    assert all(0 < len(j) <= j.groups * CELLS * j.labels for j in joints if len(j))
    assert any(len(j) for j in joints)
    assert int(recorder.stats["g1"].regions.pixels_.sum()) == 12 * SIZE * SIZE  # all three batches were added


# ============================================================================ 7. command line
def documented_columns(run: probe.Run) -> None:
    for name, columns in [("layers", LAYER_COLUMNS), ("channels", CHANNEL_COLUMNS), ("labels", LABEL_COLUMNS),
                          ("evolution", EVOLUTION_COLUMNS)]:
        missing = set(columns) - set(getattr(run, name).columns)
        assert not missing, f"{name} lacks {sorted(missing)}"


def write_folder(root: Path, n: int = 4, size: int = 64) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("left\nright\n")
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(root / "images" / f"im{i}.png")
        labels = np.zeros((size, size), np.uint8)
        labels[:, size // 2:] = 1
        Image.fromarray(labels).save(root / "labels" / f"im{i}.png")
    return root


PCONV_ARGV = ["record", "--model", "pconv-scenes", "--random-init", "--data", "scenes:32", "--n", "8"]


@pytest.fixture(scope="module")
def pconv_cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(PCONV_ARGV + ["--out", str(out)]) == 0
    return probe.load_run(out)


def test_cli_record_pconv_writes_documented_tables(pconv_cli_run, exact, capsys):
    run, out = pconv_cli_run, pconv_cli_run.path
    documented_columns(run)
    # the empty channels/labels tables of a partial-only run carry the same columns as a gated run's
    for name in ("channels", "labels"):
        assert list(getattr(run, name).columns) == list(getattr(exact[0], name).columns), name
    assert run.manifest["n_images"] == 8 and run.manifest["complete"] is True
    assert (run.layers.kind == "partial").all() and len(run.evolution) == len(run.layers)
    assert run.channels.empty and run.labels.empty
    # existing run without --overwrite: exit 2, one line
    capsys.readouterr()
    assert main(PCONV_ARGV + ["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err


def test_cli_layers_lists_every_gated_layer(capsys):
    assert main(["layers", "--model", "gated-scenes", "--random-init"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0] for line in printed.splitlines()[1:] if line.strip()}
    expected = {name for name, m in create_model("gated-scenes").named_modules() if isinstance(m, GatedConv2d)}
    assert expected <= rows


def test_cli_record_folder_dataset_and_errors(tmp_path, capsys, pconv_cli_run):
    folder = write_folder(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["record", "--model", "gated-scenes", "--random-init", "--data", f"folder:{folder}",
                 "--out", str(out), "--samples", "2"]) == 0
    run = probe.load_run(out)
    documented_columns(run)
    assert run.manifest["n_images"] == 4 and run.classes == ["left", "right"]
    assert set(run.labels.label) == {"left", "right"} and run.evolution.empty
    assert list(run.evolution.columns) == list(pconv_cli_run.evolution.columns)
    assert run.labels.groupby("layer").pixels.sum().gt(0).all()
    capsys.readouterr()
    for argv in (["record", "--model", "no-such-model", "--data", "scenes:32", "--n", "2", "--out", str(tmp_path / "a")],
                 ["record", "--model", "gated-scenes", "--random-init", "--data", f"folder:{folder}", "--n", "5",
                  "--out", str(tmp_path / "b")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("gateprobe record: error:")
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_incomplete_run_is_refused_with_resume_advice(tmp_path, shard_setup):
    import shutil

    *_, whole = shard_setup
    copy = tmp_path / "copy"
    shutil.copytree(whole.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["complete"] = False
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RunError, match="--resume"):
        probe.load_run(copy)


def test_the_resume_advice_names_an_existing_option():
    from probe.cli import build_parser

    record_parser = build_parser()._subparsers._group_actions[0].choices["record"]
    assert "--resume" in record_parser._option_string_actions
