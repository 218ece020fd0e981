"""Image-level significance: tests whose unit is a group of images, never a pixel.

Pixels of one image are strongly correlated, so a pixel-level test would call almost any
difference significant. The recorder keeps exact sums per *image group* (image position modulo
G, 32 by default); each group gives one independent estimate of an effect (e.g. mean gate inside
a label minus outside it), and a one-sample t-test across groups asks whether the effect is
zero. Benjamini-Hochberg turns the p-values of a family of tests into q-values.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def group_t_test(effects: np.ndarray) -> np.ndarray:
    """Two-sided one-sample t-test of zero mean along the last axis, ignoring NaN groups.

    ``effects`` ``[..., G]``. Returns p-values ``[...]``: NaN with fewer than 3 groups, 1 when
    every group is exactly 0, 0 when groups agree exactly on a non-zero effect.
    """
    valid = np.isfinite(effects)
    n = valid.sum(-1)
    x = np.where(valid, effects, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(-1) / n
        var = (np.where(valid, effects - mean[..., None], 0.0) ** 2).sum(-1) / (n - 1)
        t = mean / np.sqrt(var / n)
    p = 2 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1))
    p = np.where(var == 0, np.where(mean == 0, 1.0, 0.0), p)
    return np.where(n >= 3, p, np.nan)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of a family of p-values (any shape, NaN ignored and kept)."""
    p = np.asarray(p, dtype=np.float64)
    flat = p.ravel()
    q = np.full_like(flat, np.nan)
    ok = np.isfinite(flat)
    m = int(ok.sum())
    if m:
        order = np.argsort(flat[ok])
        ranked = flat[ok][order] * m / np.arange(1, m + 1)
        ranked = np.minimum.accumulate(ranked[::-1])[::-1]
        values = np.empty(m)
        values[order] = np.clip(ranked, 0, 1)
        q[ok] = values
    return q.reshape(p.shape)


def difference_effects(sums: np.ndarray, pixels: np.ndarray, inside: list[int], outside: list[int]) -> np.ndarray:
    """Per group, mean gate over the conditions ``inside`` minus over ``outside``.

    ``sums`` ``[G, K, C]``, ``pixels`` ``[G, K]``. Returns ``[C, G]`` (NaN where a side is empty).
    """
    s_in, n_in = sums[:, inside].sum(1), pixels[:, inside].sum(1)[:, None]
    s_out, n_out = sums[:, outside].sum(1), pixels[:, outside].sum(1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (s_in / n_in - s_out / n_out).T


def label_effects(sums: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Per group, mean gate inside each label minus outside it: ``[L, C, G]`` from
    ``sums`` ``[G, L, C]`` and ``pixels`` ``[G, L]``."""
    total_s, total_n = sums.sum(1, keepdims=True), pixels.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        inside = sums / pixels[..., None]
        outside = (total_s - sums) / (total_n - pixels)[..., None]
    return (inside - outside).transpose(1, 2, 0)


def bootstrap_ci(values: np.ndarray, weights: np.ndarray | None = None, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a (weighted) mean over groups ``values`` ``[G]``."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.ones_like(values) if weights is None else np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(values) & (weights > 0)
    values, weights = values[keep], weights[keep]
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    w = weights[idx]
    means = (values[idx] * w).sum(1) / w.sum(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def rank_influence(ranks_in: np.ndarray, pixels_in: np.ndarray, ranks_all: np.ndarray,
                   pixels_all: np.ndarray) -> np.ndarray:
    """Each image group's influence on ``mean rank inside - mean rank outside`` (the AUC minus 0.5
    when the ranks are the pooled CDF), from per-group sums ``[G, ...]`` of the ranks and pixels
    inside and over every pixel (broadcast): the linearisation of the two ratio estimates, whose
    sum of squares is the cluster-robust variance."""
    ranks_out, pixels_out = ranks_all - ranks_in, pixels_all - pixels_in
    n_in, n_out = pixels_in.sum(0), pixels_out.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m_in, m_out = ranks_in.sum(0) / n_in, ranks_out.sum(0) / n_out
        return (ranks_in - m_in * pixels_in) / n_in - (ranks_out - m_out * pixels_out) / n_out


def difference_interval(difference: np.ndarray, influence: np.ndarray, groups: int,
                        level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The ``level`` interval ``(low, high)`` of ``difference`` ``[...]`` from the per-group
    influences ``[G, ...]`` of its estimate over ``groups`` groups that hold data: half-width
    ``t(G - 1) * sqrt(G / (G - 1) * sum influence**2)`` (NaN with fewer than 3 groups)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(groups / (groups - 1) * (influence ** 2).sum(0)) if groups >= 3 else np.full(
            np.shape(difference), np.nan)
    half = stats.t.ppf(0.5 + level / 2, max(groups - 1, 1)) * se
    return difference - half, difference + half
