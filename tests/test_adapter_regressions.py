"""Regression tests for the adapter bugs found while building discovery (issue 17): each model
below crashed before the fix; now each records, and its recorded maps are the true ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import probe
from probe.adapters import SigmoidModuleGateAdapter, SplitGateAdapter, TuplePartialAdapter, find_sites
from probe.data import Scenes
from probe.layers import PartialConv2d
from probe.recording.recorder import Recorder


def record_small(model, tmp_path):
    return probe.record(model, Scenes(size=32, n=8), tmp_path / "run", batch_size=4, samples=2, progress=False)


class DilatedPartial(nn.Module):
    """gateprobe's own PartialConv2d, dilated and size-keeping (k 3, dilation 2, padding 2)."""

    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.p = PartialConv2d(3, 4, 3, padding=2, dilation=2)
        self.out = nn.Conv2d(4, 3, 1)

    def forward(self, image, hole, sketch=None):
        x, _ = self.p(image, 1 - hole)
        return self.out(x)


def test_a_dilated_size_keeping_partial_layer_records_and_predicts_its_mask(tmp_path):
    run = record_small(DilatedPartial(), tmp_path)
    row = run.evolution.iloc[0]
    # the geometric prediction of a single layer is exact: max-pool of the valid mask, zero padded
    assert abs(row.valid_fraction - row.valid_fraction_predicted) < 1e-12
    assert (run.layers.height == 32).all()


class SNGate(nn.Module):
    """A gate convolution inside a spectral-norm style wrapper (not an nn.Conv2d itself)."""

    def __init__(self):
        super().__init__()
        self.feature = nn.Conv2d(3, 4, 3, padding=1)
        self.mask_conv2d = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return torch.relu(self.feature(x)) * self.sigmoid(self.mask_conv2d(x))


class SelfGatingConv(nn.Conv2d):
    """A Conv2d subclass with 2C outputs whose own forward gates them (the split conv is itself)."""

    def forward(self, x):
        out = self._conv_forward(x, self.weight, self.bias)
        features, logits = out.chunk(2, dim=1)
        return F.elu(features) * torch.sigmoid(logits)


class TupleNoMask(nn.Module):
    """A partial convolution returning (output, new_mask), called once without a mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, mask=None):
        mask = torch.ones_like(x[:, :1]) if mask is None else mask
        count = F.conv2d(mask, torch.ones(1, 1, 3, 3), padding=1)
        return self.conv(x * mask) * (count > 0), (count > 0).float()


class ForeignNet(nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.sn = SNGate()
        self.split = SelfGatingConv(4, 8, 3, padding=1)
        self.tuple = TupleNoMask()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, image, hole, sketch=None):
        x = self.split(self.sn(image * (1 - hole)))
        y, _ = self.tuple(image)  # no mask given
        return self.head(x) + y[:, :3]


ADAPTERS = {SNGate: SigmoidModuleGateAdapter(), SelfGatingConv: SplitGateAdapter(conv=None),
            TupleNoMask: TuplePartialAdapter(conv="conv")}


def test_the_three_adapter_bugs_are_fixed(monkeypatch, tmp_path):
    from probe.adapters import base

    monkeypatch.setattr(base, "ADAPTERS", {**base.ADAPTERS, **ADAPTERS})
    model = ForeignNet().eval()
    sites = {s.name: s for s in find_sites(model, discover=False)}
    assert set(sites) == {"sn", "split", "tuple"} and sites["sn"].channels == 4 and sites["split"].channels == 4
    image, hole = torch.rand(2, 3, 16, 16), torch.zeros(2, 1, 16, 16)
    with torch.no_grad():
        plain = model(image, hole)
        truth_logits = model.split._conv_forward(model.sn(image), model.split.weight, model.split.bias)[:, 4:]
    with Recorder(model, list(sites.values()), n_labels=1) as recorder:
        out = recorder.forward(image, hole, None, torch.zeros(2, 16, 16, dtype=torch.long),
                               torch.zeros(2, dtype=torch.long), capture=2)
    assert torch.equal(out, plain)  # hooks change nothing
    assert torch.allclose(recorder.captured["split"]["gate"].float(), torch.sigmoid(truth_logits), atol=1e-3)
    assert "_conv_forward" not in model.split.__dict__  # the tap is gone after the block
    assert float(recorder.stats["tuple"].valid_sum_) == 2.0  # no mask: every input valid, every image all valid
    record_small(model, tmp_path)  # and end to end, calibration included
