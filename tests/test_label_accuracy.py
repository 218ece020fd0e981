"""Label read-outs (issue 28 items 2 and 3): the cell layout kept in the state, the label read-out
in label chunks, and an AUC error bound that is tight where the cells are single fine bins, so
``labels.auc_error_flag`` marks AUCs that can really be off, not every row of a saturated gate."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probe.errors import RunError
from probe.recording.context import BatchContext
from probe.rundir import tables
from probe.stats.binning import Binning, segment_levels
from probe.stats.histograms import LabelCellHistogram, cell_bounds, cell_layout
from probe.stats.layer_stats import GatedLayerStats, LayerGeometry
from probe.stats.readouts import auc_from_cells

Q = 0.005


def calibrated(values: torch.Tensor, bins: int = 512) -> Binning:
    """A binning calibrated as calibrate_binnings does, on ``values`` ``[C, N]``."""
    v = values.double()
    inner = torch.quantile(v, torch.tensor(segment_levels(Q), dtype=torch.float64), dim=1).T
    return Binning.calibrated(v.min(1).values - 1, v.max(1).values + 1, inner, bins)


def test_layout_gives_the_bulk_the_cells_below_24_and_is_uniform_from_24():
    b = calibrated(torch.randn(2, 5000, generator=torch.Generator().manual_seed(0)))
    band = int(b.starts[0, -3])  # 288: the threshold band's first bin
    bounds = cell_layout(b, 14).numpy()
    assert len(bounds) == 15 and bounds[0] == 0 and bounds[-1] == 512 and band in bounds
    assert (bounds < band).sum() == 12 and np.diff(bounds[:13]).max() - np.diff(bounds[:13]).min() <= 1
    np.testing.assert_array_equal(cell_layout(b, 27).numpy(), cell_bounds(512, 27).numpy())
    uniform = Binning.uniform(2, -1.0, 1.0, 512)  # e.g. the trivial features: one segment
    np.testing.assert_array_equal(cell_layout(uniform, 14).numpy(), cell_bounds(512, 14).numpy())


def test_layout_is_kept_in_the_state_and_old_states_read_as_uniform_cells():
    b = calibrated(torch.randn(3, 5000, generator=torch.Generator().manual_seed(1)))
    hist = LabelCellHistogram(3, 1200, b, groups=2)
    assert hist.cells == 14 and not torch.equal(hist.bounds, cell_bounds(512, 14))
    again = LabelCellHistogram.from_state_dict(hist.state_dict())
    assert torch.equal(again.bounds, hist.bounds) and torch.equal(again.cell_of_bin, hist.cell_of_bin)
    old = {k: v for k, v in hist.state_dict().items() if k != "cell_bounds"}  # recorded before the layout was kept
    assert torch.equal(LabelCellHistogram.from_state_dict(old).bounds, cell_bounds(512, 14))
    with pytest.raises(RunError):
        hist.merge(LabelCellHistogram.from_state_dict(old))
    with pytest.raises(RunError):
        LabelCellHistogram(3, 1200, b, bounds=torch.tensor([0, 5, 5, 512]), cells=3)


def test_cells_at_14_per_channel_are_within_their_bound_of_the_exact_auc():
    rng = np.random.default_rng(0)
    n = 60_000
    lab = rng.integers(0, 6, n)
    x = (rng.normal(size=n) + 0.3 * lab + np.where(rng.random(n) < 0.3, 4.0, 0.0)).astype(np.float32)
    b = calibrated(torch.from_numpy(x)[None])
    fine_bin = b.bin(torch.from_numpy(x)[None, None]).numpy().ravel()
    fine = np.stack([np.bincount(fine_bin[lab == k], minlength=512) for k in range(6)])[:, None]
    bounds = cell_layout(b, 14).numpy()
    offset = np.arange(512) - bounds[np.searchsorted(bounds[:-1], np.arange(512), side="right") - 1]
    counts, moments = np.add.reduceat(fine, bounds[:-1], -1), np.add.reduceat(fine * offset, bounds[:-1], -1)
    auc, bound = auc_from_cells(counts, moments, fine.sum(0), bounds)
    exact = np.array([roc_auc_score(lab == k, x) for k in range(6)])
    assert (np.abs(auc[:, 0] - exact) <= bound[:, 0]).all()
    assert np.abs(auc[:, 0] - exact).max() < 0.005


def saturated_layer(n_labels: int = 2):
    """A hand-set saturated gate: logit = +-25 (gate 1 - 1e-11 or 1e-11) plus N(0, 1), the upper
    mode on 90% of label 1's pixels and 20% of the others'; ``(stats, logits, labels)``."""
    g = torch.Generator().manual_seed(0)
    B, H = 8, 64
    labels = torch.randint(0, n_labels, (B, H, H), generator=g)
    up = torch.rand(B, H, H, generator=g) < torch.where(labels == 1, 0.9, 0.2)
    logits = (torch.where(up, 25.0, -25.0) + torch.randn(B, H, H, generator=g))[:, None]
    s = GatedLayerStats(LayerGeometry("g", "gated", 1), n_labels, 512, 4,
                        binning=calibrated(logits.transpose(0, 1).reshape(1, -1)))
    for i in range(0, B, 2):
        s.add(logits[i:i + 2], torch.sigmoid(logits[i:i + 2]),
              BatchContext(torch.zeros(2, 1, H, H), None, labels[i:i + 2], torch.tensor([i % 4, (i + 1) % 4]), n_labels))
    return s, logits, labels


def test_saturated_gate_is_exact_and_not_flagged():
    s, logits, labels = saturated_layer()
    _, lab = tables.channel_and_label_tables({"g": s}, ["g"], ["a", "b"], Q)
    gates = torch.sigmoid(logits).ravel().numpy()
    assert ((gates < 0.01) | (gates > 0.99)).mean() > 0.99  # saturated
    for row in lab.itertuples():
        y = labels.ravel().numpy() == row.label_id
        exact = roc_auc_score(y, logits.ravel().numpy())
        assert abs(row.auc - exact) < 2e-4 and abs(row.auc - exact) <= row.auc_error
        # the old bound (sum_b pos_b T_b / 2, T the total) said more than the tolerance on every row
        fine = s.labels.counts_[row.label_id, 0].double().numpy()
        total = s.labels.total_[0].double().numpy()
        assert (fine * total).sum() / (2 * fine.sum() * (total.sum() - fine.sum())) > tables.AUC_ERROR_FLAG
        assert not row.auc_error_flag


def test_an_auc_that_is_really_off_is_flagged():
    """Coarse cells, one of them crowded: in the first cell the rest crowds into its lowest bins and
    the label spreads over the cell above them, a shape the total's tilted linearly cannot follow."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1, 20_000), rng.uniform(0.0, 0.01, 8000), rng.uniform(0.01, 0.125, 2000)])
    y = np.concatenate([rng.random(20_000) < 0.05, np.zeros(8000, bool), np.ones(2000, bool)])
    b = Binning.uniform(1, 0.0, 1.0, 512)
    fine_bin = b.bin(torch.from_numpy(x.astype(np.float32))[None, None]).numpy().ravel()
    fine = np.stack([np.bincount(fine_bin[~y], minlength=512), np.bincount(fine_bin[y], minlength=512)])[:, None]
    bounds = cell_bounds(512, 8).numpy()
    offset = np.arange(512) - bounds[np.searchsorted(bounds[:-1], np.arange(512), side="right") - 1]
    counts, moments = np.add.reduceat(fine, bounds[:-1], -1), np.add.reduceat(fine * offset, bounds[:-1], -1)
    auc, bound = auc_from_cells(counts, moments, fine.sum(0), bounds)
    exact = roc_auc_score(y, x)
    assert abs(auc[1, 0] - exact) > tables.AUC_ERROR_FLAG  # really off
    assert abs(auc[1, 0] - exact) <= bound[1, 0] and bound[1, 0] > tables.AUC_ERROR_FLAG  # so flagged


def test_label_read_out_in_chunks_equals_all_at_once(monkeypatch):
    s, _, _ = saturated_layer(100)
    whole = tables.channel_and_label_tables({"g": s}, ["g"], [str(i) for i in range(100)], Q)[1]
    monkeypatch.setattr(tables, "LABEL_CHUNK", 7)
    chunked = tables.channel_and_label_tables({"g": s}, ["g"], [str(i) for i in range(100)], Q)[1]
    pd.testing.assert_frame_equal(whole, chunked, rtol=1e-12)
    assert whole.p_value.notna().any()
