"""The run directory: the one contract between ``record`` and everything downstream.

    RUN/manifest.json       schema, versions, model, data spec, settings, layers, the sha256 of each
                            table (``table_sha256``); "complete"
    RUN/layers.parquet      one row per recorded layer
    RUN/channels.parquet    one row per (gated layer, channel)
    RUN/labels.parquet      one row per (gated layer, channel, label)
    RUN/evolution.parquet   one row per partial layer
    RUN/state.safetensors   the raw accumulators (exact merge of shards, recomputation)
    RUN/samples/            the first K images: inputs/*.npy and one .npy per (map kind, layer),
                            float16 [K, C, h, w], memory-mapped so one channel reads alone

Every file is written to a temporary name and renamed into place; ``complete`` turns true only
after the last one, so a run that stopped half way is never mistaken for a finished one. What is
read is checked (:mod:`probe.rundir.validate`): the manifest when the run is opened, each table
when it is first read, so an edited or damaged run is one :class:`~probe.errors.RunError` line.
"""
from __future__ import annotations

import io
import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunError
from .files import safe_layer_file
from .folder import aside_path
from .validate import check_digest, check_manifest, check_table

SCHEMA_VERSION = 2  # 2: tidy role columns, trivial-feature controls, AUC error bounds
TABLES = ("layers", "channels", "labels", "evolution")
MAP_KINDS = ("gate", "valid", "coverage")
INPUTS = ("image", "hole", "sketch", "labels", "output", "index")


class Run:
    """A recorded run: ``manifest`` (dict), tables as DataFrames (``layers``, ``channels``,
    ``labels``, ``evolution``, read lazily) and memory-mapped sample maps. ``check=False`` reads
    the tables as they are, unchecked: for tables you wrote yourself (planted test runs), not for
    runs gateprobe recorded."""

    def __init__(self, path: str | Path, check: bool = True):
        self.path, self.check = Path(path), check
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise RunError(f"{self.path}: not a run directory (no manifest.json); record one with `gateprobe record`"
                           f"{_kept_aside(self.path)}")
        try:
            self.manifest = json.loads(manifest_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RunError(f"{manifest_path}: corrupt manifest ({err}); record the run again") from None
        if not isinstance(self.manifest, dict):
            raise RunError(f"{manifest_path}: corrupt manifest (not a JSON object); record the run again")
        if self.manifest.get("schema_version") != SCHEMA_VERSION:
            raise RunError(f"{self.path}: schema version {self.manifest.get('schema_version')} is not "
                           f"{SCHEMA_VERSION}; record the run again with this gateprobe")
        if not self.manifest.get("complete"):
            raise RunError(f"{self.path}: run is incomplete (recording stopped before the end); "
                           f"finish it with `gateprobe record ... --resume` or record it again{_kept_aside(self.path)}")
        check_manifest(manifest_path, self.manifest)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["data"]["classes"])

    def _table(self, name: str) -> pd.DataFrame:
        """Table ``name`` from disk: one of :data:`TABLES` checked against the manifest's sha256 and
        its schema (:mod:`probe.rundir.validate`) unless ``check`` is off; any other only for being
        readable."""
        path = self.path / f"{name}.parquet"
        if not path.is_file():
            raise RunError(f"{path}: missing; the run is damaged, record it again")
        content = path.read_bytes()
        checked = self.check and name in TABLES
        if checked:
            check_digest(path, content, self.manifest)
        try:
            frame = pd.read_parquet(io.BytesIO(content))
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for damaged files
            raise RunError(f"{path}: unreadable table ({type(err).__name__}); the run is damaged, record it "
                           "again") from None
        if checked:
            check_table(path, name, frame, self.manifest, None if name == "layers" else self.layers)
        return frame

    def check_tables(self) -> Run:
        """Read and check every table of :data:`TABLES` now (they are cached); returns the run."""
        for name in TABLES:
            getattr(self, name)
        return self

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
        return self._table(name) if path.is_file() else None

    @property
    def n_samples(self) -> int:
        return int(self.manifest.get("samples", 0))

    def sample_input(self, name: str) -> np.ndarray:
        """``image`` ``[K,3,H,W]``, ``hole``/``sketch`` ``[K,1,H,W]``, ``labels`` ``[K,H,W]``,
        ``output`` ``[K,3,H,W]`` or ``index`` ``[K]`` of the stored samples (memory-mapped)."""
        if name not in INPUTS:
            raise RunError(f"unknown sample input {name!r}; choose one of {INPUTS}")
        return _load_array(self.path / "samples" / "inputs" / f"{name}.npy")

    def sample_map(self, layer: str, kind: str = "gate") -> np.ndarray:
        """The stored maps of ``layer``: ``[K, C, h, w]`` float16, memory-mapped (slice what you need).
        ``kind`` is ``gate`` (gated layers), ``valid`` or ``coverage`` (partial layers)."""
        if kind not in MAP_KINDS:
            raise RunError(f"unknown map kind {kind!r}; choose one of {MAP_KINDS}")
        path = self.path / "samples" / kind / safe_layer_file(layer)
        if not path.is_file():
            raise RunError(f"{self.name}: no {kind} maps stored for layer {layer!r}")
        return _load_array(path)

    def __repr__(self) -> str:
        m = self.manifest
        return f"Run({self.name!r}, model={m['model']['name']!r}, images={m['n_images']}, layers={len(m['layers'])})"


def _load_array(path: Path) -> np.ndarray:
    """A stored ``.npy`` array, memory-mapped; a missing or damaged file is a :class:`RunError`."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - numpy raises several types for damaged files
        raise RunError(f"{path}: unreadable sample array ({type(err).__name__}); the run is damaged, record it "
                       "again") from None


def _kept_aside(path: Path) -> str:
    """The hint that an interrupted ``--overwrite`` kept the previous run beside ``path`` ("" if not)."""
    aside = aside_path(path)
    if not (aside / "manifest.json").is_file():
        return ""
    return (f"; an interrupted --overwrite kept the run it was replacing in {aside}: to get it back, remove "
            f"{path} and rename {aside} to {path}")


def load_run(path: str | Path, check: bool = True) -> Run:
    """Open a complete run directory and check its manifest and tables (:class:`RunError` with the
    fix otherwise); ``Run(path)`` checks the manifest now and each table when first read.
    ``check=False``: the tables are read unchecked (see :class:`Run`)."""
    return Run(path, check=check).check_tables()
