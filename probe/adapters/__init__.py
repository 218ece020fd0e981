"""Sites: where a gate or a partial-convolution mask lives in a model.

:func:`find_sites` (and :func:`survey`, which also says what was not taken) walks
``named_modules()`` and asks the class registry (:data:`ADAPTERS`) for an adapter per module:
gateprobe's own layers (:mod:`.own`), the third-party designs of public inpainting code
(:mod:`.thirdparty`), and whatever a user registers with :func:`register_adapter`; one probe
pass (:mod:`.discovery`) finds the gates and mask updates of every other module.
"""
from . import own  # noqa: F401  (registers the adapters of gateprobe's own layers)
from .base import (ADAPTERS, FOUND_BY, GatedAdapter, PartialAdapter, Site, Survey, adapter_for, conv_geometry,
                   find_sites, register_adapter, survey)
from .discovery import DiscoveredAdapter, discover
from .thirdparty import (MaskConvPartialAdapter, NvidiaPartialConv2dAdapter, SigmoidModuleGateAdapter, SplitGateAdapter,
                         TuplePartialAdapter, window_count)

__all__ = ["ADAPTERS", "FOUND_BY", "DiscoveredAdapter", "GatedAdapter", "MaskConvPartialAdapter",
           "NvidiaPartialConv2dAdapter", "PartialAdapter", "SigmoidModuleGateAdapter", "Site", "SplitGateAdapter",
           "Survey", "TuplePartialAdapter", "adapter_for", "conv_geometry", "discover", "find_sites",
           "register_adapter", "survey", "window_count"]
