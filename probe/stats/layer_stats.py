"""The accumulators of one recorded layer: :class:`GatedLayerStats` and :class:`PartialLayerStats`.

Each has ``add(...)`` (one batch), ``merge(other)`` (exact: integer counts, float64 sums, Chan et
al.'s pairwise formula for moments) and ``state_dict()`` / ``load_state_dict()`` with named keys
and a ``state_version``. ``site`` is any object with the layer's ``name``, ``kind``,
``channels``, ``kernel``, ``stride``, ``dilation``, ``padding`` and ``window``
(:class:`probe.adapters.Site`, or :class:`LayerGeometry` when rebuilding from a run's state).
``ctx`` is the batch's conditions at each resolution (:class:`probe.recording.context.BatchContext`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RunError
from .histograms import ConditionedHistogram
from .regions import REGIONS

STATE_VERSION = 2  # 1: PartialLayerStats packed its scalars into one positional tensor (migrated on load)
VALID_FRACTION_BINS = 101  # per-image valid fraction in bins of 0.01; the last holds exactly 1.0
COVERAGE_BINS_MAX = 64




@dataclass(frozen=True)
class LayerGeometry:
    """What the accumulators need to know of a layer, without its module (see the module docstring)."""

    name: str
    kind: str
    channels: int
    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    padding: int = 0
    window: float = 0.0


class StateVersionError(RunError):
    """Saved accumulator state of a version this gateprobe cannot read."""


def check_state_version(state: dict, what: str) -> dict:
    """``state`` if this gateprobe reads its version (states without the key are version 1)."""
    version = int(state["state_version"]) if "state_version" in state else 1
    if version > STATE_VERSION:
        raise StateVersionError(f"{what} state version {version} is newer than this gateprobe's {STATE_VERSION}; "
                                "upgrade gateprobe or record the run again")
    return state


def _migrate_partial(state: dict) -> dict:
    """Version 1 partial state (eight scalars in one positional tensor) -> named keys."""
    if "scalars" not in state:
        return state
    names = ("images", "all_valid", "valid_sum", "valid_sumsq", "predicted_sum", "predicted_all_valid", "window",
             "leak")
    values = state["scalars"].tolist()
    if len(values) != len(names):
        raise StateVersionError(f"partial layer state version 1 holds {len(values)} scalars, not {len(names)}; "
                                "record the run again")
    return {**{k: v for k, v in state.items() if k != "scalars"}, **dict(zip(names, values))}


class GatedLayerStats:
    """Streaming statistics of one gated layer: gate histograms by region and by label, exact
    per-group sums, and the channel-by-channel covariance of the gate maps (for gate diversity),
    kept as a count, a mean ``[C]`` and a co-moment ``[C, C]`` merged with Chan et al.'s stable
    pairwise formula (each batch is centred on its own mean before its products are summed)."""

    def __init__(self, site, n_labels: int, bins: int, groups: int, lo: Tensor | float = -12.0,
                 hi: Tensor | float = 12.0):
        self.site = site
        self.regions = ConditionedHistogram(site.channels, len(REGIONS), bins, lo, hi, groups)
        self.labels = ConditionedHistogram(site.channels, n_labels, bins, lo, hi, groups)
        self.n_ = 0
        self.mean_ = torch.zeros(site.channels, dtype=torch.float64)
        self.comoment_ = torch.zeros(site.channels, site.channels, dtype=torch.float64)
        self.size_: tuple[int, int] | None = None

    def _merge_moments(self, n: int, mean: Tensor, comoment: Tensor) -> None:
        total = self.n_ + n
        delta = mean - self.mean_
        self.comoment_ += comoment + torch.outer(delta, delta) * (self.n_ * n / total)
        self.mean_ += delta * (n / total)
        self.n_ = total

    def add(self, logits: Tensor, gates: Tensor, ctx) -> None:
        """Accumulate one batch of a layer: ``logits``/``gates`` ``[B, C, h, w]``."""
        b, c, h, w = gates.shape
        size = (h, w)
        self.size_ = size
        region_offsets, label_offsets, onehot = ctx.layer_inputs(size, self.regions, self.labels)
        bins = self.regions.flat_bins(logits)  # the labels share the regions' binning
        flat = gates.reshape(b, c, h * w)
        sums = torch.bmm(flat, onehot).transpose(1, 2)  # [B, 4 + L, C]: one product for both partitions
        pixels = onehot.sum(1)
        n_regions = len(REGIONS)
        self.regions.add_binned(bins, region_offsets, sums[:, :n_regions], pixels[:, :n_regions], ctx.group)
        self.labels.add_binned(bins, label_offsets, sums[:, n_regions:], pixels[:, n_regions:], ctx.group)
        channel_sum = sums[:, :n_regions].sum((0, 1)).double()  # every pixel is in exactly one region
        n = b * h * w
        mean = channel_sum / n
        centred = flat - mean.float().view(1, c, 1)
        self._merge_moments(n, mean, torch.bmm(centred, centred.transpose(1, 2)).sum(0).double())

    def merge(self, other: "GatedLayerStats") -> None:
        self.regions.merge(other.regions)
        self.labels.merge(other.labels)
        self._merge_moments(other.n_, other.mean_, other.comoment_)
        self.size_ = self.size_ or other.size_

    def state_dict(self) -> dict:
        return {**{f"regions.{k}": v for k, v in self.regions.state_dict().items()},
                **{f"labels.{k}": v for k, v in self.labels.state_dict().items()},
                "state_version": torch.tensor(STATE_VERSION),
                "moments_n": torch.tensor([self.n_]), "moments_mean": self.mean_, "comoment": self.comoment_,
                "size": torch.tensor(self.size_ or (0, 0))}

    def load_state_dict(self, state: dict) -> None:
        state = check_state_version(state, "gated layer")
        self.regions = ConditionedHistogram.from_state_dict(_sub(state, "regions."))
        self.labels = ConditionedHistogram.from_state_dict(_sub(state, "labels."))
        self.n_, self.mean_ = int(state["moments_n"][0]), state["moments_mean"].clone()
        self.comoment_ = state["comoment"].clone()
        self.size_ = tuple(int(v) for v in state["size"]) or None


class PartialLayerStats:
    """Streaming statistics of one partial layer: the valid fraction per image (its sum, square
    sum, per-group sums and histogram), images whose mask is all valid, the geometric prediction
    (claim P3), and the coverage of the locations that flipped from hole to valid (claim P2).

    A location *flips* at a layer when its mask is valid after the layer while the input pixel at
    the centre of its window (all channels averaged for multi-channel masks) was a hole.
    """

    def __init__(self, site, groups: int):
        self.site = site
        self.window = float(site.window)
        self.coverage_bins = None
        self.images_ = 0
        self.all_valid_ = 0
        self.valid_sum_ = 0.0
        self.valid_sumsq_ = 0.0
        self.valid_hist_ = torch.zeros(VALID_FRACTION_BINS, dtype=torch.int64)
        self.group_valid_ = torch.zeros(groups, dtype=torch.float64)
        self.group_images_ = torch.zeros(groups, dtype=torch.int64)
        self.predicted_sum_ = 0.0
        self.predicted_all_valid_ = 0
        self.coverage_hist_: Tensor | None = None
        self.size_: tuple[int, int] | None = None
        self.input_size_: tuple[int, int] | None = None
        self.leak_ = float("nan")  # max |output| where the updated mask is 0 (NaN: output not seen)

    def add(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, ctx,
            out: Tensor | None = None) -> None:
        m = self.site
        if out is not None:
            outside = (new_valid[:, :1] == 0).expand_as(out)
            leak = float(out[outside].abs().max()) if bool(outside.any()) else 0.0
            self.leak_ = leak if self.leak_ != self.leak_ else max(self.leak_, leak)
        new_valid = new_valid[:, :1].float()
        coverage = coverage[:, :1].float()
        self.size_, self.input_size_ = tuple(new_valid.shape[-2:]), tuple(valid_in.shape[-2:])
        fraction = new_valid.mean((1, 2, 3)).double()  # [B]
        self.images_ += len(fraction)
        self.all_valid_ += int((fraction == 1).sum())
        self.valid_sum_ += float(fraction.sum())
        self.valid_sumsq_ += float((fraction ** 2).sum())
        self.valid_hist_ += torch.bincount((fraction * 100).floor().long().clamp(0, 100), minlength=VALID_FRACTION_BINS)
        self.group_valid_.index_add_(0, ctx.group, fraction)
        self.group_images_.index_add_(0, ctx.group, torch.ones_like(ctx.group))

        predicted_in = F.interpolate(ctx.predicted_valid, size=self.input_size_, mode="nearest")
        predicted = F.max_pool2d(predicted_in, m.kernel, m.stride, m.padding, m.dilation)
        if predicted.shape[-2:] != new_valid.shape[-2:]:
            predicted = F.interpolate(predicted, size=self.size_, mode="nearest")
        ctx.predicted_valid = predicted
        predicted_fraction = predicted.mean((1, 2, 3))
        self.predicted_sum_ += float(predicted_fraction.sum())
        self.predicted_all_valid_ += int((predicted_fraction == 1).sum())

        centre = valid_in.float().mean(1, keepdim=True)
        offset = m.dilation * (m.kernel // 2) - m.padding
        centre = centre[..., offset::m.stride, offset::m.stride][..., :self.size_[0], :self.size_[1]]
        flipped = (new_valid > 0) & (centre < 1)
        if self.coverage_hist_ is None:
            n_bins = int(min(self.window, COVERAGE_BINS_MAX))
            self.coverage_hist_ = torch.zeros(n_bins, dtype=torch.int64)
        n_bins = len(self.coverage_hist_)
        values = coverage[flipped]
        index = (values * n_bins - 1e-6).ceil().long().sub(1).clamp(0, n_bins - 1)
        self.coverage_hist_ += torch.bincount(index, minlength=n_bins)

    def merge(self, other: "PartialLayerStats") -> None:
        for name in ("images_", "all_valid_", "valid_sum_", "valid_sumsq_", "predicted_sum_", "predicted_all_valid_"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.leak_ = float(np.nanmax([self.leak_, other.leak_])) if not (
            np.isnan(self.leak_) and np.isnan(other.leak_)) else float("nan")
        self.valid_hist_ += other.valid_hist_
        self.group_valid_ += other.group_valid_
        self.group_images_ += other.group_images_
        if other.coverage_hist_ is not None:
            self.coverage_hist_ = other.coverage_hist_.clone() if self.coverage_hist_ is None \
                else self.coverage_hist_ + other.coverage_hist_
        self.size_, self.input_size_ = self.size_ or other.size_, self.input_size_ or other.input_size_

    _SCALARS = ("images_", "all_valid_", "valid_sum_", "valid_sumsq_", "predicted_sum_", "predicted_all_valid_",
                "window", "leak_")
    _INTEGERS = ("images_", "all_valid_", "predicted_all_valid_")

    def state_dict(self) -> dict:
        state = {name.rstrip("_"): torch.tensor(getattr(self, name), dtype=torch.float64) for name in self._SCALARS}
        return {**state, "state_version": torch.tensor(STATE_VERSION), "valid_hist": self.valid_hist_,
                "group_valid": self.group_valid_, "group_images": self.group_images_,
                "coverage_hist": self.coverage_hist_ if self.coverage_hist_ is not None else torch.zeros(0, dtype=torch.int64),
                "size": torch.tensor((self.size_ or (0, 0)) + (self.input_size_ or (0, 0)))}

    def load_state_dict(self, state: dict) -> None:
        state = _migrate_partial(check_state_version(state, "partial layer"))
        for name in self._SCALARS:
            value = float(state[name.rstrip("_")])
            setattr(self, name, int(value) if name in self._INTEGERS else value)
        self.valid_hist_ = state["valid_hist"].clone()
        self.group_valid_, self.group_images_ = state["group_valid"].clone(), state["group_images"].clone()
        self.coverage_hist_ = state["coverage_hist"].clone() if len(state["coverage_hist"]) else None
        size = [int(v) for v in state["size"]]
        self.size_, self.input_size_ = (tuple(size[:2]) or None), (tuple(size[2:]) or None)


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
