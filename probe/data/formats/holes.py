"""Where the holes (and user sketches) of an image dataset come from: ``--holes``, ``--sketches``.

* ``free`` (default): a free-form hole per image, seeded by (seed, position);
* ``box:FRACTION``: one random rectangle covering FRACTION of the image;
* ``folder:PATH``: PNG masks (e.g. the irregular-mask test sets of the partial-convolution
  paper), white = hole unless ``invert``; image i gets mask i mod M, resized nearest to the image.
  A folder in which no mask has both hole and valid pixels is refused: with it every hole statistic
  (``auc_hole``, ``p_hole``...) of every channel would be NaN.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError
from ..masks import HOLE_AREA, hole_mask
from .pixels import read_binary
from .transform import resize_nearest


class HoleSource:
    """``hole(i, shape)`` -> ``[h, w]`` bool hole of the image at position ``i``; ``spec()`` describes it."""

    def __init__(self, text: str | None = None, seed: int = 0, hole_area: tuple[float, float] = HOLE_AREA,
                 threshold: float = 0.5, invert: bool = False):
        self.text, self.seed, self.hole_area = text or "free", seed, tuple(hole_area)
        self.threshold, self.invert = threshold, invert
        kind, _, arg = self.text.partition(":")
        self.kind, self.files, self.fraction = kind, [], None
        if kind == "box":
            try:
                self.fraction = float(arg)
            except ValueError:
                self.fraction = -1.0
            if not 0 < self.fraction < 1:
                raise DataError(f"--holes {self.text!r}: the box fraction must be a number in (0, 1), e.g. box:0.25")
        elif kind == "folder" and arg:
            self.text = f"folder:{Path(arg).resolve()}"  # absolute, for workers elsewhere
            self.files = sorted(p for p in Path(arg).glob("*") if p.suffix.lower() == ".png")
            if not self.files:
                raise DataError(f"--holes {self.text!r}: no .png masks in {arg}; give a folder of PNG hole masks")
            self._check_informative()
        elif self.text != "free":
            raise DataError(f"--holes {self.text!r}: use free, box:FRACTION or folder:PATH")
        if invert and not self.files:
            raise DataError("--holes-invert applies to --holes folder:PATH masks only")

    def _check_informative(self) -> None:
        """Refuse mask files none of which has both a hole and valid pixels (read until one has)."""
        full, empty = [], []
        for path in self.files:
            mask = read_binary(path, self.threshold, self.invert)
            if mask.any() and not mask.all():
                return
            (full if mask.any() else empty).append(path.name)
        reading = f"white >= {self.threshold:g} = hole" if not self.invert else f"black (< {self.threshold:g}) = hole"
        groups = "; ".join(f"{len(names)} {what}: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
                           for what, names in (("all hole", full), ("without a hole", empty)) if names)
        raise DataError(f"--holes {self.text!r}: none of the {len(self.files)} masks has both hole and valid pixels "
                        f"({groups}; read as {reading}), so every hole statistic (auc_hole, p_hole...) would be NaN; "
                        "give masks with a hole inside valid pixels, or check --holes-invert and --mask-threshold")

    def hole(self, i: int, shape: tuple[int, int]) -> np.ndarray:
        if self.files:
            mask = read_binary(self.files[i % len(self.files)], self.threshold, self.invert)
            return resize_nearest(mask, shape)
        rng = np.random.default_rng([self.seed, i, 1])
        area = self.hole_area if self.fraction is None else (self.fraction, self.fraction)
        square = hole_mask(rng, min(shape), mode="free" if self.fraction is None else "rect", area=area)
        return resize_nearest(square, shape)  # stretched to non-square images

    def spec(self) -> dict:
        return {"holes": self.text, "holes_invert": self.invert, "hole_area": list(self.hole_area)}


def sketch_files(path: str | Path | None) -> dict[str, Path]:
    """``--sketches folder:PATH`` (or a plain PATH): stem -> sketch PNG (white = stroke)."""
    if path is None:
        return {}
    folder = Path(str(path).removeprefix("folder:"))
    files = {p.stem: p for p in folder.glob("*.png")}
    if not files:
        raise DataError(f"--sketches {str(path)!r}: no .png sketches in {folder}; give a folder of PNGs named like "
                        "the images")
    return files
