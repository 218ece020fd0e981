"""Interventions: causal effects on gates and outputs, with the same hook hygiene as recording.

* Sketch on/off (claims G2, G5): every image and hole run twice, with and without its sketch;
  per gated channel, the change of the mean gate over hole cells. 2 forward passes per batch.
* Channel ablation: one gate channel forced to a value (0 by default) and the change of the
  output's hole L1. 1 + (number of channels) forward passes per batch.

Effects are per image, so images are the unit of inference: a t-test over images for p-values
(BH q-values across the family), and a bootstrap over images for 95% intervals.
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
from ..errors import ModelError, calling_model
from ..hooks import eval_mode, hooks_attached, site_attachers
from ..recording.context import BatchContext
from ..rundir.roles import has_role
from ..stats.significance import bh_qvalues, bootstrap_ci, group_t_test


class _HoleMeans:
    """A sink that keeps, per gated layer, the mean gate over hole cells of every image ``[B, C]``."""

    def __init__(self):
        self.ctx: BatchContext | None = None
        self.means: dict[str, torch.Tensor] = {}

    def for_layer(self, name: str):
        sink = self

        class _Sink:
            def gated(self, logits, gates):
                hole = sink.ctx.hole_at(tuple(gates.shape[-2:])).float()  # [B,1,h,w]
                count = hole.sum((2, 3)).clamp_min(1)
                sink.means[name] = (gates * hole).sum((2, 3)) / count

            def partial(self, *args, **kwargs):
                pass

        return _Sink()


def _batches(data, n: int, batch_size: int, device: torch.device):
    for start in range(0, n, batch_size):
        yield batch_to(collate([data[i] for i in range(start, min(start + batch_size, n))]), device)


def _hole_l1(image, hole, output) -> torch.Tensor:
    """Per image mean |error| over hole pixels of the composited output ``[B]``."""
    err = (output.clamp(0, 1) - image).abs() * hole
    return err.sum((1, 2, 3)) / (3 * hole.sum((1, 2, 3))).clamp_min(1)


def _effect_rows(per_image: np.ndarray, baseline: np.ndarray, intervened: np.ndarray, base: dict) -> dict:
    lo, hi = bootstrap_ci(per_image)
    return base | {"baseline": float(np.mean(baseline)), "intervened": float(np.mean(intervened)),
                   "delta": float(np.mean(per_image)), "ci_low": lo, "ci_high": hi,
                   "p_value": float(group_t_test(per_image[None])[0])}


def sketch_intervention(model: nn.Module, data, n: int = 64, batch_size: int = 16,
                        progress: bool = True) -> pd.DataFrame:
    """Per gated channel: mean gate over the hole with the sketch (baseline) and without it
    (intervened), their per-image difference ``delta = without - with``; plus one row
    (``layer='output'``) for the output's hole L1. Requires a model that accepts a sketch."""
    if not getattr(model, "accepts_sketch", False):
        raise ModelError(f"{type(model).__name__} takes no sketch: the sketch intervention does not apply (claim P5)")
    sites = [s for s in find_sites(model) if s.kind == "gated"]
    tap = _HoleMeans()
    with_sketch = {s.name: [] for s in sites}
    without = {s.name: [] for s in sites}
    l1_with, l1_without = [], []
    with eval_mode(model), hooks_attached(model, site_attachers(sites, tap.for_layer)), torch.inference_mode(), \
            calling_model(model, "sketch intervention"):
        for batch in tqdm(list(_batches(data, n, batch_size, model_device(model))), desc="sketch on/off", disable=not progress):
            image, hole, sketch = batch["image"], batch["hole"], batch["sketch"]
            for store, l1, given in ((with_sketch, l1_with, sketch), (without, l1_without, None)):
                tap.ctx = BatchContext(hole, given, batch["labels"], torch.zeros(len(image), dtype=torch.long, device=image.device), 1)
                out = model(image, hole, given)
                l1.append(_hole_l1(image, hole, out).cpu().numpy())
                for name in store:
                    store[name].append(tap.means[name].cpu().numpy())
    rows = []
    for s in sites:
        on, off = np.concatenate(with_sketch[s.name]), np.concatenate(without[s.name])  # [n, C]
        for c in range(on.shape[1]):
            rows.append(_effect_rows(off[:, c] - on[:, c], on[:, c], off[:, c],
                                     {"intervention": "sketch_off", "layer": s.name, "channel": c,
                                      "quantity": "gate_in_hole"}))
    on, off = np.concatenate(l1_with), np.concatenate(l1_without)
    rows.append(_effect_rows(off - on, on, off, {"intervention": "sketch_off", "layer": "output", "channel": -1,
                                                 "quantity": "hole_l1"}))
    frame = pd.DataFrame(rows)
    frame["q_value"] = bh_qvalues(frame.p_value.to_numpy())
    return frame


