"""Data: the labelled Scenes generator, hole masks, sketches and researchers' folders.

Every dataset yields dicts with ``image`` ``[3,H,W]`` float32 in [0,1], ``hole`` ``[1,H,W]``
(1 = hole), ``sketch`` ``[1,H,W]`` (edges inside the hole), ``labels`` ``[H,W]`` int64 and
``index``; its ``classes`` name the label ids and ``spec()`` describes it as JSON.
"""
from __future__ import annotations

import torch

from ..errors import DataError
from .folder import FolderDataset
from .masks import HOLE_AREA, hole_mask
from .scenes import CLASSES, HELDOUT_SEED, TRAIN_SEED, Scenes, heldout_items, render_scene, scene_item
from .sketch import label_boundaries, sketch_from_labels


def collate(items: list[dict]) -> dict:
    """Stack items into a batch: ``image`` ``[B,3,H,W]``, ``hole``/``sketch`` ``[B,1,H,W]``,
    ``labels`` ``[B,H,W]``, ``index`` ``[B]``."""
    try:
        batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "hole", "sketch", "labels")}
    except RuntimeError:
        sizes = sorted({tuple(it["image"].shape[-2:]) for it in items})
        names = [it.get("name", it["index"]) for it in items]
        raise DataError(f"images of different sizes {sizes} in one batch (items {names[:4]}); resize them to one "
                        "size or record with --batch-size 1") from None
    batch["index"] = torch.tensor([it["index"] for it in items])
    return batch


def parse_data(text: str, n: int | None = None, seed: int | None = None, start: int = 0,
               mask_threshold: float | None = None):
    """Build a dataset from the CLI form: ``scenes`` / ``scenes:SIZE`` or ``folder:PATH``.
    ``mask_threshold`` (folders only): mask pixels at or above it (0-1 of white) are hole."""
    kind, _, arg = text.partition(":")
    if mask_threshold is not None and kind != "folder":
        raise DataError(f"--mask-threshold applies to folder:PATH data with masks/, not to {text!r}")
    if kind == "scenes":
        try:
            size = int(arg) if arg else 64
        except ValueError:
            raise DataError(f"--data {text!r}: the Scenes size must be an integer, e.g. scenes:64") from None
        return Scenes(size=size, n=n or 1024, seed=HELDOUT_SEED if seed is None else seed, start=start)
    if kind == "folder" and arg:
        return FolderDataset(arg, seed=seed or 0, mask_threshold=0.5 if mask_threshold is None else mask_threshold)
    raise DataError(f"--data {text!r}: use scenes, scenes:SIZE (32-256) or folder:PATH")


def dataset_from_spec(spec: dict):
    """Rebuild a dataset from its ``spec()``."""
    if spec["kind"] == "scenes":
        return Scenes(size=spec["size"], n=spec["n"], seed=spec["seed"], start=spec.get("start", 0),
                      hole_mode=spec.get("hole_mode", "free"), hole_area=tuple(spec.get("hole_area", HOLE_AREA)))
    if spec["kind"] == "folder":
        return FolderDataset(spec["path"], seed=spec.get("seed", 0), hole_area=tuple(spec["hole_area"]),
                             mask_threshold=spec.get("mask_threshold", 0.5))
    raise DataError(f"unknown data kind {spec['kind']!r} in spec")


__all__ = ["CLASSES", "HELDOUT_SEED", "HOLE_AREA", "TRAIN_SEED", "DataError", "FolderDataset", "Scenes", "collate",
           "dataset_from_spec", "heldout_items", "hole_mask", "label_boundaries", "parse_data",
           "render_scene", "scene_item", "sketch_from_labels"]
