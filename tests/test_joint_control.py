"""The joint trivial baseline (colour, texture and position together) and the semantic verdicts it
controls: the read-out against an oracle written here from its definition, its image-group
interval against a jackknife, and planted gates whose meaning is set by hand: a colour mix must
not be semantic, a cue no trivial feature carries (stripe orientation) must be."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch import nn

import probe
from probe.layers import GatedConv2d
from probe.stats.joint import CELLS, FOLDS, PSEUDO, JointTrivialCounts, joint_cells, joint_control
from probe.stats.significance import difference_interval, rank_influence


def random_pixels(seed: int, groups: int = 8, per_group: int = 300, labels: int = 3):
    """Features ``[G, 6, P]`` in [0, 1] and labels ``[G, P]`` that depend on the colour and row."""
    rng = np.random.default_rng(seed)
    features = rng.random((groups, 6, per_group)).astype(np.float32)
    features[:, [1, 2, 5]] = 0.4 + 0.2 * features[:, [1, 2, 5]]  # inside one level: 64 of the cells are used
    features[:, 3] *= 0.02  # local variance
    score = features[:, 0] + features[:, 4] + 0.5 * rng.standard_normal((groups, per_group))
    lab = np.digitize(score, np.quantile(score, np.linspace(0, 1, labels + 1)[1:-1]))
    lab[:, ::17] = -1  # some ignored pixels
    return torch.from_numpy(features), torch.from_numpy(lab)


def counts_of(features, lab, labels, groups=None):
    counts = JointTrivialCounts(labels, len(features) if groups is None else groups)
    for g in range(len(features)):  # one image per group and batch
        counts.add(features[g:g + 1], lab[g:g + 1], torch.tensor([g]))
    return counts


def oracle(features, lab, labels: int):
    """Per label, the AUC of the cross-fitted scores of :func:`scores` (sklearn)."""
    aucs = []
    for label in range(labels):
        score, g, y = scores(features, lab, label)
        aucs.append(roc_auc_score(y == label, score))
    return np.array(aucs), g, y


def scores(features, lab, label: int):
    """The cross-fitted score of every labelled pixel for ``label``, written from the definition:
    fold = group mod FOLDS; P(label | cell) from the other folds, PSEUDO pixels at the label's share.
    Returns (score, group, label) per labelled pixel."""
    g = np.repeat(np.arange(len(features)), features.shape[2])
    cell = joint_cells(features).numpy().ravel()
    y = lab.numpy().ravel()
    keep = y >= 0
    g, cell, y = g[keep], cell[keep], y[keep]
    fold = g % FOLDS
    score = np.empty(len(y))
    for f in range(FOLDS):
        train = fold != f
        share = (y[train] == label).mean()
        for c in np.unique(cell[fold == f]):
            in_cell = train & (cell == c)
            score[(fold == f) & (cell == c)] = ((y[in_cell] == label).sum() + PSEUDO * share) / (in_cell.sum() + PSEUDO)
    return score, g, y


def test_joint_cells_digits_match_the_documented_levels():
    features = torch.tensor([[0.0, 0.3, 0.99, 0.00005, 0.1, 0.6],   # digits 0 1 3 | 0 | 0 2
                             [1.0, 0.5, 0.25, 0.005, 0.9, 0.26]])   # digits 3 2 1 | 2 | 3 1
    cells = joint_cells(features.T[None]).numpy()[0]
    assert list(cells) == [((((0 * 4 + 1) * 4 + 3) * 4 + 0) * 4 + 0) * 4 + 2,
                           ((((3 * 4 + 2) * 4 + 1) * 4 + 2) * 4 + 3) * 4 + 1]
    assert cells.max() < CELLS


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_fitted_auc_equals_the_oracle(seed):
    features, lab = random_pixels(seed)
    control = joint_control(counts_of(features, lab, 3))
    expected, _, _ = oracle(features, lab, 3)
    np.testing.assert_allclose(control.auc, expected, atol=1e-12)
    assert control.auc[[0, 2]].min() > 0.7  # the extreme labels depend on colour and row


def test_counts_merge_exactly_and_survive_their_state():
    features, lab = random_pixels(2)
    whole = counts_of(features, lab, 3)
    half_a, half_b = counts_of(features[:4], lab[:4], 3, groups=8), JointTrivialCounts(3, 8)
    for g in range(4, 8):
        half_b.add(features[g:g + 1], lab[g:g + 1], torch.tensor([g]))
    half_a.merge(JointTrivialCounts.from_state_dict(half_b.state_dict()))
    merged, single = half_a.state_dict(), whole.state_dict()
    assert torch.equal(merged["keys"], single["keys"]) and torch.equal(merged["counts"], single["counts"])
    assert int(single["counts"].sum()) == int((lab >= 0).sum())


def test_group_interval_agrees_with_a_jackknife_over_groups():
    """The cluster-robust half-width of the joint AUC against the delete-one-group jackknife of the
    exact AUC recomputed by sklearn on the same pixel scores (the influences are its linearisation)."""
    features, lab = random_pixels(3, groups=12, per_group=400, labels=2)
    control = joint_control(counts_of(features, lab, 2))
    influence = rank_influence(control.ranks, control.pixels, control.total_ranks, control.total_pixels[:, None])
    low, high = difference_interval(control.auc, influence, groups=12)
    # the scores the run froze: recompute each pixel's score with the oracle's rule, then jackknife the AUC
    expected, _, _ = oracle(features, lab, 2)
    score, g, y = scores(features, lab, label=1)
    jack = np.array([roc_auc_score(y[g != k] == 1, score[g != k]) for k in range(12)])
    se_jack = np.sqrt(11 / 12 * ((jack - jack.mean()) ** 2).sum())
    from scipy import stats
    se = (high[1] - low[1]) / 2 / stats.t.ppf(0.975, 11)
    assert expected[1] == pytest.approx(control.auc[1], abs=1e-12)
    assert se == pytest.approx(se_jack, rel=0.25)


# ---------------------------------------------------------------------------- planted gates
class PlantedGate(nn.Module):
    """One gated layer whose single gate channel reads the image with hand-set weights; the output
    is the image (gateprobe needs an inpainted image back, not a good one)."""

    accepts_sketch = False

    def __init__(self, weight: torch.Tensor, bias: float, stride: int):
        super().__init__()
        k = weight.shape[-1]
        self.layer = GatedConv2d(3, 1, k, stride=stride, padding=0, activation=None)
        with torch.no_grad():
            self.layer.gate.weight.copy_(weight.view(1, 3, k, k))
            self.layer.gate.bias.fill_(bias)

    def forward(self, image, hole, sketch=None):
        gated = self.layer(image)
        return image + 0 * F.interpolate(gated, size=image.shape[-2:]).mean()


def write_folder(root, images, labels, classes):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(label.astype(np.uint8)).save(root / "labels" / f"{i:03d}.png")
    return f"folder:{root}"


COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.9, 0.1), "white": (0.9, 0.9, 0.9), "yellow": (0.9, 0.9, 0.1)}


def colour_patches(n: int, size: int = 32, seed: int = 0):
    """Yellow, red, green and white patches on a ground coloured like one of red, green, white."""
    rng = np.random.default_rng(seed)
    classes = ["ground", "yellow", "red", "green", "white"]
    images, labels = [], []
    for _ in range(n):
        ground = COLOURS[rng.choice(["red", "green", "white"])]
        image = np.broadcast_to(np.array(ground), (size, size, 3)).copy()
        label = np.zeros((size, size), np.uint8)
        for k, name in enumerate(classes[1:], 1):
            y, x = rng.integers(0, size - 8, 2)
            image[y:y + 8, x:x + 8] = COLOURS[name]
            label[y:y + 8, x:x + 8] = k
        images.append(image + rng.normal(0, 0.04, image.shape))
        labels.append(label)
    return images, labels, classes


def stripe_patches(n: int, size: int = 32, seed: int = 0):
    """Vertical and horizontal stripes of period 2 (same colours, same mean) on a mid-grey ground,
    patches at even positions: each 2x2 cell of the gate's resolution holds a bright and a dark
    pixel, so every trivial feature there (cell colour, local variance, position) is the ground's."""
    rng = np.random.default_rng(seed)
    classes = ["ground", "vertical stripes", "horizontal stripes"]
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    vertical, horizontal = np.where(xx % 2 == 0, 0.8, 0.2), np.where(yy % 2 == 0, 0.8, 0.2)
    for _ in range(n):
        image = np.full((size, size), 0.5)
        label = np.zeros((size, size), np.uint8)
        halves = rng.permutation(2)
        for k, pattern in ((1, vertical), (2, horizontal)):
            x0 = 16 * halves[k - 1] + 2 * rng.integers(0, 3)
            y0 = 2 * rng.integers(0, 8)
            image[y0:y0 + 10, x0:x0 + 10] = pattern[y0:y0 + 10, x0:x0 + 10]
            label[y0:y0 + 10, x0:x0 + 10] = k
        images.append(np.repeat(image[..., None], 3, 2) + rng.normal(0, 0.01, (size, size, 3)))
        labels.append(label)
    return images, labels, classes


