"""Hole masks (1 = hole): DeepFill v2 style free-form strokes plus boxes, or rectangles."""
from __future__ import annotations

from itertools import pairwise

import numpy as np

from ..errors import DataError

HOLE_AREA = (0.1, 0.35)  # share of the image a generated hole covers, drawn uniformly in this range

HOLE_MODES = ("free", "rect", "centre")


def _strokes(rng: np.random.Generator, size: int) -> np.ndarray:
    """One free-form stroke: 4-12 vertices, random angles and lengths, a round brush.
    Widths and lengths are DeepFill v2's (for 256 px) scaled to ``size``."""
    scale = size / 256
    n_vertices = rng.integers(4, 13)
    width = rng.uniform(12, 40) * scale
    points = [rng.uniform(0, size, size=2)]
    for _ in range(n_vertices):
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(10, 60) * scale * 1.5
        points.append(np.clip(points[-1] + length * np.array([np.sin(angle), np.cos(angle)]), 0, size - 1))
    hole = np.zeros((size, size), bool)
    for p0, p1 in pairwise(points):  # (y, x) each; only the segment's box can be within reach
        lo = np.clip(np.floor(np.minimum(p0, p1) - width / 2 - 1), 0, size).astype(int)
        hi = np.clip(np.ceil(np.maximum(p0, p1) + width / 2 + 1), 0, size).astype(int)
        yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1]].astype(np.float32) + 0.5
        grid = np.stack([yy.ravel(), xx.ravel()], 1)  # [P, 2]
        d = p1 - p0
        t = np.clip(((grid - p0) * d).sum(-1) / ((d ** 2).sum() + 1e-9), 0, 1)
        dist = np.sqrt(((grid - (p0 + t[:, None] * d)) ** 2).sum(-1))
        hole[lo[0]:hi[0], lo[1]:hi[1]] |= (dist <= width / 2).reshape(hi[0] - lo[0], hi[1] - lo[1])
    return hole


def _box(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    aspect = rng.uniform(0.5, 2.0)
    h = int(np.clip(round(size * np.sqrt(area * aspect)), 1, size))
    w = int(np.clip(round(size * np.sqrt(area / aspect)), 1, size))
    y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    hole = np.zeros((size, size), bool)
    hole[y:y + h, x:x + w] = True
    return hole


def hole_mask(rng: np.random.Generator, size: int, mode: str = "free",
              area: tuple[float, float] = HOLE_AREA, max_tries: int = 20) -> np.ndarray:
    """A ``[size, size]`` bool hole mask whose hole fraction lies in ``area`` (best effort for
    ``free``: strokes are added until the minimum is reached and redrawn when over the maximum).

    Modes: ``free`` (strokes, plus a box half of the time), ``rect`` (one random rectangle),
    ``centre`` (a centred square).
    """
    lo, hi = area
    if not 0 < lo <= hi < 1:
        raise DataError(f"hole area range must satisfy 0 < min <= max < 1, got {area}")
    if mode == "centre":
        side = int(round(size * np.sqrt(rng.uniform(lo, hi))))
        start = (size - side) // 2
        hole = np.zeros((size, size), bool)
        hole[start:start + side, start:start + side] = True
        return hole
    if mode == "rect":
        return _box(rng, size, rng.uniform(lo, hi))
    if mode != "free":
        raise DataError(f"unknown hole mode {mode!r}; choose one of {HOLE_MODES}")
    hole = np.zeros((size, size), bool)
    for _ in range(max_tries):
        hole = _box(rng, size, rng.uniform(lo, hi) / 2) if rng.random() < 0.5 else np.zeros((size, size), bool)
        while hole.mean() < lo:
            hole |= _strokes(rng, size)
        if hole.mean() <= hi:
            break
    return hole
