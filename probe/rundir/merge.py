"""Merge shard runs into one run whose tables equal a single-machine run over the same images.

Counts and histograms add exactly (integers); sums are float64. Image groups are global image
positions modulo G, so per-group sums (and with them p-values and intervals) match too. Samples
come from the shards in order of their first image.

The IoU pass's counts (:mod:`probe.recording.iou_pass`) do not merge: each shard counted above its
own thresholds, not the merged run's, so the merged IoU is read from the label cells (``iou_exact``
false) and one note says so (:data:`CELL_IOU_NOTE`).
"""
from __future__ import annotations

import datetime as _dt
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import RunError, SettingsError
from ..stats.layer_stats import GatedLayerStats
from .folder import prepare_run_dir, replaces_safely, write_manifest
from .run import INPUTS, Run
from .samples import SampleStore
from .settings import identity_differences
from .state import load_stats
from .validate import DIGESTS, check_shards
from .write import write_run


CELL_IOU_NOTE = ("note: the merged run's IoUs are read from the label cells (approximate; labels.iou_exact is "
                 "false): each shard's IoU pass counted above its own thresholds, not the merged run's; for exact "
                 "IoUs record the shards as one Ray run (record --ray [--shards N]) or as one run")


def missing_spans(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    """The parts of ``[0, n)`` that the (sorted, disjoint) ``spans`` leave out."""
    missing, expected = [], 0
    for start, stop in spans:
        if start > expected:
            missing.append((expected, start))
        expected = max(expected, stop)
    if expected < n:
        missing.append((expected, n))
    return missing


def describe_missing(missing: list[tuple[int, int]], shards: list[dict], n: int) -> str:
    """``shards 1/4, 3/4 (images [16, 32), [48, 64) of 64)``: the missing part of a merge."""
    images = ", ".join(f"[{a}, {b})" for a, b in missing)
    counts = {s["shard"][1] for s in shards}
    if len(counts) == 1:
        (count,) = counts
        covered = {tuple(s["shard"]) for s in shards}
        names = [f"{i}/{count}" for i in range(count) if (i, count) not in covered]
        if names:
            return f"shard{'s' if len(names) > 1 else ''} {', '.join(names)} (images {images} of {n})"
    return f"images {images} of {n}"


def merge_runs(paths: list[str | Path], out: str | Path, overwrite: bool = False, allow_partial: bool = False) -> Run:
    """Merge the shard runs ``paths`` into ``out``; refuses runs of different models, data specs or
    settings, shards that overlap, and (unless ``allow_partial``) shards that leave images of the
    recording out. A partial merge says so in ``manifest["partial"]`` (the missing image spans).
    ``out`` may not be one of ``paths`` (it would be replaced while it is read)."""
    if not paths:
        raise SettingsError("merge needs at least one run")
    for path in paths:
        if os.path.realpath(path) == os.path.realpath(out):
            raise SettingsError(f"--out {out} is also one of the runs to merge ({path}); write the merged run to "
                                "another folder")
    return _merge(paths, out, overwrite=overwrite, allow_partial=allow_partial)


def _iou_counted(stats: dict) -> set[str]:
    """The gated layers of ``stats`` that hold IoU pass counts."""
    return {name for name, s in stats.items() if isinstance(s, GatedLayerStats) and s.iou is not None}


@replaces_safely
def _merge(paths: list[str | Path], out: str | Path, overwrite: bool, allow_partial: bool) -> Run:
    """:func:`merge_runs` once ``out`` is known not to be an input, holding its lock."""
    runs = [Run(p).check_tables() for p in paths]
    for run in runs:
        check_shards(run.path / "manifest.json", run.manifest.get("shards"))
    runs.sort(key=lambda r: r.manifest["shards"][0]["start"])
    for run in runs[1:]:
        differing = identity_differences(run.manifest, runs[0].manifest, extra=("image_size",))
        if differing:
            raise RunError(f"cannot merge {run.name} with {runs[0].name}: they differ in {', '.join(differing)}; "
                           "merge only shards of one model, data spec and settings")
    shards = [s for run in runs for s in run.manifest["shards"]]
    spans = sorted((s["start"], s["stop"]) for s in shards)
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise RunError(f"shards overlap: images [{a0}, {a1}) and [{b0}, {b1}); each image must be in one shard")
    total = runs[0].manifest.get("data", {}).get("n")
    if isinstance(total, int) and not isinstance(total, bool):
        missing = missing_spans(spans, total)
    else:  # a run without the recording's image count: nothing to compare the shards with
        missing, total = [], None
    if missing and not allow_partial:
        raise RunError(f"{describe_missing(missing, shards, total)} missing: the runs hold "
                       f"{sum(b - a for a, b in spans)} of the recording's {total} images; merge every shard, or pass "
                       "--allow-partial to write a run marked partial")
    stats = load_stats(runs[0])
    counted = _iou_counted(stats)
    for run in runs[1:]:
        more = load_stats(run)
        counted |= _iou_counted(more)
        for name, s in more.items():
            stats[name].merge(s)
    if counted - _iou_counted(stats):
        print(CELL_IOU_NOTE, file=sys.stderr)
    out = prepare_run_dir(out, overwrite)
    first = runs[0].manifest
    manifest = dict(first, complete=False, shards=shards, n_images=sum(r.manifest["n_images"] for r in runs),
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    merged_from=[str(r.path) for r in runs])
    manifest.pop("partial", None)
    manifest.pop(DIGESTS, None)  # the first shard's; write_run records the merged tables'
    if missing:
        manifest["partial"] = {"missing": [list(m) for m in missing], "of": total,
                               "description": describe_missing(missing, shards, total)}
    kept = SampleStore(first["settings"]["samples"])
    for run in runs:
        if run.n_samples:
            inputs = {name: run.sample_input(name) for name in INPUTS}
            maps = {(p.parent.name, p.stem): np.load(p, mmap_mode="r")
                    for p in sorted((run.path / "samples").glob("*/*.npy")) if p.parent.name != "inputs"}
            kept.add_arrays(inputs, maps)
    manifest["samples"] = kept.taken
    write_manifest(out, manifest)
    return write_run(out, manifest, stats, kept)
