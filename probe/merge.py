"""Merge shard runs into one run whose tables equal a single-machine run over the same images.

Counts and histograms add exactly (integers); sums are float64. Image groups are global image
positions modulo G, so per-group sums (and with them p-values and intervals) match too. Samples
come from the shards in order of their first image.
"""
from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np

from .adapters import Site
from .recorder import GatedLayerStats, PartialLayerStats
from .run import INPUTS, Run, RunError, prepare_run_dir, replaces_safely, write_manifest

MUST_MATCH = ("model", "data", "settings", "layers", "schema_version", "image_size")


def load_stats(run: Run) -> dict:
    """Rebuild the layer accumulators of ``run`` from its ``state.safetensors``."""
    from safetensors.torch import load_file

    state = load_file(run.path / "state.safetensors")
    settings = run.manifest["settings"]
    stats = {}
    for row in run.layers.itertuples():
        site = Site(row.layer, row.kind, None, None, channels=row.channels, kernel=row.kernel,
                    stride=row.stride, dilation=row.dilation)
        prefix = f"{row.layer}/"
        layer_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if row.kind == "gated":
            s = GatedLayerStats(site, len(run.classes), settings["bins"], settings["groups"])
        else:
            s = PartialLayerStats(site, settings["groups"])
        s.load_state_dict(layer_state)
        stats[row.layer] = s
    return stats


def _comparable(manifest: dict) -> dict:
    keep = {k: manifest.get(k) for k in MUST_MATCH}
    keep["model"] = {k: v for k, v in manifest["model"].items() if k in ("name", "sha256", "config", "class",
                                                                       "weights_sha256")}
    return keep


@replaces_safely
def merge_runs(paths: list[str | Path], out: str | Path, overwrite: bool = False) -> Run:
    """Merge the shard runs ``paths`` into ``out``; refuses runs of different models, data specs or
    settings, and shards that overlap."""
    from .record import SampleStore, write_run

    runs = sorted((Run(p) for p in paths), key=lambda r: r.manifest["shards"][0]["start"])
    if not runs:
        raise ValueError("merge needs at least one run")
    reference = _comparable(runs[0].manifest)
    for run in runs[1:]:
        mine = _comparable(run.manifest)
        differing = [k for k in MUST_MATCH if mine.get(k) != reference.get(k)]
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
