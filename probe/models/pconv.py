"""The Liu et al. partial-convolution U-Net (the `pconv-scenes` model)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import PartialConv2d
from .registry import register_model

ENCODER_KERNELS = (7, 5, 5, 3, 3, 3, 3)
ENCODER_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8, 8, 8)


def encoder_depth(image_size: int, smallest: int = 2) -> int:
    """How many stride-2 encoder layers fit before the feature map falls below ``smallest``."""
    depth = 0
    while depth < len(ENCODER_KERNELS) and image_size // 2 ** (depth + 1) >= smallest:
        depth += 1
    return depth


class PConvUNet(nn.Module):
    """Partial-conv encoder (7x7, 5x5, 5x5, then 3x3, stride 2, ``enc_1..enc_D``) and a decoder
    (``dec_D..dec_1``) that upsamples features and valid masks (nearest), concatenates the skip
    features and skip masks, and applies a multi-channel partial convolution.

    ``forward(image, hole, sketch=None) -> [B, 3, H, W]`` (unclamped). No sketch input (claim P5).
    """

    accepts_sketch = False

    def __init__(self, width: int = 32, image_size: int = 64):
        super().__init__()
        self.depth = encoder_depth(image_size)
        channels = [3] + [width * m for m in ENCODER_WIDTH_MULTIPLIERS[: self.depth]]
        for i in range(1, self.depth + 1):
            k = ENCODER_KERNELS[i - 1]
            self.add_module(f"enc_{i}", PartialConv2d(channels[i - 1], channels[i], k, stride=2, padding=k // 2))
        for i in range(self.depth, 0, -1):
            out = channels[i - 1] if i > 1 else 3
            self.add_module(f"dec_{i}", PartialConv2d(channels[i] + channels[i - 1], out, 3, padding=1,
                                                      multi_channel=True))

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None = None) -> Tensor:
        """``image`` ``[B,3,H,W]`` in [0,1], ``hole`` ``[B,1,H,W]`` with 1 = hole."""
        if sketch is not None:
            raise ValueError("pconv-scenes takes no sketch (partial convolution has no input for one); "
                             "call it with sketch=None")
        size = 2 ** self.depth
        if image.shape[-1] % size or image.shape[-2] % size:
            raise ValueError(f"pconv-scenes needs H and W divisible by {size}, got {tuple(image.shape[-2:])}")
        valid = 1 - hole
        features, valids = [image * valid], [valid]
        for i in range(1, self.depth + 1):
            x, v = getattr(self, f"enc_{i}")(features[-1], valids[-1])
            x = F.relu(x)
            features.append(x)
            valids.append(v)
        x, v = features[-1], valids[-1]
        for i in range(self.depth, 0, -1):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            v = F.interpolate(v, scale_factor=2, mode="nearest")
            skip_x, skip_v = features[i - 1], valids[i - 1]
            x = torch.cat([x, skip_x], dim=1)
            v_multi = torch.cat([v.expand(-1, x.shape[1] - skip_x.shape[1], -1, -1),
                                 skip_v.expand(-1, skip_x.shape[1], -1, -1)], dim=1)
            x, v = getattr(self, f"dec_{i}")(x, v_multi)
            if i > 1:
                x = F.leaky_relu(x, 0.2)
        return x


register_model("pconv-scenes", PConvUNet, "Liu et al. partial-convolution U-Net (no sketch input)",
               width=32, image_size=64)
