"""Mergeable per-(condition, channel) gate histograms, in the spirit of GAN dissection's
running statistics: ``add``, ``merge(other)``, ``state_dict()``, never storing maps.

Gates are binned by their *logit* (the pre-sigmoid value), uniformly over a per-channel range
``[lo_c, hi_c]`` with the two outer bins open-ended. Sigmoid gates saturate, so equal-width bins
in gate space put most pixels of a channel into its first or last bin; logit bins keep
resolution in the tails, where the top-quantile threshold of Network Dissection lies. A fixed
logit range for every channel is not enough either: a trained channel may spread its logits over
a fraction of one such bin, and pixel pairs that share a bin make the AUC a tie. So the range of
each channel is calibrated on the first images of the data (see
:func:`probe.recorder.calibrate_logit_ranges`), the same images for every shard, so shard
histograms stay mergeable. Binning a logit is one fused multiply-add, a clamp and a truncation.

The fast path (see :class:`probe.recorder.GatedLayerStats`) bins a layer's logits once into
flat ``channel * bins + bin`` indices, adds a broadcast int32 offset per pixel's condition and
histograms everything with one ``bincount``; sums come from one batched matrix product with the
conditions' one-hot matrix. No temporary larger than one int32 copy of the gate map is made.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import RunError

DEFAULT_BINS = 512  # per channel; AUC p99 error 0.00025, IoU p90 2.1% at 64 images (benchmarks/accuracy.py)


def logit_bins(logits: Tensor, scale: Tensor, offset: Tensor, bins: int) -> Tensor:
    """Bin index ``[0, bins)`` (int32, same shape ``[B, C, h, w]``) of each logit, with per-channel
    ``scale``/``offset`` ``[1, C, 1, 1]`` (float32): three whole-tensor passes."""
    x = torch.addcmul(offset, logits, scale)
    x.clamp_(0, bins - 1)
    return x.to(torch.int32)


class ConditionedHistogram:
    """Histograms of gate logits per (condition, channel), plus exact per-group sums of the gates.

    Args:
        channels: C, the channels of the layer.
        conditions: K, the number of pixel classes of the partition (e.g. regions or labels).
        bins: histogram bins over the logit axis.
        lo, hi: ``[C]`` (or scalars) the logit range of each channel's bins; values beyond fall in
            the end bins.
        groups: G, image groups for the sums (image-level inference, see :mod:`probe.analysis`).

    Fitted state: ``counts_`` int64 ``[K, C, bins]``; ``sums_`` float64 ``[G, K, C]`` (of the gate in
    (0, 1)) and ``pixels_`` int64 ``[G, K]``, per image group.
    """

    def __init__(self, channels: int, conditions: int, bins: int = 256, lo: Tensor | float = -12.0,
                 hi: Tensor | float = 12.0, groups: int = 1):
        self.channels, self.conditions, self.bins, self.groups = channels, conditions, bins, groups
        self.lo = torch.broadcast_to(torch.as_tensor(lo, dtype=torch.float64), (channels,)).clone()
        self.hi = torch.broadcast_to(torch.as_tensor(hi, dtype=torch.float64), (channels,)).clone()
        if not bool((self.hi > self.lo).all()):
            raise ValueError("every channel's logit range must satisfy lo < hi")
        self._binning = self.affine()  # lo and hi never change: the float32 scale/offset, once
        self._channel_base = torch.arange(channels, dtype=torch.int32).view(1, -1, 1, 1) * bins
        self.counts_ = torch.zeros(conditions, channels, bins, dtype=torch.int64)
        self.sums_ = torch.zeros(groups, conditions, channels, dtype=torch.float64)
        self.pixels_ = torch.zeros(groups, conditions, dtype=torch.int64)

    def bin_edges(self) -> Tensor:
        """``[C, bins + 1]`` edges on each channel's logit axis (the outer ones stand for +-infinity)."""
        steps = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64, device=self.lo.device)
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * steps

    def affine(self) -> tuple[Tensor, Tensor]:
        """float32 ``scale``/``offset`` ``[1, C, 1, 1]`` mapping a logit to its fractional bin."""
        scale = self.bins / (self.hi - self.lo)
        return scale.float().view(1, -1, 1, 1), (-self.lo * scale).float().view(1, -1, 1, 1)

    def flat_bins(self, logits: Tensor) -> Tensor:
        """int32 ``[B, C, h, w]``: ``channel * bins + bin`` of each logit, the index into one
        condition's ``[C, bins]`` block of ``counts_`` (one extra in-place pass over :func:`logit_bins`)."""
        index = logit_bins(logits, *self._binning, self.bins)
        index += self._channel_base
        return index

    def offsets(self, condition: Tensor) -> Tensor:
        """int32 ``[B, 1, h, w]`` offset of each pixel's block in ``counts_`` for ``condition``
        ``[B, 1, h, w]`` (int64 ids in ``[0, K)``); broadcast over the channels of :meth:`flat_bins`."""
        return condition.to(torch.int32) * (self.channels * self.bins)

    def add_binned(self, bins: Tensor, offsets: Tensor, sums: Tensor, pixels: Tensor, group: Tensor) -> None:
        """Accumulate one batch: ``bins`` int32 ``[B, C, h, w]`` from :meth:`flat_bins`, ``offsets``
        from :meth:`offsets`, per-image ``sums`` ``[B, K, C]`` and ``pixels`` ``[B, K]``, ``group`` ``[B]``."""
        index = bins + offsets
        self.counts_ += torch.bincount(index.view(-1), minlength=self.counts_.numel()).view_as(self.counts_)
        self.sums_.index_add_(0, group, sums.double())
        self.pixels_.index_add_(0, group, pixels.long())

    def add(self, logits: Tensor, gates: Tensor, condition: Tensor, group: Tensor) -> None:
        """Accumulate one batch from scratch (the slow, self-contained path; tests and adapters).

        ``logits``/``gates`` ``[B, C, h, w]``, ``condition`` ``[B, 1, h, w]`` int64, ``group`` ``[B]``."""
        b, c, h, w = gates.shape
        onehot = torch.nn.functional.one_hot(condition.flatten(1), self.conditions).float()  # [B, hw, K]
        sums = torch.bmm(gates.reshape(b, c, h * w).float(), onehot).transpose(1, 2)
        self.add_binned(self.flat_bins(logits), self.offsets(condition), sums, onehot.sum(1).round(), group)

    def merge(self, other: "ConditionedHistogram") -> "ConditionedHistogram":
        """Add ``other``'s counts and sums into this one (exact: integer counts, float64 sums)."""
        if (other.channels, other.conditions, other.bins, other.groups) != (
                self.channels, self.conditions, self.bins, self.groups) or not (
                torch.equal(other.lo, self.lo) and torch.equal(other.hi, self.hi)):
            raise RunError("cannot merge histograms of different shapes or binning (were the shards "
                           "calibrated on the same images?)")
        self.counts_ += other.counts_
        self.sums_ += other.sums_
        self.pixels_ += other.pixels_
        return self

    def state_dict(self) -> dict:
        return {"counts": self.counts_, "sums": self.sums_, "pixels": self.pixels_,
                "config": torch.tensor([self.channels, self.conditions, self.bins, self.groups], device="cpu"),
                "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ConditionedHistogram":
        channels, conditions, bins, groups = (int(v) for v in state["config"])
        hist = cls(channels, conditions, bins, state["lo"], state["hi"], groups)
        hist.counts_, hist.sums_, hist.pixels_ = state["counts"].clone(), state["sums"].clone(), state["pixels"].clone()
        return hist
