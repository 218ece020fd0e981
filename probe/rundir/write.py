"""Writing a finished run: its tables, its accumulator state, its samples, then the manifest
marked complete (the last file written, so a reader never takes a half-written run for a whole one)
with the sha256 of every table, so that a table edited afterwards is named as changed when read."""
from __future__ import annotations

from pathlib import Path

from .files import write_table
from .folder import write_manifest
from .run import Run
from .samples import SampleStore
from .state import STATE_FILE, write_state
from .tables import channel_and_label_tables, evolution_table, layer_table
from .validate import DIGESTS


def write_run(out: Path, manifest: dict, stats: dict, kept: SampleStore) -> Run:
    """Write the tables, accumulator state and samples of ``stats`` (layer name -> layer stats, in
    ``manifest["layers"]`` order), then mark the manifest complete."""
    order, classes = manifest["layers"], manifest["data"]["classes"]
    frames = {"layers": layer_table(stats, order, tuple(manifest["image_size"]))}
    frames["channels"], frames["labels"] = channel_and_label_tables(stats, order, classes,
                                                                    manifest["settings"]["quantile"])
    frames["evolution"] = evolution_table(stats, order)
    digests = {f"{name}.parquet": write_table(out / f"{name}.parquet", frame) for name, frame in frames.items()}
    write_state(out / STATE_FILE, stats)
    kept.write(out / "samples")
    manifest[DIGESTS] = digests
    manifest["complete"] = True
    write_manifest(out, manifest)
    return Run(out)
