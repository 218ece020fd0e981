"""Observable inpainting layers: every tensor worth recording passes through a HookPoint."""
from .gated_conv import GatedConv2d, same_padding
from .hookpoint import HookPoint
from .partial_conv import PartialConv2d

__all__ = ["GatedConv2d", "HookPoint", "PartialConv2d", "same_padding"]
