"""The per-batch conditions (regions, sketch, labels) brought to each layer's resolution.

How masks and labels reach a layer of resolution ``h x w`` from the image's ``H x W``:

* hole: the share of hole pixels in each cell (area average); a cell is hole when >= 0.5;
* border: valid cells within ``border`` cells (Chebyshev distance) of a hole cell; far: the rest;
* sketch: a hole cell holding any sketch pixel (max pooling), so thin strokes survive;
* labels: the label at the centre pixel of each cell (nearest, never averaged ids). A negative
  id (-1, :data:`probe.data.IGNORE`) is ignored: its one-hot row is all zero and it counts in
  no label statistic; the region statistics still count every pixel.

Each is computed once per batch and resolution and shared by every layer at that resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..stats.native_build import native_module
from ..stats.regions import BORDER, FAR, HOLE_PLAIN, HOLE_SKETCH, onehot


class BatchContext:
    """Conditions of one batch: ``hole``/``sketch`` ``[B,1,H,W]``, ``labels`` ``[B,H,W]`` int64,
    ``group`` ``[B]`` int64 (image group), ``n_labels`` classes, ``border`` cells."""

    def __init__(self, hole: Tensor, sketch: Tensor | None, labels: Tensor, group: Tensor,
                 n_labels: int, border: int = 2, image: Tensor | None = None):
        self.hole, self.labels, self.group, self.image = hole, labels, group, image
        self.sketch = sketch if sketch is not None else torch.zeros_like(hole)
        self.n_labels, self.border = n_labels, border
        self._cache: dict[tuple, tuple] = {}
        # off the CPU, NaN gate logits set this flag instead of raising at once (no device value read
        # per layer); the Recorder reads it once per batch
        self.nonfinite = None if hole.device.type == "cpu" else torch.zeros((), dtype=torch.bool, device=hole.device)
        self.predicted_valid = 1 - hole  # advanced layer by layer for the P3 prediction

    def hole_at(self, size: tuple[int, int]) -> Tensor:
        """``[B, 1, h, w]`` bool hole cells at ``size``."""
        return _area_mean(self.hole, size) >= 0.5

    def regions(self, size: tuple[int, int]) -> Tensor:
        """Region id ``[B,1,h,w]`` int64 at ``size``."""
        key = ("regions", size)
        if key not in self._cache:
            hole = self.hole_at(size)
            sketch = (_area_max(self.sketch, size) > 0) & hole
            near = _dilate(hole, self.border)
            # sketch implies hole implies near: from FAR, one step down to the next region for each that holds
            self._cache[key] = (FAR - (FAR - BORDER) * near.to(torch.int64) - (BORDER - HOLE_PLAIN) * hole.to(torch.int64)
                                - (HOLE_PLAIN - HOLE_SKETCH) * sketch.to(torch.int64))
        return self._cache[key]

    def labels_at(self, size: tuple[int, int]) -> Tensor:
        """int64 ``[B, h*w]``: the label of each cell at ``size`` ``(h, w)``, the one at the cell's
        centre pixel, -1 where it is ignored (cached)."""
        key = ("labels-at", size)
        if key not in self._cache and tuple(self.labels.shape[-2:]) == tuple(size):  # each cell is its own centre
            self._cache[key] = self.labels.flatten(1).clamp(min=-1)
        if key not in self._cache:
            H, W = self.labels.shape[-2:]
            device = self.labels.device
            ys = ((torch.arange(size[0], device=device) + 0.5) * H / size[0]).long()
            xs = ((torch.arange(size[1], device=device) + 0.5) * W / size[1]).long()
            self._cache[key] = self.labels[:, ys][:, :, xs].flatten(1).clamp(min=-1)
        return self._cache[key]

    def label_ids(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Label id ``[B,1,h,w]`` int64 (:meth:`labels_at`; ignored cells hold 0) and one-hot
        ``[B, h*w, L]`` (all zero for ignored cells)."""
        key = ("labels", size)
        if key not in self._cache:
            labels = self.labels_at(size)
            columns = onehot(labels + 1, self.n_labels + 1)[..., 1:]  # ignored: dropped
            self._cache[key] = (labels.clamp(min=0).view(len(labels), 1, *size), columns)
        return self._cache[key]

    def trivial_features(self, size: tuple[int, int]) -> Tensor | None:
        """The trivial input features at ``size`` (``TRIVIAL_FEATURES``), ``[B, 6, h, w]``
        float32, or None without an image: the cell's mean R, G, B; the variance of the cell
        luminance over its 3x3 cell neighbourhood; the cell's row and column in (0, 1). A label
        that one of them separates as well as a gate does is appearance or position, not semantics."""
        if self.image is None:
            return None
        key = ("trivial", size)
        # one C++ call, the same values (tests/test_native_batch.py), for RGB images; not at 1 x 1, where torch's
        # pooling is a mean whose sum runs in another order
        native = native_module(self.image.device) if tuple(size) != (1, 1) and self.image.shape[1] == 3 else None
        if key not in self._cache and native is not None:
            self._cache[key] = native.trivial_features(self.image.float().contiguous(), size[0], size[1])
        if key not in self._cache:
            b, (h, w) = len(self.image), size
            device = self.image.device
            features = torch.empty(b, 6, h, w, dtype=torch.float32, device=device)
            colour = features[:, :3]
            colour.copy_(_area_mean(self.image.float(), size))
            lum = colour.mean(1, keepdim=True)
            moments = _box_mean3(torch.cat([lum, lum * lum], dim=1))  # [B, 2, h, w]: E[lum], E[lum^2]
            torch.sub(moments[:, 1:], moments[:, :1] ** 2, out=features[:, 3:4]).clamp_(min=0)
            features[:, 4] = ((torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h).view(1, h, 1)
            features[:, 5] = ((torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w).view(1, 1, w)
            self._cache[key] = features
        return self._cache[key]


def _area_mean(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` ``[B, C, H, W]`` averaged over the cells of ``size`` (adaptive average pooling; ``x``
    itself at its own size, where each cell is one pixel)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(x, size)


def _area_max(x: Tensor, size: tuple[int, int]) -> Tensor:
    """``x`` ``[B, C, H, W]``'s maximum over the cells of ``size`` (adaptive max pooling; ``x`` itself at its own size)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.adaptive_max_pool2d(x, size)


def _with_neighbours(x: Tensor, radius: int, combine) -> Tensor:
    """``x`` ``[..., h, w]`` combined with its shifts by 1 .. ``radius`` cells up and down, then left
    and right (``combine(a, b)`` updates ``a`` in place, e.g. ``Tensor.add_``); cells past the border
    are left out. Two 1-D passes of whole-tensor operations: on the CPU a fifth to a tenth of the
    time of the 2-D pooling that computes the same."""
    out = x
    for dim in (-2, -1):
        src, out = out, out.clone()
        size = src.shape[dim]
        for d in range(1, min(radius, size - 1) + 1):
            combine(out.narrow(dim, d, size - d), src.narrow(dim, 0, size - d))
            combine(out.narrow(dim, 0, size - d), src.narrow(dim, d, size - d))
    return out


def _dilate(mask: Tensor, radius: int) -> Tensor:
    """bool ``[B, 1, h, w]``: the cells within Chebyshev distance ``radius`` of a True cell of
    ``mask`` (``max_pool2d`` of size ``2 * radius + 1``)."""
    return _with_neighbours(mask, radius, Tensor.logical_or_)


def _box_mean3(x: Tensor) -> Tensor:
    """The mean of each cell's 3x3 neighbourhood inside the map, ``x`` ``[B, C, h, w]``
    (``avg_pool2d(x, 3, 1, 1, count_include_pad=False)``)."""
    h, w = x.shape[-2:]
    count = _inside(h, x).unsqueeze(1) * _inside(w, x)  # [h, w]: 9 inside, 6 on an edge, 4 in a corner
    return _with_neighbours(x, 1, Tensor.add_) / count


def _inside(size: int, like: Tensor) -> Tensor:
    """``[size]``: how many of the cells ``i - 1, i, i + 1`` lie in ``0 .. size - 1`` (dtype and device of ``like``)."""
    count = torch.full((size,), 3.0, dtype=like.dtype, device=like.device)
    count[0] -= 1
    count[-1] -= 1
    return count
