"""The C++ per-batch work (``native_batch.cpp``) against its torch references, bit for bit: the
conditions at a layer resolution (regions by area mean, sketch by max, border dilation, labels at
the cell centres, pixel counts, one-hot rows), the trivial features and the dense joint trivial
counts. Sizes include
non-integer pooling windows, a layer larger than the image, and one-cell maps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probe.recording.context import BatchContext
from probe.stats import joint, native_build
from probe.stats.joint import JointTrivialCounts
from probe.stats.layer_stats import _layer_conditions, _torch_conditions

FIELDS = ("region", "compact", "region_pixels", "label_pixels", "onehot_t")


@pytest.fixture(scope="module")
def kernel():
    if not native_build.native_available():
        pytest.skip("the C++ statistics kernel cannot be built on this machine (see the line on stderr)")
    return native_build.kernel_module()


def batch(seed: int, image: tuple[int, int], classes: int, b: int = 3, sketch: bool = True):
    """A context with blobby 0/1 holes, sparse sketch strokes, labels with ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    hole = (torch.nn.functional.interpolate(torch.rand(b, 1, 4, 4, generator=g), size=image) > 0.6).float()
    strokes = (torch.rand(b, 1, *image, generator=g) > 0.9).float() * hole if sketch else None
    labels = torch.randint(-1, classes, (b, *image), generator=g)
    return BatchContext(hole, strokes, labels, torch.arange(b), classes, border=2)


def remap_of(present: torch.Tensor, classes: int) -> torch.Tensor:
    remap = torch.full((classes + 1,), -1, dtype=torch.int64)
    remap[present + 1] = torch.arange(len(present))
    return remap


CASES = [((64, 64), (64, 64)), ((64, 64), (16, 16)), ((50, 50), (16, 16)), ((37, 23), (10, 7)), ((8, 8), (12, 12)),
         ((9, 5), (1, 1)), ((16, 16), (5, 16))]


@pytest.mark.parametrize("image,size", CASES)
@pytest.mark.parametrize("border", [0, 1, 2, 5])
def test_cell_conditions_equal_the_torch_conditions(kernel, image, size, border):
    ctx = batch(hash((image, size, border)) % 1000, image, classes=7)
    ctx.border = border
    for present in (torch.arange(7), torch.tensor([0, 3, 6]), torch.zeros(0, dtype=torch.int64)):
        remap = remap_of(present, 7)
        native = kernel.cell_conditions(ctx.hole, ctx.sketch, ctx.labels, size[0], size[1], border, remap, len(present))
        expected = _torch_conditions(ctx, size, remap, present)
        for name, got, want in zip(FIELDS, native, expected):
            assert got.dtype == want.dtype and torch.equal(got, want), name


def test_cell_conditions_decline_masks_that_are_not_zero_or_one(kernel):
    ctx = batch(1, (32, 32), classes=4)
    soft = ctx.hole * 0.7  # a soft mask: its area means are torch's to compute
    assert kernel.cell_conditions(soft, ctx.sketch, ctx.labels, 8, 8, 2, remap_of(torch.arange(4), 4), 4) == []
    soft_ctx = BatchContext(soft, None, ctx.labels, ctx.group, 4, border=2)
    cond = _layer_conditions(soft_ctx, (8, 8))  # falls back to the torch conditions
    expected = _torch_conditions(soft_ctx, (8, 8), remap_of(torch.arange(4), 4), torch.arange(4))
    assert all(torch.equal(getattr(cond, name), want) for name, want in zip(FIELDS, expected))


def test_a_label_past_the_classes_is_one_clear_error(kernel):
    ctx = batch(2, (16, 16), classes=4)
    ctx.labels[0, 3, 3] = 9
    with pytest.raises(RuntimeError, match="label id 9 is past the 4 classes"):
        kernel.cell_conditions(ctx.hole, ctx.sketch, ctx.labels, 16, 16, 2, remap_of(torch.arange(4), 4), 4)


FEATURE_SIZES = [((64, 64), (64, 64)), ((64, 64), (32, 32)), ((64, 64), (16, 16)), ((50, 37), (16, 9)),
                 ((8, 8), (12, 12)), ((9, 5), (1, 1)), ((16, 16), (1, 16)), ((5, 7), (2, 3))]


