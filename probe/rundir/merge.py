"""Merge shard runs into one run whose tables equal a single-machine run over the same images.

Counts and histograms add exactly (integers); sums are float64. Image groups are global image
positions modulo G, so per-group sums (and with them p-values and intervals) match too. Samples
come from the shards in order of their first image.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from ..errors import RunError, SettingsError
from .folder import prepare_run_dir, replaces_safely, write_manifest
from .run import INPUTS, Run
from .samples import SampleStore
from .settings import identity_differences
from .state import load_stats
from .write import write_run


@replaces_safely
def merge_runs(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Run:
    """Merge the shard runs ``paths`` into ``out``; refuses runs of different models, data specs or
    settings, and shards that overlap."""
    runs = sorted((Run(p) for p in paths), key=lambda r: r.manifest["shards"][0]["start"])
    if not runs:
        raise SettingsError("merge needs at least one run")
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
    stats = load_stats(runs[0])
    for run in runs[1:]:
        for name, s in load_stats(run).items():
            stats[name].merge(s)
    out = prepare_run_dir(out, overwrite)
    first = runs[0].manifest
    manifest = dict(first, complete=False, shards=shards, n_images=sum(r.manifest["n_images"] for r in runs),
                    created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    merged_from=[str(r.path) for r in runs])
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
