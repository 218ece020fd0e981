"""The joint trivial baseline: how well colour, texture and position *together* separate each label.

A gate is semantic for a label only if it separates the label better than the trivial input
features at the layer's resolution explain (``TRIVIAL_FEATURES``: the cell's mean R, G and B, the
local variance of its luminance, its row and its column). One feature at a time is not enough: a
fixed mix of colour channels (R + G - 2B picks yellow) separates a colour class that no single
channel does, and grass is both green and low in the frame.

**The model.** A histogram classifier over the joint cells of the six features, each cut in
``LEVELS`` = 4 (colours at 1/4, 1/2, 3/4; local variance at 1e-4, 1e-3, 1e-2; row and column in
quarters): ``4**6 = 4096`` cells. For label ``l`` the score of cell ``c`` is ``P(l | c)``, the
ranking that maximises the AUC among all functions of the cell, estimated *out of fold*: image
group ``g`` is in fold ``g mod FOLDS`` and a fold's pixels are scored with the counts of the other
folds (smoothed towards the label's share by ``PSEUDO`` pixel), so a rare cell does not explain its
own pixels (cross-fitting: an honest estimate, not the in-sample upper bound). The AUC (label vs
every other labelled pixel) of that score is exact: ``0.5 + mean rank inside - mean rank outside``
with the pooled mid-rank CDF of the scores as the rank; the per-group sums of those ranks give the
image-group interval of the gate-minus-joint difference
(:func:`probe.stats.significance.auc_difference_interval`).

**Why a histogram, not a fitted classifier per label**: one pass, integer counts that merge
exactly across shards, one model for every label at once, no iterations, no learning rate.
**Cost**: the first gated layer at each resolution keeps the counts (the other layers there read
them). Per batch: one cell index per pixel, then either one ``index_add_`` into a dense count
of every (group, cell, label) key while there are few (``DENSE_KEYS_CPU``: 16 labels at 32 groups,
16 MB), or one ``unique`` of the batch's keys, the kept keys merged with the pending ones when
those outgrow them (amortised ``O(log n)`` per key). Memory of the sparse form: an int64 key and
count per distinct (group, cell, label) that occurred, at most ``min(G * 4096 * L, labelled cells
seen)``, so it does not grow with the number of classes a data set names, only with the pairs
that occur. Read-out: per label present, a sort
of ``FOLDS * 4096`` scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import RunError
from .native_build import native_module

LEVELS = 4  # per feature
N_FEATURES = 6  # TRIVIAL_FEATURES of probe.stats.layer_stats, in that order
CELLS = LEVELS ** N_FEATURES
VARIANCE_EDGES = (1e-4, 1e-3, 1e-2)  # of the local variance of the luminance in [0, 1]
FOLDS = 4
PSEUDO = 1.0  # pseudo-pixels at the label's share in every cell's out-of-fold score
MIN_PENDING = 1 << 16  # keys kept pending before a merge
DENSE_KEYS = 1 << 25  # off the CPU, up to this many (group, cell, label) keys are counted densely
DENSE_KEYS_CPU = 1 << 21  # on the CPU (16 MB of int64: 32 groups x 4096 cells x 16 labels)


def _variance_edges(device) -> Tensor:
    return torch.tensor(VARIANCE_EDGES, dtype=torch.float32, device=device)


def joint_cells(features: Tensor) -> Tensor:
    """int64 ``[B, N]``: the joint cell in ``[0, CELLS)`` of each pixel of ``features``
    ``[B, 6, N]`` (or ``[B, 6, h, w]``; colours, variance, row, column as ``TRIVIAL_FEATURES``)."""
    x = features.flatten(2).float()
    digits = (x * LEVELS).floor_().clamp_(0, LEVELS - 1)  # [B, 6, N], small whole numbers in float32
    digits[:, 3] = torch.bucketize(x[:, 3].contiguous(), _variance_edges(x.device), right=True)  # edges at or below
    place = LEVELS ** torch.arange(N_FEATURES - 1, -1, -1, dtype=torch.float32, device=x.device)
    return torch.matmul(place, digits).long()  # [B, N], exact: every sum is a whole number below 2**24


class JointTrivialCounts:
    """Pixel counts per (image group, joint cell, label) that occurred, as sorted int64 keys
    ``(group * CELLS + cell) * labels + label`` (``keys_``) and their counts (``counts_``).

    While ``groups * CELLS * labels`` is at most ``DENSE_KEYS`` (``DENSE_KEYS_CPU`` on the CPU),
    batches are counted into one dense tensor of every key (an ``index_add_``: no device value is
    read per batch, and on the CPU 5-15x faster than the ``unique`` of the sparse path) that becomes
    sorted keys when the counts are read."""

    def __init__(self, labels: int, groups: int, device=None):
        self.labels, self.groups = int(labels), int(groups)
        self.keys_ = torch.zeros(0, dtype=torch.int64, device=device)
        self.counts_ = torch.zeros(0, dtype=torch.int64, device=device)
        self._pending: list[tuple[Tensor, Tensor]] = []
        self._pending_n = 0
        self._dense: Tensor | None = None

    def add(self, features: Tensor, labels: Tensor, group: Tensor, present: Tensor | None = None) -> None:
        """``features`` ``[B, 6, N]``, ``labels`` ``[B, N]`` int (negative: ignored), ``group`` ``[B]``;
        with ``present`` ``[P]`` (int64 label ids) ``labels`` are positions in it (a batch's compact
        labels). On the CPU with the C++ kernel the dense counts are one call (``joint_counts``)."""
        size = self.groups * CELLS * self.labels
        dense = size <= (DENSE_KEYS_CPU if features.device.type == "cpu" else DENSE_KEYS)
        native = native_module(features.device) if dense else None
        if native is not None:
            if self._dense is None:
                self._dense = torch.zeros(size, dtype=torch.int64, device=features.device)
            ids = torch.arange(self.labels, device=features.device) if present is None else present
            native.joint_counts(self._dense, features.reshape(len(features), N_FEATURES, -1).float().contiguous(),
                                labels.to(torch.int32).reshape(len(features), -1).contiguous(), ids.long().contiguous(),
                                group.long().contiguous(), _variance_edges(features.device), LEVELS, self.labels)
            return
        if present is not None:
            labels = torch.where(labels >= 0, present[labels.long().clamp(min=0)], -1) if len(present) else \
                torch.full_like(labels, -1, dtype=torch.int64)
        cell = joint_cells(features)
        keys = (group.long().view(-1, 1) * CELLS + cell) * self.labels + labels.long()
        if dense:
            if self._dense is None:
                self._dense = torch.zeros(size, dtype=torch.int64, device=keys.device)
            labelled = labels >= 0
            self._dense.index_add_(0, torch.where(labelled, keys, 0).reshape(-1), labelled.reshape(-1).long())
            return
        keys = keys[labels >= 0]
        if not len(keys):
            return
        keys, counts = torch.unique(keys, return_counts=True)
        self._pending.append((keys, counts))
        self._pending_n += len(keys)
        if self._pending_n > max(MIN_PENDING, len(self.keys_)):
            self._compact()

    def _compact(self) -> None:
        if self._dense is not None:
            keys = torch.nonzero(self._dense).view(-1)
            self._pending.append((keys, self._dense[keys]))
            self._dense = None
        if not self._pending:
            return
        keys = torch.cat([self.keys_] + [k for k, _ in self._pending])
        counts = torch.cat([self.counts_] + [c for _, c in self._pending])
        self.keys_, inverse = torch.unique(keys, return_inverse=True)
        self.counts_ = torch.zeros(len(self.keys_), dtype=torch.int64, device=keys.device).index_add_(0, inverse, counts)
        self._pending, self._pending_n = [], 0

    def __len__(self) -> int:
        """The distinct (group, cell, label) keys counted so far."""
        self._compact()
        return len(self.keys_)

    def merge(self, other: "JointTrivialCounts") -> "JointTrivialCounts":
        if (other.labels, other.groups) != (self.labels, self.groups):
            raise RunError("cannot merge joint trivial-feature counts of different labels or groups")
        other._compact()
        self._pending.append((other.keys_.to(self.keys_.device), other.counts_.to(self.keys_.device)))
        self._compact()
        return self

    def state_dict(self) -> dict:
        self._compact()
        return {"keys": self.keys_, "counts": self.counts_,
                "config": torch.tensor([self.labels, self.groups, CELLS], device="cpu")}

    @classmethod
    def from_state_dict(cls, state: dict) -> "JointTrivialCounts":
        labels, groups, cells = (int(v) for v in state["config"])
        if cells != CELLS:
            raise RunError(f"joint trivial-feature counts of {cells} cells, not {CELLS}; record the run again")
        counts = cls(labels, groups, device=state["keys"].device)
        counts.keys_, counts.counts_ = state["keys"].clone().long(), state["counts"].clone().long()
        return counts

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(group, cell, label, count)`` int64 arrays of every key."""
        self._compact()
        keys, counts = self.keys_.cpu().numpy(), self.counts_.cpu().numpy()
        return keys // (CELLS * self.labels), (keys // self.labels) % CELLS, keys % self.labels, counts


