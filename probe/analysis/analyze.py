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
from ..devices import resolve_device
from ..errors import RunError, SettingsError
from ..rundir.files import write_table
from ..rundir.folder import run_lock, write_manifest
from ..rundir.run import Run, load_run
from .attribution import attribute_channels
from .controls import label_null, linked_baseline
from .embedding import channel_embedding
from .interventions import ablation, sketch_intervention, strongest_channels


def model_of_run(run: Run, allow_import_models: bool = False, trust_pickle: bool = False) -> nn.Module:
    """Rebuild the model a run recorded, from its manifest's ``model.source``.

    A run folder may come from someone else, so nothing it names is imported or unpickled on its
    word: a checkpoint folder (safetensors, sha256-verified) is loaded; a ``package.module:function``
    source is imported only with ``allow_import_models`` (``--allow-import-models``), and a
    pickle-based weights file (``deepfillv2:PATH.pth``) read only with ``trust_pickle``
    (``--trust-pickle``) given now, whatever the manifest says. Or pass ``--model`` again."""
    from ..models.sources import IMPORT_PATH, LOADERS, PICKLE_LOADERS, resolve_model

    info = run.manifest["model"]
    source = info.get("source")
    if source == "random-init" and isinstance(info.get("config"), dict) and isinstance(info.get("seed"), int):
        return _random_init_of_run(run, info)
    if not source or not isinstance(source, str) or source in ("random-init", "python object"):
        raise RunError(f"{run.name}: its model ({source}) cannot be rebuilt from the manifest; pass it again with "
                       "--model (or the model object to probe.analyze(run, model=...))")
    prefix, _, rest = source.partition(":")
    if Path(source).is_dir():
        pass  # a checkpoint folder: safetensors weights, verified against its card
    elif prefix in LOADERS and rest:
        if prefix in PICKLE_LOADERS and not trust_pickle:
            raise RunError(f"{run.name}: its model is the pickle-based file {source!r}; analyze reads it only with "
                           "--trust-pickle given on this command line (a run folder cannot grant it), or pass "
                           "--model again")
    elif IMPORT_PATH.match(source):
        if not allow_import_models:
            raise RunError(f"{run.name}: its model is the import path {source!r}, which analyze would import and run; "
                           "it does so only with --allow-import-models (for runs you trust), or pass --model "
                           f"{source} again")
    model = resolve_model(source, trust_pickle=trust_pickle)
    expected = info.get("sha256")
    actual = getattr(model, "source_info", {}).get("sha256")
    if expected and actual and expected != actual:
        raise RunError(f"{run.name}: the model at {source} changed since recording (sha256 differs); record again")
    check_weights(run, model)
    return model


def _random_init_of_run(run: Run, info: dict) -> nn.Module:
    """The random-init model a run recorded, drawn again from its registry name, config and weight
    seed (``record --with-baseline`` writes them), checked to have the recorded weights."""
    from ..errors import GateprobeError
    from ..models.registry import random_twin

    try:
        model = random_twin(str(info.get("name")), info["config"], info["seed"])
    except (GateprobeError, TypeError, ValueError) as err:
        raise RunError(f"{run.name}: its random-init model ({info.get('name')}, seed {info['seed']}) cannot be "
                       f"built again ({err}); pass it with --model") from None
    check_weights(run, model)
    return model


def check_weights(run: Run, model: nn.Module) -> None:
    """Refuse a model whose weights are not those the run recorded (its numbers would be another model's)."""
    from ..recording.manifest import weights_sha256

    expected = run.manifest["model"].get("weights_sha256")
    if expected and weights_sha256(model) != expected:
        raise RunError(f"{run.name}: the model given has other weights than the recorded one (weights sha256 "
                       f"differs); analyse a run with the model that recorded it")


def analyze(run: Run | str | Path, model: nn.Module | None = None, n: int = 64, batch_size: int = 16,
            per_role: int = 3, sketch: bool = True, ablate: bool = True, attribute: bool = True,
            attribution_images: int = 8, attribution_steps: int = 16, progress: bool = True,
            model_spec: str | None = None, allow_import_models: bool = False, trust_pickle: bool = False,
            null: int = 0, device: str | None = None, baseline: bool = True) -> Run:
    """Add ``embedding``, ``interventions`` (sketch on/off), ``ablation`` and ``attributions``
    tables to a gated run (partial runs get none: they have no gate channels), and with ``null``
    > 0 the ``null`` table: role counts under that many label-shuffle draws (each a recording of
    the run's images, :func:`probe.analysis.controls.label_null`). Returns the run.

    The model: ``model``; else ``model_spec`` (``--model``, resolved and checked to have the
    recorded weights); else rebuilt from the manifest by :func:`model_of_run`, which imports code
    named there only with ``allow_import_models`` and reads pickle files only with ``trust_pickle``.

    With ``baseline`` (the default), the random-init twin that ``record --with-baseline`` linked is
    analysed the same way (its weights drawn again from the seed its manifest records), so that the
    G2 row has a control: the sketch intervention on the twin."""
    run = load_run(run.path if isinstance(run, Run) else run)  # as it is on disk now (links added since)
    check_count("--n", n, 1)
    check_count("--batch-size", batch_size, 1)
    check_count("--per-role", per_role, 0)
    check_count("--attribution-images", attribution_images, 1)
    check_count("--null", null, 0)
    twin = linked_baseline(run) if baseline else None
    if twin is not None and twin.manifest["model"].get("source") == "random-init":
        analyze(twin, n=n, batch_size=batch_size, per_role=per_role, sketch=sketch, ablate=ablate, attribute=attribute,
                attribution_images=attribution_images, attribution_steps=attribution_steps, progress=progress,
                null=null, device=device, baseline=False)
    if run.channels.empty:
        return run
    with run_lock(run.path):
        if model is None and model_spec is not None:
            from ..models.sources import resolve_model

            model = resolve_model(model_spec, trust_pickle=trust_pickle)
            check_weights(run, model)
        model = model or model_of_run(run, allow_import_models, trust_pickle)
        if device is not None:
            model.to(resolve_device(device))
        return _analyze(run, model, n, batch_size, per_role, sketch, ablate, attribute, attribution_images,
                        attribution_steps, progress, null)


def check_count(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SettingsError(f"{name} must be an integer >= {low}, not {value!r}")


def _analyze(run: Run, model: nn.Module, n: int, batch_size: int, per_role: int, sketch: bool, ablate: bool,
             attribute: bool, attribution_images: int, attribution_steps: int, progress: bool, null: int = 0) -> Run:
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
    if null > 0:
        write_table(run.path / "null.parquet", label_null(model, run, null, progress=progress))
        done["null"] = {"draws": null, "images": int(run.manifest["n_images"])}
    manifest = dict(run.manifest, analyses=done)
    write_manifest(run.path, manifest)
    return load_run(run.path)


def optional_table(run: Run, name: str) -> pd.DataFrame | None:
    return run.table(name)
