"""The four regions every pixel of a layer falls in (see :mod:`probe.recording.context` for how
they are brought to a layer's resolution): hole cells on a sketch stroke, hole cells off it, the
valid border band around the hole, and the far valid rest; and :func:`onehot` of region or label ids."""
import torch
from torch import Tensor

HOLE_SKETCH, HOLE_PLAIN, BORDER, FAR = range(4)
REGIONS = ("hole_sketch", "hole_plain", "border", "far")
HOLE = [HOLE_SKETCH, HOLE_PLAIN]
VALID = [BORDER, FAR]


def onehot(ids: Tensor, n: int) -> Tensor:
    """``[B, N]`` ids in ``[0, n)`` -> ``[B, N, n]`` float32 (a scatter: ``F.one_hot`` reads the ids'
    range back from the device to check it)."""
    return torch.zeros(*ids.shape, n, dtype=torch.float32, device=ids.device).scatter_(-1, ids.long().unsqueeze(-1), 1.0)
