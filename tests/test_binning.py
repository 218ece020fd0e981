"""Segmented binning (:mod:`probe.stats.binning`): every value lands between its bin's edges, a
channel crowded into a sliver of its range is spread over many bins, degenerate channels stay
well defined, and version-4 states (one uniform segment) read back with their old edges."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probe.errors import NumericalError
from probe.stats.binning import Binning, segment_bins, segment_levels
from probe.stats.readouts import auc_error_bound, auc_from_histograms

BINS, Q = 512, 0.005


def calibrate(x: torch.Tensor) -> Binning:
    """The calibration rule written out on ``x`` ``[C, n]`` (all values: no sampling here)."""
    xd = x.double()
    q_lo, q_hi = xd.quantile(5e-4, 1), xd.quantile(1 - 5e-4, 1)
    pad = 0.25 * (q_hi - q_lo) + 1e-3
    inner = xd.quantile(torch.tensor(segment_levels(Q), dtype=torch.float64), 1).T
    return Binning.calibrated(q_lo - pad, q_hi + pad, inner, BINS)


def crowded(n: int = 20000, seed: int = 0) -> torch.Tensor:
    """Three channels: 75% of the values in a sliver of width 1e-5 at 0.035 (as an untrained
    network's deep gate), a wide normal, and a constant."""
    g = torch.Generator().manual_seed(seed)
    spike = torch.cat([torch.randn(n // 4, generator=g) * 0.01 + 0.03, torch.randn(3 * n // 4, generator=g) * 1e-5 + 0.035])
    return torch.stack([spike, torch.randn(n, generator=g) * 3, torch.full((n,), 5.0)]).float()


def test_levels_and_bins_follow_the_documented_rule():
    levels = segment_levels(Q)
    assert levels == tuple(j / 16 for j in range(1, 16)) + (0.99, 0.998)
    bins = segment_bins(BINS, len(levels) + 1)
    assert sum(bins) == BINS and bins[-2] == 192 and bins[-1] == 32 and set(bins[:-2]) == {18}
    assert segment_levels(0.2) == pytest.approx(tuple(j / 16 for j in range(1, 10)) + (0.6, 0.92))  # bulk below the band


def test_every_value_lies_between_its_bin_edges():
    x = crowded()
    binning = calibrate(x)
    edges = binning.edges()
    assert bool((edges[:, 1:] > edges[:, :-1]).all()), "edges must increase strictly (no zero-width bin)"
    b = binning.bin(x[None])[0].long()
    lo, hi = edges.gather(1, b), edges.gather(1, b + 1)
    xd, slack = x.double(), 1e-6 * (1 + x.double().abs())
    assert bool((((xd >= lo - slack) | (b == 0)) & ((xd <= hi + slack) | (b == BINS - 1))).all())


def test_numpy_oracle_gives_the_same_bins():
    x = crowded(4000, seed=3)
    binning = calibrate(x)
    k32, starts = binning.knots.float().numpy(), binning.starts.numpy()
    xs = x.numpy()
    segment = (xs[:, :, None] >= k32[:, None, 1:-1]).sum(-1)
    scale = ((starts[:, 1:] - starts[:, :-1]) / np.diff(binning.knots.numpy(), axis=1)).astype(np.float32)
    v = (xs - np.take_along_axis(k32[:, :-1], segment, 1)) * np.take_along_axis(scale, segment, 1)
    v = v + np.take_along_axis(starts[:, :-1].astype(np.float32), segment, 1)
    np.testing.assert_array_equal(binning.bin(x[None])[0].numpy(), np.clip(v, 0, BINS - 1).astype(np.int64))


def test_a_crowded_channel_is_spread_over_many_bins_and_its_auc_is_resolved():
    x = crowded()
    segmented = calibrate(x)
    uniform = Binning.uniform(3, segmented.lo, segmented.hi, BINS)
    for binning, most in ((segmented, 1 / 16 + 0.005), (uniform, None)):  # at most one bulk segment's mass
        counts = torch.bincount(binning.bin(x[None])[0, 0].long(), minlength=BINS)
        share = float(counts.max()) / x.shape[1]
        if most is not None:
            assert share <= most, f"the fullest bin holds {share:.1%} of the crowded channel"
        else:
            assert share >= 0.5  # the failure the segments fix: one uniform bin holds most pixels
    # a label that is the upper half of the sliver: the binned AUC is within 0.005 of the exact one
    values = x[0].numpy().astype(np.float64)
    positive = (values > 0.035) & (np.abs(values - 0.035) < 1e-4)
    b = segmented.bin(x[None])[0, 0].numpy()
    pos, neg = np.bincount(b[positive], minlength=BINS), np.bincount(b[~positive], minlength=BINS)
    exact = roc_auc_score(positive, values)
    assert abs(auc_from_histograms(pos, neg) - exact) <= auc_error_bound(pos, neg) + 1e-12
    assert auc_error_bound(pos, neg) <= 0.005


def test_a_constant_channel_gets_increasing_knots_and_finite_edges():
    binning = calibrate(crowded())
    assert bool((binning.knots[2, 1:] > binning.knots[2, :-1]).all())
    assert bool(torch.isfinite(binning.edges()[2]).all())
    assert bool((binning.bin(torch.full((1, 3, 7), 5.0)) >= 0).all())


def test_nan_is_refused_and_infinities_go_to_the_end_bins():
    binning = calibrate(crowded(2000))
    x = torch.tensor([-float("inf"), 0.03, float("inf")]).expand(1, 3, 3).contiguous()
    b = binning.bin(x)[0]
    assert (b[:, 0] == 0).all() and (b[:, 2] == BINS - 1).all()
    with pytest.raises(NumericalError, match="NaN"):
        binning.bin(torch.tensor([[[float("nan")]] * 3]).view(1, 3, 1))


def test_state_round_trip_and_version_4_ranges():
    binning = calibrate(crowded(2000))
    again = Binning.from_state({k: v.clone() for k, v in binning.state_dict().items()}, 3, BINS)
    assert again == binning and not (again != binning)
    old = Binning.from_state({"lo": torch.tensor([-1.0, 0.0]), "hi": torch.tensor([1.0, 4.0])}, 2, 8)
    np.testing.assert_allclose(old.edges().numpy(), [np.linspace(-1, 1, 9), np.linspace(0, 4, 9)], rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="increase strictly"):
        Binning(torch.tensor([[0.0, 0.0]]), torch.tensor([[0, 8]]), 8)


def test_rank_table_is_the_calibrated_cdf():
    """Each bin's rank is the share of the calibration sample below its middle, to within one
    segment's mass (the mass is spread evenly over a segment's bins), and increases bin by bin."""
    rng = np.random.default_rng(0)
    sample = torch.from_numpy(np.stack([rng.normal(0, 1, 8192), rng.exponential(1, 8192)]))
    levels = torch.tensor(segment_levels(0.005), dtype=torch.float64)
    inner = torch.quantile(sample, levels, dim=1).T
    binning = Binning.calibrated(sample.min(1).values - 1, sample.max(1).values + 1, inner, 512)
    ranks = binning.rank_table(0.005).numpy()
    edges = binning.edges().numpy()
    middle = (edges[:, :-1] + edges[:, 1:]) / 2
    empirical = np.stack([(sample[c].numpy()[None] < middle[c][:, None]).mean(1) for c in range(2)])
    assert (np.diff(ranks, axis=1) > 0).all() and ranks.min() > 0 and ranks.max() < 1
    assert np.abs(ranks - empirical).max() < 1 / 16


@pytest.mark.parametrize("inner", [1, 7, 8, 15, 16, 17, 24, 99, 255, 256])
def test_segment_is_searchsorted_on_knots_one_ulp_below_and_infinities(inner):
    """``Binning.segment`` (one compare per knot below 8 knots, else by groups of knots) counts the
    inner knots ``<=`` each value exactly as ``torch.searchsorted(right=True)``: on every knot, one
    float32 step below it, at +-inf."""
    g = torch.Generator().manual_seed(inner)
    channels = 5
    knots = torch.sort(torch.randn(channels, inner + 2, generator=g) * 3, 1).values.float().double()
    b = Binning(knots, torch.arange(inner + 2).expand(channels, -1) * 2, 2 * (inner + 1))
    x = torch.randn(channels, 3000, generator=g) * 4
    x[:, :inner] = b.inner
    x[:, inner:2 * inner] = torch.nextafter(b.inner, torch.tensor(-np.inf))
    x[:, -2], x[:, -1] = np.inf, -np.inf
    assert torch.equal(b.segment(x).long(), torch.searchsorted(b.inner, x, right=True))


@pytest.mark.parametrize("inner", [17, 300])
def test_bin_of_a_batch_is_the_per_channel_formula(inner):
    """``Binning.bin`` on ``[B, C, h, w]`` (read in place, no transposed copy) gives each value the
    bin of the formula on its own channel's row: segment by ``searchsorted``, then ``((x - base) *
    scale) + start`` in float32 steps, clamped and truncated; also past 255 knots (searchsorted)."""
    g = torch.Generator().manual_seed(inner)
    channels, bins = 3, 4 * (inner + 1)
    knots = torch.sort(torch.randn(channels, inner + 2, generator=g) * 3, 1).values.float().double()
    b = Binning(knots, torch.arange(inner + 2).expand(channels, -1) * 4, bins)
    x = torch.randn(5, channels, 6, 7, generator=g) * 4
    got = b.bin(x)
    for c in range(channels):
        row = x[:, c].reshape(-1)
        s = torch.searchsorted(b.inner[c], row, right=True)
        v = ((row - b.base[c, s]) * b.scale[c, s]) + b.start[c, s]
        expected = v.clamp(0, bins - 1).to(torch.int32).view(5, 6, 7)
        assert torch.equal(got[:, c], expected)


def test_bin_refuses_values_of_another_channel_count():
    """Values whose channel axis does not match the binning would be reshaped into the wrong rows."""
    b = Binning.uniform(3, -1.0, 1.0, 8)
    with pytest.raises(ValueError, match=r"3 channels cannot bin values of shape \[2, 6, 4\]"):
        b.bin(torch.zeros(2, 6, 4))
    assert b.bin(torch.zeros(2, 3, 4)).shape == (2, 3, 4)
