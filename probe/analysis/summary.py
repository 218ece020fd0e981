"""Headline per-layer figures with bootstrap intervals over image groups."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..rundir.run import Run
from ..stats.regions import BORDER, FAR, HOLE_PLAIN, HOLE_SKETCH
from ..stats.significance import bootstrap_ci


def gated_layer_summary(run: Run) -> pd.DataFrame:
    """Per gated layer: the channel-averaged mean gate in the hole and on valid pixels, their gap
    (hole - valid) with a 95% bootstrap interval over image groups, and effective_channels."""
    from ..merge import load_stats

    stats = load_stats(run)
    rows = []
    for layer in run.layers.itertuples():
        if layer.kind != "gated":
            continue
        r = stats[layer.layer].regions
        sums, pixels = r.sums_.numpy(), r.pixels_.numpy().astype(np.float64)  # [G,4,C], [G,4]
        with np.errstate(invalid="ignore", divide="ignore"):
            hole = sums[:, [HOLE_SKETCH, HOLE_PLAIN]].sum(1) / pixels[:, [HOLE_SKETCH, HOLE_PLAIN]].sum(1)[:, None]
            valid = sums[:, [BORDER, FAR]].sum(1) / pixels[:, [BORDER, FAR]].sum(1)[:, None]
        gap = (hole - valid).mean(1)  # [G]
        weights = pixels.sum(1)
        lo, hi = bootstrap_ci(gap, weights)
        total = sums.sum(0)
        n = pixels.sum(0)
        rows.append({"layer": layer.layer, "depth": layer.depth,
                     "mean_hole": float((total[[0, 1]].sum(0) / n[[0, 1]].sum()).mean()),
                     "mean_valid": float((total[[2, 3]].sum(0) / n[[2, 3]].sum()).mean()),
                     "gap": float(np.nansum(gap * weights) / weights[np.isfinite(gap)].sum()),
                     "gap_ci_low": lo, "gap_ci_high": hi,
                     "effective_channels": layer.effective_channels})
    return pd.DataFrame(rows)


def partial_layer_summary(run: Run) -> pd.DataFrame:
    """Per partial layer: measured and predicted valid fraction, with a 95% bootstrap interval of
    the measured one over image groups, and the share of all-valid images."""
    rows = []
    for e in run.evolution.itertuples():
        values, weights = np.asarray(e.group_valid_fraction), np.asarray(e.group_images)
        lo, hi = bootstrap_ci(values, weights)
        rows.append({"layer": e.layer, "depth": e.depth, "valid_fraction": e.valid_fraction,
                     "ci_low": lo, "ci_high": hi, "valid_fraction_predicted": e.valid_fraction_predicted,
                     "all_valid_images": e.all_valid_images, "flipped": e.flipped, "leak": e.leak})
    return pd.DataFrame(rows)
