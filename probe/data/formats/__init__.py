"""The standard segmentation datasets, read in their official layouts (see each module), and
what every image format shares: ``--size`` resize and crop (:mod:`.transform`), label tables
with ignore ids (:mod:`.labels`, -1 = ignore in items), hole and sketch sources (:mod:`.holes`).
"""
from __future__ import annotations

from .ade20k import ADE20K
from .base import LabelledImages
from .cityscapes import Cityscapes
from .cocostuff import COCOStuff
from .labels import IGNORE, LabelTable
from .voc import VOCSegmentation

FORMATS: dict[str, type[LabelledImages]] = {c.kind: c for c in (VOCSegmentation, ADE20K, Cityscapes, COCOStuff)}

__all__ = [
           "ADE20K",
           "FORMATS",
           "IGNORE",
           "COCOStuff",
           "Cityscapes",
           "LabelTable",
           "LabelledImages",
           "VOCSegmentation",
]