@pytest.mark.parametrize("image,size", FEATURE_SIZES)
def test_trivial_features_equal_the_torch_features(kernel, monkeypatch, image, size):
    """Pooled colours, the 3x3 luminance variance (edges and corners included) and the positions,
    bit for bit: both then bin and count them the same."""
    g = torch.Generator().manual_seed(size[0] * 100 + image[1])
    pixels = torch.rand(3, 3, *image, generator=g)
    pixels[0, :, :2, :2] = torch.tensor([0.0, 1.0, 0.3]).view(3, 1, 1)  # flat corners: variance near 0 (clamped)
    native = BatchContext(torch.zeros(3, 1, *image), None, torch.zeros(3, *image, dtype=torch.int64),
                          torch.arange(3), 2, image=pixels).trivial_features(size)
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    expected = BatchContext(torch.zeros(3, 1, *image), None, torch.zeros(3, *image, dtype=torch.int64),
                            torch.arange(3), 2, image=pixels).trivial_features(size)
    assert native.shape == expected.shape == (3, 6, *size)
    assert torch.equal(native, expected), (native - expected).abs().amax((0, 2, 3))


def test_trivial_features_of_a_grey_image_are_the_torch_ones(kernel, monkeypatch):
    """One channel: the torch code broadcasts it to R, G and B; the C++ call takes RGB only and leaves it to torch."""
    grey = torch.rand(2, 1, 20, 20, generator=torch.Generator().manual_seed(9))
    context = lambda: BatchContext(torch.zeros(2, 1, 20, 20), None, torch.zeros(2, 20, 20, dtype=torch.int64),  # noqa: E731
                                   torch.arange(2), 2, image=grey)
    native = context().trivial_features((8, 8))
    monkeypatch.setenv("GATEPROBE_NATIVE", "0")
    assert torch.equal(native, context().trivial_features((8, 8)))
    assert torch.equal(native[:, 0], native[:, 2])


def features_with_edges(seed: int, b: int = 4, n: int = 300) -> torch.Tensor:
    """Trivial features with values on the level edges, past both ends, and on the variance edges."""
    g = torch.Generator().manual_seed(seed)
    features = torch.rand(b, 6, n, generator=g) * 1.2 - 0.1
    features[:, 3] = torch.rand(b, n, generator=g) * 0.02
    edges = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, -0.0, 2.0, -3.0])
    features[:, :3, :len(edges)] = edges.view(1, 1, -1)
    features[:, 3, :4] = torch.tensor(joint.VARIANCE_EDGES + (0.0,), dtype=torch.float32)
    return features


@pytest.mark.parametrize("compact", [False, True])
def test_joint_counts_equal_the_torch_counts(kernel, monkeypatch, compact):
    g = torch.Generator().manual_seed(5)
    present = torch.tensor([1, 4, 5])
    batches = [(features_with_edges(i), torch.randint(-1, 3 if compact else 6, (4, 300), generator=g),
                torch.randint(0, 5, (4,), generator=g)) for i in range(3)]

    def counted(native: bool):
        monkeypatch.setenv("GATEPROBE_NATIVE", "1" if native else "0")
        counts = JointTrivialCounts(6, 5)
        for features, labels, group in batches:
            counts.add(features, labels.int() if compact else labels, group, present=present if compact else None)
        assert (counts._dense is not None) and (native_build.native_module(torch.device("cpu")) is not None) == native
        return counts.entries()

    for a, b in zip(counted(True), counted(False)):
        np.testing.assert_array_equal(a, b)


def test_joint_counts_refuse_a_group_past_the_counts_and_count_nothing(kernel):
    counts = torch.zeros(2 * joint.CELLS * 3, dtype=torch.int64)
    features, labels = features_with_edges(0, b=2), torch.zeros(2, 300, dtype=torch.int32)
    with pytest.raises(RuntimeError, match="past the joint counts"):
        kernel.joint_counts(counts, features, labels, torch.arange(3), torch.tensor([0, 2]),
                            torch.tensor(joint.VARIANCE_EDGES, dtype=torch.float32), joint.LEVELS, 3)
    assert not counts.any()
