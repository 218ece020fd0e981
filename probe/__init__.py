"""gateprobe: open up image-inpainting networks and see how their layers decide what to look at.

The pipeline, one room per step::

    model (probe.models, probe.adapters) + data (probe.data)
        --record (probe.recording)--> run directory (probe.rundir)
        --> analyze / claims (probe.analysis), report (probe.report), serve (dashboards),
            figures (probe.viz), pandas tables (Run.layers, .channels, .labels, .evolution)
"""
__version__ = "0.1.0"

from . import viz
from .analysis import analyze, claims
from .data import FolderDataset, Scenes, heldout_items
from .errors import (CheckpointError, DataError, GateprobeError, ModelError, NumericalError, RunError, SettingsError,
                     UserModelError)
from .layers import GatedConv2d, HookPoint, PartialConv2d
from .models import create_model, list_models, load_model, resolve_model, save_checkpoint
from .recording.loop import record
from .report import build_report as report
from .rundir.merge import merge_runs
from .rundir.roles import RoleRule
from .rundir.run import Run, load_run
from .rundir.settings import RecordSettings
from .serve import serve_runs as serve

__all__ = ["CheckpointError", "DataError", "FolderDataset", "GateprobeError", "GatedConv2d", "HookPoint", "ModelError",
           "NumericalError", "PartialConv2d", "RecordSettings", "RoleRule", "Run", "RunError", "Scenes",
           "SettingsError", "UserModelError", "analyze", "claims", "create_model", "heldout_items", "list_models",
           "load_model", "load_run", "merge_runs", "record", "report", "resolve_model", "save_checkpoint", "serve",
           "viz"]
