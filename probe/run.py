"""The run directory: the one contract between ``record`` and everything downstream.

    RUN/manifest.json       schema, versions, model, data spec, settings, layers; "complete"
    RUN/layers.parquet      one row per recorded layer
    RUN/channels.parquet    one row per (gated layer, channel)
    RUN/labels.parquet      one row per (gated layer, channel, label)
    RUN/evolution.parquet   one row per partial layer
    RUN/state.safetensors   the raw accumulators (exact merge of shards, recomputation)
    RUN/samples/            the first K images: inputs/*.npy and one .npy per (map kind, layer),
                            float16 [K, C, h, w], memory-mapped so one channel reads alone

Every file is written to a temporary name and renamed into place; ``complete`` turns true only
after the last one, so a run that stopped half way is never mistaken for a finished one.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from .checkpoints import write_atomic, write_json

SCHEMA_VERSION = 1
TABLES = ("layers", "channels", "labels", "evolution")
MAP_KINDS = ("gate", "valid", "coverage")
INPUTS = ("image", "hole", "sketch", "labels", "output", "index")


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


def write_table(path: Path, frame: pd.DataFrame) -> None:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomic(path, buffer.getvalue())


def write_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def safe_layer_file(layer: str) -> str:
    """File name of a layer's maps: the module path itself (dots kept), checked to stay inside."""
    if not layer or "/" in layer or "\\" in layer or layer.startswith("."):
        raise RunError(f"unsafe layer name {layer!r}")
    return f"{layer}.npy"


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out`` for a new run; refuse to clobber an existing run unless ``overwrite``."""
    out = Path(out)
    if (out / "manifest.json").exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a run; pass --overwrite to replace it or choose another --out")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a run directory; choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


class Run:
    """A recorded run: ``manifest`` (dict), tables as DataFrames (``layers``, ``channels``,
    ``labels``, ``evolution``, read lazily) and memory-mapped sample maps."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise RunError(f"{self.path}: not a run directory (no manifest.json); record one with `gateprobe record`")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise RunError(f"{manifest_path}: corrupt manifest ({err}); record the run again") from None
        if self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise RunError(f"{self.path}: schema version {self.manifest.get('schema_version')} is not "
                           f"{SCHEMA_VERSION}; record the run again with this gateprobe")
        if not self.manifest.get("complete"):
            raise RunError(f"{self.path}: run is incomplete (recording stopped before the end); "
                           "finish it with `gateprobe record ... --resume` or record it again")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["data"]["classes"])

    def _table(self, name: str) -> pd.DataFrame:
        path = self.path / f"{name}.parquet"
        if not path.is_file():
            raise RunError(f"{path}: missing; the run is damaged, record it again")
        return pd.read_parquet(path)

    @cached_property
    def layers(self) -> pd.DataFrame:
        return self._table("layers")

    @cached_property
    def channels(self) -> pd.DataFrame:
        return self._table("channels")

    @cached_property
    def labels(self) -> pd.DataFrame:
        return self._table("labels")

    @cached_property
    def evolution(self) -> pd.DataFrame:
        return self._table("evolution")

    def table(self, name: str) -> pd.DataFrame | None:
        """An optional table written by later analyses (``interventions``, ``attributions``...)."""
        path = self.path / f"{name}.parquet"
        return pd.read_parquet(path) if path.is_file() else None

    @property
    def n_samples(self) -> int:
        return int(self.manifest.get("samples", 0))

    def sample_input(self, name: str) -> np.ndarray:
        """``image`` ``[K,3,H,W]``, ``hole``/``sketch`` ``[K,1,H,W]``, ``labels`` ``[K,H,W]``,
        ``output`` ``[K,3,H,W]`` or ``index`` ``[K]`` of the stored samples (memory-mapped)."""
        if name not in INPUTS:
            raise RunError(f"unknown sample input {name!r}; choose one of {INPUTS}")
        return np.load(self.path / "samples" / "inputs" / f"{name}.npy", mmap_mode="r")

    def sample_map(self, layer: str, kind: str = "gate") -> np.ndarray:
        """The stored maps of ``layer``: ``[K, C, h, w]`` float16, memory-mapped (slice what you need).
        ``kind`` is ``gate`` (gated layers), ``valid`` or ``coverage`` (partial layers)."""
        if kind not in MAP_KINDS:
            raise RunError(f"unknown map kind {kind!r}; choose one of {MAP_KINDS}")
        path = self.path / "samples" / kind / safe_layer_file(layer)
        if not path.is_file():
            raise RunError(f"{self.name}: no {kind} maps stored for layer {layer!r}")
        return np.load(path, mmap_mode="r")

    def __repr__(self) -> str:
        m = self.manifest
        return f"Run({self.name!r}, model={m['model']['name']!r}, images={m['n_images']}, layers={len(m['layers'])})"


def load_run(path: str | Path) -> Run:
    """Open a complete run directory (raises :class:`RunError` with the fix otherwise)."""
    return Run(path)


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(out / "manifest.json", manifest)


def remove_temporaries(out: Path) -> None:
    for tmp in out.rglob(".*.tmp*"):
        os.unlink(tmp)
