"""The recording hot path's shortcuts against the slower computations they replace (issue 28):
shifted 1-D passes for the border dilation and the 3x3 box mean, no pooling at the image's own
size, the Gram matrix from three of its four blocks, the joint trivial counts kept densely, and
region counts kept in int32 until they could overflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probe.recording.context import BatchContext, _box_mean3, _dilate
from probe.stats import histograms, joint, native_build
from probe.stats.binning import Binning
from probe.stats.histograms import ConditionedHistogram
from probe.stats.joint import JointTrivialCounts
from probe.stats.layer_stats import SYMMETRIC_GRAM, _gram, torch_centred_gram
from probe.stats.native import accumulate_gate_batch
from probe.stats.regions import BORDER, FAR, HOLE_PLAIN, HOLE_SKETCH

SIZES = [(1, 1), (1, 6), (2, 3), (5, 4), (16, 16), (64, 64)]


@pytest.mark.parametrize("size", SIZES)
def test_box_mean_is_avg_pool_without_the_padding(size):
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    torch.testing.assert_close(_box_mean3(x), expected, rtol=0, atol=1e-6)


def chebyshev_oracle(mask: np.ndarray, radius: int) -> np.ndarray:
    """numpy: True where a True cell lies within ``radius`` cells in both directions."""
    out = np.zeros_like(mask)
    h, w = mask.shape[-2:]
    for y, x in zip(*np.nonzero(mask)):
        out[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = True
    return out


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("radius", [0, 1, 2, 3, 7])
def test_dilation_is_the_chebyshev_max_filter(size, radius):
    mask = torch.rand(3, 1, *size, generator=torch.Generator().manual_seed(radius)) > 0.85
    got = _dilate(mask, radius)
    for image in range(3):
        np.testing.assert_array_equal(got[image, 0].numpy(), chebyshev_oracle(mask[image, 0].numpy(), radius))


def pooled_regions(hole, sketch, size, border):
    """The regions as the pooling operators define them (the code before the shortcuts)."""
    hole_cells = F.adaptive_avg_pool2d(hole, size) >= 0.5
    sketch_cells = (F.adaptive_max_pool2d(sketch, size) > 0) & hole_cells
    near = F.max_pool2d(hole_cells.float(), 2 * border + 1, stride=1, padding=border) > 0
    return torch.where(sketch_cells, HOLE_SKETCH, torch.where(hole_cells, HOLE_PLAIN, torch.where(near, BORDER, FAR)))


@pytest.mark.parametrize("size", [(64, 64), (32, 32), (16, 16), (21, 13)])
def test_regions_labels_and_trivial_features_equal_the_pooling_operators(size):
    g = torch.Generator().manual_seed(1)
    hole = (F.avg_pool2d(torch.rand(4, 1, 64, 64, generator=g), 9, 1, 4) > 0.52).float()
    sketch = (torch.rand(4, 1, 64, 64, generator=g) > 0.9).float() * hole
    image = torch.rand(4, 3, 64, 64, generator=g)
    labels = torch.randint(-1, 5, (4, 64, 64), generator=g)
    ctx = BatchContext(hole, sketch, labels, torch.arange(4), 5, border=2, image=image)
    assert torch.equal(ctx.regions(size), pooled_regions(hole, sketch, size, 2))
    h, w = size
    ys = ((torch.arange(h) + 0.5) * 64 / h).long()
    xs = ((torch.arange(w) + 0.5) * 64 / w).long()
    assert torch.equal(ctx.labels_at(size), labels[:, ys][:, :, xs].flatten(1))
    colour = F.adaptive_avg_pool2d(image, size)
    lum = colour.mean(1, keepdim=True)
    pool = lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)  # noqa: E731
    features = ctx.trivial_features(size)
    torch.testing.assert_close(features[:, :3], colour, rtol=0, atol=0)
    torch.testing.assert_close(features[:, 3:4], (pool(lum ** 2) - pool(lum) ** 2).clamp_min(0), rtol=0, atol=1e-6)
    torch.testing.assert_close(features[0, 4, :, 0], (torch.arange(h) + 0.5) / h)
    torch.testing.assert_close(features[3, 5, 0], (torch.arange(w) + 0.5) / w)


@pytest.mark.parametrize("channels", [5, SYMMETRIC_GRAM - 1, SYMMETRIC_GRAM, 96, 97])
def test_gram_equals_the_float64_products(channels):
    x = torch.randn(3, channels, 300, generator=torch.Generator().manual_seed(channels))
    got = _gram(x)
    expected = torch.einsum("bcn,bdn->cd", x.double(), x.double())
    assert got.dtype == torch.float64
    assert channels < SYMMETRIC_GRAM or torch.equal(got, got.T)  # one block is the other's transpose
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 2, 7), (3, 5, 300), (16, 24, 256), (2, 97, 300), (1, 12, 5000),
                                   (3, 4, 0), (16, 48, 256), (1, 50, 5000)])
def test_kernel_gram_equals_the_float64_centred_products(shape):
    """The C++ kernel's lower-triangle Gram, centred as it reads (below 48 channels) or from a
    centred copy of each block (from 48 on), against numpy in float64: channel counts that are not
    a multiple of its 3x3 or 3x4 tiles, pixel counts that are not a multiple of its 8 lanes, blocks
    of several images (16 x 256) and of parts of one image (5,000 pixels), no pixels.
    Values far from 0 with a small spread (gates near 1): the centring is what keeps the error
    small, as in the torch product of the centred copy."""
    if not native_build.native_available() or not native_build.kernel_module().fast_gram():
        pytest.skip("no C++ kernel, or a CPU without AVX2 and FMA (the torch product runs there)")
    b, c, n = shape
    g = torch.Generator().manual_seed(c * 1000 + n)
    x = 0.9 + 0.05 * torch.rand(b, c, n, generator=g) + 0.02 * torch.randn(1, c, 1, generator=g)
    mean = x.double().mean((0, 2)) if n else torch.zeros(c, dtype=torch.float64)
    got = native_build.kernel_module().centred_gram(x, mean.float())
    centred = x.double().numpy() - mean.float().double().numpy()[None, :, None]
    expected = np.einsum("bcn,bdn->cd", centred, centred)
    assert got.dtype == torch.float64 and torch.equal(got, got.T)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(expected).max())))
    if n:  # the same as the torch path within float32 products
        torch.testing.assert_close(got, torch_centred_gram(x, mean.float()), rtol=1e-4, atol=1e-4)


def test_joint_counts_dense_and_sparse_hold_the_same_keys(monkeypatch):
    """The same batches through the dense count (few keys) and through the sorted sparse keys,
    with a read in between (which turns the dense count into keys) and a merge."""
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(4, 6, 50, generator=g) * torch.tensor([1, 1, 1, 0.02, 1, 1]).view(1, 6, 1),
                torch.randint(-1, 3, (4, 50), generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(6)]

    def counted(dense_keys: int):
        monkeypatch.setattr(joint, "DENSE_KEYS_CPU", dense_keys)
        first, second = JointTrivialCounts(3, 5), JointTrivialCounts(3, 5)
        for i, (features, labels, group) in enumerate(batches):
            (first if i < 4 else second).add(features, labels, group)
            if i == 1:
                first.state_dict()  # a checkpoint in the middle
        return first.merge(second).entries()

    dense, sparse = counted(1 << 21), counted(0)
    for a, b in zip(dense, sparse):
        np.testing.assert_array_equal(a, b)
    assert dense[3].sum() == sum(int((labels >= 0).sum()) for _, labels, _ in batches)


def test_region_counts_are_int32_until_they_could_overflow_then_int64(monkeypatch):
    monkeypatch.setattr(histograms, "INT32_SAFE", 700)
    binning = Binning.uniform(2, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), 16)
    g = torch.Generator().manual_seed(4)
    narrow = ConditionedHistogram(2, 3, 16, binning=binning)
    reference = torch.zeros(3, 2, 16, dtype=torch.int64)
    dtypes = []
    for _ in range(5):  # 5 batches of 200 pixels a channel: int64 from the 4th (800 > 700)
        logits, region = torch.randn(2, 2, 100, generator=g), torch.randint(0, 3, (2, 100), generator=g)
        narrow.before_add(200)
        for counts in (narrow.counts_, reference):
            accumulate_gate_batch(logits, binning, region=region, n_regions=3, region_counts=counts)
        dtypes.append(narrow.counts_.dtype)
    assert dtypes == [torch.int32] * 3 + [torch.int64] * 2
    assert torch.equal(narrow.counts_, reference)

    state = narrow.state_dict()
    assert state["counts"].dtype == torch.int64
    loaded = ConditionedHistogram.from_state_dict(state)
    assert loaded.seen_ == 1000 and torch.equal(loaded.counts_, reference)

    small, other = ConditionedHistogram(2, 3, 16, binning=binning), ConditionedHistogram(2, 3, 16, binning=binning)
    for hist in (small, other):
        hist.before_add(400)
        accumulate_gate_batch(torch.randn(4, 2, 100, generator=g), binning, region=torch.randint(0, 3, (4, 100), generator=g),
                              n_regions=3, region_counts=hist.counts_)
    expected = small.counts_.long() + other.counts_.long()
    small.merge(other)  # 800 pixels a channel together: widened before adding
    assert small.counts_.dtype == torch.int64 and torch.equal(small.counts_, expected)
