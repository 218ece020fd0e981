"""Scenes: a procedural, labelled outdoor-scene generator, deterministic in (seed, index).

Each scene has a horizon (sky above, grass below), optionally a gravel road in perspective, a
pond of water and a brick wall standing on the ground, and one to three objects (disc, box,
triangle) occluding the background. Surfaces are coloured real photo textures from
scikit-image, so filling a hole needs the semantics: continue the horizon, the wall behind an
object, the road's edges.

Every class but the three objects has its own texture and colour, so a gate that follows it may
follow appearance; the objects have random colours, and with ``shape_only=True`` (probe data,
``scenes:SIZE:shapes``) all three share one texture too, so disc, box and triangle differ only by
shape (the scene is otherwise the same: the same random draws in the same order).
"""
from __future__ import annotations

import colorsys

import numpy as np
import torch

from ..errors import DataError
from . import textures
from .masks import HOLE_AREA, hole_mask
from .sketch import make_item

CLASSES = ("sky", "grass", "brick wall", "gravel road", "water", "disc", "box", "triangle")
SKY, GRASS, BRICK, ROAD, WATER, DISC, BOX, TRIANGLE = range(len(CLASSES))
TRAIN_SEED = 0
HELDOUT_SEED = 1
MIN_SIZE, MAX_SIZE = 32, 256


def _paint(rng, image, region, base_rgb, tex_name, amplitude, size):
    """Fill ``region`` of ``image`` ``[H, W, 3]`` with a tinted texture."""
    jitter = rng.uniform(0.9, 1.1)
    rgb = np.asarray(base_rgb, dtype=np.float32) * jitter
    tex = textures.crop(rng, tex_name, size)[..., None] if tex_name else 0.0
    layer = rgb * (1 + amplitude * tex)
    image[region] = np.broadcast_to(layer, image.shape)[region]


def render_scene(seed: int, index: int, size: int = 64, shape_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render scene ``index`` of stream ``seed``: image ``[H, W, 3]`` float32 in [0, 1] and labels
    ``[H, W]`` uint8 (ids into :data:`CLASSES`). ``shape_only``: the objects share one texture."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"Scenes size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
    rng = np.random.default_rng([seed, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.zeros((size, size, 3), np.float32)
    labels = np.full((size, size), SKY, np.uint8)

    horizon = rng.uniform(0.3, 0.6) + rng.uniform(-0.15, 0.15) * (xx - 0.5)
    sky_top, sky_low = np.array([0.35, 0.55, 0.9]), np.array([0.75, 0.87, 1.0])
    t = np.clip(yy / horizon, 0, 1)[..., None]
    image[:] = (sky_top * (1 - t) + sky_low * t) * rng.uniform(0.9, 1.05)

    ground = yy >= horizon
    labels[ground] = GRASS
    _paint(rng, image, ground, (0.3, 0.55, 0.2), "grass", 0.35, size)

    if rng.random() < 0.6:  # road in perspective, from the bottom edge to a vanishing point
        centre, bottom_half, top_half = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.4), rng.uniform(0.01, 0.05)
        depth = np.clip((yy - horizon) / (1 - horizon + 1e-6), 0, 1)
        half = top_half + (bottom_half - top_half) * depth
        road = ground & (np.abs(xx - centre - 0.1 * (1 - depth) * rng.uniform(-1, 1)) < half)
        labels[road] = ROAD
        _paint(rng, image, road, (0.55, 0.5, 0.45), "gravel", 0.4, size)

    if rng.random() < 0.4:  # a pond on the ground
        cy, cx = rng.uniform(0.65, 0.9), rng.uniform(0.2, 0.8)
        ry, rx = rng.uniform(0.06, 0.15), rng.uniform(0.15, 0.3)
        pond = ground & (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1)
        labels[pond] = WATER
        ripples = 0.06 * np.sin(2 * np.pi * (yy * rng.uniform(12, 20) + 0.3 * np.sin(6 * xx)))
        water = np.array([0.15, 0.35, 0.6], np.float32) * rng.uniform(0.9, 1.1) + ripples[..., None]
        image[pond] = water[pond]

    if rng.random() < 0.6:  # a brick wall standing on the ground, hiding sky and ground
        x0 = rng.uniform(-0.1, 0.6)
        x1 = x0 + rng.uniform(0.3, 0.6)
        top = rng.uniform(0.05, 0.25)
        base = horizon.mean() + rng.uniform(0.02, 0.1)
        wall = (xx >= x0) & (xx < x1) & (yy >= top) & (yy < base)
        labels[wall] = BRICK
        _paint(rng, image, wall, (0.62, 0.3, 0.22), "brick", 0.45, size)

    for _ in range(rng.integers(1, 4)):  # objects in front of everything
        kind = rng.choice([DISC, BOX, TRIANGLE])
        r = rng.uniform(0.07, 0.16)
        cy, cx = rng.uniform(max(horizon.mean() - 0.1, r), 1 - r / 2), rng.uniform(r, 1 - r)
        if kind == DISC:
            shape = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        elif kind == BOX:
            shape = (np.abs(yy - cy) < r * rng.uniform(0.6, 1)) & (np.abs(xx - cx) < r * rng.uniform(0.6, 1))
        else:  # upward triangle with apex at (cy - r, cx)
            rel = (yy - (cy - r)) / (2 * r)
            shape = (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * r)
        hue = rng.uniform(0, 1)
        rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9))
        labels[shape] = kind
        _paint(rng, image, shape, rgb, "fur" if kind == DISC and not shape_only else "beans", 0.15, size)

    return np.clip(image, 0, 1), labels


