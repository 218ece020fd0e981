"""Gated convolution (Yu et al., DeepFill v2, ICCV 2019), observable by design."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .hookpoint import HookPoint

ACTIVATIONS = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    None: nn.Identity,
}


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 for an odd kernel and any dilation."""
    return dilation * (kernel_size - 1) // 2


class GatedConv2d(nn.Module):
    """``out = act(feature(x)) * sigmoid(gate(x))``: a learned soft gate per channel and location.

    Args:
        in_channels, out_channels, kernel_size, stride, dilation: as ``nn.Conv2d``.
        padding: ``None`` keeps the size at stride 1 (``dilation * (k - 1) // 2``).
        activation: ``"elu"`` (DeepFill v2), ``"relu"``, ``"leaky_relu"`` or ``None`` (identity).

    Hook points (all ``[B, out_channels, H', W']``):
        ``hook_feature``: the activated features before gating;
        ``hook_gate``: the gate, ``sigmoid(gate(x))``, in (0, 1);
        ``hook_out``: the gated output.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, padding: int | None = None, activation: str | None = "elu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(map(str, ACTIVATIONS))}")
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        conv = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.feature = nn.Conv2d(in_channels, out_channels, **conv)
        self.gate = nn.Conv2d(in_channels, out_channels, **conv)
        self.activation = ACTIVATIONS[activation]()
        self.hook_feature = HookPoint()
        self.hook_gate = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, in_channels, H, W]`` -> ``[B, out_channels, H', W']``."""
        features = self.hook_feature(self.activation(self.feature(x)))
        gate = self.hook_gate(torch.sigmoid(self.gate(x)))
        return self.hook_out(features * gate)
