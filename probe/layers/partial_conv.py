"""Partial convolution (Liu et al., ECCV 2018) with NVIDIA's reference semantics, observable."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hookpoint import HookPoint


class PartialConv2d(nn.Conv2d):
    """A convolution over valid pixels only, with the hard mask-update rule.

    ``forward(x, valid) -> (out, new_valid)`` where ``valid`` is 1 on known pixels:

        count     = conv(valid, ones)                   # valid inputs under the window
        ratio     = window_size / (count + 1e-8)
        new_valid = clamp(count, 0, 1)
        out       = (conv(x * valid) - bias) * ratio * new_valid + bias * new_valid

    Args follow ``nn.Conv2d``. With ``multi_channel=False`` ``valid`` is ``[B, 1, H, W]`` and the
    window is ``k * k``; with ``multi_channel=True`` it is ``[B, in_channels, H, W]`` and the window
    is ``in_channels * k * k``. ``new_valid`` is always ``[B, 1, H', W']``: every output channel
    shares one mask (broadcast it if you need ``out_channels`` copies).

    Hook points: ``hook_valid`` (new_valid, ``[B, 1, H', W']``), ``hook_coverage``
    (``count / window_size`` before binarisation, ``[B, 1, H', W']``, claim P2) and
    ``hook_out`` (``[B, out_channels, H', W']``). No state is cached between calls.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, bias: bool = True, multi_channel: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, bias=bias)
        self.multi_channel = multi_channel
        mask_channels = in_channels if multi_channel else 1
        self.register_buffer("ones", torch.ones(1, mask_channels, *self.kernel_size), persistent=False)
        self.window_size = float(mask_channels * self.kernel_size[0] * self.kernel_size[1])
        self.hook_valid = HookPoint()
        self.hook_coverage = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C_in, H, W]``, ``valid`` ``[B, 1 or C_in, H, W]`` in {0, 1}."""
        expected = self.ones.shape[1]
        if valid.dim() != 4 or valid.shape[1] != expected or valid.shape[2:] != x.shape[2:]:
            raise ValueError(f"valid mask must be [B, {expected}, {x.shape[2]}, {x.shape[3]}], "
                             f"got {list(valid.shape)}")
        with torch.no_grad():  # counts in float32 at least: 1e-8 vanishes in float16
            count_dtype = torch.promote_types(x.dtype, torch.float32)
            count = F.conv2d(valid.to(count_dtype), self.ones.to(count_dtype), stride=self.stride,
                             padding=self.padding, dilation=self.dilation)
        self.hook_coverage(count / self.window_size)
        new_valid = self.hook_valid(count.clamp(0, 1).to(x.dtype))
        ratio = (self.window_size / (count + 1e-8) * count.clamp(0, 1)).to(x.dtype)
        raw = F.conv2d(x * valid, self.weight, None, self.stride, self.padding, self.dilation)
        out = raw * ratio
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1) * new_valid
        return self.hook_out(out), new_valid
