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
from .binning import Binning
from .histograms import INT32_SAFE, ConditionedHistogram, LabelCellHistogram
from .joint import JointTrivialCounts
from .native import accumulate_gate_batch
from .native_build import kernel_module, native_module, path
from .regions import REGIONS

STATE_VERSION = 8  # 1: PartialLayerStats packed its scalars into one positional tensor (migrated on load);
# 2: no trivial-feature histograms and no partial-layer mask moments (read as empty: no control, NaN);
# 3: fine [labels, channels, bins] label histograms and dense [groups, labels, channels] sums (converted
# exactly on load to version 4's cells and (group, label) slots); 4: one uniform segment per channel (lo, hi);
# 5: no rank sums (NaN: no image-group interval of AUCs) and no joint trivial counts (no joint control);
# 6: no gate range of layers binned by the gate value (NaN soft fraction); 7: no IoU counts (the IoU is read
# from the label cells, as for every run recorded without the IoU pass)
TRIVIAL_FEATURES = ("mean_red", "mean_green", "mean_blue", "local_variance", "row", "column")
TRIVIAL_RANGES = ((0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 0.25, 1.0, 1.0))  # (lo, hi) per feature
VALID_FRACTION_BINS = 101  # per-image valid fraction in bins of 0.01; the last holds exactly 1.0
COVERAGE_BINS_MAX = 64
DENSE_LABELS = 64  # up to this many classes every batch updates all of them (the old, dense shapes)




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
    binned: str = "logit"  # gated layers: histograms over the logit (sigmoid gates) or the gate value
    found_by: str = "adapter"
    activation: str = ""


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


class ChannelMoments:
    """Count, mean ``[C]`` and co-moment ``[C, C]`` of channel maps over pixels, merged with Chan et
    al.'s stable pairwise formula (each batch is centred on its own mean before its products are
    summed). The covariance ``comoment_ / n_`` gives the effective number of distinct maps."""

    def __init__(self, channels: int, device: torch.device | str | None = None):
        self.n_ = 0
        self.mean_ = torch.zeros(channels, dtype=torch.float64, device=device)
        self.comoment_ = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def merge_parts(self, n: int, mean: Tensor, comoment: Tensor) -> None:
        total = self.n_ + n
        if total == 0:
            return
        delta = mean - self.mean_
        self.comoment_ += comoment + torch.outer(delta, delta) * (self.n_ * n / total)
        self.mean_ += delta * (n / total)
        self.n_ = total

    def add(self, maps: Tensor, channel_sum: Tensor | None = None) -> None:
        """Accumulate ``maps`` ``[B, C, h, w]`` (``channel_sum`` ``[C]``, its sum, when known already)."""
        b, c = maps.shape[:2]
        flat = maps.reshape(b, c, -1).float()
        n = flat.shape[0] * flat.shape[2]
        mean = (flat.sum((0, 2)) if channel_sum is None else channel_sum).double() / n
        self.merge_parts(n, mean, centred_gram(flat, mean.float()))

    def merge(self, other: "ChannelMoments") -> None:
        self.merge_parts(other.n_, other.mean_, other.comoment_)

    def state_dict(self, prefix: str) -> dict:
        return {f"{prefix}_n": torch.tensor([self.n_], device="cpu"), f"{prefix}_mean": self.mean_, f"{prefix}_comoment": self.comoment_}

    def load_state_dict(self, state: dict, prefix: str) -> None:
        self.n_ = int(state[f"{prefix}_n"][0])
        self.mean_, self.comoment_ = state[f"{prefix}_mean"].clone(), state[f"{prefix}_comoment"].clone()


SYMMETRIC_GRAM = 64  # from this many channels the Gram matrix is computed as three blocks of its four


def centred_gram(x: Tensor, mean: Tensor) -> Tensor:
    """float64 ``[C, C]``: ``sum_b (x[b] - mean) @ (x[b] - mean).T`` of ``x`` float32 ``[B, C, N]``
    about ``mean`` float32 ``[C]``. On the CPU with the C++ kernel and AVX2 + FMA it is the kernel's
    ``centred_gram``: the lower triangle only, centred as it reads (0.65 of the time of the centred
    copy and :func:`_gram` at one thread, 0.73 at two, on one batch of ``scenes-gated``'s gates:
    ``benchmarks/stats_cost.py``); elsewhere :func:`_gram` of the centred copy."""
    if fast_gram(x.device):
        return kernel_module().centred_gram(x.contiguous(), mean.contiguous())
    return torch_centred_gram(x, mean)


