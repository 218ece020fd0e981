"""A tiny model registry: variants are data (name -> builder + default config)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    defaults: dict = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, builder: Callable[..., nn.Module], description: str = "", **defaults) -> None:
    """Register ``builder(**config)`` under ``name`` with default ``config`` values."""
    if name in _REGISTRY:
        raise ModelError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelSpec(name, builder, dict(defaults), description)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_config(name: str, **overrides) -> dict:
    """The full config of ``name``: its defaults updated by ``overrides`` (unknown keys refused)."""
    spec = model_spec(name)
    unknown = set(overrides) - set(spec.defaults)
    if unknown:
        raise ModelError(f"model {name!r} has no option(s) {sorted(unknown)}; options: {sorted(spec.defaults)}")
    return {**spec.defaults, **overrides}


def create_model(name: str, **config) -> nn.Module:
    """Build a registered model with random weights; its config is kept in ``model.config``."""
    full = model_config(name, **config)
    model = model_spec(name).builder(**full)
    model.registry_name = name
    model.config = full
    return model


def random_twin(name: str, config: dict, seed: int) -> nn.Module:
    """The registry model ``name`` with ``config`` and weights drawn with ``seed`` (the global RNG is
    left as it was), in eval mode. Its ``source_info`` (``source: "random-init"``, name, config and
    seed) goes into the run's manifest, so that ``analyze`` can draw the same weights again."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = create_model(name, **config).eval()
    twin.source_info = {"name": name, "source": "random-init", "sha256": None, "seed": int(seed),
                        "config": dict(config)}
    return twin
