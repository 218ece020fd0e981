"""``record``: run a model over data with the recorder attached and write a run directory."""
from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import find_sites
from .data import collate, parse_data
from .recorder import Recorder, calibrate_logit_ranges
from .stats.histograms import DEFAULT_BINS
from .run import (INPUTS, Run, prepare_run_dir, replaces_safely, safe_layer_file, write_array, write_manifest,
                  write_table, SCHEMA_VERSION)
from .progress import Checkpointer, clear_progress, open_for_resume, restore
from .tables import channel_and_label_tables, evolution_table, layer_table


def _model_info(model: nn.Module) -> dict:
    info = dict(getattr(model, "source_info", {"name": type(model).__name__, "source": "python object",
                                                "sha256": None}))
    info["class"] = type(model).__name__
    info["weights_sha256"] = weights_sha256(model)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["accepts_sketch"] = bool(getattr(model, "accepts_sketch", False))
    return info


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, dtypes, shapes and bytes): two runs of the same
    class and config with different weights (e.g. two random initialisations) never merge."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def checked_count(data, n: int | None, batch_size: int) -> int:
    """The number of images to record (``n``, default all of ``data``), with ``--n`` and
    ``--batch-size`` checked: one clear line for what is wrong."""
    n = len(data) if n is None else n
    if n < 1:
        raise ValueError("--n must be at least 1")
    if n > len(data):
        raise ValueError(f"--n {n} is larger than the data ({len(data)} images); lower --n or add images")
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    return n


