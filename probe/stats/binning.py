"""Per-channel binning of gate logits: a few segments, uniform inside each, placed by calibration.

One uniform grid over a channel's whole calibrated range cannot serve both read-outs: a channel
of an untrained network may hold 75% of its pixels in 1/500 of its range (one bin of 512, so
most of its AUC pairs are ties), while the top-quantile threshold of the IoU needs narrow bins in
the upper tail. So each channel's range ``[lo, hi]`` is cut at calibrated quantiles into
``K`` segments, and each segment gets a fixed number of bins, uniform inside it
(:func:`segment_bins`): the band around the top-``q`` threshold (calibrated quantiles ``1 - 2q``
to ``1 - 0.4q``) three eighths, the segment above it a sixteenth, and the 16 equal-mass segments
below (sixteenths of the calibration logits) the rest in equal parts, so a channel whose pixels
crowd into a sliver of its range still spreads them over many bins. Bin boundaries coincide
with segment boundaries (each segment's first bin starts at its knot).

A logit ``x`` of channel ``c`` in segment ``k`` (the number of inner knots ``<= x``) goes to bin
``trunc(clamp(((x - base[c, k]) * scale[c, k]) + start[c, k], 0, bins - 1))``, each operation
rounded to float32 on its own (no fused multiply-add), so the pure-torch path and the C++ kernel
(:mod:`probe.stats.native`) give the same bins. The two outer bins are open-ended.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import NumericalError, RunError

BULK_SEGMENTS = 16  # equal-mass segments below the threshold band (fewer when the band starts lower)
BAND_SHARE, TOP_SHARE = 3 / 8, 1 / 16  # of the bins: the threshold band, the segment above it
MIN_SEGMENTED_BINS = 64  # fewer bins: one uniform segment


def segment_levels(quantile: float) -> tuple[float, ...]:
    """The quantile levels of the inner knots for a top-``quantile`` threshold: ``j / 16`` below
    ``1 - 2q`` (equal-mass bulk segments), then ``1 - 2q`` and ``1 - 0.4q`` (the threshold band)."""
    band = (1 - 2 * quantile, 1 - 0.4 * quantile)
    bulk = [j / BULK_SEGMENTS for j in range(1, BULK_SEGMENTS) if j / BULK_SEGMENTS < band[0]]
    return tuple(level for level in bulk + [band[0], band[1]] if 0 < level < 1)


def segment_bins(bins: int, segments: int) -> list[int]:
    """Bins of each of ``segments`` segments cut at :func:`segment_levels` (they sum to ``bins``):
    ``BAND_SHARE`` for the threshold band (the last but one), ``TOP_SHARE`` for the top segment,
    the rest shared equally by the bulk segments below (the remainder to the band)."""
    if segments < 3:
        return [bins // segments + (i < bins % segments) for i in range(segments)]
    band, top = int(bins * BAND_SHARE), max(1, int(bins * TOP_SHARE))
    each = (bins - band - top) // (segments - 2)
    return [each] * (segments - 2) + [bins - top - each * (segments - 2), top]


class Binning:
    """Bins of ``C`` channels: ``knots`` float64 ``[C, K + 1]`` (strictly increasing, float32
    values; ``knots[:, 0]`` = lo, ``knots[:, -1]`` = hi) and ``starts`` int64 ``[C, K + 1]``, the
    bin at which each knot lies (``0 .. bins``)."""

    def __init__(self, knots: Tensor, starts: Tensor, bins: int):
        if knots.shape != starts.shape or knots.dim() != 2 or knots.shape[1] < 2:
            raise RunError(f"binning knots {tuple(knots.shape)} and starts {tuple(starts.shape)} do not match")
        if not bool((knots[:, 1:] > knots[:, :-1]).all()) or not bool((starts[:, 1:] > starts[:, :-1]).all()):
            raise RunError("binning knots must increase strictly in every channel (a corrupt run state?)")
        self.knots, self.starts, self.bins = knots.double(), starts.long(), int(bins)
        self.channels, self.segments = knots.shape[0], knots.shape[1] - 1
        k32 = self.knots.float()
        width = (self.knots[:, 1:] - self.knots[:, :-1])
        self.inner = k32[:, 1:-1].contiguous()  # [C, K - 1] float32
        self.base = k32[:, :-1].contiguous()  # [C, K]
        self.scale = ((self.starts[:, 1:] - self.starts[:, :-1]).double() / width).float().contiguous()
        self.start = self.starts[:, :-1].float().contiguous()

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, channels: int, lo, hi, bins: int, device=None) -> "Binning":
        """One segment per channel, ``bins`` equal bins over ``[lo, hi]`` (tensors ``[C]`` or numbers)."""
        lo, hi = (_per_channel(v, channels, device) for v in (lo, hi))
        if not bool((hi > lo).all()):
            raise ValueError("every channel's logit range must satisfy lo < hi")
        starts = torch.tensor([0, bins], dtype=torch.int64, device=lo.device).expand(channels, 2)
        return cls(torch.stack([lo, hi], 1), starts.clone(), bins)

    @classmethod
    def calibrated(cls, lo: Tensor, hi: Tensor, inner: Tensor, bins: int) -> "Binning":
        """Segments cut at ``inner`` ``[C, K - 1]`` (calibrated quantiles) inside ``[lo, hi]`` ``[C]``,
        binned by :func:`segment_bins`. Knots are rounded to float32 and pushed apart to at least
        ``1e-6`` of the span (and 4 float32 steps), so a channel whose quantiles coincide (a
        constant channel) still gets increasing knots; ``hi`` moves up when they need the room."""
        if bins < MIN_SEGMENTED_BINS or inner.shape[1] == 0:
            return cls.uniform(len(lo), lo, hi, bins)
        knots = torch.cat([lo[:, None], inner.double().clamp(lo[:, None], hi[:, None]), hi[:, None]], 1)
        knots = knots.float().double()
        gap = torch.maximum((hi - lo) * 1e-6, knots.abs().amax(1) * 2.0 ** -21)[:, None]  # 4 float32 ulps
        steps = torch.arange(knots.shape[1], dtype=torch.float64, device=knots.device)[None] * gap
        knots = (torch.cummax(knots - steps, 1).values + steps).float().double()
        counts = torch.tensor(segment_bins(bins, knots.shape[1] - 1), dtype=torch.int64, device=knots.device)
        starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).expand(len(lo), -1).clone()
        return cls(knots, starts, bins)

    # ------------------------------------------------------------------ binning
    def bin(self, x: Tensor, check_nan: bool = True) -> Tensor:
        """int32 bin ``[B, C, ...]`` of each value of ``x`` ``[B, C, ...]`` (float32; NaN refused unless
        the caller has dealt with it: ``check_nan=False`` reads no device value)."""
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(f"a binning of {self.channels} channels cannot bin values of shape {list(x.shape)} "
                             f"(expected [B, {self.channels}, ...])")
        if check_nan and has_nan(x):
            raise NumericalError("NaN gate values while recording; check the model's weights and inputs")
        if self.segments == 1:
            shape = (1, self.channels) + (1,) * (x.dim() - 2)
            v = x - self.base.view(shape)
            v *= self.scale.view(shape)
            v += self.start.view(shape)
            v.clamp_(0, self.bins - 1)
            return v.to(torch.int32)
        # [B, C, M], read in place: no transposed copies (0.61-0.70 of their time at 64x64, 0.93-0.99 at 32x32, 16x16)
        values = x.reshape(x.shape[0], self.channels, -1)
        segment = self.segment(values).long()
        v = values - _lookup(self.base, segment)
        v *= _lookup(self.scale, segment)
        v += _lookup(self.start, segment)
        v.clamp_(0, self.bins - 1)
        return v.to(torch.int32).view(x.shape)

    def segment(self, values: Tensor) -> Tensor:
        """uint8 ``[..., C, M]``: the number of inner knots ``<=`` each value of ``values`` ``[..., C, M]``
        (``searchsorted(inner, x, right=True)`` per channel) by whole-tensor compares. With ``n >= 8``
        inner knots in groups of ``g ~ sqrt(n + 1)``: first the group (one compare per group's last
        knot), then the knots inside it (``g - 1`` compares with the knots gathered by group; past the
        last knot NaN, which no value passes, not even +inf). The knots increase, so the count is the
        group's first index plus the knots passed inside it: the same counts. For the calibrated 17
        knots, 8 compares and 3 gathers instead of 17 compares, 0.66-0.74 of the time from 0.4M to
        1.6M values (one thread). Below 8 knots, one compare per knot."""
        n = self.inner.shape[1]
        if n > 255:
            per_channel = values.movedim(-2, 0).reshape(self.channels, -1)
            found = torch.searchsorted(self.inner, per_channel, right=True)
            return found.view(values.movedim(-2, 0).shape).movedim(0, -2)
        count = torch.zeros(values.shape, dtype=torch.uint8, device=values.device)
        above = torch.empty(values.shape, dtype=torch.bool, device=values.device)
        if n < 8:
            for knot in self.inner.unbind(1):
                count += torch.ge(values, knot.view(-1, 1), out=above)
            return count
        size = math.isqrt(n + 1)
        groups = (n + size) // size  # group j holds knots j*size .. j*size + size - 1 (its last one: the cut)
        for cut in self.inner[:, size - 1::size].unbind(1):
            count += torch.ge(values, cut.view(-1, 1), out=above)
        group = count.long()
        padded = torch.full((self.channels, groups * size), float("nan"), dtype=self.inner.dtype,
                            device=self.inner.device)
        padded[:, :n] = self.inner
        within = padded.view(self.channels, groups, size)
        count *= size
        for j in range(size - 1):
            count += torch.ge(values, _lookup(within[:, :, j], group), out=above)
        return count

    def edges(self) -> Tensor:
        """float64 ``[C, bins + 1]``: each bin's lower edge and the last one's upper edge on the logit
        axis (the outer ones stand for -+infinity)."""
        j = torch.arange(self.bins + 1, dtype=torch.float64, device=self.knots.device)
        k = (torch.searchsorted(self.starts.double().contiguous(), j.expand(self.channels, -1).contiguous(),
                                right=True) - 1).clamp(0, self.segments - 1)
        k0, k1 = self.knots.gather(1, k), self.knots.gather(1, k + 1)
        s0, s1 = self.starts.gather(1, k).double(), self.starts.gather(1, k + 1).double()
        return k0 + (k1 - k0) * (j - s0) / (s1 - s0)

    def rank_table(self, quantile: float) -> Tensor:
        """float64 ``[C, bins]``: each bin's rank in (0, 1), the calibrated CDF at its middle. A binning
        cut at :func:`segment_levels` of ``quantile`` holds the mass between two levels in each
        segment, spread evenly over its bins; any other binning (one uniform segment) ranks its bins
        evenly. The image-group intervals of AUCs sum these ranks (``0.5 + mean rank inside -
        mean rank outside`` is the AUC when the ranks are the pooled CDF)."""
        levels = segment_levels(quantile)
        if self.segments != len(levels) + 1:
            levels = tuple(k / self.segments for k in range(1, self.segments))
        mass = torch.tensor((0.0, *levels, 1.0), dtype=torch.float64, device=self.knots.device)
        j = torch.arange(self.bins, dtype=torch.float64, device=self.knots.device) + 0.5
        k = (torch.searchsorted(self.starts.double().contiguous(), j.expand(self.channels, -1).contiguous(),
                                right=True) - 1).clamp(0, self.segments - 1)
        s0, s1 = self.starts.gather(1, k).double(), self.starts.gather(1, k + 1).double()
        return mass[k] + (mass[k + 1] - mass[k]) * (j - s0) / (s1 - s0)

    @property
    def lo(self) -> Tensor:
        return self.knots[:, 0]

    @property
    def hi(self) -> Tensor:
        return self.knots[:, -1]

    def to(self, device) -> "Binning":
        return Binning(self.knots.to(device), self.starts.to(device), self.bins)

    def __eq__(self, other) -> bool:
        return isinstance(other, Binning) and self.bins == other.bins and torch.equal(
            self.knots.cpu(), other.knots.cpu()) and torch.equal(self.starts.cpu(), other.starts.cpu())

    __hash__ = None

    def state_dict(self) -> dict:
        """Copies (histograms sharing one binning save their own, as safetensors requires)."""
        return {"knots": self.knots.clone(), "starts": self.starts.clone()}

    @classmethod
    def from_state(cls, state: dict, channels: int, bins: int) -> "Binning":
        """From :meth:`state_dict`'s keys, or a version <= 4 state's ``lo``/``hi`` (one uniform segment)."""
        if "knots" in state:
            return cls(state["knots"], state["starts"], bins)
        return cls.uniform(channels, state["lo"], state["hi"], bins)


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table[c, index[..., c, m]]``: ``table`` ``[C, K]`` read at ``index`` ``[..., C, M]`` (int64)."""
    return table.expand(*index.shape[:-1], table.shape[1]).gather(-1, index)


def has_nan(x: Tensor) -> bool:
    """Whether ``x`` holds a NaN: its maximum is NaN exactly then (``amax`` propagates NaN), one
    reduction instead of ``isnan(x).any()``'s mask and reduction (16x faster on the CPU)."""
    return x.numel() > 0 and bool(torch.isnan(x.amax()))


def _per_channel(value, channels: int, device=None) -> Tensor:
    """float64 ``[channels]`` from a tensor (on its own device unless ``device``) or a number."""
    if isinstance(value, Tensor):
        t = value.to(dtype=torch.float64, device=device or value.device)
    else:
        t = torch.tensor(value, dtype=torch.float64, device=device)
    return torch.broadcast_to(t, (channels,)).clone()
