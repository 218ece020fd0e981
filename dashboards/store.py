"""Cached loaders over the run directories that the explorer serves.

:class:`RunStore` lists the complete runs directly under one folder (or the folder itself when it
is a run), keeps the reason why every other entry is skipped, and hands out :class:`RunView`
objects: a :class:`probe.Run` plus small caches of what the pages ask for again and again
(one layer's tables, one sample's maps, the hole at a layer's resolution). Nothing here runs at
import time; the store scans when :func:`dashboards.app.create_app` (or the overview) asks.

Every name that comes from a URL or a callback is looked up in these tables -- never joined into
a path -- so the explorer can only show runs under its folder, and only their recorded layers.
The live page's model is rebuilt in :mod:`dashboards.live`.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probe.errors import RunError
from probe.rundir.run import TABLES, load_run

OPTIONAL_TABLES = ("interventions", "ablation", "attributions", "embedding")  # from `gateprobe analyze`
NON_STATISTICS = {"layer", "channel", "role", "label", "label_id"}


class _LRU:
    """A small thread-safe least-recently-used cache of computed values."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key, compute):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class RunView:
    """One served run: its tables, layer lists and cached slices of its sample maps."""

    def __init__(self, run):
        self.run = run
        self.name = run.name
        self.manifest = run.manifest
        self.classes = run.classes
        self.n_samples = run.n_samples
        layers = run.layers.sort_values("depth").reset_index(drop=True)
        self.layers = layers
        self.layer_names = list(layers.layer)
        self.gated_layers = list(layers[layers.kind == "gated"].layer)
        self.partial_layers = list(layers[layers.kind == "partial"].layer)
        self._rows = {row.layer: row for row in layers.itertuples(index=False)}
        self._cache = _LRU(160)
        self._lock = threading.Lock()

    # ---- description
    @property
    def kind(self) -> str:
        if self.gated_layers and self.partial_layers:
            return "mixed"
        return "gated" if self.gated_layers else "partial"

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model", {}).get("name", "?"))

    @property
    def model_source(self) -> str:
        return str(self.manifest.get("model", {}).get("source", "?"))

    @property
    def random_init(self) -> bool:
        return self.model_source == "random-init"

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.manifest.get("image_size")
        if size:
            return int(size[0]), int(size[1])
        return tuple(self.sample("image").shape[-2:]) if self.n_samples else (0, 0)

    def data_key(self) -> tuple:
        """What decides which images the samples are (to tell whether two runs share them)."""
        spec = self.manifest.get("data", {})
        return tuple((k, str(spec.get(k))) for k in sorted(spec) if k not in ("classes", "n"))

    def layer_row(self, layer: str):
        return self._rows[layer]

    def kind_of(self, layer: str) -> str:
        return str(self._rows[layer].kind)

    def has_layer(self, layer) -> bool:
        return isinstance(layer, str) and layer in self._rows

    # ---- tables
    def _memo(self, key, compute):
        return self._cache.get(key, compute)

    @property
    def channels(self) -> pd.DataFrame:
        return self.run.channels

    @property
    def labels(self) -> pd.DataFrame:
        return self.run.labels

    @property
    def evolution(self) -> pd.DataFrame:
        return self.run.evolution

    def optional_table(self, name: str) -> pd.DataFrame | None:
        if name not in OPTIONAL_TABLES:
            raise KeyError(name)
        return self._memo(("table", name), lambda: self.run.table(name))

    def _positions(self, name: str, keys: list[str]) -> dict:
        """Row positions of ``name`` (a table) grouped by ``keys``, computed once per run."""
        def compute():
            table = getattr(self, name)
            return {} if table.empty else table.groupby(keys, sort=False).indices
        return self._memo(("positions", name, tuple(keys)), compute)

    def channels_of(self, layer: str) -> pd.DataFrame:
        """The channels-table rows of ``layer``, by channel."""
        def compute():
            ch = self.channels
            rows = self._positions("channels", ["layer"]).get(layer)
            if rows is None:
                return ch.iloc[0:0]
            return ch.iloc[rows].sort_values("channel").reset_index(drop=True)
        return self._memo(("channels", layer), compute)

    def labels_of(self, layer: str, channel: int | None = None) -> pd.DataFrame:
        """The labels-table rows of ``layer`` (and ``channel``)."""
        def compute():
            lab = self.labels
            if channel is None:
                rows = self._positions("labels", ["layer"]).get(layer)
            else:
                rows = self._positions("labels", ["layer", "channel"]).get((layer, channel))
            return lab.iloc[0:0] if rows is None else lab.iloc[rows]
        return self._memo(("labels", layer, channel), compute)

    def statistics(self) -> list[str]:
        """Numeric columns of the channels table (what the layer grid can be sorted by)."""
        ch = self.channels
        return [c for c in ch.columns if c not in NON_STATISTICS and pd.api.types.is_numeric_dtype(ch[c])]

    def n_channels(self, layer: str) -> int:
        return int(self._rows[layer].channels)

    # ---- samples
    def sample(self, name: str) -> np.ndarray:
        return self._memo(("input", name), lambda: self.run.sample_input(name))

    def inputs(self, sample: int) -> dict:
        """``image``/``output`` ``[3,H,W]``, ``hole``/``sketch`` ``[1,H,W]`` float32, ``labels``
        ``[H,W]`` int and ``index`` (the data index) of stored sample ``sample``."""
        def compute():
            return {"image": np.asarray(self.sample("image")[sample], dtype=np.float32),
                    "hole": np.asarray(self.sample("hole")[sample], dtype=np.float32),
                    "sketch": np.asarray(self.sample("sketch")[sample], dtype=np.float32),
                    "labels": np.asarray(self.sample("labels")[sample]),
                    "output": np.asarray(self.sample("output")[sample], dtype=np.float32),
                    "index": int(self.sample("index")[sample])}
        return self._memo(("inputs", sample), compute)

    def sample_indices(self) -> list[int]:
        return [int(i) for i in np.asarray(self.sample("index"))] if self.n_samples else []

    def maps(self, layer: str, sample: int, kind: str = "gate") -> np.ndarray:
        """``[C, h, w]`` float32 maps of ``layer`` for stored sample ``sample``."""
        return self._memo(("maps", layer, sample, kind),
                          lambda: np.asarray(self.run.sample_map(layer, kind)[sample], dtype=np.float32))

    def channel_maps(self, layer: str, channel: int) -> np.ndarray:
        """``[K, h, w]`` float32: one channel of ``layer`` across every stored sample."""
        return self._memo(("channel", layer, channel),
                          lambda: np.asarray(self.run.sample_map(layer, "gate")[:, channel], dtype=np.float32))

    def layer_maps(self, layer: str, sample: int) -> tuple[np.ndarray, list[str], str]:
        """What the layer view shows for one sample: gated -> every channel's gate ``[C,h,w]``;
        partial -> the shared valid mask and the window coverage ``[2,h,w]`` (claim P4: one mask)."""
        if self.kind_of(layer) == "gated":
            return self.maps(layer, sample, "gate"), [], "gate"
        valid = self.maps(layer, sample, "valid")[0]
        coverage = self.maps(layer, sample, "coverage")[0]
        return np.stack([valid, coverage]), ["valid mask", "window coverage"], "value"

    def hole_at(self, sample: int, size: tuple[int, int]) -> np.ndarray:
        """``[h, w]`` bool: the sample's hole at a layer's resolution, by the recorder's own rule
        (:meth:`probe.recording.context.BatchContext.hole_at`: area share >= 0.5)."""
        def compute():
            import torch

            from probe.recording.context import BatchContext

            hole = torch.from_numpy(self.inputs(sample)["hole"][None])
            ctx = BatchContext(hole, None, torch.zeros(1, 1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long), 1)
            return ctx.hole_at(tuple(int(s) for s in size))[0, 0].numpy()
        return self._memo(("hole", sample, tuple(size)), compute)


