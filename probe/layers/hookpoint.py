"""HookPoint: an identity module that marks a tensor worth recording.

Modelled on TransformerLens: every tensor gateprobe may record passes through a
``HookPoint``, so a forward hook on it sees exactly that tensor, and its name in
``named_modules()`` (``encoder.0.hook_gate``) says where it lives.
"""
from torch import Tensor, nn


class HookPoint(nn.Module):
    """Identity: ``forward(x) -> x``. Attach forward hooks to observe ``x``."""

    def forward(self, x: Tensor) -> Tensor:
        return x
