"""Attribution of a gate channel to the input groups (image RGB, hole mask, sketch) with captum.

Target: the channel's mean gate over the hole cells of the layer (the hole fixed at the image's
real hole, so the target region does not move along the path). Method: Integrated Gradients
with one baseline per input group:

* image  -> the image's own mean colour everywhere (keeps brightness, removes every structure),
* hole   -> zeros (nothing missing),
* sketch -> zeros (no strokes).

Each group's attribution is the sum of its elements' attributions, averaged over images; IG's
completeness makes the three sum to f(input) - f(baseline), reported as ``convergence_delta``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ..adapters import find_sites
from ..data import collate
from ..devices import batch_to, model_device
from ..errors import calling_model
from ..hooks import eval_mode, hooks_attached

GROUPS = ("image", "hole", "sketch")


def attribute_channels(model: nn.Module, data, channels: list[tuple[str, int]], n: int = 8,
                       steps: int = 16, progress: bool = True) -> pd.DataFrame:
    """Integrated-gradients attribution of each ``(layer, channel)``'s mean gate over the hole to
    the input groups. Returns one row per (layer, channel, group): ``attribution`` (mean over
    images), ``share`` (|attribution| / sum of |attributions| of the channel), ``target``,
    ``convergence_delta``. Costs ``steps`` forward+backward passes per image and channel."""
    from captum.attr import IntegratedGradients

    sites = {s.name: s for s in find_sites(model) if s.kind == "gated"}
    batch = batch_to(collate([data[i] for i in range(n)]), model_device(model))
    image, hole, sketch = batch["image"], batch["hole"], batch["sketch"]
    use_sketch = bool(getattr(model, "accepts_sketch", False))
    rows = []
    with eval_mode(model):
        for layer, channel in tqdm(channels, desc="attribution", disable=not progress):
            site = sites[layer]
            captured = {}

            class _Sink:
                def gated(self, logits, gates):
                    captured["gates"] = gates

            def target(img, hl, sk):
                out_hole = hole.repeat(img.shape[0] // hole.shape[0], 1, 1, 1)
                model(img, hl, sk if use_sketch else None)
                gates = captured["gates"][:, channel:channel + 1]
                cells = torch.nn.functional.adaptive_avg_pool2d(out_hole, gates.shape[-2:]) >= 0.5
                return (gates * cells).sum((1, 2, 3)) / cells.sum((1, 2, 3)).clamp_min(1)

            with hooks_attached(model, [lambda: site.adapter.attach(site.module, _Sink())]), \
                    calling_model(model, "attribution"):
                baselines = (image.mean((2, 3), keepdim=True).expand_as(image).contiguous(),
                             torch.zeros_like(hole), torch.zeros_like(sketch))
                ig = IntegratedGradients(target)
                attributions, delta = ig.attribute((image, hole, sketch), baselines=baselines, n_steps=steps,
                                                   internal_batch_size=n * 4, return_convergence_delta=True)
                with torch.no_grad():
                    value = target(image, hole, sketch).mean().item()
            sums = [a.sum((1, 2, 3)).detach().cpu().numpy() for a in attributions]
            total = sum(np.abs(s.mean()) for s in sums) or 1.0
            for group, s in zip(GROUPS, sums):
                rows.append({"layer": layer, "channel": channel, "group": group, "attribution": float(s.mean()),
                             "share": float(abs(s.mean()) / total), "target": value,
                             "convergence_delta": float(delta.abs().mean())})
    return pd.DataFrame(rows)
