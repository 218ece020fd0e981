"""Calibration of the gate histograms: each channel's logit range, measured on the first images of
the data (the same images, in the same batches, for every shard, so shard runs stay mergeable)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..adapters import Site
from ..errors import NumericalError, calling_model
from ..hooks import eval_mode, hooks_attached, site_attachers
from ..stats.binning import Binning, segment_levels
from .recorder import check_output

MIN_SPAN = 1e-3  # logits: a channel that is constant on the calibration images still gets bins this wide
SAMPLE = 8192  # logits per channel kept (a fixed stride over the calibration pixels) for the inner knots


def calibrate_binnings(model: nn.Module, sites: list[Site], batches: list[dict], use_sketch: bool, bins: int,
                       quantile: float, margin: float = 0.25, tail: float = 5e-4) -> dict[str, Binning]:
    """Per gated layer, the :class:`~probe.stats.binning.Binning` of its channels calibrated on
    ``batches`` (the first images of the data, the same for every shard, in the same batches, so
    shard binnings agree exactly and their histograms merge).

    Each channel's range is its ``tail`` and ``1 - tail`` quantiles (linear interpolation, as
    ``torch.quantile``), widened by ``margin`` of their span (plus ``MIN_SPAN``) on both sides:
    rare outliers fall in the open end bins instead of stretching every bin, and the top-0.005
    threshold of the IoU stays inside the range. There is no rounding to a fixed grid. The range is
    cut into segments at the quantiles :func:`~probe.stats.binning.segment_levels` of ``quantile``,
    taken over a fixed-stride sample of at most ``SAMPLE`` logits per channel.

    The tail quantiles are exact over all the images, yet only the ``k`` smallest and largest
    logits of each channel are kept from batch to batch (``k`` = the tail's order statistics plus
    one), so calibration costs about one recording batch of memory, not a sort of every logit."""
    tails, samples = _calibration_pass(model, sites, batches, use_sketch, tail)
    levels = segment_levels(quantile)
    binnings = {}
    for name, t in tails.items():
        lo, hi = logit_range(t, margin)
        sample = samples[name].values().double()
        inner = torch.quantile(sample, torch.tensor(levels, dtype=torch.float64, device=sample.device), dim=1).T
        binnings[name] = Binning.calibrated(lo, hi, inner, bins)
    return binnings


def logit_range(tails: "TailQuantiles", margin: float) -> tuple[Tensor, Tensor]:
    """``(lo [C], hi [C])``: the tail quantiles widened by ``margin`` of their span plus ``MIN_SPAN``."""
    lo, hi = tails.quantiles()
    pad = margin * (hi - lo) + MIN_SPAN
    return lo - pad, hi + pad


def _calibration_pass(model, sites, batches, use_sketch: bool, tail: float):
    """One pass over ``batches``: per gated layer its :class:`TailQuantiles` and :class:`StridedSample`."""
    n_images = sum(len(b["image"]) for b in batches)
    tails: dict[str, TailQuantiles] = {}
    samples: dict[str, StridedSample] = {}

    class _Collect:
        def __init__(self, name):
            self.name = name

        def gated(self, logits, gates):
            if not bool(torch.isfinite(logits).all()):
                raise NumericalError(f"layer {self.name}: NaN or inf gate values on the calibration images; "
                                     "check the model's weights and inputs")
            if self.name not in tails:
                n = n_images * logits.shape[-2] * logits.shape[-1]
                tails[self.name], samples[self.name] = TailQuantiles(n, tail), StridedSample(n, SAMPLE)
            per_channel = logits.transpose(0, 1).reshape(logits.shape[1], -1)
            tails[self.name].add(per_channel)
            samples[self.name].add(per_channel)

        def partial(self, *args, **kwargs):
            pass

    gated = [s for s in sites if s.kind == "gated"]
    with hooks_attached(model, site_attachers(gated, _Collect)), eval_mode(model), torch.inference_mode(), \
            calling_model(model, "calibration pass"):
        for batch in batches:
            out = model(batch["image"], batch["hole"], batch["sketch"] if use_sketch else None)
            check_output(model, out, batch["image"], "calibration pass")
    return tails, samples


class StridedSample:
    """Every ``ceil(n / size)``-th of ``n`` values arriving in chunks ``[C, m]`` (at most ``size``
    per channel; the same values for the same chunks, whatever process reads them)."""

    def __init__(self, n: int, size: int):
        self.stride = max(1, -(-n // size))
        self.seen = 0
        self.kept: list[Tensor] = []

    def add(self, values: Tensor) -> None:
        first = (-self.seen) % self.stride  # the next multiple of the stride, relative to this chunk
        self.kept.append(values[:, first::self.stride].clone())
        self.seen += values.shape[1]

    def values(self) -> Tensor:
        """``[C, kept]`` the sampled values."""
        return torch.cat(self.kept, 1)


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
