"""Crash safety of ``record``: periodic checkpoints of a run being recorded, and ``--resume``.

While :func:`probe.recording.loop.record` runs, every 30 seconds (``checkpoint_seconds``) and/or every
``checkpoint_every`` batches, whichever comes first, it writes ``RUN/progress.safetensors``: every
layer's accumulator state, the samples kept so far, and (in the file's metadata) the position
reached, the layer order and the image size. The file is written to a temporary name and renamed
into place, so it is always either the previous checkpoint or the new one, never a mix;
``RUN/progress.json`` beside it is a human-readable copy of the metadata (informational: resuming
reads only the safetensors file).
The manifest says ``"complete": false`` until the run's tables are written, so
:func:`probe.load_run` (and ``report``, ``serve``) refuse the run until then.

``record(..., resume=True)`` (``gateprobe record ... --resume``) on such a run checks that the
model (weights hash), data spec, settings, shard and layers are those the run was started with,
restores the checkpoint and continues at the batch boundary it reached; the finished tables equal
those of an uninterrupted run (same batches, same order of additions). Progress files are removed
once the run is complete.

During the IoU pass (:mod:`probe.recording.iou_pass`) the checkpoints go on: their ``position`` is
the end of the recording pass, ``iou_position`` the batch boundary the IoU pass reached, and the
state holds its counts so far; a resumed run continues the pass there (its thresholds are
recomputed from the restored state and must be the checkpoint's; else the pass starts again).
"""
from __future__ import annotations

import datetime as _dt
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import RunError
from ..rundir.files import write_atomic, write_json
from ..rundir.folder import remove_temporaries
from ..rundir.settings import identity_differences
from ..rundir.state import load_state_tensors, state_tensors

PROGRESS, PROGRESS_JSON = "progress.safetensors", "progress.json"
FORMAT = "gateprobe-progress/1"
def open_for_resume(out: str | Path, manifest: dict) -> dict | None:
    """The incomplete run in ``out`` that ``manifest`` (the new command's) continues.

    Returns ``{"manifest": on-disk manifest, "progress": checkpoint or None}``; None when ``out``
    holds no run (nothing to resume: record from the start). Raises :class:`RunError` for a
    complete run, or for a run started with another model, data, settings or shard."""
    out = Path(out)
    path = out / "manifest.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{out}: unreadable manifest ({err}); record the run again with --overwrite") from None
    if not isinstance(old, dict):
        raise RunError(f"{out}: corrupt manifest; record the run again with --overwrite")
    if old.get("complete"):
        raise RunError(f"{out}: the run is already complete; nothing to resume (use --overwrite to record it again)")
    differing = identity_differences(manifest, old, extra=("shards", "samples"))
    if differing:
        raise RunError(f"{out}: cannot resume: the run was started with different {', '.join(differing)}; "
                       "resume with the same --model, --data, --n and settings, or record again with --overwrite")
    remove_temporaries(out)
    return {"manifest": old, "progress": read_progress(out, old)}


def read_progress(out: Path, manifest: dict) -> dict | None:
    """The checkpoint in ``out`` (None when there is none yet); :class:`RunError` when unusable."""
    from safetensors import safe_open

    path = out / PROGRESS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        position = int(meta["position"])
        iou_position = int(meta["iou_position"]) if "iou_position" in meta else None
        order, image_size = json.loads(meta["order"]), json.loads(meta["image_size"])
        taken = int(meta["taken"])
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for bad bytes
        raise RunError(f"{path}: unreadable checkpoint ({type(err).__name__}: {err}); delete it to resume from the "
                       "start, or record again with --overwrite") from None
    span = manifest["shards"][0]
    batch = manifest["settings"]["batch_size"]

    def fits(at: int) -> bool:
        return span["start"] < at <= span["stop"] and (at == span["stop"] or (at - span["start"]) % batch == 0)

    if meta.get("format") != FORMAT or not fits(position) or (
            iou_position is not None and (position != span["stop"] or not fits(iou_position))):
        at = f"position {position}" + (f", IoU pass position {iou_position}," if iou_position is not None else "")
        raise RunError(f"{path}: checkpoint at {at} does not fit the run's images "
                       f"[{span['start']}, {span['stop']}) in batches of {batch}; delete it to resume from the start")
    return {"position": position, "iou_position": iou_position, "order": order, "image_size": image_size,
            "taken": taken, "tensors": tensors}


