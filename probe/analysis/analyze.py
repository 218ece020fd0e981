"""``analyze``: the analyses that need the model again (interventions, attribution) plus the
channel embedding, stored as tables in the run directory.

Forward passes (n images, batch b, k selected channels, s IG steps, m attribution images):
sketch on/off 2*ceil(n/b); ablation (1 + k)*ceil(n/b); attribution k*s*m forward+backward.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from torch import nn

from ..data import dataset_from_spec
from ..errors import RunError
from ..rundir.files import write_table
from ..rundir.folder import write_manifest
from ..rundir.run import Run, load_run
from .attribution import attribute_channels
from .embedding import channel_embedding
from .interventions import ablation, sketch_intervention, strongest_channels


def model_of_run(run: Run) -> nn.Module:
    """Rebuild the model a run recorded, from its manifest (checkpoint folder or loader path)."""
    from ..models.sources import resolve_model

    source = run.manifest["model"].get("source")
    if not source or source in ("random-init", "python object"):
        raise RunError(f"{run.name}: its model ({source}) cannot be rebuilt from the manifest; "
                       "pass the model object to probe.analyze(run, model=...)")
    # a pickle-based weights file is read again only if it was trusted (--trust-pickle) at recording time
    model = resolve_model(source, trust_pickle=bool(run.manifest["model"].get("trust_pickle")))
    expected = run.manifest["model"].get("sha256")
    actual = getattr(model, "source_info", {}).get("sha256")
    if expected and actual and expected != actual:
        raise RunError(f"{run.name}: the model at {source} changed since recording (sha256 differs); record again")
    return model


def analyze(run: Run | str | Path, model: nn.Module | None = None, n: int = 64, batch_size: int = 16,
            per_role: int = 3, sketch: bool = True, ablate: bool = True, attribute: bool = True,
            attribution_images: int = 8, attribution_steps: int = 16, progress: bool = True) -> Run:
    """Add ``embedding``, ``interventions`` (sketch on/off), ``ablation`` and ``attributions``
    tables to a gated run (partial runs get none: they have no gate channels). Returns the run."""
    run = load_run(run) if not isinstance(run, Run) else run
    if run.channels.empty:
        return run
    model = model or model_of_run(run)
    data = dataset_from_spec(run.manifest["data"])
    n = min(n, len(data))
    done = {}
    write_table(run.path / "embedding.parquet", channel_embedding(run.channels, run.labels))
    done["embedding"] = {}
    picks = strongest_channels(run.channels, run.labels, per_role)
    if sketch and getattr(model, "accepts_sketch", False):
        write_table(run.path / "interventions.parquet",
                    sketch_intervention(model, data, n=n, batch_size=batch_size, progress=progress))
        done["interventions"] = {"n": n, "forward_passes": 2 * -(-n // batch_size)}
    if ablate and picks:
        write_table(run.path / "ablation.parquet",
                    ablation(model, data, picks, n=n, batch_size=batch_size, progress=progress))
        done["ablation"] = {"n": n, "channels": len(picks), "forward_passes": (1 + len(picks)) * -(-n // batch_size)}
    if attribute and picks:
        write_table(run.path / "attributions.parquet",
                    attribute_channels(model, data, picks, n=min(attribution_images, n), steps=attribution_steps,
                                       progress=progress))
        done["attributions"] = {"n": min(attribution_images, n), "channels": len(picks), "steps": attribution_steps}
    manifest = dict(run.manifest, analyses=done)
    write_manifest(run.path, manifest)
    return load_run(run.path)


def optional_table(run: Run, name: str) -> pd.DataFrame | None:
    return run.table(name)
