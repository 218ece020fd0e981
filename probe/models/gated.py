"""DeepFill v2 style coarse generator built from GatedConv2d (the `gated-scenes` model)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import GatedConv2d
from .registry import register_model


def _dilations(feature_size: int) -> list[int]:
    """DeepFill's 2, 4, 8, 16, keeping those whose taps still land inside the feature map."""
    return [d for d in (2, 4, 8, 16) if d < feature_size]


class GatedGenerator(nn.Module):
    """Coarse DeepFill v2 generator: two stride-2 downsamplings, dilated gated convolutions,
    a nearest-upsampling gated decoder and a plain convolution to RGB.

    Input: the image with holes zeroed, the hole mask and a sketch channel (zeros when absent),
    ``[B, 5, H, W]``. ``forward(image, hole, sketch=None) -> [B, 3, H, W]`` (unclamped).
    """

    accepts_sketch = True

    def __init__(self, width: int = 24, image_size: int = 64):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            GatedConv2d(5, w, 5),
            GatedConv2d(w, 2 * w, 3, stride=2),
            GatedConv2d(2 * w, 2 * w, 3),
            GatedConv2d(2 * w, 4 * w, 3, stride=2),
            GatedConv2d(4 * w, 4 * w, 3),
            GatedConv2d(4 * w, 4 * w, 3),
        )
        self.bottleneck = nn.Sequential(
            *[GatedConv2d(4 * w, 4 * w, 3, dilation=d) for d in _dilations(image_size // 4)],
            GatedConv2d(4 * w, 4 * w, 3),
            GatedConv2d(4 * w, 4 * w, 3),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            GatedConv2d(4 * w, 2 * w, 3),
            GatedConv2d(2 * w, 2 * w, 3),
            nn.Upsample(scale_factor=2, mode="nearest"),
            GatedConv2d(2 * w, w, 3),
            GatedConv2d(w, w // 2, 3),
        )
        self.to_rgb = nn.Conv2d(w // 2, 3, 3, padding=1)

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None = None) -> Tensor:
        """``image`` ``[B,3,H,W]`` in [0,1], ``hole`` ``[B,1,H,W]`` (1 = hole), ``sketch`` ``[B,1,H,W]``."""
        if image.shape[-1] % 4 or image.shape[-2] % 4:
            raise ValueError(f"gated-scenes needs H and W divisible by 4, got {tuple(image.shape[-2:])}")
        if sketch is None:
            sketch = torch.zeros_like(hole)
        x = torch.cat([image * (1 - hole), hole, sketch * hole], dim=1)
        return self.to_rgb(self.decoder(self.bottleneck(self.encoder(x))))


register_model("gated-scenes", GatedGenerator, "DeepFill v2 coarse generator of GatedConv2d (takes a sketch)",
               width=24, image_size=64)
