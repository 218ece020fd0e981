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
from .recorder import Recorder
from .run import (INPUTS, Run, prepare_run_dir, safe_layer_file, write_array, write_manifest, write_table,
                  SCHEMA_VERSION)
from .tables import channel_and_label_tables, evolution_table, layer_table

DEFAULTS = {"batch_size": 16, "samples": 8, "quantile": 0.005, "bins": 256, "logit_range": 12.0,
            "groups": 32, "border": 2}


def _model_info(model: nn.Module) -> dict:
    info = dict(getattr(model, "source_info", {"name": type(model).__name__, "source": "python object",
                                                "sha256": None}))
    info["class"] = type(model).__name__
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["accepts_sketch"] = bool(getattr(model, "accepts_sketch", False))
    return info


def record(model: nn.Module, data, out: str | Path, n: int | None = None, batch_size: int = 16,
           samples: int = 8, seed: int | None = None, layers: str | None = None, sketch: bool | None = None,
           quantile: float = 0.005, bins: int = 256, logit_range: float = 12.0, groups: int = 32,
           border: int = 2, overwrite: bool = False, progress: bool = True, command: str = "") -> Run:
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
        bins, logit_range: gate histogram binning (see :mod:`probe.stats.histograms`).
        groups: image groups for image-level tests and bootstrap intervals.
        border: width, in cells of each layer, of the valid band around the hole.

    Returns the :class:`~probe.run.Run`.
    """
    if isinstance(data, str):
        data = parse_data(data, n=n, seed=seed)
    n = len(data) if n is None else n
    if n < 1:
        raise ValueError("--n must be at least 1")
    if n > len(data):
        raise ValueError(f"--n {n} is larger than the data ({len(data)} images); lower --n or add images")
    if batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    use_sketch = bool(getattr(model, "accepts_sketch", False)) if sketch is None else sketch
    if use_sketch and not getattr(model, "accepts_sketch", False):
        raise ValueError(f"{type(model).__name__} takes no sketch; record it without --sketch")
    sites = find_sites(model, layers)
    classes = list(data.classes)
    out = prepare_run_dir(out, overwrite)
    settings = {"batch_size": batch_size, "samples": min(samples, n), "quantile": quantile, "bins": bins,
                "logit_range": logit_range, "groups": groups, "border": border, "sketch": use_sketch,
                "layers": layers}
    manifest = {
        "schema_version": SCHEMA_VERSION, "gateprobe_version": _version(), "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_info(model), "data": data.spec() | {"n": n}, "n_images": 0,
        "settings": settings, "layers": [s.name for s in sites], "samples": settings["samples"],
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": command,
    }
    write_manifest(out, manifest)

    recorder = Recorder(model, sites, len(classes), bins=bins, logit_range=logit_range, groups=groups, border=border)
    kept = _SampleStore(settings["samples"])
    image_size = None
    with recorder, tqdm(total=n, desc=f"record {out.name}", unit="img", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            positions = range(start, min(start + batch_size, n))
            batch = collate([data[i] for i in positions])
            image_size = tuple(batch["image"].shape[-2:])
            group = torch.tensor([p % groups for p in positions], dtype=torch.int64)
            want = max(0, kept.k - kept.taken)
            output = recorder.forward(batch["image"], batch["hole"], batch["sketch"] if use_sketch else None,
                                      batch["labels"], group, capture=min(want, len(positions)))
            if want:
                kept.add(batch, output, recorder.captured, use_sketch)
            bar.update(len(positions))

    frames = {"layers": layer_table(recorder.stats, recorder.order, image_size)}
    frames["channels"], frames["labels"] = channel_and_label_tables(recorder.stats, recorder.order, classes, quantile)
    frames["evolution"] = evolution_table(recorder.stats, recorder.order)
    for name, frame in frames.items():
        write_table(out / f"{name}.parquet", frame)
    _write_state(out, recorder)
    kept.write(out / "samples")
    manifest.update(n_images=n, complete=True, layers=recorder.order)
    write_manifest(out, manifest)
    return Run(out)


def _write_state(out: Path, recorder: Recorder) -> None:
    from safetensors.torch import save

    from .checkpoints import write_atomic

    flat = {f"{name}/{key}": value.contiguous() for name, s in recorder.stats.items()
            for key, value in s.state_dict().items()}
    write_atomic(out / "state.safetensors", save(flat))


class _SampleStore:
    """The first ``k`` images of a run with every recorded map, kept in memory as float16."""

    def __init__(self, k: int):
        self.k, self.taken = k, 0
        self.inputs: dict[str, list] = {name: [] for name in INPUTS}
        self.maps: dict[tuple[str, str], list] = {}

    def add(self, batch: dict, output: torch.Tensor, captured: dict, use_sketch: bool) -> None:
        m = min(self.k - self.taken, len(batch["index"]))
        self.inputs["image"].append(batch["image"][:m].half().numpy())
        self.inputs["hole"].append(batch["hole"][:m].half().numpy())
        sketch = batch["sketch"][:m] if use_sketch else torch.zeros_like(batch["hole"][:m])
        self.inputs["sketch"].append(sketch.half().numpy())
        self.inputs["labels"].append(batch["labels"][:m].short().numpy())
        self.inputs["output"].append(output[:m].clamp(0, 1).half().numpy())
        self.inputs["index"].append(batch["index"][:m].numpy())
        for layer, maps in captured.items():
            for kind, tensor in maps.items():
                self.maps.setdefault((kind, layer), []).append(tensor[:m].numpy())
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
