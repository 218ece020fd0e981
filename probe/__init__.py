"""gateprobe: open up image-inpainting networks and see how their layers decide what to look at."""
from .checkpoints import load_model, save_checkpoint
from .data import FolderDataset, Scenes, heldout_items
from .layers import GatedConv2d, HookPoint, PartialConv2d
from .models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["FolderDataset", "GatedConv2d", "HookPoint", "PartialConv2d", "Scenes", "create_model",
           "heldout_items", "list_models", "load_model", "save_checkpoint"]
