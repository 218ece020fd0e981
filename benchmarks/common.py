"""Shared helpers for the benchmark scripts: pre-collated batches, models, timing, tables."""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from probe.data import Scenes, collate

ROOT = Path(__file__).resolve().parent.parent


def batches(n: int, batch_size: int, size: int = 64) -> list[dict]:
    """``n`` held-out Scenes items, collated in memory (data generation is not timed)."""
    data = Scenes(size=size, n=n, seed=1)
    return [collate([data[i] for i in range(s, min(s + batch_size, n))]) for s in range(0, n, batch_size)]


def shipped_or_random(name: str, registry: str):
    """The shipped checkpoint ``checkpoints/name`` if present, else a random-init ``registry`` model."""
    from probe.models.sources import resolve_model

    folder = ROOT / "checkpoints" / name
    if (folder / "card.json").is_file():
        return resolve_model(str(folder)), name
    return resolve_model(registry, random_init=True), f"{registry} (random init)"


def recorder_for(model, size: int = 64, like=None):
    """A Recorder with record()'s default statistics (calibrated 512-bin histograms, 32 image
    groups, border 2, sketch when the model takes one) over every gated/partial layer. With
    ``like`` (a recorder this function made for the same model and size), fresh accumulators with
    its calibrated binnings, without running the calibration pass again."""
    from probe.adapters import find_sites
    from probe.recording.loop import build_recorder
    from probe.recording.recorder import Recorder
    from probe.rundir.settings import RecordSettings
    from probe.stats.histograms import DEFAULT_BINS
    from probe.stats.layer_stats import GatedLayerStats

    settings = RecordSettings(calibration=32, sketch=bool(getattr(model, "accepts_sketch", False)), bins=DEFAULT_BINS,
                              groups=32, border=2, batch_size=16)
    if like is not None:
        binnings = {name: s.regions.binning for name, s in like.stats.items() if isinstance(s, GatedLayerStats)}
        return Recorder(model, like.sites, like.n_labels, settings, binnings=binnings, device=like.device)
    return build_recorder(model, find_sites(model), Scenes(size=size, n=32, seed=1), 32, settings)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(lo, hi, coverage)``: a distribution-free interval for the median of ``values`` (independent
    draws, as the pair ratios of interleaved repeats are taken to be). It is the pair of order
    statistics ``x(k)``, ``x(n + 1 - k)`` with the largest ``k`` whose coverage, ``1 - 2 P(Bin(n, 1/2)
    < k)``, is at least ``level``; with too few values for that, ``[min, max]`` and its coverage
    ``1 - 2^(1 - n)`` (0.94 for 5 values)."""
    ordered, n = sorted(values), len(values)
    below = [sum(math.comb(n, i) for i in range(k)) / 2 ** n for k in range(n // 2 + 2)]  # P(Bin < k)
    k = max([j for j in range(1, (n + 1) // 2 + 1) if 1 - 2 * below[j] >= level], default=1)
    return ordered[k - 1], ordered[n - k], 1 - 2 * below[k]


def ratio_row(name: str, numerators: list[float], denominators: list[float], target: str = "") -> dict:
    """The median of the pair ratios ``numerators[i] / denominators[i]``, their range, and the
    median's interval (:func:`median_interval`)."""
    ratios = [a / b for a, b in zip(numerators, denominators)]
    lo, hi, coverage = median_interval(ratios)
    return {"benchmark": name, "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "interval": (lo, hi, coverage), "target": target}


def print_table(rows: list[dict]) -> None:
    """One line a row: median, min, max, the median's interval where the row has one (with its
    coverage), and the target."""
    print(f"{'benchmark':<58} {'median':>8} {'min':>8} {'max':>8}  {'median interval':<22} target")
    for r in rows:
        lo, hi, coverage = r.get("interval") or (None, None, None)
        interval = f"{lo:.3f}-{hi:.3f} ({coverage:.0%})" if coverage is not None else ""
        print(f"{r['benchmark']:<58} {r['median']:8.3f} {r['min']:8.3f} {r['max']:8.3f}  {interval:<22} {r['target']}")


def torch_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
