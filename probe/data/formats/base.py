"""LabelledImages: what every image format shares (items, resize and crop, holes, sketches, spec).

A format lists its ``(name, image path, label path)`` entries, names its classes and maps the
stored label values to class ids with a :class:`~.labels.LabelTable`; this class does the rest.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import DataError
from ..masks import HOLE_AREA
from ..sketch import make_item
from .holes import HoleSource, sketch_files
from .labels import LabelTable, read_label_values
from .pixels import read_binary, read_image
from .transform import check_size, describe, fit_image, fit_nearest


class LabelledImages(torch.utils.data.Dataset):
    """Items like :class:`~probe.data.scenes.Scenes`: ``image`` ``[3,H,W]``, ``hole`` ``[1,H,W]``,
    ``sketch`` ``[1,H,W]``, ``labels`` ``[H,W]`` int64 (-1 = ignore), ``index``, plus ``name``;
    ``H = W = size`` with ``size``, else each image's own size.

    Subclasses set ``kind`` and ``default_split`` and implement :meth:`entries`, :meth:`read_classes`
    and :meth:`table`; :meth:`mask_path` gives a dataset's own hole masks (none by default)."""

    kind = ""
    default_split: str | None = None
    colors: np.ndarray | None = None  # [K, 3] colour of each stored label value, for RGB label maps
    colour_hint = "convert it to class ids"

    def __init__(self, root: str | Path, split: str | None = None, size: int | None = None, seed: int = 0,
                 hole_area: tuple[float, float] = HOLE_AREA, mask_threshold: float = 0.5, holes: str | None = None,
                 holes_invert: bool = False, sketches: str | None = None):
        self.root, self.split, self.size = Path(root), split or self.default_split, check_size(size)
        self.seed, self.hole_area, self.mask_threshold = seed, tuple(hole_area), mask_threshold
        if not 0 < mask_threshold <= 1:  # NaN fails too
            raise DataError(f"mask threshold {mask_threshold}: expected a value in (0, 1], the share of white from "
                            "which a mask pixel is hole (default 0.5)")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder; {self.layout_hint()}")
        self.holes = HoleSource(holes, seed, hole_area, mask_threshold, holes_invert)
        self.sketch_files = sketch_files(sketches)
        self.sketches = str(Path(str(sketches).removeprefix("folder:")).resolve()) if sketches else None
        self.classes = tuple(self.read_classes())
        self.entries_ = self.entries()
        if not self.entries_:
            raise DataError(f"{self.root}: no images found for split {self.split!r}; {self.layout_hint()}")
        missing = [name for name, _, _ in self.entries_ if self.sketch_files and name not in self.sketch_files]
        if missing:
            raise DataError(f"--sketches: no sketch for {len(missing)} image(s), e.g. {missing[:3]}; add NAME.png "
                            "for every image")
        self.names = [name for name, _, _ in self.entries_]

    # --------------------------------------------------------------------- what a format defines
    def layout_hint(self) -> str:
        return "see probe.data.formats for the expected layout"

    def root_file(self, name: str) -> Path:
        """``ROOT/name``, which the format needs: a :class:`DataError` with the layout when missing."""
        path = self.root / name
        if not path.is_file():
            raise DataError(f"{path}: missing; {self.layout_hint()}")
        return path

    def entries(self) -> list[tuple[str, Path, Path]]:
        """``(name, image path, label path)`` of every image of the split, in order."""
        raise NotImplementedError

    def read_classes(self) -> list[str]:
        raise NotImplementedError

    def table(self, label_path: Path) -> LabelTable:
        """The table that maps the values stored in ``label_path`` to class ids."""
        raise NotImplementedError

    def mask_path(self, name: str) -> Path | None:
        return None

    # --------------------------------------------------------------------- shared
    def __len__(self) -> int:
        return len(self.entries_)

    def labels_of(self, label_path: Path) -> np.ndarray:
        """``[H, W]`` int64 class ids (-1 = ignore) of one label map, at its stored size."""
        return self.table(label_path)(read_label_values(label_path, self.colors, self.colour_hint), label_path)

    def _same_shape(self, path: Path, what: str, array: np.ndarray, image: np.ndarray) -> np.ndarray:
        if array.shape[:2] != image.shape[:2]:
            raise DataError(f"{path}: {what} is {array.shape[1]}x{array.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}; they must match")
        return fit_nearest(array, self.size)

    def __getitem__(self, i: int) -> dict:
        name, image_path, label_path = self.entries_[i]
        raw = read_image(image_path, convert="RGB")
        image = fit_image(raw, self.size, image_path)
        labels = self._same_shape(label_path, "label map", self.labels_of(label_path), raw)
        own = self.mask_path(name) if self.holes.text == "free" else None
        if own is not None:
            hole = self._same_shape(own, "mask", read_binary(own, self.mask_threshold), raw)
        else:
            hole = self.holes.hole(i, labels.shape)
        sketch = None
        if self.sketch_files:
            path = self.sketch_files[name]
            sketch = self._same_shape(path, "sketch", read_binary(path, 0.5), raw) & hole
        return make_item(image, labels, hole, i, sketch=sketch, name=name)

    def ignore_ids(self) -> list[int]:
        """The stored label values that are ignored, over every table of the format."""
        tables = {id(t): t for t in (self.table(label_path) for _, _, label_path in self.entries_)}
        return sorted({v for t in tables.values() for v in t.ignore_ids()})

    def spec(self) -> dict:
        return {"kind": self.kind, "path": str(self.root.resolve()), "split": self.split, "size": self.size,
                "n": len(self), "seed": self.seed, "mask_threshold": self.mask_threshold, **self.holes.spec(),
                "sketches": self.sketches, "transform": describe(self.size), "classes": list(self.classes),
                "ignore": self.ignore_ids()}