def ablation(model: nn.Module, data, channels: list[tuple[str, int]], n: int = 64, batch_size: int = 16,
             value: float = 0.0, use_sketch: bool | None = None, progress: bool = True) -> pd.DataFrame:
    """Force each gate ``(layer, channel)`` to ``value`` in turn; per channel the change of the
    output's hole L1 (``delta = ablated - intact``, positive = the channel helps), ranked."""
    sites = {s.name: s for s in find_sites(model) if s.kind == "gated"}
    unknown = [layer for layer, _ in channels if layer not in sites]
    if unknown:
        raise ModelError(f"not gated layers of this model: {sorted(set(unknown))}")
    use_sketch = bool(getattr(model, "accepts_sketch", False)) if use_sketch is None else use_sketch
    intact, ablated = [], {key: [] for key in channels}
    with eval_mode(model), torch.inference_mode(), calling_model(model, "ablation"):
        for batch in tqdm(list(_batches(data, n, batch_size, model_device(model))), desc="ablation", disable=not progress):
            image, hole = batch["image"], batch["hole"]
            sketch = batch["sketch"] if use_sketch else None
            intact.append(_hole_l1(image, hole, model(image, hole, sketch)).cpu().numpy())
            for layer, c in channels:
                site = sites[layer]
                with hooks_attached(model, [lambda: site.adapter.ablate(site.module, c, value)]):
                    ablated[(layer, c)].append(_hole_l1(image, hole, model(image, hole, sketch)).cpu().numpy())
    base = np.concatenate(intact)
    rows = []
    for (layer, c), parts in ablated.items():
        after = np.concatenate(parts)
        rows.append(_effect_rows(after - base, base, after, {"intervention": f"ablate={value:g}", "layer": layer,
                                                             "channel": c, "quantity": "hole_l1"}))
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["q_value"] = bh_qvalues(frame.p_value.to_numpy())
        frame = frame.sort_values("delta", ascending=False, ignore_index=True)
        frame["rank"] = np.arange(1, len(frame) + 1)
    return frame


def strongest_channels(channels: pd.DataFrame, labels: pd.DataFrame, per_role: int = 3) -> list[tuple[str, int]]:
    """The ``per_role`` strongest channels of each role family, by effect size (AUC distance from
    0.5 for hole/valid/sketch, the best label AUC for semantic, the weakest effect for none); the
    default selection for ablation and attribution."""
    best_label = labels.groupby(["layer", "channel"]).auc.max().rename("best_label_auc")
    frame = channels.join(best_label, on=["layer", "channel"])
    families = {
        "hole": (has_role(frame, "hole"), frame.auc_hole),
        "valid": (has_role(frame, "valid"), 0.5 - frame.auc_hole),
        "sketch": (has_role(frame, "sketch"), frame.auc_sketch),
        "semantic": (has_role(frame, "semantic"), frame.best_label_auc),
        "none": (has_role(frame, "none"), -(frame.auc_hole - 0.5).abs()),
    }
    picks = []
    for mask, score in families.values():
        for idx in score[mask].sort_values(ascending=False).index[:per_role]:
            key = (frame.at[idx, "layer"], int(frame.at[idx, "channel"]))
            if key not in picks:
                picks.append(key)
    return picks