def torch_centred_gram(x: Tensor, mean: Tensor) -> Tensor:
    """:func:`centred_gram` by torch: :func:`_gram` of the centred copy (any device)."""
    return _gram(x - mean.view(1, -1, 1))


def fast_gram(device: torch.device) -> bool:
    """Whether the C++ kernel's ``centred_gram`` runs for tensors on ``device``: the CPU, the kernel
    built, and a CPU with AVX2 and FMA."""
    return path(device) == "native" and kernel_module().fast_gram()


def _gram(x: Tensor) -> Tensor:
    """float64 ``[C, C]``: ``sum_b x[b] @ x[b].T`` of ``x`` ``[B, C, N]`` (float32 products). From
    ``SYMMETRIC_GRAM`` channels on, the upper right block is the transpose of the lower left one
    instead of a product of its own: 3/4 of the multiply-adds, 0.85-0.88 of the time at 96 channels
    on the CPU at one thread (below 64 channels the smaller products are no faster)."""
    c = x.shape[1]
    if c < SYMMETRIC_GRAM:
        return torch.bmm(x, x.transpose(1, 2)).sum(0).double()
    h = c // 2
    out = torch.empty(c, c, dtype=torch.float64, device=x.device)
    out[:, :h] = torch.bmm(x, x[:, :h].transpose(1, 2)).sum(0)  # [C, h]: both left blocks
    out[h:, h:] = torch.bmm(x[:, h:], x[:, h:].transpose(1, 2)).sum(0)
    out[:h, h:] = out[h:, :h].T
    return out