def scene_item(seed: int, index: int, size: int = 64, hole_mode: str = "free",
               hole_area: tuple[float, float] = HOLE_AREA, shape_only: bool = False) -> dict:
    """One item as tensors: ``image`` ``[3,H,W]`` float32 in [0,1], ``hole`` ``[1,H,W]`` (1 = hole),
    ``sketch`` ``[1,H,W]`` (label boundaries inside the hole), ``labels`` ``[H,W]`` int64, ``index``."""
    image, labels = render_scene(seed, index, size, shape_only)
    hole = hole_mask(np.random.default_rng([seed, index, 1]), size, mode=hole_mode, area=hole_area)
    return make_item(image, labels, hole, index)


class Scenes(torch.utils.data.Dataset):
    """``n`` Scenes items of stream ``seed`` at ``size`` x ``size``, with holes and sketches.

    Training uses ``seed=TRAIN_SEED`` (0); the held-out set uses ``HELDOUT_SEED`` (1): the
    generator is seeded by ``(seed, index)`` so the two streams never share an item.
    """

    classes = CLASSES

    def __init__(self, size: int = 64, n: int = 1024, seed: int = TRAIN_SEED, hole_mode: str = "free",
                 hole_area: tuple[float, float] = HOLE_AREA, start: int = 0, shape_only: bool = False):
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise DataError(f"Scenes size must be between {MIN_SIZE} and {MAX_SIZE}, got {size}")
        self.size, self.n, self.seed, self.start = size, n, seed, start
        self.hole_mode, self.hole_area, self.shape_only = hole_mode, tuple(hole_area), shape_only

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"Scenes index {i} out of range [0, {self.n})")
        return scene_item(self.seed, self.start + i, self.size, self.hole_mode, self.hole_area, self.shape_only)

    def spec(self) -> dict:
        """A JSON-able description that rebuilds this dataset (see :func:`probe.data.dataset_from_spec`)."""
        return {"kind": "scenes", "size": self.size, "n": self.n, "seed": self.seed, "start": self.start,
                "hole_mode": self.hole_mode, "hole_area": list(self.hole_area), "classes": list(CLASSES)} | (
                    {"shape_only": True} if self.shape_only else {})


def heldout_items(n: int = 256, size: int = 64) -> list[dict]:
    """The fixed held-out set (seed 1, indices 0..n-1): dicts with ``image`` ``[3,H,W]``,
    ``hole`` ``[1,H,W]``, ``sketch`` ``[1,H,W]``, ``labels`` ``[H,W]``. Re-evaluate with any metric."""
    return [scene_item(HELDOUT_SEED, i, size) for i in range(n)]
