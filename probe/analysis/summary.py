"""Headline per-layer figures with bootstrap intervals over image groups."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..rundir.run import Run
from ..stats.significance import bootstrap_ci


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
