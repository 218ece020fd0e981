"""The partial-convolution U-Net of Liu et al. (ECCV 2018) as published by
naoto0804/pytorch-inpainting-with-partial-conv, re-implemented.

That repository is the most used PyTorch re-implementation of the paper. Its checkpoints
(``save_ckpt``) are dicts ``{"n_iter": int, "model": state_dict, "optimizer": ...}``; the state
dict's keys are ``enc_1.conv.input_conv.weight``, ``enc_1.conv.mask_conv.weight``,
``enc_2.bn.running_mean`` ... ``dec_1.conv.input_conv.bias``.

Architecture (``width`` = 64 for the published model, ``layer_size`` = 7): encoder
``enc_1..enc_7`` of stride-2 partial convolutions (7x7, 5x5, 5x5, then 3x3; 64, 128, 256, 512,
512, 512, 512 channels; batch norm from ``enc_2``; ReLU); decoder ``dec_7..dec_1``, each
up-sampling features and masks by 2 (nearest), concatenating the skip features and skip masks
and applying a 3x3 partial convolution (batch norm and LeakyReLU 0.2, except ``dec_1``: 3
channels, bias, no norm, no activation). 14 partial convolutions, each a :class:`PartialConv`
at ``enc_i.conv`` / ``dec_i.conv``.

Its partial convolution differs from NVIDIA's (:class:`probe.layers.PartialConv2d`):

* the mask has one channel per input channel (the image mask is 3-channel) and the valid count
  comes from ``mask_conv``, a full ``C_in -> C_out`` convolution whose weights are all ones,
  saved in the state dict, and never trained;
* normalisation: ``(conv(x * m) - b) / count + b`` (divided by the count, not scaled by
  ``window / count``), 0 where the count is 0;
* the new mask is ``[B, C_out, h, w]``, 1 where the count is positive.

Calling convention (:meth:`LiuPConvUNet.forward`): ``model(image, hole, sketch=None)`` with
``image`` ``[B,3,H,W]`` in [0, 1] and ``hole`` ``[B,1,H,W]`` (1 = hole). As its training code
does, the image is normalised with the ImageNet mean and standard deviation and multiplied by
the valid mask (``1 - hole``, repeated to 3 channels); the output is un-normalised back to
[0, 1] (not clamped, not composited). No sketch input: ``accepts_sketch`` is False. H and W must
be multiples of ``2 ** layer_size`` (128); other sizes are padded at the bottom and right by
reflection (replicate when an image is smaller than the pad) and the output is cropped back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...adapters import MaskConvPartialAdapter, register_adapter
from ...errors import CheckpointError, ModelError
from .loading import check_state_dict, first_keys, pad_to_multiple, read_checkpoint

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER = [(7, 1), (5, 2), (5, 4), (3, 8)]  # (kernel, width multiplier) of enc_1..enc_4; then (3, 8)


# ----------------------------------------------------------------------------- blocks
class PartialConv(nn.Module):
    """naoto0804's partial convolution: ``input_conv`` and the all-ones ``mask_conv``.

    ``forward(x, valid) -> (out, new_valid)`` with ``valid`` ``[B, C_in, H, W]`` (1 = valid) and
    ``new_valid`` ``[B, C_out, h, w]``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.input_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        self.mask_conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        nn.init.kaiming_normal_(self.input_conv.weight, a=0, mode="fan_in")
        if bias:
            nn.init.zeros_(self.input_conv.bias)
        nn.init.ones_(self.mask_conv.weight)
        self.mask_conv.weight.requires_grad_(False)

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        out = self.input_conv(x * valid)
        bias = self.input_conv.bias.view(1, -1, 1, 1) if self.input_conv.bias is not None else 0.0
        with torch.no_grad():
            count = self.mask_conv(valid)
        empty = count == 0
        out = ((out - bias) / count.masked_fill(empty, 1.0) + bias).masked_fill(empty, 0.0)
        return out, (~empty).to(out.dtype)


