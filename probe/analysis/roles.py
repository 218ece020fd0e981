"""Channel roles: effect size (AUC distance from 0.5) backed by an image-level test.

A gated channel has role

* ``hole``   if ``auc_hole >= 0.5 + min_effect`` and ``q_hole < alpha`` (gate higher in holes),
* ``valid``  if ``auc_hole <= 0.5 - min_effect`` and ``q_hole < alpha`` (gate higher on known pixels),
* ``sketch`` if ``auc_sketch >= 0.5 + min_effect`` and ``q_sketch < alpha`` (inside the hole, higher
  on sketch strokes),
* ``semantic:<label>`` for its best label if that label's ``auc >= 0.5 + min_effect`` and its
  ``q_value < alpha`` (gate higher on that class than on the rest),

and ``none`` if it has none of them. A channel may carry several roles: ``role`` joins them with
``+`` in the order above (``hole+semantic:sky``). Defaults: ``min_effect = 0.2`` (AUC 0.7),
``alpha = 0.05``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MIN_EFFECT = 0.2
ALPHA = 0.05


def assign_roles(channels: pd.DataFrame, labels: pd.DataFrame, min_effect: float = MIN_EFFECT,
                 alpha: float = ALPHA) -> pd.Series:
    """The ``role`` of every row of ``channels`` (see module docstring), as a Series."""
    hi, lo = 0.5 + min_effect, 0.5 - min_effect
    parts = pd.DataFrame(index=channels.index)
    parts["hole"] = np.where((channels.auc_hole >= hi) & (channels.q_hole < alpha), "hole", "")
    parts["valid"] = np.where((channels.auc_hole <= lo) & (channels.q_hole < alpha), "valid", "")
    parts["sketch"] = np.where((channels.auc_sketch >= hi) & (channels.q_sketch < alpha), "sketch", "")
    semantic = labels[(labels.auc >= hi) & (labels.q_value < alpha)]
    best = semantic.sort_values("auc", ascending=False).drop_duplicates(["layer", "channel"])
    best_label = dict(zip(zip(best.layer, best.channel), "semantic:" + best.label))
    parts["semantic"] = [best_label.get(key, "") for key in zip(channels.layer, channels.channel)]
    roles = parts.apply(lambda row: "+".join(v for v in row if v), axis=1)
    return roles.replace("", "none")