class GatedLayerStats:
    """Streaming statistics of one gated layer: exact fine gate histograms and per-group sums by
    region (:class:`ConditionedHistogram`), label statistics of size labels x channels x cells
    (:class:`LabelCellHistogram`: updated only for the labels present in a batch), the
    channel-by-channel covariance of the gate maps (:class:`ChannelMoments` ``moments``) and the
    controls for semantic roles at the layer's resolution: the label statistics of each trivial
    input feature (``trivial``) and the joint counts of all six (``joint``,
    :class:`~probe.stats.joint.JointTrivialCounts`). They depend on the resolution only, so the
    first gated layer at a resolution keeps them (``owns_controls``) and the others read its ones
    (:func:`controls_of`).

    One batch costs one pass over the logits that bins them (regions and labels share the
    binning) and counts them by region and present label
    (:func:`probe.stats.native.accumulate_gate_batch`), one ``bmm`` with the joint region/label
    one-hot for every gate sum, and one ``bmm`` for the covariance. After the IoU pass ``iou`` holds
    its exact counts (:class:`IouCounts`; None without them)."""

    def __init__(self, site, n_labels: int, bins: int, groups: int, lo: Tensor | float = -12.0,
                 hi: Tensor | float = 12.0, binning: Binning | None = None, quantile: float = 0.005):
        self.site = site
        self.regions = ConditionedHistogram(site.channels, len(REGIONS), bins, lo, hi, groups, binning)
        device = self.regions.binning.knots.device
        self.labels = LabelCellHistogram(site.channels, n_labels, self.regions.binning, groups)
        # the trivial input features at this layer's resolution, with the same label statistics as the gates
        lo_t, hi_t = (torch.tensor(r, dtype=torch.float64, device=device) for r in TRIVIAL_RANGES)
        self.trivial = LabelCellHistogram(len(TRIVIAL_FEATURES), n_labels,
                                          Binning.uniform(len(TRIVIAL_FEATURES), lo_t, hi_t, bins), groups=1)
        self.joint = JointTrivialCounts(n_labels, groups, device=device)
        self.owns_controls: bool | None = None  # decided by the first batch (see controls_of)
        self.rank_table = self.regions.binning.rank_table(quantile)  # [C, bins]
        self.moments = ChannelMoments(site.channels, device=device)
        # (min, max) of every gate value of the layer, kept where the histograms are over the gate
        # value (any activation but a sigmoid): the range the soft fraction is defined on
        self.gate_range_ = torch.tensor([np.inf, -np.inf], dtype=torch.float64, device=device)
        self.size_: tuple[int, int] | None = None
        self.iou: IouCounts | None = None  # the IoU pass's exact counts (probe.recording.iou_pass), if it ran

    def add(self, logits: Tensor, gates: Tensor, ctx) -> None:
        """Accumulate one batch of a layer: ``logits``/``gates`` ``[B, C, h, w]``."""
        b, c, h, w = gates.shape
        self.size_ = (h, w)
        cond = _layer_conditions(ctx, self.size_)
        self.regions.before_add(b * h * w)
        self.labels.before_add(cond.labelled)
        rank_sums = accumulate_gate_batch(logits.reshape(b, c, h * w), self.regions.binning, region=cond.region,
                                          n_regions=len(REGIONS), region_counts=self.regions.counts_,
                                          rank_table=self.rank_table, check_ids=False, nonfinite=ctx.nonfinite,
                                          **self.labels.targets(cond.compact, cond.present))
        region_sums, label_sums = cond.sums(gates.reshape(b, c, h * w))
        self.regions.add_sums(region_sums, cond.region_pixels, ctx.group)
        if len(cond.present):
            self.labels.add_sums(cond.present, ctx.group, label_sums, cond.label_pixels, rank_sums)
        self.moments.add(gates, channel_sum=region_sums.sum((0, 1)))  # every pixel is in one region
        if getattr(self.site, "binned", "logit") == "gate":
            low, high = torch.aminmax(gates)
            self.gate_range_ = torch.stack([self.gate_range_[0].minimum(low.double()),
                                            self.gate_range_[1].maximum(high.double())])
        features = ctx.trivial_features(self.size_)  # [B, F, h, w] or None (no image given)
        if features is None:
            return
        if self.owns_controls is None:  # the first layer at this resolution in the first batch keeps them
            claimed = ctx._cache.setdefault(("controls-owner", self.size_), self.site.name)
            self.owns_controls = claimed == self.site.name
        if self.owns_controls:
            features = features.reshape(b, len(TRIVIAL_FEATURES), h * w)
            self.trivial.before_add(cond.labelled)
            accumulate_gate_batch(features, self.trivial.binning, check_ids=False, nonfinite=ctx.nonfinite,
                                  **self.trivial.targets(cond.compact, cond.present))
            self.joint.add(features, cond.compact, ctx.group, present=cond.present)

    def merge(self, other: "GatedLayerStats") -> None:
        self.regions.merge(other.regions)
        self.labels.merge(other.labels)
        self.trivial.merge(other.trivial)
        self.joint.merge(other.joint)
        self.owns_controls = self.owns_controls or other.owns_controls
        self.moments.merge(other.moments)
        self.gate_range_ = torch.stack([self.gate_range_[0].minimum(other.gate_range_[0]),
                                        self.gate_range_[1].maximum(other.gate_range_[1])])
        self.size_ = self.size_ or other.size_
        self.iou = self.iou.merge(other.iou) if self.iou is not None else None

    def state_dict(self) -> dict:
        return {**{f"regions.{k}": v for k, v in self.regions.state_dict().items()},
                **({f"iou.{k}": v for k, v in self.iou.state_dict().items()} if self.iou is not None else {}),
                **{f"labels.{k}": v for k, v in self.labels.state_dict().items()},
                **{f"trivial.{k}": v for k, v in self.trivial.state_dict().items()},
                **{f"joint.{k}": v for k, v in self.joint.state_dict().items()},
                "owns_controls": torch.tensor(-1 if self.owns_controls is None else int(self.owns_controls),
                                              device="cpu"),
                "state_version": torch.tensor(STATE_VERSION, device="cpu"),
                **self.moments.state_dict("moments"),
                "gate_range": self.gate_range_.cpu(),
                "size": torch.tensor(self.size_ or (0, 0), device="cpu")}

    def load_state_dict(self, state: dict) -> None:
        state = check_state_version(state, "gated layer")
        self.regions = ConditionedHistogram.from_state_dict(_sub(state, "regions."))
        self.labels = _label_cells_from_state(_sub(state, "labels."))
        if "trivial.counts" in state or "trivial.cell_counts" in state:
            self.trivial = _label_cells_from_state(_sub(state, "trivial."))
        if "joint.keys" in state:
            self.joint = JointTrivialCounts.from_state_dict(_sub(state, "joint."))
        # before version 6 every layer kept its own single-feature controls and none kept joint counts
        owner = int(state["owns_controls"]) if "owns_controls" in state else 1
        self.owns_controls = None if owner < 0 else bool(owner)
        if "comoment" in state:  # version <= 2 named the co-moment without the prefix
            state = {**state, "moments_comoment": state["comoment"]}
        self.moments.load_state_dict(state, "moments")
        if "gate_range" in state:
            self.gate_range_ = state["gate_range"].to(self.gate_range_)
        self.size_ = tuple(int(v) for v in state["size"]) or None
        self.iou = IouCounts.from_state_dict(_sub(state, "iou.")) if "iou.threshold" in state else None