class PCBActiv(nn.Module):
    """Partial convolution (child ``conv``), optional batch norm (``bn``) and activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, bn: bool = True,
                 activation: str | None = "relu", bias: bool = False):
        super().__init__()
        self.conv = PartialConv(in_ch, out_ch, kernel, stride, kernel // 2, bias=bias)
        if bn:
            self.bn = nn.BatchNorm2d(out_ch)
        self.activation = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.2), None: nn.Identity()}[activation]

    def forward(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        x, valid = self.conv(x, valid)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return self.activation(x), valid


# ----------------------------------------------------------------------------- model
class LiuPConvUNet(nn.Module):
    """The partial-convolution U-Net in naoto0804's layout (``enc_1..enc_N``, ``dec_N..dec_1``)."""

    accepts_sketch = False

    def __init__(self, layer_size: int = 7, input_channels: int = 3, width: int = 64):
        super().__init__()
        if layer_size < 4:
            raise ModelError(f"layer_size must be at least 4 (7 published), got {layer_size}")
        self.layer_size, self.input_channels, self.width = layer_size, input_channels, width
        self.multiple = 2 ** layer_size
        channels = [input_channels]
        for i in range(1, layer_size + 1):
            kernel, mult = ENCODER[i - 1] if i <= len(ENCODER) else (3, 8)
            channels.append(width * mult)
            self.add_module(f"enc_{i}", PCBActiv(channels[i - 1], channels[i], kernel, 2, bn=i > 1))
        for i in range(layer_size, 1, -1):
            self.add_module(f"dec_{i}", PCBActiv(channels[i] + channels[i - 1], channels[i - 1], activation="leaky"))
        self.dec_1 = PCBActiv(channels[1] + input_channels, input_channels, bn=False, activation=None, bias=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def unet(self, x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """The repository's ``PConvUNet.forward``: normalised masked image and 3-channel valid
        mask -> (output, final mask)."""
        features, masks = [x], [valid]
        for i in range(1, self.layer_size + 1):
            x, valid = getattr(self, f"enc_{i}")(x, valid)
            features.append(x)
            masks.append(valid)
        for i in range(self.layer_size, 0, -1):
            x = torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), features[i - 1]], dim=1)
            valid = torch.cat([F.interpolate(valid, scale_factor=2.0, mode="nearest"), masks[i - 1]], dim=1)
            x, valid = getattr(self, f"dec_{i}")(x, valid)
        return x, valid

    def forward(self, image: Tensor, hole: Tensor, sketch: Tensor | None = None) -> Tensor:
        """``image`` ``[B,3,H,W]`` in [0,1], ``hole`` ``[B,1,H,W]`` (1 = hole) -> ``[B,3,H,W]`` in [0,1]."""
        if sketch is not None:
            raise ValueError("LiuPConvUNet takes no sketch (partial convolution has no input for one); "
                             "call it with sketch=None")
        height, width = image.shape[-2:]
        image, hole = pad_to_multiple(image, self.multiple), pad_to_multiple(hole, self.multiple)
        valid = (hole <= 0.5).to(image.dtype).expand(-1, self.input_channels, -1, -1)
        out, _ = self.unet((image - self.mean) / self.std * valid, valid)
        return (out * self.std + self.mean)[..., :height, :width]


# ----------------------------------------------------------------------------- loading
def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # absent from checkpoints of PyTorch < 0.4.1


def pconv_unet_from_state_dict(state: dict, source: str = "state dict") -> LiuPConvUNet:
    """Build a :class:`LiuPConvUNet` sized from ``state`` (depth, input channels, width) and load it."""
    first = state.get("enc_1.conv.input_conv.weight")
    if not isinstance(first, Tensor) or first.dim() != 4:
        raise CheckpointError(f"{source}: not a naoto0804 partial-convolution U-Net: no 'enc_1.conv.input_conv.weight'; "
                              f"keys: {first_keys(state)}")
    layer_size = 1
    while f"enc_{layer_size + 1}.conv.input_conv.weight" in state:
        layer_size += 1
    try:
        model = LiuPConvUNet(layer_size, input_channels=int(first.shape[1]), width=int(first.shape[0]))
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    optional = {k for k in model.state_dict() if _optional(k)}
    check_state_dict(model, state, f"{source} does not match naoto0804's PConvUNet (layer_size {layer_size}, "
                                   f"width {model.width})", optional)
    model.load_state_dict(state, strict=False)
    return model.eval()


def load_pconv_unet(path: str) -> LiuPConvUNet:
    """Load a naoto0804 checkpoint (``{"model": state_dict, ...}`` or a bare state dict); the loader
    behind ``gateprobe record --model pconv-unet:PATH.pth --trust-pickle``."""
    state = read_checkpoint(path, "model")
    return pconv_unet_from_state_dict(state, str(path))


register_adapter(PartialConv, MaskConvPartialAdapter(conv="input_conv", mask_conv="mask_conv"))

__all__ = ["LiuPConvUNet", "PCBActiv", "PartialConv", "load_pconv_unet", "pconv_unet_from_state_dict"]
