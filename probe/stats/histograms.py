"""Mergeable per-(condition, channel) gate histograms, in the spirit of GAN dissection's
running statistics: ``add(batch)``, ``merge(other)``, ``state_dict()``, never storing maps.

Gates are binned by their *logit* (the pre-sigmoid value), uniformly over
``[-logit_range, logit_range]`` with the two outer bins open-ended. Sigmoid gates saturate, so
equal-width bins in gate space put most pixels of a channel into its first or last bin; logit
bins keep resolution in the tails, where the top-quantile threshold of Network Dissection lies.
Binning a logit is one multiply-add and a floor, cheaper than a search over bin edges.
"""
from __future__ import annotations

import torch
from torch import Tensor


class ConditionedHistogram:
    """Histograms of gate logits per (condition, channel), plus exact sums of the gates.

    Args:
        channels: C, the channels of the layer.
        conditions: K, the number of pixel classes of the partition (e.g. regions or labels).
        bins: histogram bins over the logit axis.
        logit_range: the bins cover ``[-logit_range, logit_range]``; values beyond fall in the ends.

        groups: G, image groups for the sums (image-level inference, see :mod:`probe.analysis`).

    Fitted state (after ``add``): ``counts_`` int64 ``[K, C, bins]``; ``sums_``/``sumsq_`` float64
    ``[G, K, C]`` (of the gate in (0, 1)) and ``pixels_`` int64 ``[G, K]``, per image group.
    """

    def __init__(self, channels: int, conditions: int, bins: int = 256, logit_range: float = 12.0,
                 groups: int = 1):
        self.channels, self.conditions, self.bins, self.logit_range = channels, conditions, bins, logit_range
        self.groups = groups
        self.counts_ = torch.zeros(conditions, channels, bins, dtype=torch.int64)
        self.sums_ = torch.zeros(groups, conditions, channels, dtype=torch.float64)
        self.sumsq_ = torch.zeros(groups, conditions, channels, dtype=torch.float64)
        self.pixels_ = torch.zeros(groups, conditions, dtype=torch.int64)
        self._channel_offsets: dict[tuple, Tensor] = {}

    def bin_of(self, logits: Tensor) -> Tensor:
        """Bin index (int64, same shape) of each logit."""
        scale = self.bins / (2 * self.logit_range)
        return (logits.float() * scale + self.bins / 2).floor_().clamp_(0, self.bins - 1).long()

    def bin_edges(self) -> Tensor:
        """The ``bins + 1`` edges on the logit axis (the outer ones stand for +-infinity)."""
        return torch.linspace(-self.logit_range, self.logit_range, self.bins + 1, dtype=torch.float64)

    def add(self, logits: Tensor, gates: Tensor, condition: Tensor, onehot: Tensor, group: Tensor) -> None:
        """Accumulate one batch.

        Args:
            logits: ``[B, C, h, w]`` pre-sigmoid gate values.
            gates: ``[B, C, h, w]`` the gates, ``sigmoid(logits)``.
            condition: ``[B, 1, h, w]`` int64 condition id of every pixel, in ``[0, K)``.
            onehot: ``[B, h*w, K]`` float32, the same conditions one-hot (shared across layers
                of the same resolution by the caller, so it is built once per batch).
            group: ``[B]`` int64 image group of each image, in ``[0, G)``.
        """
        b, c, h, w = logits.shape
        key = (b, c, h, w)
        offsets = self._channel_offsets.get(key)
        if offsets is None:
            offsets = (torch.arange(c).view(1, c, 1, 1) * self.bins).expand(b, c, h, w)
            self._channel_offsets[key] = offsets
        index = self.bin_of(logits).add_(offsets).add_(condition * (c * self.bins))
        self.counts_ += torch.bincount(index.view(-1), minlength=self.counts_.numel()).view_as(self.counts_)
        flat = gates.reshape(b, c, h * w).float()
        self.sums_.index_add_(0, group, torch.bmm(flat, onehot).transpose(1, 2).double())
        self.sumsq_.index_add_(0, group, torch.bmm(flat * flat, onehot).transpose(1, 2).double())
        self.pixels_.index_add_(0, group, onehot.sum(1).round().long())

    def merge(self, other: "ConditionedHistogram") -> "ConditionedHistogram":
        """Add ``other``'s counts and sums into this one (exact: integer counts, float64 sums)."""
        if (other.channels, other.conditions, other.bins, other.logit_range, other.groups) != (
                self.channels, self.conditions, self.bins, self.logit_range, self.groups):
            raise ValueError("cannot merge histograms of different shapes or binning")
        self.counts_ += other.counts_
        self.sums_ += other.sums_
        self.sumsq_ += other.sumsq_
        self.pixels_ += other.pixels_
        return self

    def state_dict(self) -> dict:
        return {"counts": self.counts_, "sums": self.sums_, "sumsq": self.sumsq_, "pixels": self.pixels_,
                "config": torch.tensor([self.channels, self.conditions, self.bins, self.groups]),
                "logit_range": torch.tensor([self.logit_range], dtype=torch.float64)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ConditionedHistogram":
        channels, conditions, bins, groups = (int(v) for v in state["config"])
        hist = cls(channels, conditions, bins, float(state["logit_range"][0]), groups)
        hist.counts_, hist.sums_ = state["counts"].clone(), state["sums"].clone()
        hist.sumsq_, hist.pixels_ = state["sumsq"].clone(), state["pixels"].clone()
        return hist