def controls_of(stats: dict) -> dict:
    """Layer name -> the gated layer whose trivial-feature controls it reads: the layer that keeps
    them at its resolution (``owns_controls``), or itself (runs of state version <= 5, where every
    layer kept its own single-feature controls)."""
    gated = {name: s for name, s in stats.items() if isinstance(s, GatedLayerStats)}
    owners = {}
    for name, s in gated.items():
        if s.owns_controls:
            owners.setdefault(s.size_, name)
    return {name: gated[owners.get(s.size_, name)] if not s.owns_controls else s for name, s in gated.items()}


def _label_cells_from_state(state: dict) -> LabelCellHistogram:
    """Version 4 label statistics, or a version <= 3 fine ``[L, C, bins]`` histogram with dense
    ``[G, L, C]`` sums converted exactly (cells are sums of fine bins, offsets are integers)."""
    if "cell_counts" in state:
        return LabelCellHistogram.from_state_dict(state)
    counts = state["counts"]
    channels, labels, bins, groups = (int(v) for v in state["config"])
    binning = Binning.from_state(state, channels, bins)
    hist = LabelCellHistogram(channels, labels, binning, groups)
    present = torch.arange(labels, dtype=torch.int64, device=counts.device)
    hist.add_fine(present, counts.long(), counts.long().sum(0))
    sums, pixels = state["sums"], state["pixels"]
    g, lab = torch.nonzero(pixels > 0, as_tuple=True)
    if len(g):
        other = LabelCellHistogram(channels, labels, binning, groups)
        other.slot_of_.fill_(-1)
        other.slot_keys_ = torch.stack([g, lab], 1)
        other.slot_sums_, other.slot_pixels_ = sums[g, lab].double().clone(), pixels[g, lab].long().clone()
        other.slot_ranks_ = torch.full_like(other.slot_sums_, float("nan"))
        hist._merge_slots(other)
    return hist


