"""Label statistics v4 (:class:`probe.stats.histograms.LabelCellHistogram`): the sparse path
(more than DENSE_LABELS classes, cells coarser than the fine bins) keeps exact integer cells,
merges exactly, migrates version 3 states exactly, reads out within its stated AUC bound, and
follows the device of its inputs."""
from __future__ import annotations

import numpy as np
import torch

from probe.recording.context import BatchContext
from probe.stats.binning import Binning
from probe.stats.histograms import label_cells
from probe.stats.layer_stats import DENSE_LABELS, GatedLayerStats, LayerGeometry
from probe.stats.readouts import auc_from_cells, auc_from_histograms

L, C, BINS, G = 100, 3, 64, 4


def batches(seed=0, n=3, ignored=True):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        labels = torch.randint(0, L, (2, 8, 8), generator=g)
        if ignored:
            labels[:, :2, :2] = -1
        hole = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
        logits = torch.randn(2, C, 8, 8, generator=g) + labels[:, None].clamp(min=0).float() / 40
        yield logits, labels, hole, torch.tensor([i % G, (i + 1) % G])


def recorded(seed=0, n=3):
    s = GatedLayerStats(LayerGeometry("g", "gated", C), L, BINS, G, -3.0, 3.0)
    fine = np.zeros((L, C, BINS), np.int64)
    for logits, labels, hole, group in batches(seed, n):
        s.add(logits, torch.sigmoid(logits), BatchContext(hole, None, labels, group, L))
        b = Binning.uniform(C, -3.0, 3.0, BINS).bin(logits).numpy()
        for c in range(C):
            keep = labels.numpy() >= 0
            np.add.at(fine, (labels.numpy()[keep], c, b[:, c][keep]), 1)
    return s, fine


def test_sparse_cells_are_exact_sums_of_fine_counts():
    assert L > DENSE_LABELS
    s, fine = recorded()
    lab = s.labels
    assert lab.cells == label_cells(L, C, BINS) < BINS
    starts = (2 * np.arange(lab.cells) * BINS + lab.cells) // (2 * lab.cells)  # round(i * bins / cells)
    np.testing.assert_array_equal(lab.bounds.numpy()[:-1], starts)
    offset = np.arange(BINS) - starts[np.searchsorted(starts, np.arange(BINS), side="right") - 1]
    np.testing.assert_array_equal(lab.counts_.numpy(), np.add.reduceat(fine, starts, axis=-1))
    np.testing.assert_array_equal(lab.moments_.numpy(), np.add.reduceat(fine * offset, starts, axis=-1))
    np.testing.assert_array_equal(lab.total_.numpy(), fine.sum(0))
    assert int(lab.pixels_.sum()) == int((fine.sum((0, 2)) // 1)[0])  # one channel's labelled pixels


def test_merge_and_state_are_exact():
    a, fa = recorded(0)
    b, fb = recorded(1)
    a.merge(b)
    np.testing.assert_array_equal(a.labels.total_.numpy(), (fa + fb).sum(0))
    again = GatedLayerStats(LayerGeometry("g", "gated", C), L, BINS, G, -3.0, 3.0)
    again.load_state_dict(a.state_dict())
    for key in ("counts_", "moments_", "total_"):
        assert torch.equal(getattr(again.labels, key), getattr(a.labels, key))
    assert torch.equal(again.labels.pixels_, a.labels.pixels_)
    torch.testing.assert_close(again.labels.sums_, a.labels.sums_, rtol=0, atol=0)


def test_version_3_state_is_converted_exactly():
    s, fine = recorded()
    state = s.state_dict()
    sums, pixels = s.labels.dense_sums()
    old = {k: v for k, v in state.items() if not k.startswith("labels.")}
    old.update({"labels.counts": torch.from_numpy(fine), "labels.sums": sums, "labels.pixels": pixels,
                "labels.config": torch.tensor([C, L, BINS, G]), "labels.lo": s.labels.binning.lo, "labels.hi": s.labels.binning.hi,
                "state_version": torch.tensor(3)})
    old = {k: v for k, v in old.items() if not k.startswith("trivial.")}
    again = GatedLayerStats(LayerGeometry("g", "gated", C), L, BINS, G, -3.0, 3.0)
    again.load_state_dict(old)
    assert torch.equal(again.labels.counts_.long(), s.labels.counts_.long())
    assert torch.equal(again.labels.moments_.long(), s.labels.moments_.long())
    assert torch.equal(again.labels.pixels_, s.labels.pixels_)


def test_cell_auc_is_within_its_bound_of_the_fine_auc():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50_000)
    lab = rng.integers(0, 5, 50_000)
    x = x + 0.4 * lab
    b = np.clip(((x + 5) / 10 * 512).astype(int), 0, 511)
    fine = np.stack([np.bincount(b[lab == k], minlength=512) for k in range(5)])[:, None]
    total = fine.sum(0)
    for cells in (16, 27, 64, 512):
        bounds = (2 * np.arange(cells + 1) * 512 + cells) // (2 * cells)
        offset = np.arange(512) - bounds[np.searchsorted(bounds[:-1], np.arange(512), side="right") - 1]
        counts = np.add.reduceat(fine, bounds[:-1], axis=-1)
        auc, bound = auc_from_cells(counts, np.add.reduceat(fine * offset, bounds[:-1], axis=-1), total, bounds)
        ref = auc_from_histograms(fine, total[None] - fine)
        assert (np.abs(auc - ref) <= bound).all()
        if cells == 512:
            np.testing.assert_allclose(auc, ref, atol=1e-12)
        assert np.abs(auc - ref).max() < 1e-3


def test_follows_the_device_of_its_inputs():
    data = list(batches(ignored=True, n=2))
    lo, hi = torch.full((C,), -3.0), torch.full((C,), 3.0)
    torch.set_default_device("meta")
    try:
        s = GatedLayerStats(LayerGeometry("g", "gated", C), L, BINS, G, lo, hi)
        for logits, labels, hole, group in data:
            s.add(logits, torch.sigmoid(logits), BatchContext(hole, None, labels, group, L))
        assert all(v.device.type == "cpu" for v in s.labels.state_dict().values())
    finally:
        torch.set_default_device("cpu")
