"""Sketches: the edge map a user would draw inside the hole (DeepFill v2 trained with edges)."""
from __future__ import annotations

import numpy as np


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: pixels whose right or lower neighbour has another label (1 px lines)."""
    edges = np.zeros(labels.shape, bool)
    edges[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edges[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edges


def sketch_from_labels(labels: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The semantic boundaries of ``labels`` ``[H, W]`` kept inside ``hole`` ``[H, W]`` (bool)."""
    return label_boundaries(labels) & hole.astype(bool)


def make_item(image, labels, hole, index: int, sketch=None, **extra) -> dict:
    """The gateprobe item dict from numpy ``image`` ``[H, W, 3]`` float32, ``labels`` ``[H, W]`` and
    ``hole`` ``[H, W]`` bool: tensors ``image`` ``[3,H,W]``, ``hole``/``sketch`` ``[1,H,W]`` (the sketch
    given ``[H, W]`` bool, else the label boundaries inside the hole), ``labels`` ``[H,W]`` int64,
    plus ``index`` and ``extra``."""
    import torch

    sketch = sketch_from_labels(labels, hole) if sketch is None else sketch
    return {
        "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
        "hole": torch.from_numpy(hole[None].astype(np.float32)),
        "sketch": torch.from_numpy(sketch[None].astype(np.float32)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "index": index,
        **extra,
    }
