"""Sites: where a gate or a partial-convolution mask lives in a model.

:func:`find_sites` walks ``named_modules()`` and asks the class registry (:data:`ADAPTERS`) for
an adapter per module: gateprobe's own layers (:mod:`.own`), the third-party designs of public
inpainting code (:mod:`.thirdparty`), and whatever a user registers with :func:`register_adapter`.
"""
from . import own  # noqa: F401  (registers the adapters of gateprobe's own layers)
from .base import ADAPTERS, GatedAdapter, PartialAdapter, Site, adapter_for, conv_geometry, find_sites, register_adapter
from .thirdparty import (
                   MaskConvPartialAdapter,
                   NvidiaPartialConv2dAdapter,
                   SigmoidModuleGateAdapter,
                   SplitGateAdapter,
                   TuplePartialAdapter,
                   window_count,
)

__all__ = ["ADAPTERS", "GatedAdapter", "MaskConvPartialAdapter", "NvidiaPartialConv2dAdapter", "PartialAdapter",
           "SigmoidModuleGateAdapter", "Site", "SplitGateAdapter", "TuplePartialAdapter", "adapter_for",
           "conv_geometry", "find_sites", "register_adapter", "window_count"]