@dataclass(frozen=True)
class LayerConditions:
    """The conditions of one batch at one layer resolution (``N = h*w`` cells), shared by every
    gated layer of that size: ``region`` int32 ``[B, N]``; ``present`` int64 ``[P]`` the labels
    present in the batch (every class when there are at most ``DENSE_LABELS``); ``compact`` int32
    ``[B, N]`` each cell's position in ``present`` (-1 where ignored); pixel counts
    ``region_pixels`` ``[B, 4]`` and ``label_pixels`` ``[B, P]`` (int64); ``labelled``: at most this
    many labelled cells (``B*N``: an exact count would read a device value every batch);
    ``onehot_t`` float32 ``[B, 4 + P, N]`` region and present label of each cell, one row per region
    or label (an ignored cell is zero in every label row)."""

    region: Tensor
    present: Tensor
    compact: Tensor
    region_pixels: Tensor
    label_pixels: Tensor
    labelled: int
    onehot_t: Tensor
    dense: bool  # every class is a row of ``onehot_t`` (at most ``DENSE_LABELS`` classes)

    def sums(self, gates: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-image gate sums ``[B, 4, C]`` by region and ``[B, P, C]`` by present label (None
        without labels) of ``gates`` ``[B, C, N]``: one float32 ``bmm`` when every class is a row
        (the same shape every batch), else the regions' rows apart, so that their rounding does
        not depend on the labels a batch holds. The one-hot is the left factor (``[K, N] @ [N, C]``
        with the gates transposed: 0.5-0.7 of the time of ``[C, N] @ [N, K]`` on the CPU's BLAS)."""
        n_regions = len(REGIONS)
        gates_t = gates.transpose(1, 2)  # [B, N, C], a view
        if self.dense and len(self.present):
            sums = torch.bmm(self.onehot_t, gates_t)
            return sums[:, :n_regions], sums[:, n_regions:]
        region_sums = torch.bmm(self.onehot_t[:, :n_regions], gates_t)
        label_sums = torch.bmm(self.onehot_t[:, n_regions:], gates_t) if len(self.present) else None
        return region_sums, label_sums


def _layer_conditions(ctx, size: tuple[int, int]) -> LayerConditions:
    """:class:`LayerConditions` at ``size``, cached on ``ctx``. Labels are taken at the centre
    pixel of each cell, the rule of :meth:`probe.recording.context.BatchContext.label_ids` (checked
    against it in the tests). On the CPU with the C++ kernel, one call (``cell_conditions``) computes
    what :func:`_torch_conditions` does with about fifty small operations, with the same results;
    it declines hole or sketch masks that are not 0/1 (their area means are torch's)."""
    key = ("gated-layer-conditions", size)
    cache = ctx._cache
    if key not in cache:
        device = ctx.labels.device
        dense = ctx.n_labels <= DENSE_LABELS
        if dense:  # few classes: all of them, every batch
            present = torch.arange(ctx.n_labels, dtype=torch.int64, device=device)
        else:
            present = torch.unique(ctx.labels_at(size))
            present = present[present >= 0]
        remap = torch.full((ctx.n_labels + 1,), -1, dtype=torch.int64, device=device)
        remap[present + 1] = torch.arange(len(present), dtype=torch.int64, device=device)
        native = native_module(device)
        parts = native.cell_conditions(ctx.hole.float().contiguous(), ctx.sketch.float().contiguous(),
                                       ctx.labels.long().contiguous(), size[0], size[1], ctx.border, remap,
                                       len(present)) if native is not None else []
        region, compact, region_pixels, label_pixels, onehot_t = parts or _torch_conditions(ctx, size, remap, present)
        cache[key] = LayerConditions(region, present, compact, region_pixels, label_pixels, compact.numel(), onehot_t,
                                     dense)
    return cache[key]


def _torch_conditions(ctx, size: tuple[int, int], remap: Tensor, present: Tensor) -> tuple[Tensor, ...]:
    """``(region, compact, region_pixels, label_pixels, onehot_t)`` of :class:`LayerConditions` at
    ``size`` from ``ctx``'s regions and labels at that size (``remap`` ``[n_labels + 1]``: label + 1
    -> its position in ``present``, -1 for the others)."""
    labels = ctx.labels_at(size)  # [B, N]
    compact = remap[labels + 1]
    region = ctx.regions(size).flatten(1)
    return (region.to(torch.int32), compact.to(torch.int32), _per_image_counts(region, len(REGIONS)),
            _per_image_counts(compact, len(present)), _onehot_rows(region, compact, len(present)))


class IouCounts:
    """The exact counts behind one gated layer's Network Dissection IoU, from the IoU pass
    (:mod:`probe.recording.iou_pass`): the labelled pixels whose binned value (the logit of a sigmoid
    gate, else the gate value) exceeds each channel's threshold, by label.

    ``threshold`` float64 ``[C]``: the per-channel top-quantile threshold the tables compute from
    the layer's region histograms (:func:`probe.rundir.tables.channel_thresholds`); ``inter_``
    ``[C, L + 1]``: the pixels above it, of label ``l`` in column ``l + 1`` (column 0 takes the
    pixels whose label is ignored and is not kept), int32 while the pixels counted (``seen_``, known
    on the host) cannot overflow one, then int64 (saved as int64 either way). The labelled pixels
    above the threshold of a channel (the IoU's ``active``) are the sum over its labels: every
    labelled pixel has one. Counts of two parts of a recording add only when their thresholds are
    the same (:meth:`merge`)."""

    def __init__(self, threshold: Tensor, n_labels: int):
        self.threshold = threshold.double()
        self.inter_ = torch.zeros(len(threshold), n_labels + 1, dtype=torch.int32, device=threshold.device)
        self.seen_ = 0  # bounds every count: the pixels counted into a channel so far
        # the largest float32 at or below each threshold: for a float32 value x, x > it exactly when
        # x > the float64 threshold, so the comparison needs no float64 copy of the layer's values
        below = self.threshold.float()
        self._below = torch.where(below.double() > self.threshold, torch.nextafter(below, below.new_tensor(-np.inf)),
                                  below)

    def add(self, values: Tensor, ctx) -> None:
        """Count one batch of the layer: ``values`` ``[B, C, h, w]`` (the binned value), labels from
        ``ctx`` (:meth:`~probe.recording.context.BatchContext.labels_at`). One compare and one int32
        scatter per image into the counts (once they are int64, into the batch's int32 counts, added
        to them); no device value is read."""
        b, c, h, w = values.shape
        self._widen(self.seen_ + b * h * w)
        above = (values.float().reshape(b, c, h * w) > self._below[:, None]).to(torch.int32)  # [B, C, N]
        index = ctx.labels_at((h, w)) + 1  # [B, N]: 0 for ignored cells
        batch = self.inter_ if self.inter_.dtype == torch.int32 else \
            torch.zeros(self.inter_.shape, dtype=torch.int32, device=self.inter_.device)
        for image in range(b):
            batch.scatter_add_(1, index[image].expand(c, -1), above[image])
        if batch is not self.inter_:
            self.inter_ += batch

    def _widen(self, seen: int) -> None:
        """Note that ``seen`` bounds every count; int64 counts once that could overflow an int32."""
        self.seen_ = seen
        if self.inter_.dtype == torch.int32 and seen > INT32_SAFE:
            self.inter_ = self.inter_.long()

    @property
    def inter(self) -> Tensor:
        """``[L, C]`` (int32 or int64, as ``inter_``): each label's pixels above the threshold."""
        return self.inter_[:, 1:].T

    def merge(self, other: "IouCounts | None") -> "IouCounts | None":
        """These counts with ``other``'s added in place when both are for the same thresholds (returns
        them), else None (the IoU then falls back to the label cells)."""
        if other is None or not torch.equal(self.threshold.cpu(), other.threshold.cpu()):
            return None
        self._widen(self.seen_ + other.seen_)
        self.inter_ += other.inter_.to(self.inter_.device, self.inter_.dtype)
        return self

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "inter": self.inter.long().contiguous()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "IouCounts":
        """Counts saved by :meth:`state_dict` (their largest channel total bounds every count)."""
        inter = state["inter"]
        counts = cls(state["threshold"], inter.shape[0])
        counts._widen(int(inter.sum(0).max()) if inter.numel() else 0)
        counts.inter_[:, 1:] = inter.T.to(counts.inter_)
        return counts


def _onehot_rows(region: Tensor, compact: Tensor, n_present: int) -> Tensor:
    """float32 ``[B, 4 + P, N]``: row ``r`` is 1 at the cells of region ``r`` (``region`` ``[B, N]``),
    row ``4 + l`` at the cells of present label ``l`` (``compact`` ``[B, N]``, -1: ignored, in no
    label row). Two scatters into one buffer whose extra last row takes the ignored cells."""
    b, n = region.shape
    rows = torch.zeros(b, len(REGIONS) + n_present + 1, n, dtype=torch.float32, device=region.device)
    rows.scatter_(1, region.long().unsqueeze(1), 1.0)
    label_row = torch.where(compact >= 0, compact.long() + len(REGIONS), len(REGIONS) + n_present)
    rows.scatter_(1, label_row.unsqueeze(1), 1.0)
    return rows[:, :-1]


def _per_image_counts(ids: Tensor, n: int) -> Tensor:
    """int64 ``[B, n]``: how many entries of each row of ``ids`` ``[B, N]`` equal 0 .. n-1 (-1: none)."""
    counts = torch.zeros(len(ids), n + 1, dtype=torch.int64, device=ids.device)
    return counts.scatter_add_(1, ids.long() + 1, torch.ones_like(ids, dtype=torch.int64))[:, 1:]


class _DeviceSum:
    """One running sum of :class:`PartialLayerStats`, kept at its place in the device tensor
    ``_sums``; read and written as a Python number (an integer for the counts)."""

    def __set_name__(self, owner, name: str) -> None:
        self.index, self.integer = owner._DEVICE_SUMS.index(name), name in owner._INTEGERS

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        value = float(obj._sums[self.index])
        return int(value) if self.integer else value

    def __set__(self, obj, value) -> None:
        obj._sums[self.index] = float(value)


class PartialLayerStats:
    """Streaming statistics of one partial layer: the valid fraction per image (its sum, square
    sum, per-group sums and histogram), images whose mask is all valid, the geometric prediction
    (claim P3), and the coverage of the locations that flipped from hole to valid (claim P2).

    A location *flips* at a layer when its mask is valid after the layer while the input pixel at
    the centre of its window (all channels averaged for multi-channel masks) was a hole.

    The per-batch sums (``all_valid_``, ``valid_sum_``, ``valid_sumsq_``, ``predicted_sum_``,
    ``predicted_all_valid_``, ``leak_``) are kept in device tensors, so that ``add`` reads no
    device value; reading one of them (a Python number) copies it back.
    """

    _DEVICE_SUMS = ("all_valid_", "valid_sum_", "valid_sumsq_", "predicted_sum_", "predicted_all_valid_")
    _INTEGERS = ("images_", "all_valid_", "predicted_all_valid_")

    def __init__(self, site, groups: int):
        self.site = site
        self.window = float(site.window)
        self.coverage_bins = None
        self.images_ = 0
        self._sums = torch.zeros(len(self._DEVICE_SUMS), dtype=torch.float64)  # in _DEVICE_SUMS order
        self._leak = torch.tensor(float("nan"), dtype=torch.float64)  # max |output| where the updated mask is 0
        self.valid_hist_ = torch.zeros(VALID_FRACTION_BINS, dtype=torch.int64)
        self.group_valid_ = torch.zeros(groups, dtype=torch.float64)
        self.group_images_ = torch.zeros(groups, dtype=torch.int64)
        self.coverage_hist_: Tensor | None = None
        self.size_: tuple[int, int] | None = None
        self.input_size_: tuple[int, int] | None = None
        self.mask_moments: ChannelMoments | None = None  # of every channel of the updated mask (claim P4)

    all_valid_, valid_sum_, valid_sumsq_ = _DeviceSum(), _DeviceSum(), _DeviceSum()
    predicted_sum_, predicted_all_valid_ = _DeviceSum(), _DeviceSum()

    @property
    def leak_(self) -> float:
        """Max |output| where the updated mask is 0 (NaN: no output seen)."""
        return float(self._leak)

    @leak_.setter
    def leak_(self, value: float) -> None:
        self._leak = torch.tensor(float(value), dtype=torch.float64, device=self._leak.device)

    def add(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, ctx,
            out: Tensor | None = None) -> None:
        m = self.site
        if out is not None:  # 0 where no output is outside the mask
            outside = (new_valid[:, :1] == 0).expand_as(out)
            self._leak = torch.fmax(self._leak, torch.where(outside, out.abs(), 0).amax().double())
        if self.mask_moments is None:
            self.mask_moments = ChannelMoments(new_valid.shape[1], device=new_valid.device)
        self.mask_moments.add(new_valid)
        new_valid = new_valid[:, :1].float()
        coverage = coverage[:, :1].float()
        self.size_, self.input_size_ = tuple(new_valid.shape[-2:]), tuple(valid_in.shape[-2:])
        fraction = new_valid.mean((1, 2, 3)).double()  # [B]
        self.images_ += len(fraction)
        self.valid_hist_.index_add_(0, (fraction * 100).floor().long().clamp(0, 100), torch.ones_like(ctx.group))
        self.group_valid_.index_add_(0, ctx.group, fraction)
        self.group_images_.index_add_(0, ctx.group, torch.ones_like(ctx.group))

        predicted_in = F.interpolate(ctx.predicted_valid, size=self.input_size_, mode="nearest")
        # zero padding (padding is never valid), explicit: max_pool2d refuses padding > kernel / 2,
        # which a dilated layer that keeps the size has (k 3, dilation 2, padding 2)
        padded = F.pad(predicted_in, (m.padding,) * 4) if m.padding else predicted_in
        predicted = F.max_pool2d(padded, m.kernel, m.stride, 0, m.dilation)
        if predicted.shape[-2:] != new_valid.shape[-2:]:
            predicted = F.interpolate(predicted, size=self.size_, mode="nearest")
        ctx.predicted_valid = predicted
        predicted_fraction = predicted.mean((1, 2, 3)).double()
        self._sums += torch.stack([(fraction == 1).sum(), fraction.sum(), (fraction ** 2).sum(),
                                   predicted_fraction.sum(), (predicted_fraction == 1).sum()]).double()

        centre = valid_in.float().mean(1, keepdim=True)
        offset = m.dilation * (m.kernel // 2) - m.padding
        centre = centre[..., offset::m.stride, offset::m.stride][..., :self.size_[0], :self.size_[1]]
        flipped = (new_valid > 0) & (centre < 1)
        if self.coverage_hist_ is None:
            n_bins = int(min(self.window, COVERAGE_BINS_MAX))
            self.coverage_hist_ = torch.zeros(n_bins, dtype=torch.int64, device=coverage.device)
        n_bins = len(self.coverage_hist_)
        index = (coverage * n_bins - 1e-6).ceil().long().sub(1).clamp(0, n_bins - 1)  # every cell; flipped ones count
        self.coverage_hist_.index_add_(0, index.reshape(-1), flipped.reshape(-1).long())

    def merge(self, other: "PartialLayerStats") -> None:
        self.images_ += other.images_
        self._sums = self._sums + other._sums.to(self._sums.device)
        self._leak = torch.fmax(self._leak, other._leak.to(self._leak.device))
        self.valid_hist_ += other.valid_hist_
        self.group_valid_ += other.group_valid_
        self.group_images_ += other.group_images_
        if other.coverage_hist_ is not None:
            self.coverage_hist_ = other.coverage_hist_.clone() if self.coverage_hist_ is None \
                else self.coverage_hist_ + other.coverage_hist_
        self.size_, self.input_size_ = self.size_ or other.size_, self.input_size_ or other.input_size_
        if other.mask_moments is not None:
            if self.mask_moments is None:
                self.mask_moments = ChannelMoments(len(other.mask_moments.mean_), device=other.mask_moments.mean_.device)
            self.mask_moments.merge(other.mask_moments)

    _SCALARS = ("images_", "all_valid_", "valid_sum_", "valid_sumsq_", "predicted_sum_", "predicted_all_valid_",
                "window", "leak_")

    def state_dict(self) -> dict:
        state = {name.rstrip("_"): torch.tensor(getattr(self, name), dtype=torch.float64, device="cpu")
                 for name in self._SCALARS}
        return {**state, "state_version": torch.tensor(STATE_VERSION, device="cpu"), "valid_hist": self.valid_hist_,
                "group_valid": self.group_valid_, "group_images": self.group_images_,
                "coverage_hist": self.coverage_hist_ if self.coverage_hist_ is not None
                else torch.zeros(0, dtype=torch.int64, device="cpu"),
                "size": torch.tensor((self.size_ or (0, 0)) + (self.input_size_ or (0, 0)), device="cpu"),
                **(self.mask_moments.state_dict("mask") if self.mask_moments is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        state = _migrate_partial(check_state_version(state, "partial layer"))
        if "mask_comoment" in state:
            self.mask_moments = ChannelMoments(len(state["mask_mean"]), device=state["mask_mean"].device)
            self.mask_moments.load_state_dict(state, "mask")
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
