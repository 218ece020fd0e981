"""Image and array helpers of the figures: floats to RGB bytes and PNG data URIs, the model input
as displayed (hole grey, sketch white), nearest-neighbour upsampling, tile mosaics and outline
paths. Plain numpy (and PIL for PNG): no plotly."""
from __future__ import annotations

import base64
import hashlib
import io
import math
from collections import OrderedDict

import numpy as np

HOLE_TINT = np.array([0.55, 0.55, 0.55], dtype=np.float32)
SKETCH_TINT = np.array([1.0, 1.0, 1.0], dtype=np.float32)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` (or ``[H, W, 3]``, or ``[H, W]``) floats in [0, 1] -> ``[H, W, 3]`` uint8."""
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    elif a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return (np.clip(np.nan_to_num(a), 0, 1) * 255 + 0.5).astype(np.uint8)


_PNG_CACHE: OrderedDict = OrderedDict()


def png_uri(rgb8: np.ndarray) -> str:
    """A ``data:image/png;base64`` URI of an ``[H, W, 3]`` uint8 array (the last encodings are
    memoised by content, so redrawing the same images costs a hash, not a PNG encoding)."""
    from PIL import Image

    rgb8 = np.ascontiguousarray(rgb8)
    key = (rgb8.shape, hashlib.blake2b(rgb8.tobytes(), digest_size=16).digest())
    cached = _PNG_CACHE.get(key)
    if cached is not None:
        return cached
    buffer = io.BytesIO()
    Image.fromarray(rgb8).save(buffer, format="PNG", compress_level=1)
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    _PNG_CACHE[key] = uri
    while len(_PNG_CACHE) > 256:
        _PNG_CACHE.popitem(last=False)
    return uri


def plane(a) -> np.ndarray:
    """``[1, H, W]`` or ``[H, W]`` -> ``[H, W]`` float32."""
    a = np.asarray(a, dtype=np.float32)
    return a[0] if a.ndim == 3 else a


def masked_input(image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None = None) -> np.ndarray:
    """What the model sees, for display: ``image`` ``[3,H,W]`` with the hole grey and the sketch
    strokes (inside the hole) white; returns ``[3, H, W]`` float32."""
    img = np.array(image, dtype=np.float32)
    h = plane(hole) > 0.5
    img[:, h] = HOLE_TINT[:, None]
    if sketch is not None:
        s = (plane(sketch) > 0.5) & h
        img[:, s] = SKETCH_TINT[:, None]
    return img


def upsample(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[h, w]`` to ``size`` (each output pixel takes the cell it lies in)."""
    plane = np.asarray(plane, dtype=np.float32)
    h, w = plane.shape
    H, W = size
    if (h, w) == (H, W):
        return plane
    ys = np.minimum((np.arange(H) * h) // H, h - 1)
    xs = np.minimum((np.arange(W) * w) // W, w - 1)
    return plane[ys][:, xs]


def _grid_shape(n: int, tile_h: int, tile_w: int, columns: int | None) -> tuple[int, int]:
    if columns is None:
        columns = max(1, math.ceil(math.sqrt(n * 1.8 * tile_h / max(tile_w, 1))))
    columns = max(1, min(columns, n))
    return math.ceil(n / columns), columns


def mosaic(tiles: np.ndarray, columns: int | None = None, gap: int = 1) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Lay ``tiles`` ``[N, h, w]`` out on a grid: returns ``z`` (NaN between tiles), ``index`` (the
    tile position of every cell, -1 between tiles, int32) and ``(rows, columns, gap)``."""
    n, h, w = tiles.shape
    rows, cols = _grid_shape(n, h, w, columns)
    z = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap), np.nan, dtype=np.float32)
    index = np.full(z.shape, -1, dtype=np.int32)
    for i in range(n):
        y, x = tile_origin(i, h, w, cols, gap)
        z[y:y + h, x:x + w] = tiles[i]
        index[y:y + h, x:x + w] = i
    return z, index, (rows, cols, gap)


def tile_origin(i: int, h: int, w: int, cols: int, gap: int) -> tuple[int, int]:
    r, c = divmod(i, cols)
    return r * (h + gap), c * (w + gap)


def box_path(boxes: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """x and y coordinates of rectangle outlines (x0, y0, x1, y1) for one line trace, each box
    closed and followed by a NaN (a gap), as float arrays (sent compactly, drawn as separate boxes)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    nan = np.full(len(b), np.nan)
    xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], b[:, 0], nan], axis=1).ravel()
    ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], b[:, 1], nan], axis=1).ravel()
    return xs, ys


def outline(mask: np.ndarray, dx: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Segments along the boundary of a boolean ``[H, W]`` mask (pixel-centre coordinates), as
    NaN-separated float arrays."""
    ry, rx = np.nonzero(mask[:, 1:] != mask[:, :-1])
    cy, cx = np.nonzero(mask[1:, :] != mask[:-1, :])
    vx = dx + rx + 0.5
    x = np.concatenate([np.stack([vx, vx, np.full(len(vx), np.nan)], 1).ravel(),
                        np.stack([dx + cx - 0.5, dx + cx + 0.5, np.full(len(cx), np.nan)], 1).ravel()])
    y = np.concatenate([np.stack([ry - 0.5, ry + 0.5, np.full(len(ry), np.nan)], 1).ravel(),
                        np.stack([cy + 0.5, cy + 0.5, np.full(len(cy), np.nan)], 1).ravel()])
    return x, y
