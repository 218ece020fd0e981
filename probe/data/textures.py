"""Real photo textures bundled with scikit-image (no network), prepared once per image size."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SOURCES = {"grass": "grass", "brick": "brick", "gravel": "gravel", "fur": "chelsea", "beans": "coffee"}


@lru_cache(maxsize=None)
def texture(name: str, image_size: int) -> np.ndarray:
    """A grayscale texture ``[T, T]`` float32, zero mean and unit std, scaled so that its pattern
    has the same number of repeats across an image of ``image_size`` pixels at any size."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    photo = getattr(skimage.data, SOURCES[name])()
    gray = rgb2gray(photo) if photo.ndim == 3 else photo / 255.0
    side = min(gray.shape)
    gray = gray[:side, :side]
    target = max(2 * image_size, 16)
    small = resize(gray, (target, target), anti_aliasing=True).astype(np.float32)
    return (small - small.mean()) / (small.std() + 1e-6)


def crop(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """A random ``[size, size]`` crop (possibly flipped) of the prepared texture ``name``."""
    tex = texture(name, size)
    y, x = rng.integers(0, tex.shape[0] - size + 1, size=2)
    patch = tex[y:y + size, x:x + size]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return patch