@dataclass
class RunStore:
    """The runs under ``root``: ``runs`` (name -> :class:`RunView`, complete and readable ones)
    and ``skipped`` (name -> the reason it is not served)."""

    root: Path
    runs: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root).resolve()
        self._stamp = None
        self._lock = threading.Lock()

    def _candidates(self) -> list[Path]:
        if (self.root / "manifest.json").is_file():
            return [self.root]
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def refresh(self) -> "RunStore":
        """Rescan ``root`` when a run appeared, disappeared or was rewritten (manifest mtime)."""
        candidates = self._candidates()
        stamp = tuple((p.name, _mtime(p / "manifest.json")) for p in candidates)
        with self._lock:
            if stamp == self._stamp:
                return self
            runs, skipped = {}, {}
            for path in candidates:
                old = self.runs.get(path.name)
                if old is not None and _mtime(path / "manifest.json") == getattr(old, "_mtime", None):
                    runs[path.name] = old
                    continue
                view, reason = _open(path)
                if view is None:
                    skipped[path.name] = reason
                else:
                    view._mtime = _mtime(path / "manifest.json")
                    runs[path.name] = view
            if not self.root.exists():
                skipped[str(self.root)] = "folder does not exist"
            self.runs, self.skipped, self._stamp = runs, skipped, stamp
        return self

    def names(self, kind: str | None = None) -> list[str]:
        """Served run names; ``kind`` ``gated``/``partial`` keeps runs that have such layers."""
        if kind is None:
            return list(self.runs)
        attr = "gated_layers" if kind == "gated" else "partial_layers"
        return [n for n, v in self.runs.items() if getattr(v, attr)]

    def get(self, name) -> RunView | None:
        return self.runs.get(name) if isinstance(name, str) else None


def _mtime(path: Path):
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _open(path: Path) -> tuple[RunView | None, str]:
    """Open ``path`` as a run and check what the explorer needs; ``(view, "")`` or ``(None, reason)``."""
    try:
        run = load_run(path)
    except RunError as err:
        text = str(err)
        return None, text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
    except (OSError, ValueError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    missing = [t for t in TABLES if not (path / f"{t}.parquet").is_file()]
    if missing:
        return None, f"missing table(s) {', '.join(missing)}; the run is damaged, record it again"
    try:
        view = RunView(run)
    except Exception as err:  # a corrupt parquet file raises several types
        return None, f"unreadable layers table ({type(err).__name__}: {err})"
    if view.layers.empty:
        return None, "no recorded layers"
    if view.n_samples < 1 or not (path / "samples" / "inputs" / "image.npy").is_file():
        return None, "no stored samples (record with --samples >= 1)"
    return view, ""
