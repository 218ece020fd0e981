"""Reading image files: RGB images as floats, label maps and masks as their stored values."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import DataError

# Modes whose pixels ``to_rgb_float`` reads directly; anything else (palette "P", "LA", "CMYK",
# "YCbCr", ...) is converted by PIL first when the caller asks for colours.
DIRECT_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "RGB", "RGBA")


def read_image(path: Path, convert: str | None = None) -> np.ndarray:
    """The pixels of ``path`` (``[H, W]`` or ``[H, W, C]``); with ``convert`` (``"RGB"`` or ``"L"``)
    images in other modes than :data:`DIRECT_MODES` are converted first, so a palette image gives
    colours, not palette indices. Label maps are read without ``convert``: their palette indices
    are the class ids."""
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


def to_rgb_float(array: np.ndarray, path: Path) -> np.ndarray:
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


def read_binary(path: Path, threshold: float, invert: bool = False) -> np.ndarray:
    """``[H, W]`` bool: pixels at or above ``threshold`` (0-1 of white), or below it with ``invert``."""
    mask = read_image(path, convert="L")
    mask = mask[..., 0] if mask.ndim == 3 else mask
    peak = 65535.0 if mask.dtype == np.uint16 else 1.0 if mask.dtype == bool else 255.0
    return (mask.astype(np.float32) / peak >= threshold) != invert
