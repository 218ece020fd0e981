"""The live page's model: rebuilt from a run manifest's ``model.source`` (:func:`live_model`,
cached per run) and re-run on one edited image with hooks on one layer (:func:`live_forward`)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import RunView


@dataclass
class LiveModel:
    """A model rebuilt for the live page: ``model`` (or None and ``error``), ``notes`` to show."""

    model: object = None
    notes: list = field(default_factory=list)
    error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    sites: dict = field(default_factory=dict)


_LIVE: dict[tuple, LiveModel] = {}
_LIVE_LOCK = threading.Lock()


def live_model(view: RunView, root: Path, allow_import_paths: bool = False, device: str = "cpu") -> LiveModel:
    """The model behind ``view``, rebuilt from the manifest's ``model.source`` (cached).

    * ``random-init``: the registry model with random weights (seed 0) -- not the weights that
      were recorded, which were never saved;
    * a checkpoint folder: loaded (hash-verified) from the path as recorded, tried relative to
      the working directory and to the runs folder and its parents; a checkpoint whose hash
      differs from the manifest's is used with a note (it was retrained since);
    * a registered loader prefix (``deepfillv2:PATH``): through :func:`probe.resolve_model`
      (a pickle-based ``.pth`` only with ``allow_import_paths``, like ``--trust-pickle``);
    * ``package.module:function``: only with ``allow_import_paths`` (it imports code named by a
      file on disk).

    The model runs on ``device`` (``serve --device``)."""
    key = (view.name, getattr(view, "_mtime", None), str(device))
    with _LIVE_LOCK:
        if key not in _LIVE:
            _LIVE[key] = _build_live(view, Path(root), allow_import_paths)
            if _LIVE[key].model is not None:
                _LIVE[key].model.to(device)
        return _LIVE[key]


def _build_live(view: RunView, root: Path, allow_import_paths: bool) -> LiveModel:
    import torch

    from probe.models.sources import IMPORT_PATH, LOADERS, resolve_model

    info = view.manifest.get("model", {})
    source, name, recorded_sha = str(info.get("source", "")), str(info.get("name", "")), info.get("sha256")
    live = LiveModel()
    try:
        if source == "random-init":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                live.model = resolve_model(name, random_init=True)
            live.notes.append(f"{name} is a registry model recorded with random weights (--random-init); the "
                              "live page rebuilds it with new random weights (seed 0), not the recorded ones.")
        elif source.partition(":")[0] in LOADERS and ":" in source:  # pickle-based files: opt-in, as for imports
            live.model = resolve_model(source, trust_pickle=allow_import_paths)
        elif IMPORT_PATH.match(source) and not Path(source).exists():
            if not allow_import_paths:
                live.error = (f"this run's model comes from the import path {source!r}; the explorer imports "
                              "code only when started with --allow-import-models")
                return live
            live.model = resolve_model(source)
        else:
            folder = _find_checkpoint(source, root)
            if folder is None:
                live.error = (f"cannot find the model {source!r} recorded in the manifest (tried it relative to the "
                              "working directory and the runs folder)")
                return live
            live.model = resolve_model(str(folder))
            sha = live.model.source_info.get("sha256")
            if recorded_sha and sha and sha != recorded_sha:
                live.notes.append(f"the checkpoint at {folder.name} has changed since this run was recorded "
                                  "(different weights hash): the live output uses the current weights.")
        live.model.eval()
        for p in live.model.parameters():
            p.requires_grad_(False)
    except Exception as err:  # any failure to rebuild is shown, never raised into a callback
        live.model, live.error = None, f"could not rebuild the model: {type(err).__name__}: {err}"
    return live


def _find_checkpoint(source: str, root: Path) -> Path | None:
    if not source or source in ("python object", "?"):
        return None
    path = Path(source)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, root / path, root.parent / path,
                                                     root.parent.parent / path]
    for candidate in candidates:
        if (candidate / "card.json").is_file():
            return candidate
    return None


class _Sink:
    """Receives one layer's maps from its adapter's hooks."""

    def __init__(self):
        self.maps = None

    def gated(self, logits, gates):
        self.maps = ("gate", gates[0].float().cpu().numpy().copy())

    def partial(self, valid_in, new_valid, coverage, out=None):
        self.maps = ("valid", np.stack([new_valid[0, 0].float().cpu().numpy(), coverage[0, 0].float().cpu().numpy()]))


def live_forward(live: LiveModel, image: np.ndarray, hole: np.ndarray, sketch: np.ndarray | None,
                 layer: str | None) -> tuple[np.ndarray, tuple | None]:
    """Run the live model on one image: returns the output ``[3, H, W]`` (clamped to [0, 1]) and
    ``(kind, maps)`` of ``layer`` (``gate`` ``[C,h,w]`` or ``valid`` ``[2,h,w]`` valid + coverage).
    Hooks live only inside this call (removed in ``finally``); one call at a time per model."""
    import torch

    from probe.adapters import find_sites
    from probe.devices import model_device
    from probe.hooks import hooks_attached, site_attachers

    model = live.model
    with live.lock:
        if not live.sites:
            live.sites = {site.name: site for site in find_sites(model)}
        site = live.sites.get(layer) if layer else None
        sink = _Sink()
        with hooks_attached(model, site_attachers([site] if site is not None else [], lambda _name: sink)), \
                torch.no_grad():
            device = model_device(model)
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
            h = torch.from_numpy(np.ascontiguousarray(hole, dtype=np.float32))[None].to(device)
            s = None if sketch is None else torch.from_numpy(np.ascontiguousarray(sketch, dtype=np.float32))[None].to(device)
            out = model(x, h, s) if s is not None else model(x, h)
    return out[0].clamp(0, 1).float().cpu().numpy(), sink.maps