def restore(progress: dict, recorder, kept) -> int:
    """Load a checkpoint into ``recorder`` (its stats and layer order) and ``kept`` (the samples);
    returns the position to continue from."""
    tensors = progress["tensors"]
    load_state_tensors(recorder.stats, tensors, prefix="stats/")
    recorder.order[:] = progress["order"]
    kept.taken = progress["taken"]
    if kept.taken:
        for name in kept.inputs:
            kept.inputs[name] = [tensors[f"samples/inputs/{name}"].numpy()]
        kept.maps = {tuple(k[len("samples/maps/"):].split("/", 1)): [v.numpy()]
                     for k, v in tensors.items() if k.startswith("samples/maps/")}
    return progress["position"]


def write_progress(out: Path, recorder, kept, position: int, image_size, iou_position: int | None = None) -> None:
    """Atomically write the checkpoint of ``recorder`` and ``kept`` at ``position`` (and, during the
    IoU pass, at ``iou_position`` of that pass)."""
    from safetensors.torch import save

    tensors = {key: value.clone() for key, value in state_tensors(recorder.stats, prefix="stats/").items()}
    if kept.taken:
        for name, parts in kept.inputs.items():
            tensors[f"samples/inputs/{name}"] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
        for (kind, layer), parts in kept.maps.items():
            tensors[f"samples/maps/{kind}/{layer}"] = torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)))
    meta = {"format": FORMAT, "position": str(position), "order": json.dumps(list(recorder.order)),
            "image_size": json.dumps(image_size), "taken": str(kept.taken),
            "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if iou_position is not None:
        meta["iou_position"] = str(iou_position)
    write_atomic(out / PROGRESS, save(tensors, metadata=meta))
    write_json(out / PROGRESS_JSON, {k: meta[k] for k in ("format", "position", "iou_position", "taken", "written")
                                     if k in meta}
               | {"file": PROGRESS, "note": "informational; --resume reads progress.safetensors"})


def clear_progress(out: Path) -> None:
    for name in (PROGRESS, PROGRESS_JSON):
        (out / name).unlink(missing_ok=True)


class Checkpointer:
    """``on_batch`` callback of :func:`probe.recording.loop.record_batches` that writes a checkpoint once
    ``every`` batches have passed since the last one or ``seconds`` of wall time, whichever comes
    first (``None`` or 0 turns a trigger off; both off: never). The accumulators of a large model
    are tens of MB, so the default is time-based (30 s). After :meth:`iou_pass_of` the batches are
    the IoU pass's: the checkpoints hold the recording pass's end and the IoU pass's position."""

    def __init__(self, out: Path, recorder, kept, image_size, every: int | None = None,
                 seconds: float | None = 30.0):
        self.out, self.recorder, self.kept, self.image_size = out, recorder, kept, image_size
        self.every, self.seconds = every or 0, seconds or 0.0
        self.batches, self.last = 0, time.monotonic()
        self.recorded: int | None = None  # during the IoU pass: the recording pass's end

    @property
    def enabled(self) -> bool:
        return self.every > 0 or self.seconds > 0

    def iou_pass_of(self, stop: int) -> None:
        """The batches from now on are the IoU pass's, after a recording pass that ended at ``stop``."""
        self.recorded = stop

    def __call__(self, batch_positions: range) -> None:
        self.batches += 1
        due = (self.every > 0 and self.batches >= self.every) or (
            self.seconds > 0 and time.monotonic() - self.last >= self.seconds)
        if due:
            if self.recorded is None:
                write_progress(self.out, self.recorder, self.kept, batch_positions.stop, self.image_size)
            else:
                write_progress(self.out, self.recorder, self.kept, self.recorded, self.image_size,
                               iou_position=batch_positions.stop)
            self.batches, self.last = 0, time.monotonic()
