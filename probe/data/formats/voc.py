"""Pascal VOC 2012 segmentation (``voc:ROOT``, ROOT = ``VOCdevkit/VOC2012``)::

    ROOT/JPEGImages/NAME.jpg
    ROOT/SegmentationClass/NAME.png        palette PNG: index 0 background, 1-20 the classes, 255 void
    ROOT/ImageSets/Segmentation/SPLIT.txt  the names of a split (train, val, trainval; default val)

Void (255) is ignored. Label maps converted to RGB are read through the VOC colour map.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from .base import LabelledImages
from .labels import LabelTable

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOID = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """``[n, 3]`` the VOC palette: the bits of each index spread over R, G and B from the top bit."""
    colors = np.zeros((n, 3), np.int64)
    for i in range(n):
        c = i
        for shift in range(7, -1, -1):
            for channel in range(3):
                colors[i, channel] |= ((c >> channel) & 1) << shift
            c >>= 3
    return colors


class VOCSegmentation(LabelledImages):
    kind, default_split = "voc", "val"
    colors = voc_colormap()
    colour_hint = "use the palette PNGs of SegmentationClass/"
    _table = LabelTable.of({i: i for i in range(len(VOC_CLASSES))}, ignore=[VOID],
                           hint="VOC label maps hold 0-20 and 255 (void)")

    def layout_hint(self) -> str:
        return "expected the VOC2012 folder with JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/"

    def read_classes(self) -> list[str]:
        return list(VOC_CLASSES)

    def entries(self) -> list[tuple[str, Path, Path]]:
        listing = self.root / "ImageSets" / "Segmentation" / f"{self.split}.txt"
        if not listing.is_file():
            raise DataError(f"{listing}: missing; {self.layout_hint()} (--split names the list, default val)")
        names = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
        entries = [(n, self.root / "JPEGImages" / f"{n}.jpg", self.root / "SegmentationClass" / f"{n}.png")
                   for n in names]
        for _, image, label in entries:
            for path in (image, label):
                if not path.is_file():
                    raise DataError(f"{path}: missing but listed in {listing}; add it or remove the name from the list")
        return entries

    def table(self, label_path: Path) -> LabelTable:
        return self._table
