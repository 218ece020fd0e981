"""The manifest of a run being recorded: model identity, data, settings, shards, environment."""
from __future__ import annotations

import datetime as _dt
import hashlib
import platform

import numpy as np
import torch
from torch import nn

from ..rundir.run import SCHEMA_VERSION
from ..rundir.settings import RecordSettings


def _model_info(model: nn.Module) -> dict:
    info = dict(getattr(model, "source_info", {"name": type(model).__name__, "source": "python object",
                                                "sha256": None}))
    info["class"] = type(model).__name__
    info["weights_sha256"] = weights_sha256(model)
    info["parameters"] = sum(p.numel() for p in model.parameters())
    info["accepts_sketch"] = bool(getattr(model, "accepts_sketch", False))
    return info


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of the model's state_dict (names, dtypes, shapes and bytes): two runs of the same
    class and config with different weights (e.g. two random initialisations) never merge."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def new_manifest(model: nn.Module, data, n: int, settings: RecordSettings, sites: list, shards: list[dict],
                 samples: int, command: str) -> dict:
    """The manifest of a run being recorded (``complete`` false, ``n_images`` 0 until written)."""
    return {
        "schema_version": SCHEMA_VERSION, "gateprobe_version": _version(), "complete": False,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_info(model), "data": data.spec() | {"n": n}, "n_images": 0,
        "shards": shards, "settings": settings.to_dict(), "layers": [s.name for s in sites], "samples": samples,
        "environment": {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "command": command,
    }


def _version() -> str:
    from .. import __version__

    return __version__
