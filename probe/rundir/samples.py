"""The samples of a run: the first K images with every recorded map, stored as float16 ``.npy``
files under ``RUN/samples/`` (memory-mapped on reading, so one channel reads alone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .files import safe_layer_file, write_array
from .run import INPUTS


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
            self.inputs[name].append(tensor.cpu().numpy())
        for layer, maps in captured.items():
            for kind, tensor in maps.items():
                self.maps.setdefault((kind, layer), []).append(tensor[:m].cpu().numpy())
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
