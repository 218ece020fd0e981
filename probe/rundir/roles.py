"""Channel roles: effect size (AUC distance from 0.5) backed by an image-level test.

With the rule's ``min_effect`` (default 0.2, i.e. AUC 0.7) and ``alpha`` (default 0.05), a gated
channel is

* ``is_hole``   if ``auc_hole >= 0.5 + min_effect`` and ``q_hole < alpha`` (gate higher in holes),
* ``is_valid``  if ``auc_hole <= 0.5 - min_effect`` and ``q_hole < alpha`` (higher on known pixels),
* ``is_sketch`` if ``auc_sketch >= 0.5 + min_effect`` and ``q_sketch < alpha`` (inside the hole,
  higher on sketch strokes),
* ``semantic_label`` = its best label among those with ``auc >= 0.5 + min_effect``,
  ``q_value < alpha``, ``auc >= max(trivial_auc, joint_trivial_auc) + trivial_margin`` (default
  0.05) and ``joint_difference_low > 0``: the gate is higher on that class than on the rest, *and*
  separates it better than the best single trivial input feature at the layer's resolution (mean
  colour, local variance, row, column; ``labels.trivial_auc``) and than all six together
  (``labels.joint_trivial_auc``, :mod:`probe.stats.joint`) by the margin, with the 95% image-group
  interval of ``auc - joint_trivial_auc`` above 0. Sky at the top of every image is found by the
  row alone, and yellow by R + G - 2B: that is position and colour, not semantics. A run without
  these controls (NaN) has no semantic channels (no control). ``""`` otherwise.

These tidy columns are what code reads. ``role`` is only for display: the roles joined with ``+``
in the order above (``hole+semantic:sky``), ``none`` when there is none. A class may be called
anything ("pothole", "sketchbook"): never parse ``role``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

ROLE_FLAGS = ("is_hole", "is_valid", "is_sketch")
ROLE_COLUMNS = (*ROLE_FLAGS, "semantic_label", "role")


@dataclass(frozen=True)
class RoleRule:
    """The thresholds that make a channel a hole / valid / sketch / semantic channel; the one
    definition that the tables, the claims and the figures share."""

    min_effect: float = 0.2
    alpha: float = 0.05
    trivial_margin: float = 0.05

    @property
    def high(self) -> float:
        """AUC at or above which a channel prefers the condition (0.7 by default)."""
        return 0.5 + self.min_effect

    @property
    def low(self) -> float:
        """AUC at or below which a channel prefers the opposite (0.3 by default)."""
        return 0.5 - self.min_effect

    def describe(self) -> str:
        return (f"effect AUC >= {self.high:.2g} and q < {self.alpha:g}; semantic also >= the trivial features' AUC "
                f"(best single and joint) + {self.trivial_margin:g}, the interval of the joint difference above 0")


DEFAULT_RULE = RoleRule()


def assign_roles(channels: pd.DataFrame, labels: pd.DataFrame, rule: RoleRule = DEFAULT_RULE) -> pd.DataFrame:
    """The role columns (:data:`ROLE_COLUMNS`) of every row of ``channels``, same index."""
    hole_test = channels.q_hole < rule.alpha
    roles = pd.DataFrame(index=channels.index)
    roles["is_hole"] = ((channels.auc_hole >= rule.high) & hole_test).to_numpy()
    roles["is_valid"] = ((channels.auc_hole <= rule.low) & hole_test).to_numpy()
    roles["is_sketch"] = ((channels.auc_sketch >= rule.high) & (channels.q_sketch < rule.alpha)).to_numpy()
    semantic = labels[(labels.auc >= rule.high) & (labels.q_value < rule.alpha) & beats_trivial(labels, rule)]
    best = semantic.sort_values("auc", ascending=False).drop_duplicates(["layer", "channel"])
    best_label = dict(zip(zip(best.layer, best.channel), best.label))
    roles["semantic_label"] = np.array([best_label.get(key, "") for key in zip(channels.layer, channels.channel)],
                                       dtype=object)
    roles["role"] = [role_text(*row) for row in roles.itertuples(index=False)]
    return roles


def beats_trivial(labels: pd.DataFrame, rule: RoleRule = DEFAULT_RULE) -> pd.Series:
    """Whether each row of ``labels`` separates its label better than the trivial features explain:
    by ``rule.trivial_margin`` over the best single one and over the joint baseline, with the joint
    difference's interval above 0. False where a control is missing (runs recorded before it)."""
    if not {"trivial_auc", "joint_trivial_auc", "joint_difference_low"} <= set(labels.columns):
        return pd.Series(False, index=labels.index)
    control = np.fmax(labels.trivial_auc, labels.joint_trivial_auc)
    return ((labels.auc >= control + rule.trivial_margin) & labels.trivial_auc.notna()
            & labels.joint_trivial_auc.notna() & (labels.joint_difference_low > 0))


def role_text(is_hole: bool, is_valid: bool, is_sketch: bool, semantic_label: str) -> str:
    """The display string of one channel's roles."""
    parts = [name for name, flag in (("hole", is_hole), ("valid", is_valid), ("sketch", is_sketch)) if flag]
    if semantic_label:
        parts.append(f"semantic:{semantic_label}")
    return "+".join(parts) or "none"


def role_family(channels: pd.DataFrame) -> pd.Series:
    """The first role of each channel (``hole``, ``valid``, ``sketch``, ``semantic`` or ``none``),
    read from the tidy columns."""
    family = pd.Series("none", index=channels.index, dtype=object)
    for name, present in reversed((("hole", channels.is_hole), ("valid", channels.is_valid),
                                   ("sketch", channels.is_sketch), ("semantic", channels.semantic_label != ""))):
        family[present.to_numpy(bool)] = name
    return family


def has_role(channels: pd.DataFrame, family: str) -> pd.Series:
    """Whether each channel has role ``family`` (``hole``, ``valid``, ``sketch``, ``semantic``, ``none``)."""
    if family == "semantic":
        return channels.semantic_label != ""
    if family == "none":
        return ~(channels.is_hole | channels.is_valid | channels.is_sketch | (channels.semantic_label != ""))
    return channels[f"is_{family}"].astype(bool)
