"""Checkpoints are folders: ``model.safetensors`` + ``card.json`` (config, data, training,
metrics, the sha256 of the weights). No pickles: weights load with safetensors only."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..rundir.files import write_atomic, write_json
from .registry import create_model, list_models, model_spec

CARD_FORMAT = "gateprobe-checkpoint/1"
WEIGHTS, CARD = "model.safetensors", "card.json"


def save_checkpoint(model: nn.Module, folder: str | Path, **card_sections) -> dict:
    """Save ``model`` (built by :func:`probe.models.create_model`) into ``folder``; extra
    keyword sections (``data``, ``training``, ``metrics``...) go into the card. Returns the card."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save(state)
    write_atomic(folder / WEIGHTS, blob)
    card = {"format": CARD_FORMAT, "model": model.registry_name, "config": model.config,
            "parameters": sum(p.numel() for p in model.parameters()),
            "sha256": hashlib.sha256(blob).hexdigest(), **card_sections}
    write_json(folder / CARD, card)
    return card


def read_card(folder: str | Path) -> dict:
    path = Path(folder) / CARD
    if not path.is_file():
        raise CheckpointError(f"{folder}: no {CARD}; a checkpoint folder holds {WEIGHTS} and {CARD}")
    try:
        card = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); restore the card from the checkpoint's "
                              "source") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(card).__name__}")
    if card.get("format") != CARD_FORMAT:
        raise CheckpointError(f"{path}: format {card.get('format')!r} is not {CARD_FORMAT!r}")
    return card


def load_model(folder: str | Path, verify: bool = True) -> nn.Module:
    """Rebuild the model of checkpoint ``folder`` through the registry, load its weights (hash
    verified unless ``verify=False``) and return it in eval mode with its card in ``model.card``."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = Path(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS}")
    recorded = card.get("sha256")
    if verify and not (isinstance(recorded, str) and len(recorded) == 64
                       and all(ch in "0123456789abcdef" for ch in recorded.lower())):
        raise CheckpointError(f"{folder / CARD}: no valid 'sha256' of {WEIGHTS} (got {recorded!r}), so the weights "
                              "cannot be verified; restore the card from the checkpoint's source (or pass "
                              "verify=False if you wrote it yourself)")
    if "config" not in card:
        raise CheckpointError(f"{folder / CARD}: no 'config' (the model's settings, e.g. {{\"width\": 32, "
                              "\"image_size\": 64}}); restore the card from the checkpoint's source")
    blob = weights.read_bytes()
    if verify and hashlib.sha256(blob).hexdigest() != recorded.lower():
        raise CheckpointError(f"{weights}: sha256 does not match card.json; the file is corrupt or was "
                              "replaced; restore it (or pass verify=False if you changed it on purpose)")
    try:
        state = load(blob)
    except (SafetensorError, Exception) as err:  # safetensors raises several types for bad bytes
        raise CheckpointError(f"{weights}: not a readable safetensors file ({err})") from None
    _, config = _architecture(card, folder / CARD)
    try:  # first without memory (meta device): a card whose config does not fit the weights builds nothing
        with torch.device("meta"):
            skeleton = create_model(card["model"], **config)
    except Exception as err:  # noqa: BLE001 - KeyError (unknown name), TypeError/ValueError (bad config), ...
        message = err.args[0] if err.args else type(err).__name__
        raise CheckpointError(f"{folder / CARD}: {message}; the card does not describe a model this "
                              "gateprobe can build") from None
    missing, unexpected = _key_mismatch(skeleton, state)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: weights do not fit {card['model']}: missing keys {missing[:5]}, "
                              f"unexpected keys {unexpected[:5]}")
    expected = skeleton.state_dict()
    shapes = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
              if tuple(v.shape) != tuple(expected[k].shape)]
    if shapes:
        raise CheckpointError(f"{weights}: weights do not fit {card['model']}: size mismatch with the card's config "
                              f"for {', '.join(shapes[:3])}")
    model = create_model(card["model"], **config)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{weights}: weights do not fit {card['model']}: {str(err).splitlines()[-1].strip()}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{weights}: non-finite (NaN/inf) weights in {bad[:5]}")
    model.card = card
    model.source = str(folder)
    return model.eval()


def card_architecture(folder: str | Path) -> tuple[str, dict]:
    """The registry name and config that the card of checkpoint ``folder`` names, checked (the
    weights are not read): what ``--random-init`` builds with new weights."""
    return _architecture(read_card(folder), Path(folder) / CARD)


def _architecture(card: dict, path: Path) -> tuple[str, dict]:
    name, config = card.get("model"), card.get("config", {})
    if not isinstance(name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{path}: 'model' must be a registry name and 'config' an object")
    if name not in list_models():
        raise CheckpointError(f"{path}: unknown model {name!r}; registered models: {', '.join(list_models())}; the "
                              "card does not describe a model this gateprobe can build")
    _check_config_types(path, name, config)
    return name, config


def _check_config_types(path: Path, name: str, config: dict) -> None:
    """Each config value has the type of the registry's default (a string width is a clear error,
    not a failure deep inside the model's constructor)."""
    import math

    defaults = model_spec(name).defaults
    for key, value in config.items():
        default = defaults.get(key)
        if isinstance(default, bool):
            ok, kind = isinstance(value, bool), "true or false"
        elif isinstance(default, int):
            ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            kind = "a number"
        elif isinstance(default, str):
            ok, kind = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise CheckpointError(f"{path}: config {key!r} is {value!r}; expected {kind} (the registry's default for "
                                  f"{name} is {default!r}); restore the card from the checkpoint's source")


def _key_mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str]]:
    expected = set(model.state_dict())
    return sorted(expected - set(state)), sorted(set(state) - expected)