def semantic_row(run, label: str):
    labels = run.labels
    row = labels[labels.label == label].iloc[0]
    return row, run.channels.semantic_label.iloc[0]


def test_a_colour_mix_gate_is_not_semantic(tmp_path):
    """R + G - 2B picks yellow out of red, green and white, which no single colour channel does:
    the old single-feature rule called it semantic; colour, texture and position together explain it."""
    images, labels, classes = colour_patches(32)
    model = PlantedGate(torch.tensor([1.0, 1.0, -2.0]).view(3, 1, 1) * 8, bias=-9.6, stride=1)
    run = probe.record(model, write_folder(tmp_path / "colours", images, labels, classes), tmp_path / "run",
                       progress=False)
    row, semantic = semantic_row(run, "yellow")
    assert row.auc >= 0.9 and row.q_value < 0.05  # the gate does separate yellow ...
    assert row.auc >= row.trivial_auc + 0.05  # ... better than any single feature (the old rule: semantic)
    assert row.joint_trivial_auc >= 0.9  # ... but not better than the features together
    assert semantic == ""


def test_a_gate_reading_a_cue_no_trivial_feature_carries_is_semantic(tmp_path):
    """A 2x2 stride-2 gate [[1, -1], [1, -1]] fires on phase-aligned vertical stripes only; their
    cells have the ground's colour, variance and (random) position."""
    images, labels, classes = stripe_patches(32)
    kernel = torch.tensor([[1.0, -1.0], [1.0, -1.0]]).expand(3, 2, 2) * 4
    model = PlantedGate(kernel, bias=-2.0, stride=2)
    run = probe.record(model, write_folder(tmp_path / "stripes", images, labels, classes), tmp_path / "run",
                       progress=False)
    row, semantic = semantic_row(run, "vertical stripes")
    assert row.auc >= 0.95 and row.joint_trivial_auc <= 0.7 and row.joint_difference_low > 0.2
    assert semantic == "vertical stripes"