@dataclass(frozen=True)
class JointControl:
    """The joint baseline's read-out: ``auc`` ``[L]`` (NaN for a label no pixel has, or that every
    labelled pixel has); per image group the sums of the score's ranks over the label's pixels
    ``ranks`` ``[G, L]`` and over every labelled pixel ``total_ranks`` ``[G, L]``, the label's
    pixels ``pixels`` ``[G, L]`` and every labelled pixel ``total_pixels`` ``[G]``."""

    auc: np.ndarray
    ranks: np.ndarray
    total_ranks: np.ndarray
    pixels: np.ndarray
    total_pixels: np.ndarray


def joint_control(counts: JointTrivialCounts) -> JointControl:
    """Cross-fitted AUC of the histogram classifier for every label (see the module docstring)."""
    n_groups, n_labels = counts.groups, counts.labels
    g, c, lab, n = counts.entries()
    n = n.astype(np.float64)
    fold = g % FOLDS
    fold_cells = np.bincount(fold * CELLS + c, weights=n, minlength=FOLDS * CELLS).reshape(FOLDS, CELLS)
    group_cells = np.bincount(g * CELLS + c, weights=n, minlength=n_groups * CELLS).reshape(n_groups, CELLS)
    total_pixels = group_cells.sum(1)
    total = total_pixels.sum()
    train_cells = fold_cells.sum(0)[None] - fold_cells  # [F, cells]: the other folds' pixels
    group_fold = np.arange(n_groups) % FOLDS
    auc = np.full(n_labels, np.nan)
    ranks, total_ranks, pixels = (np.zeros((n_groups, n_labels)) for _ in range(3))
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(n_labels + 1))
    for label in np.flatnonzero(np.diff(starts)):
        sel = order[starts[label]:starts[label + 1]]
        inside = np.bincount(fold[sel] * CELLS + c[sel], weights=n[sel], minlength=FOLDS * CELLS).reshape(FOLDS, CELLS)
        train = inside.sum(0)[None] - inside
        with np.errstate(invalid="ignore", divide="ignore"):
            prior = np.nan_to_num(train.sum(1) / train_cells.sum(1))  # [F]
        score = (train + PSEUDO * prior[:, None]) / (train_cells + PSEUDO)
        rank = mid_ranks(score.ravel(), fold_cells.ravel()).reshape(FOLDS, CELLS) / total
        ranks[:, label] = np.bincount(g[sel], weights=n[sel] * rank[fold[sel], c[sel]], minlength=n_groups)
        pixels[:, label] = np.bincount(g[sel], weights=n[sel], minlength=n_groups)
        total_ranks[:, label] = (group_cells * rank[group_fold]).sum(1)
        n_in = pixels[:, label].sum()
        if 0 < n_in < total:
            auc[label] = 0.5 + ranks[:, label].sum() / n_in - (total_ranks[:, label].sum() - ranks[:, label].sum()) / (
                total - n_in)
    return JointControl(auc, ranks, total_ranks, pixels, total_pixels)


def mid_ranks(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each of ``values`` ``[M]``: the weight below it plus half the weight equal to it
    (``weights`` ``[M]``), i.e. the pooled mid-rank, ties shared."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cumulative = np.concatenate([[0.0], np.cumsum(w)])
    first, last = np.searchsorted(v, v, "left"), np.searchsorted(v, v, "right")
    out = np.empty_like(values, dtype=np.float64)
    out[order] = cumulative[first] + 0.5 * (cumulative[last] - cumulative[first])
    return out
