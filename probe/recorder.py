"""Recorder: scoped forward hooks feeding streaming accumulators.

Hooks exist only inside ``with Recorder(...)``; ``__exit__`` removes every one of them in a
``finally`` (also when the model raises) and restores the model's train/eval mode. Forward
passes run under ``torch.inference_mode()``: recording never builds an autograd graph.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import Site
from .context import REGIONS, BatchContext
from .stats import ConditionedHistogram

VALID_FRACTION_BINS = 101  # per-image valid fraction in bins of 0.01; the last holds exactly 1.0
COVERAGE_BINS_MAX = 64


class GatedLayerStats:
    """Streaming statistics of one gated layer: gate histograms by region and by label, exact
    per-group sums, and the channel-by-channel covariance of the gate maps (for gate diversity),
    kept as a count, a mean ``[C]`` and a co-moment ``[C, C]`` merged with Chan et al.'s stable
    pairwise formula (each batch is centred on its own mean before its products are summed)."""

    def __init__(self, site: Site, n_labels: int, bins: int, groups: int, lo: Tensor | float = -12.0,
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

    def add(self, logits: Tensor, gates: Tensor, ctx: BatchContext) -> None:
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
                "moments_n": torch.tensor([self.n_]), "moments_mean": self.mean_, "comoment": self.comoment_,
                "size": torch.tensor(self.size_ or (0, 0))}

    def load_state_dict(self, state: dict) -> None:
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

    def __init__(self, site: Site, groups: int):
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

    def add(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, ctx: BatchContext,
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

    def state_dict(self) -> dict:
        scalars = [self.images_, self.all_valid_, self.valid_sum_, self.valid_sumsq_, self.predicted_sum_,
                   self.predicted_all_valid_, self.window, self.leak_]
        return {"scalars": torch.tensor(scalars, dtype=torch.float64), "valid_hist": self.valid_hist_,
                "group_valid": self.group_valid_, "group_images": self.group_images_,
                "coverage_hist": self.coverage_hist_ if self.coverage_hist_ is not None else torch.zeros(0, dtype=torch.int64),
                "size": torch.tensor((self.size_ or (0, 0)) + (self.input_size_ or (0, 0)))}

    def load_state_dict(self, state: dict) -> None:
        s = state["scalars"].tolist()
        self.images_, self.all_valid_ = int(s[0]), int(s[1])
        self.valid_sum_, self.valid_sumsq_, self.predicted_sum_ = s[2], s[3], s[4]
        self.predicted_all_valid_, self.window, self.leak_ = int(s[5]), s[6], s[7]
        self.valid_hist_ = state["valid_hist"].clone()
        self.group_valid_, self.group_images_ = state["group_valid"].clone(), state["group_images"].clone()
        self.coverage_hist_ = state["coverage_hist"].clone() if len(state["coverage_hist"]) else None
        size = [int(v) for v in state["size"]]
        self.size_, self.input_size_ = (tuple(size[:2]) or None), (tuple(size[2:]) or None)


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


@contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for the block and restore every submodule's own mode after it
    (``model.train(was_training)`` would reset submodules a user had deliberately set)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


class Recorder:
    """Attach the adapters' hooks of ``sites`` to ``model`` for the duration of a ``with`` block.

    Each forward pass through :meth:`forward` feeds every layer's accumulator (``self.stats``,
    layer name -> :class:`GatedLayerStats` / :class:`PartialLayerStats`) and, while
    ``self.capture`` is set, copies the maps of the first ``capture`` images into ``self.captured``.
    """

    def __init__(self, model: nn.Module, sites: list[Site], n_labels: int, bins: int = 256,
                 groups: int = 32, border: int = 2, logit_ranges: dict | None = None):
        self.model, self.sites, self.n_labels, self.border = model, sites, n_labels, border
        ranges = logit_ranges or {}
        self.stats = {s.name: GatedLayerStats(s, n_labels, bins, groups, *ranges.get(s.name, (-12.0, 12.0)))
                      if s.kind == "gated"
                      else PartialLayerStats(s, groups) for s in sites}
        self.order: list[str] = []  # layer names in execution order (filled by the first batch)
        self.capture = 0
        self.captured: dict[str, dict[str, Tensor]] = {}
        self._handles: list = []
        self._ctx: BatchContext | None = None
        self._modes: dict[nn.Module, bool] = {}

    def __enter__(self) -> "Recorder":
        # every module's own mode: model.train(mode) would overwrite a submodule kept in eval on purpose
        self._modes = {module: module.training for module in self.model.modules()}
        self.model.eval()
        try:
            for site in self.sites:
                self._handles += site.adapter.attach(site.module, _Sink(self, site.name))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        try:
            for handle in self._handles:
                handle.remove()
        finally:
            self._handles = []
            for module, training in self._modes.items():
                module.training = training
            self._modes = {}

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None, labels: Tensor, group: Tensor,
                capture: int = 0) -> Tensor:
        """Run the model on one batch and accumulate; returns the output ``[B, 3, H, W]``."""
        if not self._handles:
            raise RuntimeError("Recorder.forward must be called inside `with Recorder(...)`")
        self._ctx = BatchContext(hole, sketch, labels, group, self.n_labels, self.border)
        self.capture = capture
        self.captured = {}
        first = not self.order
        self._first_batch = first
        try:
            with torch.inference_mode():
                out = self.model(image, hole, sketch)
        finally:
            self._ctx = None
        if not torch.isfinite(out).all():
            raise FloatingPointError("the model produced NaN or inf outputs; check its weights and inputs")
        return out

    def _on_gated(self, name: str, logits: Tensor, gates: Tensor) -> None:
        self._note(name)
        try:
            self.stats[name].add(logits, gates, self._ctx)
        except RuntimeError as err:  # NaN logits make bincount indices negative; say which layer
            if not torch.isfinite(logits).all():
                raise FloatingPointError(f"layer {name}: NaN or inf gate values; check the model's weights "
                                         "and inputs") from None
            raise err
        if self.capture:
            self.captured[name] = {"gate": gates[: self.capture].to(torch.float16)}

    def _on_partial(self, name: str, valid_in: Tensor, new_valid: Tensor, coverage: Tensor,
                    out: Tensor | None = None) -> None:
        self._note(name)
        self.stats[name].add(valid_in, new_valid, coverage, self._ctx, out)
        if self.capture:
            self.captured[name] = {"valid": new_valid[: self.capture, :1].to(torch.float16),
                                   "coverage": coverage[: self.capture, :1].to(torch.float16)}

    def _note(self, name: str) -> None:
        if self._first_batch and name not in self.order:
            self.order.append(name)


class _Sink:
    """What an adapter's hooks call: routes the tensors to the recorder under the layer's name."""

    def __init__(self, recorder: Recorder, name: str):
        self.recorder, self.name = recorder, name

    def gated(self, logits: Tensor, gates: Tensor) -> None:
        self.recorder._on_gated(self.name, logits, gates)

    def partial(self, valid_in: Tensor, new_valid: Tensor, coverage: Tensor, out: Tensor | None = None) -> None:
        self.recorder._on_partial(self.name, valid_in, new_valid, coverage, out)


RANGE_GRID = 64  # calibrated ranges are rounded outwards to 1/64 logit: robust to 1-ulp differences


def calibrate_logit_ranges(model: nn.Module, sites: list[Site], batches: list[dict], use_sketch: bool,
                           margin: float = 0.25, tail: float = 5e-4) -> dict[str, tuple[Tensor, Tensor]]:
    """Per gated layer, the logit range ``(lo [C], hi [C])`` of each channel on ``batches`` (the
    first images of the data, the same for every shard): its ``tail`` and ``1 - tail`` quantiles
    (linear interpolation, as ``torch.quantile``), widened by ``margin`` of their span on both sides
    and rounded outwards to 1/64. Rare outliers then fall in the open end bins instead of
    stretching every bin; the top-0.005 threshold of the IoU stays inside the range.

    The quantiles are exact over all the images, yet only the ``k`` smallest and largest logits of
    each channel are kept from batch to batch (``k`` = the tail's order statistics plus one), so
    calibration costs one recording batch of memory, not a sort of every logit."""
    n_images = sum(len(b["image"]) for b in batches)
    tails: dict[str, TailQuantiles] = {}

    class _Collect:
        def __init__(self, name):
            self.name = name

        def gated(self, logits, gates):
            if not bool(torch.isfinite(logits).all()):
                raise FloatingPointError(f"layer {self.name}: NaN or inf gate values on the calibration images; "
                                         "check the model's weights and inputs")
            if self.name not in tails:
                tails[self.name] = TailQuantiles(n_images * logits.shape[-2] * logits.shape[-1], tail)
            tails[self.name].add(logits.transpose(0, 1).reshape(logits.shape[1], -1))

        def partial(self, *args, **kwargs):
            pass

    gated = [s for s in sites if s.kind == "gated"]
    handles = [h for s in gated for h in s.adapter.attach(s.module, _Collect(s.name))]
    try:
        with eval_mode(model), torch.inference_mode():
            for batch in batches:
                model(batch["image"], batch["hole"], batch["sketch"] if use_sketch else None)
    finally:
        for h in handles:
            h.remove()
    ranges = {}
    for name, t in tails.items():
        lo, hi = t.quantiles()
        pad = margin * (hi - lo) + 1.0 / RANGE_GRID
        ranges[name] = (torch.floor((lo - pad) * RANGE_GRID) / RANGE_GRID,
                        torch.ceil((hi + pad) * RANGE_GRID) / RANGE_GRID)
    return ranges


class TailQuantiles:
    """The ``q`` and ``1 - q`` quantiles per channel of ``n`` values arriving in chunks ``[C, m]``,
    exact, keeping only the ``k`` smallest and ``k`` largest values of each channel."""

    def __init__(self, n: int, q: float):
        self.position = q * (n - 1)  # the lower quantile's (fractional) rank among the n values
        self.k = min(n, int(self.position) + 2)  # ranks floor(position) and the one above it
        self.low: Tensor | None = None  # [C, <= k], the smallest so far
        self.high: Tensor | None = None  # [C, <= k], the negated largest so far

    def add(self, values: Tensor) -> None:
        self.low = self._keep(self.low, values)
        self.high = self._keep(self.high, -values)

    def _keep(self, kept: Tensor | None, values: Tensor) -> Tensor:
        pool = values if kept is None else torch.cat([kept, values], dim=1)
        return pool.topk(min(self.k, pool.shape[1]), dim=1, largest=False, sorted=False).values

    def _order_statistic(self, smallest: Tensor) -> Tensor:
        ordered = smallest.double().sort(dim=1).values
        below = int(self.position)
        above = min(below + 1, ordered.shape[1] - 1)
        return torch.lerp(ordered[:, below], ordered[:, above], self.position - below)

    def quantiles(self) -> tuple[Tensor, Tensor]:
        """float64 ``[C]`` lower and upper quantiles."""
        return self._order_statistic(self.low), -self._order_statistic(self.high)


def participation_ratio(covariance: np.ndarray) -> float:
    """Effective number of independent channel maps: ``(sum λ)^2 / sum λ^2`` of the eigenvalues of
    the channel-by-channel covariance. 1 when all channels carry one map (up to scale); k for k
    independent maps of equal variance. NaN when there is no variance at all."""
    eig = np.clip(np.linalg.eigvalsh(covariance), 0, None)
    total = eig.sum()
    return float(total ** 2 / (eig ** 2).sum()) if total > 1e-12 else float("nan")
