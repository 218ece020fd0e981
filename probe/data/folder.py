"""FolderDataset: a researcher's own labelled images on disk.

Layout::

    ROOT/images/NAME.png|jpg     RGB images (grayscale and RGBA are converted to RGB); one file a name
    ROOT/labels/NAME.png         class index per pixel (same size as the image): gray or palette, or
                                 RGB colours listed in colors.txt
    ROOT/masks/NAME.png          optional hole mask, white (>= threshold) = hole; soft (grey) masks
                                 are binarised at ``mask_threshold`` (0.5 of white by default)
    ROOT/classes.txt             one class name per line; line i names id i
    ROOT/ignore.txt              optional: label ids to ignore, one a line
    ROOT/colors.txt              for RGB colour label maps: one ``R G B`` a line, line i = id i

Where no mask is given, a free-form hole is generated, seeded by (seed, position).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .formats.base import LabelledImages
from .formats.labels import LabelTable, read_colors
from .formats.listing import paired

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err}); write one entry per line") from None


class FolderDataset(LabelledImages):
    """A folder in the layout above; the items of :class:`~.formats.base.LabelledImages`."""

    kind = "folder"
    colour_hint = "list the colour of each id in colors.txt (one 'R G B' a line, line i = id i)"

    def layout_hint(self) -> str:
        return "expected images/, labels/ and classes.txt inside"

    def read_classes(self) -> list[str]:
        classes_file = self.root / "classes.txt"
        if not classes_file.is_file():
            raise DataError(f"{classes_file}: missing; write one class name per line (line i names id i)")
        classes = [line.strip() for line in _text(classes_file).splitlines() if line.strip()]
        if not classes:
            raise DataError(f"{classes_file}: no class names; write one class name per line")
        ignore_file, colors_file = self.root / "ignore.txt", self.root / "colors.txt"
        try:
            ignore = [int(v) for v in _text(ignore_file).split()] if ignore_file.is_file() else []
        except ValueError:
            ignore = [-1]
        if any(v < 0 for v in ignore):
            raise DataError(f"{ignore_file}: expected label ids (integers >= 0), one a line")
        self.colors = read_colors(colors_file) if colors_file.is_file() else None
        self._table = LabelTable.of({i: i for i in range(len(classes))}, ignore=ignore,
                                    hint=f"add its name to classes.txt ({len(classes)} classes) or the id to "
                                         "ignore.txt")
        return classes

    def entries(self) -> list:
        images = self.root / "images"
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in images.glob("*")):
            raise DataError(f"{images}: no .png/.jpg images found")
        self.mask_paths = {p.stem: p for p in (self.root / "masks").glob("*.png")}
        return paired(images, IMAGE_SUFFIXES, self.root / "labels", lambda name: f"{name}.png")

    def table(self, label_path: Path) -> LabelTable:
        return self._table

    def mask_path(self, name: str) -> Path | None:
        return self.mask_paths.get(name)
