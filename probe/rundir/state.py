"""The raw accumulator state of a run (``RUN/state.safetensors``): fresh layer accumulators for
a recording, their state saved as ``LAYER/key`` tensors, and rebuilt from a run for merging."""
from __future__ import annotations

from pathlib import Path

import torch

from ..stats.layer_stats import GatedLayerStats, LayerGeometry, PartialLayerStats
from .files import write_atomic
from .run import Run
from .settings import RecordSettings

STATE_FILE = "state.safetensors"
DEFAULT_LOGIT_RANGE = (-12.0, 12.0)  # gate bins before calibration (tests and single-image probes)


def new_layer_stats(sites, n_labels: int, settings: RecordSettings, binnings: dict | None = None,
                    device: torch.device | str = "cpu") -> dict:
    """Empty accumulators on ``device``, layer name -> :class:`GatedLayerStats` /
    :class:`PartialLayerStats`, for ``sites`` (anything with a layer's ``name``, ``kind`` and
    geometry); gated layers are binned by ``binnings[name]`` (:class:`~probe.stats.binning.Binning`,
    from the calibration) when given, else uniformly over ``DEFAULT_LOGIT_RANGE``."""
    binnings = {name: b.to(device) for name, b in (binnings or {}).items()}
    with torch.device(device):  # every accumulator the constructors allocate
        return {s.name: GatedLayerStats(s, n_labels, settings.bins, settings.groups, *DEFAULT_LOGIT_RANGE,
                                        binning=binnings.get(s.name), quantile=settings.quantile)
                if s.kind == "gated" else PartialLayerStats(s, settings.groups) for s in sites}


def stats_to_cpu(stats: dict) -> dict:
    """``stats`` with every accumulator on the CPU (through their state: exact), for writing."""
    with torch.device("cpu"):
        for s in stats.values():
            s.load_state_dict({k: v.detach().cpu() for k, v in s.state_dict().items()})
    return stats


def state_tensors(stats: dict, prefix: str = "") -> dict:
    """Every layer's accumulator state as flat ``PREFIXLAYER/key`` tensors."""
    return {f"{prefix}{name}/{key}": value.detach().cpu().contiguous() for name, s in stats.items()
            for key, value in s.state_dict().items()}


def load_state_tensors(stats: dict, tensors: dict, prefix: str = "") -> dict:
    """Load flat ``PREFIXLAYER/key`` tensors (from :func:`state_tensors`) into ``stats``; returns it."""
    for name, s in stats.items():
        head = f"{prefix}{name}/"
        s.load_state_dict({k[len(head):]: v for k, v in tensors.items() if k.startswith(head)})
    return stats


def write_state(path: Path, stats: dict) -> None:
    """Save every layer's accumulators with safetensors."""
    from safetensors.torch import save

    write_atomic(path, save(state_tensors(stats)))


def load_stats(run: Run) -> dict:
    """Rebuild the layer accumulators of ``run`` from its ``state.safetensors``."""
    from safetensors.torch import load_file

    settings = RecordSettings.from_dict(run.manifest["settings"])
    sites = [LayerGeometry(row.layer, row.kind, int(row.channels), int(row.kernel), int(row.stride), int(row.dilation),
                           binned=row.binned or "logit", found_by=row.found_by, activation=row.activation)
             for row in run.layers.itertuples()]
    return load_state_tensors(new_layer_stats(sites, len(run.classes), settings), load_file(run.path / STATE_FILE))
