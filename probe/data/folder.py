"""FolderDataset: a researcher's own labelled images on disk.

Layout::

    ROOT/images/NAME.png|jpg     RGB images (grayscale and RGBA are converted to RGB)
    ROOT/labels/NAME.png         class index per pixel (same size as the image)
    ROOT/masks/NAME.png          optional hole mask, white (>= threshold) = hole; soft (grey) masks
                                 are binarised at ``mask_threshold`` (0.5 of white by default)
    ROOT/classes.txt             one class name per line; line i names id i

Where no mask is given, a free-form hole is generated, seeded by (seed, position).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .masks import HOLE_AREA, hole_mask
from .sketch import make_item

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# Modes whose pixels ``_to_rgb_float`` reads directly; anything else (palette "P", "LA", "CMYK",
# "YCbCr", ...) is converted by PIL first when the caller asks for colours.
DIRECT_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA")


def _read_image(path: Path, convert: str | None = None) -> np.ndarray:
    """The pixels of ``path``; with ``convert`` (``"RGB"`` or ``"L"``) images in other modes than
    :data:`DIRECT_MODES` are converted first, so a palette image gives colours, not palette indices.
    Label maps are read without ``convert``: their palette indices are the class ids."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if convert and im.mode not in DIRECT_MODES:
                im = im.convert(convert)
            return np.asarray(im)
    except Exception as err:  # noqa: BLE001 - PIL raises many types for damaged files (OSError, SyntaxError,
        # ValueError, struct.error, DecompressionBombError...)
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err}); replace or remove the "
                        "file") from None


def _to_rgb_float(array: np.ndarray, path: Path) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1] from 8/16-bit gray, RGB or RGBA."""
    scale = 65535.0 if array.dtype == np.uint16 or array.max(initial=0) > 255 else 255.0
    if array.dtype == bool:
        array, scale = array.astype(np.uint8), 1.0
    array = array.astype(np.float32) / scale
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise DataError(f"{path}: expected a gray, RGB or RGBA image, got shape {array.shape}")
    return array[..., :3]


class FolderDataset(torch.utils.data.Dataset):
    """Items like :class:`~probe.data.scenes.Scenes`: ``image`` ``[3,H,W]``, ``hole`` ``[1,H,W]``,
    ``sketch`` ``[1,H,W]``, ``labels`` ``[H,W]`` int64, ``index``, plus ``name``."""

    def __init__(self, root: str | Path, seed: int = 0, hole_area: tuple[float, float] = HOLE_AREA,
                 mask_threshold: float = 0.5):
        self.root = Path(root)
        self.seed, self.hole_area, self.mask_threshold = seed, tuple(hole_area), mask_threshold
        if not 0 < mask_threshold <= 1:  # NaN fails too
            raise DataError(f"mask threshold {mask_threshold}: expected a value in (0, 1], the share of white from "
                            "which a mask pixel is hole (default 0.5)")
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder; expected images/, labels/ and classes.txt inside")
        classes_file = self.root / "classes.txt"
        if not classes_file.is_file():
            raise DataError(f"{classes_file}: missing; write one class name per line (line i names id i)")
        try:
            text = classes_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{classes_file}: not UTF-8 text ({err}); write one class name per line") from None
        self.classes = tuple(line.strip() for line in text.splitlines() if line.strip())
        if not self.classes:
            raise DataError(f"{classes_file}: no class names; write one class name per line")
        images = {p.stem: p for p in sorted((self.root / "images").glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
        if not images:
            raise DataError(f"{self.root / 'images'}: no .png/.jpg images found")
        labels = {p.stem: p for p in (self.root / "labels").glob("*.png")}
        missing = sorted(set(images) - set(labels))
        if missing:
            raise DataError(f"{len(missing)} image(s) without labels/NAME.png, e.g. {missing[:3]}; "
                            "add the label maps or remove those images")
        self.names = sorted(images)
        self.image_paths, self.label_paths = images, labels
        self.mask_paths = {p.stem: p for p in (self.root / "masks").glob("*.png")}

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        image = _to_rgb_float(_read_image(self.image_paths[name], convert="RGB"), self.image_paths[name])
        labels = _read_image(self.label_paths[name])
        if labels.ndim == 3:
            labels = labels[..., 0]
        if labels.dtype.kind not in "biu":
            raise DataError(f"{self.label_paths[name]}: label map has {labels.dtype} pixels; save class ids as an "
                            "8- or 16-bit gray (or palette) PNG")
        if labels.size and labels.min() < 0:
            raise DataError(f"{self.label_paths[name]}: negative label id {int(labels.min())}; class ids start at 0")
        if labels.shape != image.shape[:2]:
            raise DataError(f"{self.label_paths[name]}: label map is {labels.shape[1]}x{labels.shape[0]} but "
                            f"the image is {image.shape[1]}x{image.shape[0]}; they must match")
        if labels.max(initial=0) >= len(self.classes):
            raise DataError(f"{self.label_paths[name]}: label id {int(labels.max())} has no name in classes.txt "
                            f"({len(self.classes)} classes); add it there or fix the label map")
        return make_item(image, labels, self._hole(name, i, image.shape[:2]), i, name=name)

    def _hole(self, name: str, i: int, shape: tuple[int, int]) -> np.ndarray:
        path = self.mask_paths.get(name)
        if path is None:
            if shape[0] != shape[1]:
                raise DataError(f"{self.image_paths[name]}: generated holes need square images; "
                                f"provide masks/{name}.png")
            return hole_mask(np.random.default_rng([self.seed, i, 1]), shape[0], area=self.hole_area)
        mask = _read_image(path, convert="L")
        mask = mask[..., 0] if mask.ndim == 3 else mask
        if mask.shape != shape:
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{shape[1]}x{shape[0]}; they must match")
        peak = 65535.0 if mask.dtype == np.uint16 else 1.0 if mask.dtype == bool else 255.0
        return mask.astype(np.float32) / peak >= self.mask_threshold

    def spec(self) -> dict:
        return {"kind": "folder", "path": str(self.root.resolve()), "n": len(self), "seed": self.seed,
                "hole_area": list(self.hole_area), "mask_threshold": self.mask_threshold,
                "classes": list(self.classes)}
