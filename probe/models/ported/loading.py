"""What the loaders of published checkpoints share: :func:`read_checkpoint` (``weights_only=True``),
:func:`check_state_dict` (a CheckpointError naming missing and unexpected keys) and
:func:`pad_to_multiple` (the size convention at the model boundary)."""
from __future__ import annotations

import pickle

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import CheckpointError


def read_checkpoint(path: str, entry: str) -> dict:
    """The state dict under ``entry`` of the checkpoint at ``path`` (or the whole file when it is a
    bare state dict), read with ``torch.load(map_location="cpu", weights_only=True)``: tensors and
    plain containers only, never arbitrary pickled objects."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, UnicodeDecodeError, OSError) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint readable with weights_only=True "
                              f"({_why_unreadable(err)}); gateprobe reads tensors only, never pickled code: use "
                              "the original file, or export its state_dict of tensors with torch.save") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict with a {entry!r} entry, got {type(checkpoint).__name__}")
    bare = all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    if entry not in checkpoint and not bare:
        raise CheckpointError(f"{path}: no {entry!r} entry (entries: {first_keys(checkpoint)}); is it a checkpoint of "
                         "another architecture?")
    state = checkpoint if bare and entry not in checkpoint else checkpoint[entry]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the {entry!r} entry is not a state dict of tensors")
    return state


def _why_unreadable(err: BaseException) -> str:
    """What torch.load's error says about the file, without its advice to load with weights_only=False."""
    text = " ".join(str(err).split())
    if "GLOBAL" in text or "Unsupported global" in text:
        import re

        found = re.search(r"(?:GLOBAL|global:?)\s+([\w.]+)", text)
        named = f", e.g. {found.group(1).rstrip('.')}" if found else ""
        return f"it holds pickled objects other than tensors{named}"
    if "zip archive" in text or "central directory" in text:
        return "a damaged or truncated zip archive"
    if isinstance(err, EOFError) or "ran out of input" in text.lower():
        return "the file ends early: truncated"
    return "random or damaged bytes, not a torch.save file"


def first_keys(keys, n: int = 5) -> str:
    """The first ``n`` of ``keys``, comma-separated, with the total when there are more."""
    keys = list(keys)
    shown = ", ".join(map(str, keys[:n]))
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > n else shown


def check_state_dict(model: nn.Module, state: dict, what: str, optional: set[str] = frozenset()) -> None:
    """Raise CheckpointError (starting with ``what``) naming the first few missing keys (except
    ``optional`` ones), unexpected keys and, when the names match, wrongly shaped tensors."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {first_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {first_keys(unexpected)}")
    if not problems:
        shapes = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
                  if tuple(v.shape) != tuple(expected[k].shape)]
        if shapes:
            problems.append(f"wrong shapes: {first_keys(shapes, 3)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad ``x`` ``[B,C,H,W]`` at the bottom and right up to the next multiple of ``multiple`` by
    reflection (replicate where a pad is not smaller than the image); crop outputs with
    ``[..., :H, :W]``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
