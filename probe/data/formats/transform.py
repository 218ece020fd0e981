"""The one resize-and-crop of every image format (``--size S``): the shorter side is resized to
``S`` and the centre ``S x S`` kept. Images are resized bilinearly with antialiasing; labels, masks
and sketches by nearest neighbour (the source pixel whose centre is nearest, as PIL's NEAREST)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import DataError
from .pixels import to_rgb_float

SIZE_RANGE = (8, 4096)


def check_size(size: int | None) -> int | None:
    """``size`` if it is None or an integer in :data:`SIZE_RANGE`, else a :class:`DataError`."""
    lo, hi = SIZE_RANGE
    if size is not None and not (isinstance(size, int) and lo <= size <= hi):
        raise DataError(f"--size {size!r}: expected an integer from {lo} to {hi} (the side of the square crop)")
    return size


def fitted_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of an image of ``shape`` whose shorter side is resized to ``size``."""
    h, w = shape
    short = min(h, w)
    return max(size, round(h * size / short)), max(size, round(w * size / short))


def _crop(resized: tuple[int, int], size: int) -> tuple[slice, slice]:
    (h, w) = resized
    top, left = (h - size) // 2, (w - size) // 2
    return slice(top, top + size), slice(left, left + size)


def fit_image(pixels: np.ndarray, size: int | None, path: Path) -> np.ndarray:
    """``[size, size, 3]`` float32 in [0, 1] (bilinear, antialiased, centre crop; the image's own size
    for None) from the stored ``pixels`` of ``path`` (see :func:`~.pixels.to_rgb_float`). 8-bit RGB
    is resized as uint8 (torch's fast path, rounded to 1/255), anything else as float."""
    fast = size is not None and pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    image = pixels if fast else to_rgb_float(pixels, path)
    if size is None:
        return image
    resized = fitted_shape(image.shape[:2], size)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=resized, mode="bilinear", antialias=True, align_corners=False)[0]
    rows, cols = _crop(resized, size)
    out = t[:, rows, cols].permute(1, 2, 0).numpy()
    return out.astype(np.float32) / 255 if fast else out


def nearest_index(n_in: int, n_out: int, start: int = 0, count: int | None = None) -> np.ndarray:
    """Source index of output pixels ``start .. start + count`` when ``n_in`` pixels are resized
    to ``n_out`` by nearest neighbour: ``floor((j + 0.5) * n_in / n_out)``."""
    j = np.arange(start, start + (n_out if count is None else count))
    return np.minimum(((j + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` -> ``[*shape]`` by nearest neighbour."""
    return array[nearest_index(array.shape[0], shape[0])][:, nearest_index(array.shape[1], shape[1])]


def fit_nearest(array: np.ndarray, size: int | None) -> np.ndarray:
    """``[H, W]`` (labels, a mask, a sketch) -> ``[size, size]`` by nearest neighbour and the same
    centre crop as :func:`fit_image`; as is for None."""
    if size is None:
        return array
    (h, w), (rh, rw) = array.shape, fitted_shape(array.shape, size)
    rows, cols = _crop((rh, rw), size)
    return array[nearest_index(h, rh, rows.start, size)][:, nearest_index(w, rw, cols.start, size)]


def describe(size: int | None) -> dict | None:
    """The transform of ``size`` as the manifest records it."""
    if size is None:
        return None
    return {"resize_shorter_side": size, "centre_crop": [size, size], "image": "bilinear, antialias",
            "labels": "nearest", "masks": "nearest", "sketches": "nearest"}
