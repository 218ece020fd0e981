"""gateprobe: open up image-inpainting networks and see how their layers decide what to look at."""
from .analysis import analyze, claims
from .checkpoints import load_model, save_checkpoint
from .data import FolderDataset, Scenes, heldout_items
from .layers import GatedConv2d, HookPoint, PartialConv2d
from .merge import merge_runs
from .models import create_model, list_models
from .record import record
from .run import Run, load_run

__version__ = "0.1.0"

__all__ = ["analyze", "claims", "FolderDataset", "GatedConv2d", "HookPoint", "PartialConv2d", "Run", "Scenes", "create_model",
           "heldout_items", "list_models", "load_model", "load_run", "merge_runs", "record", "save_checkpoint"]
