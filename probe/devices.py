"""Devices and precisions: where a model runs (``--device``) and in which precision its forward
pass runs (``--dtype``, through autocast). Statistics always accumulate in float32 / float64 /
int64 on the recording device; only final state moves to the CPU.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch

from .errors import SettingsError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked
    against what this machine has."""
    if isinstance(spec, torch.device):
        return spec
    spec = "auto" if spec is None else str(spec).strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise SettingsError(f"--device {spec!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError(f"--device {spec}: this torch has no CUDA device available "
                                f"(torch {torch.__version__}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingsError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA devices (0.."
                                f"{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SettingsError(f"--device {spec}: MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise SettingsError(f"--device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise SettingsError(f"--dtype {name!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def autocast(device: torch.device, dtype_name: str):
    """Autocast for the model's forward pass in ``dtype_name`` (nothing for float32)."""
    dtype = resolve_dtype(dtype_name)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for a model without any)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def describe(device: torch.device) -> dict:
    """The manifest's record of the recording device."""
    info = {"type": device.type, "name": str(device)}
    if device.type == "cuda":
        info["model"] = torch.cuda.get_device_name(device)
    return info


def batch_to(batch: dict, device: torch.device) -> dict:
    """A collated batch with its tensors on ``device`` (``index`` stays where it is)."""
    if device.type == "cpu":
        return batch
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "index" else v)
            for k, v in batch.items()}
