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

from ..stats.regions import BORDER, FAR, HOLE_PLAIN, HOLE_SKETCH, REGIONS, onehot


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
        return F.adaptive_avg_pool2d(self.hole, size) >= 0.5

    def regions(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Region id ``[B,1,h,w]`` int64 and its one-hot ``[B, h*w, 4]`` float32 at ``size``."""
        key = ("regions", size)
        if key not in self._cache:
            hole = self.hole_at(size)
            sketch = (F.adaptive_max_pool2d(self.sketch, size) > 0) & hole
            k = 2 * self.border + 1
            near = F.max_pool2d(hole.float(), k, stride=1, padding=self.border) > 0
            region = torch.where(sketch, HOLE_SKETCH, torch.where(hole, HOLE_PLAIN, torch.where(near, BORDER, FAR)))
            self._cache[key] = (region, onehot(region.flatten(1), len(REGIONS)))
        return self._cache[key]

    def labels_at(self, size: tuple[int, int]) -> Tensor:
        """int64 ``[B, h*w]``: the label of each cell at ``size`` ``(h, w)``, the one at the cell's
        centre pixel, -1 where it is ignored (cached)."""
        key = ("labels-at", size)
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
        if key not in self._cache:
            colour = F.adaptive_avg_pool2d(self.image.float(), size)
            lum = colour.mean(1, keepdim=True)
            mean = F.avg_pool2d(lum, 3, stride=1, padding=1, count_include_pad=False)
            var = (F.avg_pool2d(lum ** 2, 3, stride=1, padding=1, count_include_pad=False) - mean ** 2).clamp_min(0)
            b, (h, w) = len(colour), size
            device = colour.device
            rows = ((torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h).view(1, 1, h, 1).expand(b, 1, h, w)
            cols = ((torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w).view(1, 1, 1, w).expand(b, 1, h, w)
            self._cache[key] = torch.cat([colour, var, rows, cols], dim=1)
        return self._cache[key]