def shard_range(n: int, shard: tuple[int, int] | None) -> range:
    """Positions ``[0, n)`` of shard ``(i, N)``: the i-th of N contiguous, disjoint slices."""
    if shard is None:
        return range(n)
    i, count = shard
    if not 0 <= i < count:
        raise ValueError(f"--shard {i}/{count}: I must satisfy 0 <= I < N")
    return range(i * n // count, (i + 1) * n // count)


@replaces_safely
def record(model: nn.Module, data, out: str | Path, n: int | None = None, batch_size: int = 16,
           samples: int = 8, seed: int | None = None, layers: str | None = None, sketch: bool | None = None,
           quantile: float = 0.005, bins: int = DEFAULT_BINS, calibration: int = 32, groups: int = 32,
           border: int = 2, shard: tuple[int, int] | None = None, overwrite: bool = False,
           resume: bool = False, checkpoint_every: int | None = None, checkpoint_seconds: float | None = 30.0,
           progress: bool = True, command: str = "") -> Run:
    """Record ``model`` over ``n`` images of ``data`` into the run directory ``out``.

    Args:
        model: follows ``model(image, hole, sketch=None)``; its gated/partial layers are found
            through :mod:`probe.adapters`.
        data: a dataset yielding gateprobe items, or a spec string (``scenes:64``, ``folder:PATH``).
        n: images to record (default: all of ``data``; Scenes strings default to 1024).
        samples: the first K images whose maps are stored in ``samples/``.
        seed: data seed for spec strings (Scenes default: the held-out seed 1).
        layers: comma-separated shell patterns of layer names to record (default: all).
        sketch: feed the sketch (default: whenever the model accepts one).
        quantile: the top quantile whose threshold defines the IoU (Network Dissection: 0.005).
        bins: gate histogram bins per channel (see :mod:`probe.stats.histograms`).
        calibration: the first images of the data (positions 0.., whatever the shard) on which
            each channel's logit range is measured before recording.
        groups: image groups (image position modulo ``groups``) for image-level tests and intervals.
        border: width, in cells of each layer, of the valid band around the hole.
        shard: ``(i, N)`` records only the i-th of N contiguous slices of the ``n`` images
            (merge the shard runs with :func:`probe.merge.merge_runs`).
        overwrite: replace a run already in ``out`` (kept, and put back, if recording fails).
        resume: continue the incomplete run in ``out`` from its last checkpoint (see
            :mod:`probe.progress`); the same model, data and settings are required.
        checkpoint_every, checkpoint_seconds: write a checkpoint for ``resume`` once that many
            batches or seconds have passed since the last one, whichever comes first (None or 0
            turns a trigger off; both off: no checkpoints).

    Returns the :class:`~probe.run.Run`.
    """
    if isinstance(data, str):
        data = parse_data(data, n=n, seed=seed)
    n = checked_count(data, n, batch_size)
    use_sketch = bool(getattr(model, "accepts_sketch", False)) if sketch is None else sketch
    if use_sketch and not getattr(model, "accepts_sketch", False):
        raise ValueError(f"{type(model).__name__} takes no sketch; record it without --sketch")
    positions = shard_range(n, shard)
    if not len(positions):
        raise ValueError(f"--shard {shard[0]}/{shard[1]} holds no images: {n} images split into {shard[1]} shards; "
                         f"use at most {n} shards")
    sites = find_sites(model, layers)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    settings = {"batch_size": batch_size, "samples": samples, "quantile": quantile,
                "bins": bins, "calibration": calibration, "groups": groups, "border": border,
                "sketch": use_sketch, "layers": layers}
    manifest = new_manifest(model, data, n, settings, sites,
                            [{"shard": list(shard) if shard else [0, 1], "start": positions.start,
                              "stop": positions.stop}], min(samples, len(positions)), command)
    resumed = open_for_resume(out, manifest) if resume else None
    if resumed is None:
        out = prepare_run_dir(out, overwrite)
        write_manifest(out, manifest)
    else:
        out, manifest = Path(out), resumed["manifest"]
    recorder = build_recorder(model, sites, data, n, settings)
    kept = SampleStore(manifest["samples"])
    start, image_size = positions.start, None
    if resumed is not None and resumed["progress"] is not None:
        start, image_size = restore(resumed["progress"], recorder, kept), resumed["progress"]["image_size"]
    todo = range(start, positions.stop)
    checkpoint = Checkpointer(out, recorder, kept, image_size, checkpoint_every, checkpoint_seconds)
    if todo and checkpoint.enabled:
        checkpoint.image_size = list(data[start]["image"].shape[-2:])
    with recorder, tqdm(total=len(positions), initial=start - positions.start, desc=f"record {out.name}",
                        unit="img", disable=not progress) as bar:
        size = record_batches(recorder, data, todo, batch_size, groups, use_sketch, kept,
                              on_batch=lambda done: (bar.update(len(done)), checkpoint(done)))
    manifest["image_size"] = size or image_size
    manifest.update(n_images=len(positions), layers=recorder.order)
    run = write_run(out, manifest, recorder.stats, kept)
    clear_progress(out)
    return run


def build_recorder(model: nn.Module, sites: list, data, n: int, settings: dict) -> Recorder:
    """A :class:`Recorder` for ``settings``, its gate bins calibrated on the first
    ``settings["calibration"]`` images of ``data`` (the same images, in the same batches of
    ``settings["batch_size"]``, for every shard)."""
    first, size = range(min(n, settings["calibration"])), settings["batch_size"]
    batches = [collate([data[i] for i in first[j:j + size]]) for j in range(0, len(first), size)]
    ranges = calibrate_logit_ranges(model, sites, batches, settings["sketch"])
    return Recorder(model, sites, len(data.classes), bins=settings["bins"], groups=settings["groups"],
                    border=settings["border"], logit_ranges=ranges)


def new_manifest(model: nn.Module, data, n: int, settings: dict, sites: list, shards: list[dict], samples: int,
                 command: str) -> dict:
    """The manifest of a run being recorded (``complete`` false, ``n_images`` 0 until written)."""
    return {
        "schema_version": SCHEMA_VERSION, "gateprobe_version": _version(), "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_info(model), "data": data.spec() | {"n": n}, "n_images": 0,
        "shards": shards, "settings": settings, "layers": [s.name for s in sites], "samples": samples,
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": command,
    }


def record_batches(recorder: Recorder, data, positions: range, batch_size: int, groups: int, use_sketch: bool,
                   kept: "SampleStore", on_batch=None) -> list[int]:
    """Feed ``recorder`` (inside its ``with``) the items of ``data`` at ``positions``, ``batch_size`` at a
    time: each image's group is its global position modulo ``groups``, the first ``kept.k`` images
    go into ``kept``, and ``on_batch(batch_positions)`` runs after each batch. Returns the image
    size ``[H, W]``. Shared by :func:`record` and the Ray workers of :mod:`probe.distributed`."""
    size = None
    for start in range(positions.start, positions.stop, batch_size):
        batch_positions = range(start, min(start + batch_size, positions.stop))
        batch = collate([data[i] for i in batch_positions])
        size = list(batch["image"].shape[-2:])
        group = torch.tensor([p % groups for p in batch_positions], dtype=torch.int64)
        want = max(0, kept.k - kept.taken)
        output = recorder.forward(batch["image"], batch["hole"], batch["sketch"] if use_sketch else None,
                                  batch["labels"], group, capture=min(want, len(batch_positions)))
        if want:
            kept.add(batch, output, recorder.captured, use_sketch)
        if on_batch is not None:
            on_batch(batch_positions)
    return size


def write_run(out: Path, manifest: dict, stats: dict, kept: "SampleStore") -> Run:
    """Write the tables, accumulator state and samples of ``stats`` (layer name -> layer stats, in
    ``manifest["layers"]`` order), then mark the manifest complete."""
    order, classes = manifest["layers"], manifest["data"]["classes"]
    frames = {"layers": layer_table(stats, order, tuple(manifest["image_size"]))}
    frames["channels"], frames["labels"] = channel_and_label_tables(stats, order, classes,
                                                                    manifest["settings"]["quantile"])
    frames["evolution"] = evolution_table(stats, order)
    for name, frame in frames.items():
        write_table(out / f"{name}.parquet", frame)
    write_state(out / "state.safetensors", stats)
    kept.write(out / "samples")
    manifest["complete"] = True
    write_manifest(out, manifest)
    return Run(out)


def write_state(path: Path, stats: dict) -> None:
    """Save every layer's accumulators (``LAYER/key`` tensors) with safetensors."""
    from safetensors.torch import save

    from .checkpoints import write_atomic

    flat = {f"{name}/{key}": value.contiguous() for name, s in stats.items() for key, value in s.state_dict().items()}
    write_atomic(path, save(flat))


class SampleStore:
    """The first ``k`` images of a run with every recorded map, kept in memory as float16."""

    def __init__(self, k: int):
        self.k, self.taken = k, 0
        self.inputs: dict[str, list] = {name: [] for name in INPUTS}
        self.maps: dict[tuple[str, str], list] = {}

    def add(self, batch: dict, output: torch.Tensor, captured: dict, use_sketch: bool) -> None:
        m = min(self.k - self.taken, len(batch["index"]))
        sketch = batch["sketch"][:m] if use_sketch else torch.zeros_like(batch["hole"][:m])
        arrays = {"image": batch["image"][:m].half(), "hole": batch["hole"][:m].half(), "sketch": sketch.half(),
                  "labels": batch["labels"][:m].short(), "output": output[:m].clamp(0, 1).half(),
                  "index": batch["index"][:m]}
        for name, tensor in arrays.items():
            self.inputs[name].append(tensor.numpy())
        for layer, maps in captured.items():
            for kind, tensor in maps.items():
                self.maps.setdefault((kind, layer), []).append(tensor[:m].numpy())
        self.taken += m

    def add_arrays(self, inputs: dict, maps: dict) -> None:
        """Append stored samples (``inputs`` name -> ``[k, ...]``, ``maps`` (kind, layer) -> array)."""
        m = min(self.k - self.taken, len(inputs["index"]))
        if m <= 0:
            return
        for name in INPUTS:
            self.inputs[name].append(np.asarray(inputs[name][:m]))
        for key, array in maps.items():
            self.maps.setdefault(key, []).append(np.asarray(array[:m]))
        self.taken += m

    def write(self, folder: Path) -> None:
        if not self.taken:
            return
        (folder / "inputs").mkdir(parents=True, exist_ok=True)
        for name, parts in self.inputs.items():
            write_array(folder / "inputs" / f"{name}.npy", np.concatenate(parts))
        for (kind, layer), parts in self.maps.items():
            (folder / kind).mkdir(exist_ok=True)
            write_array(folder / kind / safe_layer_file(layer), np.concatenate(parts))


def _version() -> str:
    from . import __version__

    return __version__
