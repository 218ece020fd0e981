"""Cityscapes fine annotations (``cityscapes:ROOT``)::

    ROOT/leftImg8bit/SPLIT/CITY/X_leftImg8bit.png      SPLIT: train, val (default), test
    ROOT/gtFine/SPLIT/CITY/X_gtFine_labelTrainIds.png  train ids 0-18, 255 ignored; used when present
    ROOT/gtFine/SPLIT/CITY/X_gtFine_labelIds.png       otherwise: label ids mapped to the 19 train ids
                                                       by the official table, every other id ignored
"""
from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from .base import LabelledImages
from .labels import IGNORE, LabelTable

TRAIN_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                 "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                 "bicycle")
# label id -> train id of cityscapesScripts' labels.py, for the 19 evaluated classes
LABEL_TO_TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                  26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
TRAIN_IDS = LabelTable.of({i: i for i in range(len(TRAIN_CLASSES))}, ignore=[255],
                          hint="labelTrainIds maps hold 0-18 and 255")
LABEL_IDS = LabelTable.of(LABEL_TO_TRAIN, default=IGNORE)
IMAGE_SUFFIX, TRAIN_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png", "_gtFine_labelIds.png"


class Cityscapes(LabelledImages):
    kind, default_split = "cityscapes", "val"

    def layout_hint(self) -> str:
        return "expected leftImg8bit/SPLIT/CITY/ and gtFine/SPLIT/CITY/ inside ROOT"

    def read_classes(self) -> list[str]:
        return list(TRAIN_CLASSES)

    def entries(self) -> list[tuple[str, Path, Path]]:
        images = self.root / "leftImg8bit" / self.split
        if not images.is_dir():
            raise DataError(f"{images}: no such folder; {self.layout_hint()} (--split: train, val or test)")
        entries = []
        for image in sorted(images.glob(f"*/*{IMAGE_SUFFIX}")):
            name = image.name[: -len(IMAGE_SUFFIX)]
            folder = self.root / "gtFine" / self.split / image.parent.name
            label = folder / f"{name}{TRAIN_SUFFIX}"
            label = label if label.is_file() else folder / f"{name}{LABEL_SUFFIX}"
            if not label.is_file():
                raise DataError(f"{label}: missing, and no {name}{TRAIN_SUFFIX} either; add the gtFine maps of "
                                f"{image.name}")
            entries.append((name, image, label))
        return entries

    def table(self, label_path: Path) -> LabelTable:
        return TRAIN_IDS if label_path.name.endswith(TRAIN_SUFFIX) else LABEL_IDS
