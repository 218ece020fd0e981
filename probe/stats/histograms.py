"""Mergeable per-(condition, channel) gate histograms, in the spirit of GAN dissection's
running statistics: ``add``, ``merge(other)``, ``state_dict()``, never storing maps.

Gates are binned by their *logit* (the pre-sigmoid value) over a per-channel range with the two
outer bins open-ended. Sigmoid gates saturate, so equal-width bins in gate space put most pixels
of a channel into its first or last bin; logit bins keep resolution in the tails, where the
top-quantile threshold of Network Dissection lies. The range, and the segments it is cut into
(:class:`probe.stats.binning.Binning`), are calibrated on the first images of the data (see
:func:`probe.recording.calibration.calibrate_binnings`), the same images for every shard, so shard
histograms stay mergeable.

The fast path (see :class:`probe.stats.layer_stats.GatedLayerStats`) bins a layer's logits once and
counts regions and labels in one pass (:mod:`probe.stats.native`).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import RunError
from .binning import Binning
from .native import add_cells

DEFAULT_BINS = 512  # per channel (benchmarks/accuracy.py measures the read-outs' errors)
INT32_SAFE = 2 ** 31 - 1  # counts are int32 while none can exceed this


class ConditionedHistogram:
    """Histograms of gate logits per (condition, channel), plus exact per-group sums of the gates.

    Args:
        channels: C, the channels of the layer.
        conditions: K, the number of pixel classes of the partition (e.g. regions or labels).
        bins: histogram bins over the logit axis.
        lo, hi: ``[C]`` (or scalars) the logit range of each channel's uniform bins; values beyond
            fall in the end bins.
        groups: G, image groups for the sums (image-level inference, see :mod:`probe.analysis`).
        binning: a calibrated :class:`~probe.stats.binning.Binning` (then ``lo``/``hi`` are unused).

    Fitted state: ``counts_`` ``[K, C, bins]``, int32 while the pixels counted per channel
    (``seen_``, known on the host: every pixel is in one condition and one bin) cannot overflow
    one, then int64 (saved as int64 either way; int32 halves the memory the per-batch counts
    touch); ``sums_`` float64 ``[G, K, C]`` (of the gate in (0, 1)) and ``pixels_`` int64 ``[G, K]``,
    per image group.
    """

    def __init__(self, channels: int, conditions: int, bins: int = 256, lo: Tensor | float = -12.0,
                 hi: Tensor | float = 12.0, groups: int = 1, binning: Binning | None = None):
        self.binning = Binning.uniform(channels, lo, hi, bins) if binning is None else binning
        if (self.binning.channels, self.binning.bins) != (channels, bins):
            raise ValueError(f"a binning of {self.binning.channels} channels x {self.binning.bins} bins "
                             f"for a histogram of {channels} x {bins}")
        self.channels, self.conditions, self.bins, self.groups = channels, conditions, bins, groups
        device = self.binning.knots.device
        self.counts_ = torch.zeros(conditions, channels, bins, dtype=torch.int32, device=device)
        self.seen_ = 0  # pixels counted into each channel so far (every count is at most this)
        self.sums_ = torch.zeros(groups, conditions, channels, dtype=torch.float64, device=device)
        self.pixels_ = torch.zeros(groups, conditions, dtype=torch.int64, device=device)

    @property
    def lo(self) -> Tensor:
        return self.binning.lo

    @property
    def hi(self) -> Tensor:
        return self.binning.hi

    def bin_edges(self) -> Tensor:
        """``[C, bins + 1]`` edges on each channel's logit axis (the outer ones stand for +-infinity)."""
        return self.binning.edges()

    def before_add(self, pixels: int) -> None:
        """Before ``pixels`` more pixels per channel are counted: int64 counts once they could overflow an int32."""
        self.seen_ += int(pixels)
        if self.counts_.dtype == torch.int32 and self.seen_ > INT32_SAFE:
            self.counts_ = self.counts_.long()

    def add_sums(self, sums: Tensor, pixels: Tensor, group: Tensor) -> None:
        """Per-image gate ``sums`` ``[B, K, C]`` and ``pixels`` ``[B, K]`` into image groups ``group`` ``[B]``
        (the counts were added in place by :func:`probe.stats.native.accumulate_gate_batch`)."""
        self.sums_.index_put_((group,), sums.double(), accumulate=True)
        self.pixels_.index_put_((group,), pixels.long(), accumulate=True)

    def merge(self, other: "ConditionedHistogram") -> "ConditionedHistogram":
        """Add ``other``'s counts and sums into this one (exact: integer counts, float64 sums)."""
        if (other.channels, other.conditions, other.bins, other.groups) != (
                self.channels, self.conditions, self.bins, self.groups) or other.binning != self.binning:
            raise RunError("cannot merge histograms of different shapes or binning (were the shards "
                           "calibrated on the same images?)")
        self.before_add(other.seen_)
        self.counts_ += other.counts_.to(self.counts_.dtype)
        self.sums_ += other.sums_
        self.pixels_ += other.pixels_
        return self

    def state_dict(self) -> dict:
        return {"counts": self.counts_.long(), "sums": self.sums_, "pixels": self.pixels_,
                "config": torch.tensor([self.channels, self.conditions, self.bins, self.groups], device="cpu"),
                **self.binning.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ConditionedHistogram":
        channels, conditions, bins, groups = (int(v) for v in state["config"])
        hist = cls(channels, conditions, bins, groups=groups, binning=Binning.from_state(state, channels, bins))
        hist.counts_, hist.sums_, hist.pixels_ = state["counts"].clone(), state["sums"].clone(), state["pixels"].clone()
        hist.seen_ = int(hist.counts_[:, 0].sum()) if hist.counts_.numel() else 0  # channel 0's pixels: every channel's
        return hist


LABEL_CELLS = 14  # fewest cells per channel of the label statistics (AUC p99 <= 0.005 at 1,200 labels)
LABEL_CELLS_PER_CHANNEL = 8 * DEFAULT_BINS  # labels x cells per channel up to this (8 labels: fine bins)
UNIFORM_CELLS = 24  # from this many cells per channel on, the cells are uniform over all fine bins


def label_cells(labels: int, channels: int, bins: int) -> int:
    """Cells per channel for a layer: ``LABEL_CELLS_PER_CHANNEL // labels`` (one cell per fine bin,
    i.e. exact fine counts, up to 8 labels), never more than ``bins`` nor fewer than ``LABEL_CELLS``:
    the label statistics' size per channel stays at that budget until 292 labels, then grows as 14
    cells per label (not as ``bins`` per label)."""
    return int(min(bins, max(LABEL_CELLS, LABEL_CELLS_PER_CHANNEL // max(labels, 1))))


def cell_bounds(bins: int, cells: int, device=None) -> Tensor:
    """int64 ``[cells + 1]``: the first fine bin of each cell (and ``bins``): ``cells`` runs of
    consecutive fine bins whose lengths differ by at most one (``round(i * bins / cells)``)."""
    i = torch.arange(cells + 1, dtype=torch.int64, device=device)
    return (2 * i * bins + cells) // (2 * cells)


def cell_layout(binning: Binning, cells: int) -> Tensor:
    """int64 ``[cells + 1]``, the first fine bin of each cell (and ``bins``), shared by the channels.

    With ``UNIFORM_CELLS`` or more cells, or a binning that is not cut at the calibrated levels of
    :func:`~probe.stats.binning.segment_levels` (one uniform segment, e.g. the trivial features),
    the cells are uniform over all bins (:func:`cell_bounds`, the layout of every run before the
    layout was kept in the state). With fewer, the bins below the threshold band (the bulk
    segments: ``1 - 2q`` of the calibrated mass, in equal-mass segments of equal bin counts) get
    all but ``max(1, cells // 7)`` cells, uniform over them, and the band and top segments (the
    last two, ``2q`` of the mass) the rest: uniform cells over all bins would give 8 cells' worth
    of AUC resolution (the bulk holds 99% of the pixels) only 4.5 cells. Measured on
    ``benchmarks/labels_scaling.py``'s pixels at 14 cells: AUC p99 0.0043 (uniform 14 cells
    0.0072)."""
    bins = binning.bins
    cells = min(cells, bins)
    starts = binning.starts[0].cpu()
    if cells >= UNIFORM_CELLS or binning.segments < 3 or not bool((binning.starts == binning.starts[:1]).all()):
        return cell_bounds(bins, cells, binning.knots.device)
    band = int(starts[-3])  # the first bin of the threshold band
    top = max(1, cells // 7)
    if band < cells - top or bins - band < top:
        return cell_bounds(bins, cells, binning.knots.device)
    bulk = cell_bounds(band, cells - top)
    upper = band + cell_bounds(bins - band, top)
    return torch.cat([bulk[:-1], upper]).to(binning.knots.device)


DENSE_SLOTS = 1024  # groups x labels up to this: (group, label) sums allocated densely up front


class LabelCellHistogram:
    """Per-(label, channel) statistics whose size is ``labels x channels x cells`` (not x bins).

    The ``bins`` fine bins of each channel (the same calibrated binning as the region histograms)
    are grouped into ``cells`` runs of consecutive bins (:func:`cell_bounds`, the same for every
    channel). For each (label, channel, cell) two integers are kept: the pixel count and the sum of
    the pixels' fine-bin offsets inside the cell (``0 .. w-1``), i.e. the label's mean fine position
    in the cell. The
    fine histogram over all labelled pixels (``total_``, ``[C, bins]``) is kept exactly. A
    read-out that is linear in the label's fine histogram (AUC's rank sum, the mass above the
    IoU threshold) is then evaluated cell by cell with the label's fine distribution inside the
    cell taken as the total's, tilted linearly to the label's exact mean (see
    :func:`probe.stats.readouts.cell_functional`); its error is bounded rigorously by the cell's
    residual of that linear fit (``auc_error``).

    Updates are sparse: each batch is binned once into a fine histogram of the ``P`` labels
    *present in that batch* (a ``P x C x bins`` temporary), reduced to cells and added to the rows
    of those labels. The cells are a fixed function of the calibrated range, so every shard has
    the same ones and ``merge`` adds integers exactly. Counts and moments are int32 while the
    labelled pixels seen (times ``w``) cannot overflow one, then promoted to int64.

    Per-(image group, label) gate sums (the t-test and ``mean_in``/``mean_out``) and sums of the
    pixels' bin ranks (:meth:`~probe.stats.binning.Binning.rank_table`: the image-group interval of
    an AUC) are kept only for pairs that occurred: ``slot_of_`` ``[G, L]`` (int64, -1 = none),
    ``slot_sums_`` and ``slot_ranks_`` ``[S, C]`` float64, ``slot_pixels_`` ``[S]`` int64; at worst
    (every label in every group) ``2*G*L*C``. A state saved before the ranks were kept reads them
    as NaN (no interval).
    """

    def __init__(self, channels: int, labels: int, binning: Binning, groups: int = 1, cells: int | None = None,
                 bounds: Tensor | None = None):
        bins = binning.bins
        cells = min(bins, label_cells(labels, channels, bins) if cells is None else cells)
        self.channels, self.labels, self.bins, self.cells, self.groups = channels, labels, bins, cells, groups
        self.bounds = (cell_layout(binning, cells) if bounds is None else bounds.to(binning.knots.device).long())
        if self.bounds.shape != (cells + 1,) or int(self.bounds[0]) != 0 or int(self.bounds[-1]) != bins or \
                not bool((self.bounds[1:] > self.bounds[:-1]).all()):
            raise RunError(f"label cell bounds {self.bounds.tolist()} are not {cells} increasing runs of {bins} bins "
                           "(a corrupt run state?)")
        self.width = int((self.bounds[1:] - self.bounds[:-1]).max())  # the widest cell
        self.binning = binning
        device = binning.knots.device
        self.counts_ = torch.zeros(labels, channels, cells, dtype=torch.int32, device=device)
        self.moments_ = torch.zeros(labels, channels, cells, dtype=torch.int32, device=device)
        self.total_ = torch.zeros(channels, bins, dtype=torch.int64, device=device)
        self.seen_ = 0  # at least the labelled pixels counted (see before_add)
        self.slot_of_ = torch.full((groups, labels), -1, dtype=torch.int64, device=device)  # -1: no slot yet
        self.slot_sums_ = torch.zeros(0, channels, dtype=torch.float64, device=device)
        self.slot_ranks_ = torch.zeros(0, channels, dtype=torch.float64, device=device)
        self.slot_pixels_ = torch.zeros(0, dtype=torch.int64, device=device)
        self.slot_keys_ = torch.zeros(0, 2, dtype=torch.int64, device=device)  # (group, label) of each slot
        fine = torch.arange(bins, dtype=torch.int64, device=device)
        cell = torch.searchsorted(self.bounds, fine, right=True) - 1
        self.cell_of_bin = cell.expand(channels, bins).contiguous()  # [C, bins]
        self.offset_of_bin = (fine - self.bounds[cell]).expand(channels, bins).contiguous()
        if groups * labels <= DENSE_SLOTS:  # few labels: every (group, label) slot from the start (flat memory)
            g, lab = torch.meshgrid(torch.arange(groups, dtype=torch.int64, device=device),
                                    torch.arange(labels, dtype=torch.int64, device=device), indexing="ij")
            self.slot_keys_ = torch.stack([g.reshape(-1), lab.reshape(-1)], 1)
            self.slot_of_ = torch.arange(groups * labels, dtype=torch.int64, device=device).view(groups, labels)
            self.slot_sums_ = torch.zeros(groups * labels, channels, dtype=torch.float64, device=device)
            self.slot_ranks_ = torch.zeros_like(self.slot_sums_)
            self.slot_pixels_ = torch.zeros(groups * labels, dtype=torch.int64, device=device)

    # ------------------------------------------------------------------ accumulate
    def before_add(self, new_pixels: int) -> None:
        """Before at most ``new_pixels`` more labelled pixels: int64 once ``pixels seen * w`` could
        overflow an int32 cell (exact either way). ``seen_`` bounds the labelled pixels counted so far
        on the host, so no device value is read."""
        self.seen_ += int(new_pixels)
        if self.counts_.dtype == torch.int32 and self.seen_ * self.width > INT32_SAFE:
            self.counts_, self.moments_ = self.counts_.long(), self.moments_.long()

    def targets(self, compact: Tensor, present: Tensor) -> dict:
        """The label arguments of :func:`probe.stats.native.accumulate_gate_batch` for a batch whose
        cells hold ``compact`` ``[B, N]`` (int32 positions in ``present`` ``[P]``, -1 ignored): these
        cells, totals and the fine-bin to cell maps, updated in place."""
        return {"label": compact, "n_present": len(present), "label_rows": present, "cell_of_bin": self.cell_of_bin,
                "offset_of_bin": self.offset_of_bin, "cell_counts": self.counts_, "cell_moments": self.moments_,
                "total": self.total_}

    def add_fine(self, present: Tensor, fine: Tensor, batch_total: Tensor) -> None:
        """``present`` ``[P]`` label ids, ``fine`` ``[P, C, bins]`` int64 their fine counts in this
        batch, ``batch_total`` ``[C, bins]`` the fine counts of all labelled pixels of the batch."""
        self.before_add(int(batch_total[0].sum()))
        self.total_ += batch_total
        if not len(present):
            return
        add_cells(self.counts_, self.moments_, present, fine, self.cell_of_bin, self.offset_of_bin)

    def _add_slots(self, keys: Tensor) -> None:
        """Give each new ``(group, label)`` pair of ``keys`` ``[K, 2]`` an empty sparse sum slot."""
        first = len(self.slot_pixels_)
        self.slot_of_[keys[:, 0], keys[:, 1]] = torch.arange(first, first + len(keys), dtype=torch.int64,
                                                             device=self.slot_of_.device)
        self.slot_keys_ = torch.cat([self.slot_keys_, keys])
        empty = torch.zeros(len(keys), self.channels, dtype=torch.float64, device=self.slot_sums_.device)
        self.slot_sums_ = torch.cat([self.slot_sums_, empty])
        self.slot_ranks_ = torch.cat([self.slot_ranks_, empty])
        self.slot_pixels_ = torch.cat([self.slot_pixels_, torch.zeros(len(keys), dtype=torch.int64,
                                                                      device=self.slot_pixels_.device)])
    def add_sums(self, present: Tensor, group: Tensor, sums: Tensor, pixels: Tensor, ranks: Tensor) -> None:
        """Per-image gate ``sums``, rank sums ``ranks`` ``[B, P, C]`` and ``pixels`` ``[B, P]`` of the
        present labels, ``group`` ``[B]``. With every slot made up front (few labels) all ``B x P``
        pairs are added, zeros included, with no device value read; else only the pairs with pixels."""
        if len(self.slot_pixels_) == self.groups * self.labels:  # every slot exists
            slots = self.slot_of_[group.view(-1, 1), present.view(1, -1)].reshape(-1)  # [B * P]
            self.slot_sums_.index_put_((slots,), sums.reshape(len(slots), -1).double(), accumulate=True)
            self.slot_ranks_.index_put_((slots,), ranks.reshape(len(slots), -1), accumulate=True)
            self.slot_pixels_.index_put_((slots,), pixels.reshape(-1).round().long(), accumulate=True)
            return
        b_idx, p_idx = torch.nonzero(pixels > 0, as_tuple=True)
        if not len(b_idx):
            return
        g, lab = group[b_idx], present[p_idx]
        slots = self.slot_of_[g, lab]
        new = slots < 0
        if bool(new.any()):
            keys = torch.unique(torch.stack([g[new], lab[new]], 1), dim=0)
            self._add_slots(keys)
            slots = self.slot_of_[g, lab]
        self.slot_sums_.index_put_((slots,), sums[b_idx, p_idx].double(), accumulate=True)
        self.slot_ranks_.index_put_((slots,), ranks[b_idx, p_idx], accumulate=True)
        self.slot_pixels_.index_put_((slots,), pixels[b_idx, p_idx].round().long(), accumulate=True)

    # ------------------------------------------------------------------ read
    def dense_sums(self, ranks: bool = False, labels: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
        """``sums`` ``[G, L, C]`` float64 (of the gates, or of the ranks with ``ranks``) and ``pixels``
        ``[G, L]`` int64 (zeros where a label never occurred in a group), for the read-outs of one layer;
        with ``labels`` ``(start, stop)`` only those labels' ``[G, stop - start, ...]``."""
        start, stop = (0, self.labels) if labels is None else labels
        device = self.slot_sums_.device
        sums = torch.zeros(self.groups, stop - start, self.channels, dtype=torch.float64, device=device)
        pixels = torch.zeros(self.groups, stop - start, dtype=torch.int64, device=device)
        if len(self.slot_keys_):
            g, lab = self.slot_keys_[:, 0], self.slot_keys_[:, 1]
            keep = (lab >= start) & (lab < stop)
            sums[g[keep], lab[keep] - start] = (self.slot_ranks_ if ranks else self.slot_sums_)[keep]
            pixels[g[keep], lab[keep] - start] = self.slot_pixels_[keep]
        return sums, pixels

    def group_totals(self, ranks: bool = False) -> tuple[Tensor, Tensor]:
        """``dense_sums`` summed over the labels without building them: ``[G, C]`` and ``[G]``."""
        device = self.slot_sums_.device
        sums = torch.zeros(self.groups, self.channels, dtype=torch.float64, device=device)
        pixels = torch.zeros(self.groups, dtype=torch.int64, device=device)
        if len(self.slot_keys_):
            sums.index_add_(0, self.slot_keys_[:, 0], self.slot_ranks_ if ranks else self.slot_sums_)
            pixels.index_add_(0, self.slot_keys_[:, 0], self.slot_pixels_)
        return sums, pixels

    @property
    def sums_(self) -> Tensor:
        """Dense ``[G, L, C]`` gate sums (read-only view of the slots, as version 3 kept them)."""
        return self.dense_sums()[0]

    @property
    def pixels_(self) -> Tensor:
        """Dense ``[G, L]`` pixel counts (read-only view of the slots)."""
        return self.dense_sums()[1]

    def bin_edges(self) -> Tensor:
        return self.binning.edges()

    # ------------------------------------------------------------------ merge and state
    def merge(self, other: "LabelCellHistogram") -> "LabelCellHistogram":
        if (other.channels, other.labels, other.bins, other.cells, other.groups) != (
                self.channels, self.labels, self.bins, self.cells, self.groups) or other.binning != self.binning \
                or not torch.equal(other.bounds.cpu(), self.bounds.cpu()):
            raise RunError("cannot merge label statistics of different shapes or binning (were the shards "
                           "calibrated on the same images?)")
        self.before_add(other.seen_)
        if other.counts_.dtype == torch.int64:
            self.counts_, self.moments_ = self.counts_.long(), self.moments_.long()
        self.counts_ += other.counts_.to(self.counts_.dtype)
        self.moments_ += other.moments_.to(self.moments_.dtype)
        self.total_ += other.total_
        if len(other.slot_keys_):
            self._merge_slots(other)
        return self

    def _merge_slots(self, other: "LabelCellHistogram") -> None:
        g, lab = other.slot_keys_[:, 0], other.slot_keys_[:, 1]
        slots = self.slot_of_[g, lab]
        new = slots < 0
        if bool(new.any()):
            keys = other.slot_keys_[new]
            self._add_slots(keys)
            slots = self.slot_of_[g, lab]
        self.slot_sums_.index_add_(0, slots, other.slot_sums_)
        self.slot_ranks_.index_add_(0, slots, other.slot_ranks_)
        self.slot_pixels_.index_add_(0, slots, other.slot_pixels_)

    def state_dict(self) -> dict:
        return {"cell_counts": self.counts_, "cell_moments": self.moments_, "total": self.total_,
                "slot_keys": self.slot_keys_, "slot_sums": self.slot_sums_, "slot_ranks": self.slot_ranks_,
                "slot_pixels": self.slot_pixels_,
                "config": torch.tensor([self.channels, self.labels, self.bins, self.groups, self.cells], device="cpu"),
                "cell_bounds": self.bounds.cpu().clone(), **self.binning.state_dict()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "LabelCellHistogram":
        """From :meth:`state_dict`; a state without ``cell_bounds`` (recorded before the layout was
        kept) has uniform cells (:func:`cell_bounds`), the only layout of those versions."""
        channels, labels, bins, groups, cells = (int(v) for v in state["config"])
        bounds = state["cell_bounds"] if "cell_bounds" in state else cell_bounds(bins, cells)
        hist = cls(channels, labels, Binning.from_state(state, channels, bins), groups, cells, bounds)
        hist.counts_, hist.moments_ = state["cell_counts"].clone(), state["cell_moments"].clone()
        hist.total_ = state["total"].clone()
        hist.seen_ = int(hist.total_[0].sum())
        hist.slot_of_.fill_(-1)
        hist.slot_keys_, hist.slot_sums_ = state["slot_keys"].clone().long(), state["slot_sums"].clone()
        hist.slot_ranks_ = state["slot_ranks"].clone() if "slot_ranks" in state \
            else torch.full_like(hist.slot_sums_, float("nan"))
        hist.slot_pixels_ = state["slot_pixels"].clone()
        if len(hist.slot_keys_):
            hist.slot_of_[hist.slot_keys_[:, 0], hist.slot_keys_[:, 1]] = torch.arange(
                len(hist.slot_keys_), dtype=torch.int64, device=hist.slot_of_.device)
        return hist
