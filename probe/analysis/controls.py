"""Controls for the verdicts on gated convolution: a claim about *learned* gates is a difference
between the trained model and a control, a random-init twin of the same architecture recorded on
the same data with the same settings (``gateprobe record --with-baseline``).

Intervals are percentile bootstraps over the units a measurement summarises (the channels of a
run for shares and medians of channel statistics, its layers for per-layer counts), resampled
independently in the trained run and in the baseline. They describe the uncertainty of one
checkpoint's measurement on this data, not the spread over training seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import RunError
from ..rundir.run import Run, load_run

N_BOOT = 2000
LEVEL = 0.95


def bootstrap_statistic(values: np.ndarray, statistic: Callable[[np.ndarray], float], n_boot: int = N_BOOT,
                        seed: int = 0) -> np.ndarray:
    """``statistic`` of ``n_boot`` resamples (with replacement) of the rows of ``values`` ``[N, ...]``."""
    values = np.asarray(values)
    if len(values) == 0:
        return np.full(n_boot, np.nan)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(n_boot, len(values)))
    return np.array([statistic(values[i]) for i in index])


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (NaN when there are none)."""
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return float("nan"), float("nan")
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compared(trained: np.ndarray, baseline: np.ndarray | None, statistic: Callable[[np.ndarray], float]) -> dict:
    """The trained value with its 95% interval (``value_ci``), the baseline value, their
    difference and the difference's 95% interval (``difference_ci``); NaN for the baseline's parts
    without one."""
    value = float(statistic(np.asarray(trained)))
    boot_trained = bootstrap_statistic(trained, statistic, seed=1)
    result = {"value": value, "value_ci": interval(boot_trained), "baseline": float("nan"),
              "difference": float("nan"), "difference_ci": (float("nan"), float("nan"))}
    if baseline is None:
        return result
    base = float(statistic(np.asarray(baseline)))
    difference_ci = interval(boot_trained - bootstrap_statistic(baseline, statistic, seed=2))
    return result | {"baseline": base, "difference": value - base, "difference_ci": difference_ci}


def exceeds(result: dict) -> bool:
    """Whether the interval of the difference lies above zero (the claimed direction)."""
    return bool(np.isfinite(result["difference"]) and result["difference_ci"][0] > 0)


class ShuffledLabels:
    """A label-shuffle null of a dataset: item ``i`` keeps its image, hole and sketch but takes the
    label map of another image (a random derangement, seed ``draw``) circularly shifted by a random
    offset, so labels keep their statistics and lose every relation to the gates."""

    def __init__(self, data, draw: int, n: int | None = None):
        self.data, self.draw = data, draw
        self.classes = list(data.classes)
        n = len(data) if n is None else n
        rng = np.random.default_rng(1000 + draw)
        self._source = (np.arange(n) + rng.integers(1, max(n, 2), size=n)) % n if n > 1 else np.zeros(1, int)
        self._shift = rng.integers(0, 1 << 16, size=(n, 2))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.data[i])
        labels = self.data[int(self._source[i])]["labels"]
        dy, dx = (int(s) for s in self._shift[i])
        item["labels"] = labels.roll((dy % labels.shape[0], dx % labels.shape[1]), dims=(0, 1))
        return item

    def spec(self) -> dict:
        return self.data.spec() | {"label_null": self.draw}


def label_null(model, run, draws: int, progress: bool = True):
    """Record ``model`` ``draws`` times over the run's data and settings with label-shuffled
    labels (:class:`ShuffledLabels`) and count the channels of each role family per draw; the
    temporary runs are deleted. Returns a frame with one row per (draw, family): ``channels``."""
    import shutil
    import tempfile

    import pandas as pd

    from ..data import dataset_from_spec
    from ..recording.loop import record
    from ..rundir.roles import has_role
    from ..rundir.settings import RecordSettings

    data = dataset_from_spec(run.manifest["data"])
    # roles read no IoU, so the nulls skip the IoU pass (a second forward at more than 8 labels)
    settings = RecordSettings.from_dict(run.manifest["settings"]).replace(samples=0, iou_pass="off")
    n = int(run.manifest["data"].get("n") or run.manifest["n_images"])
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix=".null-", dir=run.path))
    try:
        for draw in range(draws):
            null = record(model, ShuffledLabels(data, draw, n), scratch / f"draw{draw}", n=n, settings=settings,
                          progress=progress)
            rows += [{"draw": draw, "family": family, "channels": int(has_role(null.channels, family).sum())}
                     for family in ("hole", "valid", "sketch", "semantic")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return pd.DataFrame(rows)


def linked_baseline(run: Run) -> Run | None:
    """The baseline run that ``record --with-baseline`` linked in ``run``'s manifest, if it exists."""
    link = run.manifest.get("baseline")
    if not link:
        return None
    path = (run.path / link) if not Path(link).is_absolute() else Path(link)
    try:
        return load_run(path, check=run.check)  # checked as the run itself is
    except RunError:
        return None


def check_baseline(run: Run, baseline: Run) -> None:
    """Refuse (:class:`RunError`, one line) a ``baseline`` that is not a control of ``run``: the run
    itself, weights that are not a random initialisation, another architecture (model class,
    config, parameter count, recorded layers), other data or other record settings."""
    mine, theirs = run.manifest, baseline.manifest
    fix = "record the control with `gateprobe record ... --with-baseline` (or --random-init with the same settings)"
    if baseline.path.resolve() == run.path.resolve() or (
            theirs["model"].get("weights_sha256") == mine["model"].get("weights_sha256")):
        raise RunError(f"--baseline {baseline.name}: it is {run.name} itself (the same weights), not a control; {fix}")
    if theirs["model"].get("source") != "random-init":
        raise RunError(f"--baseline {baseline.name}: its weights are not a random initialisation (model source "
                       f"{theirs['model'].get('source')!r}); a control is the random-init twin; {fix}")
    model_keys = [k for k in ("class", "config", "parameters") if k in theirs["model"] and k in mine["model"]]
    differ = [k for k in model_keys if theirs["model"][k] != mine["model"][k]]
    if differ or theirs.get("layers") != mine.get("layers"):
        what = ", ".join(f"{k} {theirs['model'][k]!r} vs {mine['model'][k]!r}" for k in differ) or "other layers"
        raise RunError(f"--baseline {baseline.name}: another architecture than {run.name} ({what}); {fix}")
    for part, name in (("data", "data set"), ("settings", "record settings")):
        if theirs.get(part) != mine.get(part):
            keys = sorted(k for k in set(theirs.get(part) or {}) | set(mine.get(part) or {})
                          if (theirs.get(part) or {}).get(k) != (mine.get(part) or {}).get(k))
            raise RunError(f"--baseline {baseline.name}: another {name} than {run.name} (differs in "
                           f"{', '.join(keys)}); {fix}")
