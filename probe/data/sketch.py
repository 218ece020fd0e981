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
