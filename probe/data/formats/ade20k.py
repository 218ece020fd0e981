"""ADE20K SceneParsing (``ade20k:ROOT``, ROOT = ``ADEChallengeData2016``)::

    ROOT/images/SPLIT/NAME.jpg         SPLIT: training or validation (default)
    ROOT/annotations/SPLIT/NAME.png    0 = other (ignored), 1-150 the classes
    ROOT/objectInfo150.csv             columns Idx, Ratio, Train, Val, Name ("a;b": synonyms, the first is used)
"""
from __future__ import annotations

import csv
from functools import cached_property
from pathlib import Path

from ...errors import DataError
from .base import LabelledImages
from .labels import LabelTable
from .listing import paired


class ADE20K(LabelledImages):
    kind, default_split = "ade20k", "validation"

    def layout_hint(self) -> str:
        return "expected ADEChallengeData2016 with images/, annotations/ and objectInfo150.csv"

    def read_classes(self) -> list[str]:
        path = self.root_file("objectInfo150.csv")
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        try:
            named = {int(row["Idx"]): row["Name"].split(";")[0].strip() for row in rows}
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: expected the columns Idx, Ratio, Train, Val, Name with integer Idx") from None
        if sorted(named) != list(range(1, len(named) + 1)):
            raise DataError(f"{path}: Idx must run 1..{len(named)} without gaps")
        return [named[i] for i in sorted(named)]

    def entries(self) -> list[tuple[str, Path, Path]]:
        return paired(self.root / "images" / self.split, (".jpg",), self.root / "annotations" / self.split,
                      lambda name: f"{name}.png")

    @cached_property
    def _table(self) -> LabelTable:
        n = len(self.classes)
        return LabelTable.of({i: i - 1 for i in range(1, n + 1)}, ignore=[0],
                             hint=f"ADE20K annotations hold 0 (other) and 1-{n}")

    def table(self, label_path: Path) -> LabelTable:
        return self._table
