"""Label maps: stored values -> class ids, with ignore ids.

In items, a label id of :data:`IGNORE` (-1) marks a pixel that belongs to no class (VOC's void
border, ADE20K's "other", Cityscapes' unlabelled ids, COCO-Stuff's 255): it counts in no label
statistic (see :class:`probe.recording.context.BatchContext`) but in every region statistic.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import DataError
from .pixels import read_image

IGNORE = -1  # label id of an ignored pixel in items
UNKNOWN = -2  # a stored value that is neither a class nor ignored: refused


@dataclass(frozen=True)
class LabelTable:
    """Stored value -> class id, :data:`IGNORE` or :data:`UNKNOWN` (``values`` ``[V]`` int64);
    values beyond the table map to ``default``. ``hint`` says how to fix an unknown value."""

    values: np.ndarray
    default: int = UNKNOWN
    hint: str = "fix the label map"

    @classmethod
    def of(cls, ids: dict[int, int], ignore=(), default: int = UNKNOWN, hint: str = "fix the label map"):
        """A table mapping each key of ``ids`` to its class id and each of ``ignore`` to :data:`IGNORE`."""
        values = np.full(max([*ids, *ignore], default=-1) + 1, default, np.int64)
        values[list(ids)] = list(ids.values())
        values[list(ignore)] = IGNORE
        return cls(values, default, hint)

    def ignore_ids(self) -> list[int]:
        """The stored values that are ignored (those of 0-255 beyond the table too, when ``default`` is)."""
        beyond = range(len(self.values), 256) if self.default == IGNORE else ()
        return [int(v) for v in np.flatnonzero(self.values == IGNORE)] + list(beyond)

    def __call__(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """``[H, W]`` int64 class ids (or :data:`IGNORE`) of the stored values ``raw`` ``[H, W]``."""
        inside = (raw >= 0) & (raw < len(self.values))
        ids = np.where(inside, self.values[np.where(inside, raw, 0)], self.default)
        if (ids == UNKNOWN).any():
            raise DataError(f"{path}: label value {int(raw[ids == UNKNOWN][0])} is neither a class nor ignored; "
                            f"{self.hint}")
        return ids


def read_label_values(path: Path, colors: np.ndarray | None = None, hint: str = "") -> np.ndarray:
    """``[H, W]`` int64 stored values of a label map: gray values or palette indices as stored, or,
    for an RGB(A) map, the row of its colour in ``colors`` ``[K, 3]``. An RGB map whose channels
    differ is refused without ``colors`` (``hint`` says where the colour table goes)."""
    array = read_image(path)
    if array.dtype.kind not in "biu":
        raise DataError(f"{path}: label map has {array.dtype} pixels; save class ids as an 8- or 16-bit gray "
                        "(or palette) PNG")
    if array.ndim == 3:
        rgb = array[..., :3].astype(np.int64)
        if colors is not None:
            return _colour_ids(rgb, colors, path)
        if (rgb != rgb[..., :1]).any():
            raise DataError(f"{path}: an RGB colour label map; save class ids as a gray or palette PNG, or {hint}")
        array = rgb[..., 0]
    return array.astype(np.int64)


def _pack(rgb: np.ndarray) -> np.ndarray:
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colour_ids(rgb: np.ndarray, colors: np.ndarray, path: Path) -> np.ndarray:
    """``[H, W]`` row in ``colors`` ``[K, 3]`` of each pixel's colour ``rgb`` ``[H, W, 3]``."""
    packed, table = _pack(rgb), _pack(colors.astype(np.int64))
    order = np.argsort(table, kind="stable")
    pos = np.searchsorted(table[order], packed).clip(0, len(table) - 1)
    found = table[order][pos] == packed
    if not found.all():
        colour = tuple(int(c) for c in rgb[~found][0])
        raise DataError(f"{path}: colour {colour} is not in the colour table; add it (one 'R G B' a line, line i "
                        "= class i) or fix the label map")
    return order[pos].astype(np.int64)


def read_colors(path: Path) -> np.ndarray:
    """``[K, 3]`` int64 colours of ``colors.txt`` (one ``R G B`` a line, line i = class i)."""
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        colors = np.array(rows, dtype=np.int64)
    except ValueError:
        colors = np.zeros((0,))
    if colors.ndim != 2 or colors.shape[1] != 3 or not len(colors) or colors.min() < 0 or colors.max() > 255:
        raise DataError(f"{path}: expected one 'R G B' line (integers 0-255) per class")
    return colors
