"""COCO-Stuff 164k (``cocostuff:ROOT``)::

    ROOT/images/SPLIT/NAME.jpg                       SPLIT: val2017 (default) or train2017
    ROOT/stuffthingmaps_trainval2017/SPLIT/NAME.png  pixel value = class id - 1; 255 = unlabeled (ignored)
    ROOT/labels.txt                                  lines "ID: name" (0: unlabeled is not a class)
"""
from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path

from ...errors import DataError
from .base import LabelledImages
from .labels import LabelTable
from .listing import paired

UNLABELED = 255
_LINE = re.compile(r"^\s*(\d+)\s*:\s*(.+?)\s*$")


class COCOStuff(LabelledImages):
    kind, default_split = "cocostuff", "val2017"

    def layout_hint(self) -> str:
        return "expected COCO-Stuff with images/SPLIT/, stuffthingmaps_trainval2017/SPLIT/ and labels.txt"

    def read_classes(self) -> list[str]:
        path = self.root_file("labels.txt")
        named = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _LINE.match(line)
            if line.strip() and not match:
                raise DataError(f"{path}: line {line!r} is not 'ID: name'")
            if match and int(match[1]) > 0:
                named[int(match[1])] = match[2]
        if not named or max(named) > UNLABELED:
            raise DataError(f"{path}: expected class ids 1-{UNLABELED} in lines 'ID: name'")
        return [named.get(i, f"unused {i}") for i in range(1, max(named) + 1)]

    def entries(self) -> list[tuple[str, Path, Path]]:
        return paired(self.root / "images" / self.split, (".jpg",),
                      self.root / "stuffthingmaps_trainval2017" / self.split, lambda name: f"{name}.png")

    @cached_property
    def _table(self) -> LabelTable:
        n = len(self.classes)
        return LabelTable.of({i: i for i in range(n)}, ignore=[UNLABELED],
                             hint=f"COCO-Stuff maps hold 0-{n - 1} (class id - 1) and 255 (unlabeled)")

    def table(self, label_path: Path) -> LabelTable:
        return self._table
