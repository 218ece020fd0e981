"""Data: the labelled Scenes generator, hole masks, sketches, researchers' folders and the
standard segmentation datasets (:mod:`.formats`).

Every dataset yields dicts with ``image`` ``[3,H,W]`` float32 in [0,1], ``hole`` ``[1,H,W]``
(1 = hole), ``sketch`` ``[1,H,W]`` (edges inside the hole), ``labels`` ``[H,W]`` int64 (:data:`IGNORE`,
-1, for pixels of no class) and ``index``; its ``classes`` name the label ids and ``spec()``
describes it as JSON.
"""
from __future__ import annotations

import torch

from ..errors import DataError
from .folder import FolderDataset
from .formats import FORMATS, IGNORE
from .masks import HOLE_AREA, hole_mask
from .scenes import CLASSES, HELDOUT_SEED, TRAIN_SEED, Scenes, heldout_items, render_scene, scene_item
from .sketch import label_boundaries, sketch_from_labels


def collate(items: list[dict], n_classes: int | None = None) -> dict:
    """Stack items into a batch: ``image`` ``[B,3,H,W]``, ``hole``/``sketch`` ``[B,1,H,W]``,
    ``labels`` ``[B,H,W]``, ``index`` ``[B]``. With ``n_classes``, the labels must be integers (made
    int64) and every label id a class (``0 .. n_classes - 1``) or :data:`IGNORE`."""
    try:
        batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "hole", "sketch", "labels")}
    except RuntimeError:
        sizes = sorted({tuple(it["image"].shape[-2:]) for it in items})
        raise DataError(f"images of different sizes {sizes} in one batch (items {_names(items)[:4]}); pass "
                        "--size S to resize and crop every image to S x S") from None
    if n_classes is not None:
        batch["labels"] = _checked_label_ids(batch["labels"], n_classes, items)
    batch["index"] = torch.tensor([it["index"] for it in items], device="cpu")
    return batch


def _names(items: list[dict]) -> list:
    return [it.get("name", it["index"]) for it in items]


def _checked_label_ids(labels, n_classes: int, items: list[dict]):
    """``labels`` ``[B,H,W]`` as int64, refused if they are not integers or if an id is neither a class
    nor :data:`IGNORE` (naming the item)."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise DataError(f"items {_names(items)[:4]}: labels of {labels.dtype}; a dataset's labels must be integer "
                        f"class ids per pixel (int64, {IGNORE} for an ignored pixel)")
    labels = labels.long()
    bad = (labels < IGNORE) | (labels >= n_classes)
    if bad.any():
        image = int(bad.flatten(1).any(1).nonzero()[0])
        value = int(labels[image][bad[image]][0])
        raise DataError(f"item {_names(items)[image]}: label id {value} is not one of the dataset's {n_classes} "
                        f"classes (ids 0-{n_classes - 1}, or {IGNORE} for an ignored pixel); fix its label map "
                        "or the dataset's class list")
    return labels


IMAGE_FORMATS = {"folder": FolderDataset, **FORMATS}
IMAGE_OPTIONS = ("split", "size", "mask_threshold", "holes", "holes_invert", "sketches")


def parse_data(text: str, n: int | None = None, seed: int | None = None, start: int = 0,
               mask_threshold: float | None = None, split: str | None = None, size: int | None = None,
               holes: str | None = None, holes_invert: bool = False, sketches: str | None = None):
    """Build a dataset from the CLI form: ``scenes`` / ``scenes:SIZE``, ``folder:PATH`` or a standard
    format ``voc:ROOT``, ``ade20k:ROOT``, ``cityscapes:ROOT``, ``cocostuff:ROOT``. The other options
    apply to the image formats only: ``split`` (default: the format's validation split), ``size``
    (resize the shorter side, centre-crop to ``size x size``), ``mask_threshold`` (mask pixels at or
    above it, 0-1 of white, are hole), ``holes`` (``free``, ``box:FRACTION``, ``folder:PATH``) with
    ``holes_invert``, and ``sketches`` (a folder of PNGs named like the images)."""
    kind, _, arg = text.partition(":")
    options = {"split": split, "size": size, "mask_threshold": mask_threshold, "holes": holes,
               "holes_invert": holes_invert or None, "sketches": sketches}
    given = [k for k, v in options.items() if v is not None]
    if kind == "scenes":
        if given:
            raise DataError(f"--{given[0].replace('_', '-')} applies to image folders and datasets, not to "
                            f"{text!r} (Scenes: choose the size with scenes:SIZE)")
        arg, _, variant = arg.partition(":")
        if variant not in ("", "shapes"):
            raise DataError(f"--data {text!r}: the only Scenes variant is scenes:SIZE:shapes (objects that differ "
                            "only by shape)")
        try:
            size = int(arg) if arg else 64
        except ValueError:
            raise DataError(f"--data {text!r}: the Scenes size must be an integer, e.g. scenes:64") from None
        return Scenes(size=size, n=n or 1024, seed=HELDOUT_SEED if seed is None else seed, start=start,
                      shape_only=variant == "shapes")
    if kind in IMAGE_FORMATS and arg:
        if kind == "folder" and split is not None:
            raise DataError(f"--split applies to the standard datasets ({', '.join(FORMATS)}), not to a folder")
        return IMAGE_FORMATS[kind](arg, seed=seed or 0, **{k: options[k] for k in given})
    raise DataError(f"--data {text!r}: use scenes, scenes:SIZE (32-256), scenes:SIZE:shapes, folder:PATH or "
                    f"{', '.join(k + ':ROOT' for k in FORMATS)}")


def dataset_from_spec(spec: dict):
    """Rebuild a dataset from its ``spec()``."""
    if spec["kind"] == "scenes":
        return Scenes(size=spec["size"], n=spec["n"], seed=spec["seed"], start=spec.get("start", 0),
                      hole_mode=spec.get("hole_mode", "free"), hole_area=tuple(spec.get("hole_area", HOLE_AREA)),
                      shape_only=bool(spec.get("shape_only", False)))
    if spec["kind"] in IMAGE_FORMATS:
        options = {k: spec[k] for k in IMAGE_OPTIONS if spec.get(k) is not None}
        return IMAGE_FORMATS[spec["kind"]](spec["path"], seed=spec.get("seed", 0),
                                           hole_area=tuple(spec.get("hole_area", HOLE_AREA)), **options)
    raise DataError(f"unknown data kind {spec['kind']!r} in spec")


__all__ = [
    "CLASSES",
    "FORMATS",
    "HELDOUT_SEED",
    "HOLE_AREA",
    "IGNORE",
    "TRAIN_SEED",
    "DataError",
    "FolderDataset",
    "Scenes",
    "collate",
    "dataset_from_spec",
    "heldout_items",
    "hole_mask",
    "label_boundaries",
    "parse_data",
    "render_scene",
    "scene_item",
    "sketch_from_labels",
]
